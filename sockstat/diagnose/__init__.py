"""diagnose(): run every detector over a snapshot and kernel samples -> findings.

Each detector is a module with `detect(snapshot, kernel, thresholds) -> list[Finding]`,
a pure function: no I/O, so each is tested on hand-built Sockets and captured counter
files. `kernel` is a KernelChange (two samples: latest values plus deltas) or None.

    from sockstat.observe import observe
    from sockstat.query import Query

    # counters, 1 s, the table with processes and tcp_info, counters again, diagnose()
    seen = observe(Query(), interval=1.0)
    for f in seen.findings:
        print(f.severity, f.kind, f.subject, f.summary)

The detectors are pure: this package imports no collect, render, demo or cli code
(sockstat.observe does the I/O around them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sockstat.diagnose.findings import Finding, Scope, Severity
from sockstat.diagnose.index import index, indexed
from sockstat.diagnose.thresholds import Thresholds
from sockstat.model import Snapshot, TcpState
from sockstat.status import CheckStatus

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (check's start-up)
if TYPE_CHECKING:
    from sockstat.kernelmodel import KernelChange, KernelSample

    KernelInput = KernelChange | KernelSample | Sequence[KernelSample] | None

# In this order: findings of equal severity are listed in detector order. The detector
# modules are imported on first use (module __getattr__ below): `sockstat check --help`
# needs only Thresholds, and every command's start-up pays for this package's import.
_DETECTOR_NAMES = ("close_wait", "time_wait", "accept_queue", "syn", "stalled", "orphans",
                   "slow", "drops")


def _detectors() -> tuple:
    import importlib

    return tuple(importlib.import_module(f"sockstat.diagnose.{name}")
                 for name in _DETECTOR_NAMES)


def __getattr__(name: str):
    if name == "DETECTORS":
        return _detectors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DETECTORS", "Finding", "Scope", "Severity", "Thresholds", "as_change",
           "diagnose", "exit_status", "finding_kinds", "flagged_keys", "named_sockets",
           "owners_read", "quick_findings", "relevant_counters", "wanted_pids"]


def as_change(kernel: KernelInput) -> KernelChange | None:
    """A KernelChange from one sample, a (before, after) sequence, or a KernelChange."""
    from sockstat.kernelmodel import KernelChange, KernelSample

    if kernel is None or isinstance(kernel, KernelChange):
        return kernel
    if isinstance(kernel, KernelSample):
        return KernelChange(after=kernel)
    samples = list(kernel)
    if not samples:
        return None
    return KernelChange(after=samples[-1], before=samples[0] if len(samples) > 1 else None)


def diagnose(snapshot: Snapshot, kernel: KernelInput = None,
             thresholds: Thresholds | None = None, *, host: bool = True) -> list[Finding]:
    """Every detector's findings, most severe first.

    host=False leaves out host-wide findings (kernel totals and counters that cannot be
    tied to the sockets in view): what a check filtered to some ports or pids wants.
    """
    change = as_change(kernel)
    thresholds = thresholds or Thresholds()
    found: list[tuple[int, Finding]] = []
    with indexed(snapshot):  # one pass over the table, shared by the detectors
        for order, detector in enumerate(_detectors()):
            for finding in detector.detect(snapshot, change, thresholds):
                if host or finding.scope is not Scope.HOST:
                    found.append((order, finding))
    found.sort(key=lambda pair: (-pair[1].severity.rank, pair[0], -pair[1].weight))
    return [finding for _, finding in found]


# The states whose tcp_info judging a look against the one before reads (an exporter's
# scrapes): all but LISTEN. The slow-connection detector compares an ESTABLISHED or
# CLOSE_WAIT connection with its tcp_info at the earlier look, whatever its state was
# then (SYN_SENT, SYN_RECV); the stall detectors read the closing states' with data
# queued; TIME_WAIT and NEW_SYN_RECV carry none (the kernel sends none). A listener's is
# read by no detector: its accept queue is judged by the backlog its report carries.
COMPARED_TCP_INFO_STATES = frozenset(TcpState) - {TcpState.LISTEN}


def tcp_info_reader():
    """A (state, recv_q, send_q) -> bool test of the sockets whose tcp_info diagnosing
    one snapshot reads (no earlier sample: no slow-connection verdicts): CLOSE_WAIT
    ages, and the stall detector's sockets with data queued. collect(tcp_info=it)
    decodes tcp_info for those only, not for a 100k table's idle rest."""
    from sockstat.diagnose.stalled import _RECEIVING, _SENDING

    queue_states = frozenset(_SENDING | _RECEIVING)
    close_wait = TcpState.CLOSE_WAIT

    def reads(state: TcpState, recv_q: int, send_q: int) -> bool:
        return state is close_wait or ((recv_q > 0 or send_q > 0) and state in queue_states)

    return reads


def owners_read():
    """A socket -> bool test of the sockets whose owners the detectors' verdicts
    depend on (how they group, which sockets a finding is about): CLOSE_WAIT and
    FIN_WAIT2, listeners, half-open and connecting sockets, UDP sockets, sockets with
    data queued or drop counters. The owners of the others (a big table's idle
    ESTABLISHED connections) are only ever shown: by a finding that names them (a
    TIME_WAIT destination group, a slow connection), so a diagnosis names those
    after it has found them (collect.OwnerRequest, sockstat.observe)."""
    from sockstat.model import Proto

    states = frozenset({TcpState.CLOSE_WAIT, TcpState.FIN_WAIT2, TcpState.LISTEN,
                        TcpState.SYN_SENT, TcpState.SYN_RECV, TcpState.NEW_SYN_RECV})
    udp = Proto.UDP

    def reads(sock) -> bool:
        return sock.state in states or bool(sock.recv_q or sock.send_q) \
            or sock.proto is udp or sock.memory is not None

    return reads


def named_sockets(findings: Iterable[Finding]) -> list:
    """Every socket the findings name, once each, in order."""
    return list({id(s): s for f in findings for s in f.sockets}.values())


def quick_findings(snapshot: Snapshot, kernel: KernelInput = None,
                   thresholds: Thresholds | None = None) -> list[Finding]:
    """The socket-table findings, for marking rows in a listing (no host checks)."""
    return diagnose(snapshot, kernel, thresholds, host=False)


def flagged_keys(findings: Iterable[Finding]) -> set:
    """Socket.key of every socket that belongs to a finding (for marking listings)."""
    keys: set = set()
    for finding in findings:
        keys.update(s.key for s in finding.sockets)
    return keys


def wanted_pids(snapshot: Snapshot) -> set[int]:
    """Processes whose fd limits the CLOSE_WAIT detector will want (read them along with
    the kernel sample: read_sample(pids=wanted_pids(snap)))."""
    return {s.process.pid for s in index(snapshot).state(TcpState.CLOSE_WAIT)
            if s.process is not None}


def finding_kinds() -> tuple[str, ...]:
    """Every kind of finding the detectors can report, in detector order."""
    return tuple(kind for detector in _detectors() for kind in detector.KINDS)


def relevant_counters() -> tuple[str, ...]:
    """The kernel counters the detectors look at, for reports."""
    names: list[str] = []
    for detector in _detectors():
        names.extend(n for n in detector.COUNTERS if n not in names)
    return tuple(names)


def exit_status(findings: Iterable[Finding]) -> CheckStatus:
    """0 OK, 1 WARNING, 2 CRITICAL (Nagios plugin convention)."""
    worst = Severity.worst(f.severity for f in findings)
    return CheckStatus[worst.name]


from sockstat._callable import make_callable  # noqa: E402

make_callable(__name__, "diagnose")  # `sockstat.diagnose(...)` calls the function
