"""Look, then judge: the one path from the live kernel to findings.

Every view that diagnoses does the same steps: sample the kernel's counters, read the
socket table, sample again (with the fd limits of the processes the table names), and
run the detectors over the two. `sockstat check` does it once with a wait in between;
the listing's marks, `watch` and the exporter do it on every refresh or scrape, each
judged against the sample of the previous one. This module is that path, written once:
`observe()` for a single look and `Judge` for a series of them.

It sits above collect/ and diagnose/ (which know nothing of each other) and below the
CLI. It never prints: what a person should know about how the look went (no kernel
counters here, say) is returned as notes.
"""

from __future__ import annotations

import time
from dataclasses import field

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.diagnose.findings import Finding
from sockstat.diagnose.thresholds import Thresholds
from sockstat.errors import SockstatError
from sockstat.kernelmodel import DropBaseline, KernelChange, KernelSample
from sockstat.model import Snapshot
from sockstat.query import Query
from sockstat.sides import SideSplit

KERNEL_UNAVAILABLE = "kernel counters unavailable ({}); checking the socket table only"


@dataclass
class Judgement:
    """The detectors' verdict on one snapshot, and the counters it was judged with."""

    findings: list[Finding]
    kernel: KernelChange | None  # None: no counters could be read
    kernel_error: str | None = None  # why not, when they could not
    # the detectors' client/server split of the snapshot's table, with the sysctls of
    # `kernel` (sockstat.sides; None when no detector made one): an exporter scrape's
    # per-destination families read it instead of splitting the table again
    sides: SideSplit | None = None


@dataclass
class Observation:
    """One look at the host: the table, the counters around it, the findings."""

    snapshot: Snapshot
    kernel: KernelChange | None
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)  # for a person, on stderr


def sample_kernel(procfs: str = "/proc", pids=()) -> tuple[KernelSample | None, str | None]:
    """(a kernel sample, None) or (None, why it could not be read). Counters are
    evidence, never a reason to fail: other OSes and restricted /proc lack them."""
    from sockstat.collect.kernel import read_sample

    try:
        return read_sample(procfs, pids=pids), None
    except (SockstatError, OSError) as exc:
        return None, str(exc)


class Judge:
    """Diagnoses successive snapshots, each with the counters' deltas since the sample
    taken at the previous judgement (or at `start()`): rates cover the time between."""

    def __init__(self, thresholds: Thresholds | None = None, *, procfs: str = "/proc",
                 quick: bool = False) -> None:
        self.thresholds = thresholds
        self.procfs = procfs
        self.quick = quick  # socket-table findings only: the listing's marks
        self.previous: KernelSample | None = None
        # what the next judgement compares with (its Snapshot.previous), so detectors
        # that compare two moments (slow connections) work across refreshes and
        # scrapes: the last snapshot's sockets that carry tcp_info, not its whole table
        self.last_snapshot: Snapshot | None = None
        # the sockets' drop counters at the previous judgement (or at `watch_drops()`)
        self.drops: DropBaseline | None = None

    def start(self) -> str | None:
        """Take the first sample now (before a wait); the reason when none could be."""
        self.previous, error = sample_kernel(self.procfs)
        return error

    def watch_drops(self, query: Query, source: str = "auto",
                    netns: str | None = None) -> None:
        """Take the drop counters of the query's UDP sockets and TCP listeners now (small
        dumps, filtered in the kernel), in the namespaces the judged snapshot will read
        (netns, as for collect()): the next judgement counts what they drop since."""
        from sockstat.collect import drop_watched

        try:
            sockets = drop_watched(query, source, netns)
        except SockstatError:  # drops are one detector's evidence, never a failure
            return
        if sockets:
            self.drops = DropBaseline.of(sockets, time.time())

    def judge(self, snapshot: Snapshot, *, host: bool = True) -> Judgement:
        from sockstat.collect import gc_paused
        from sockstat.diagnose.index import indexed

        # no cyclic GC while the detectors walk a big table (it would walk the table
        # again and again as they allocate), and one index of it for them all
        with gc_paused(), indexed(snapshot) as table:
            judgement = self._judge(snapshot, host)
        if table.split is not None:
            judgement.sides = table.split[1]
        return judgement

    def _judge(self, snapshot: Snapshot, host: bool) -> Judgement:
        from sockstat.diagnose import diagnose, quick_findings, wanted_pids
        from sockstat.diagnose.index import index

        # drops since the previous look, when this snapshot carries drop counters (the
        # index's sockets with memory, not another walk of the whole table)
        if snapshot.drops_before is None:
            snapshot.drops_before = self.drops
        now = DropBaseline.of(index(snapshot).with_memory, snapshot.taken_at)
        if now.drops:
            self.drops = now

        kernel, error = sample_kernel(self.procfs, wanted_pids(snapshot))
        change = None
        if kernel is not None:
            change = KernelChange(after=kernel, before=self.previous)
            self.previous = kernel
        earlier, self.last_snapshot = self.last_snapshot, with_tcp_info(snapshot)
        lent = snapshot.previous is None and earlier is not None
        if lent:
            snapshot.previous = earlier
        try:
            if self.quick:
                findings = quick_findings(snapshot, change, self.thresholds)
            else:
                findings = diagnose(snapshot, change, self.thresholds, host=host)
        finally:
            if lent:  # never a chain of every snapshot since start kept alive
                snapshot.previous = None
        return Judgement(findings, change, error)


def with_tcp_info(snapshot: Snapshot) -> Snapshot:
    """The part of a snapshot a later one is compared with (Snapshot.previous: an
    earlier sample of the same sockets, with tcp_info): an exporter or watch keeps it
    until the next look, and the rest of a 100k-socket table (TIME_WAIT, UDP, UNIX,
    sockets without tcp_info) is not kept alive for that."""
    return Snapshot(sockets=[s for s in snapshot.sockets
                             if s.tcp_info is not None and s.cookie is not None],
                    taken_at=snapshot.taken_at, source=snapshot.source)


def observe(query: Query, *, source: str = "auto", interval: float = 1.0,
            thresholds: Thresholds | None = None, host: bool = True,
            procfs: str = "/proc", netns: str | None = None) -> Observation:
    """Counters, `interval` seconds, the socket table (with processes, tcp_info and the
    drop counters of UDP sockets and TCP listeners), counters again, findings: what
    `sockstat check` reports. interval 0: one sample, no rates nor drops.

    Only what the detectors read is fetched: processes for the sockets their verdicts
    depend on and the sockets the findings name (every holder of each; the services
    of every holder of the table), tcp_info (interval 0) for CLOSE_WAIT and queued
    sockets. The snapshot's other sockets have no process: collect() names all."""
    from sockstat.collect import DROPS, OwnerRequest, collect
    from sockstat.diagnose import owners_read

    notes: list[str] = []
    judge = Judge(thresholds, procfs=procfs)
    counters = True
    earlier = None
    if interval > 0:
        earlier = first_sample(query, source, netns=netns)
        judge.watch_drops(query, source, netns)
        error = judge.start()
        if error is None:
            time.sleep(interval)
        else:
            notes.append(KERNEL_UNAVAILABLE.format(error))
            counters = False
    # services: a forking server's children are judged together; netns: the
    # selected network namespaces (sockstat.collect.netns); memory: drop counters
    # one sample (interval 0) compares nothing: tcp_info only where a detector reads it
    if interval > 0:
        wanted_info = True
    else:
        from sockstat.diagnose import tcp_info_reader

        wanted_info = tcp_info_reader()
    # owners: first of the sockets the verdicts depend on, then of those the findings
    # name (the idle rest of a 100k table is never shown: naming it cost 0.2 s)
    owners = OwnerRequest(owners_read())
    snap = collect(query, source=source, processes=owners, tcp_info=wanted_info,
                   procfs=procfs, services=True, netns=netns, memory=DROPS)
    snap.previous = earlier
    notes.extend(snap.notes)
    if not snap.source.can.tcp_info:
        notes.append(f"the {snap.source} source has no tcp_info: CLOSE_WAIT ages and "
                     "stalls are judged without idle times"
                     + ("" if snap.source.can.queues else ", and without queues"))
    if counters:
        verdict = judge.judge(snap, host=host)
        if verdict.kernel_error is not None:
            notes.append(KERNEL_UNAVAILABLE.format(verdict.kernel_error))
    else:
        from sockstat.collect import gc_paused
        from sockstat.diagnose import diagnose

        snap.drops_before = judge.drops
        with gc_paused():
            verdict = Judgement(diagnose(snap, None, thresholds, host=host), None)
    return Observation(snap, verdict.kernel, _named(verdict, snap, owners, thresholds, host),
                       notes)


def _named(verdict: Judgement, snap: Snapshot, owners, thresholds: Thresholds | None,
           host: bool) -> list[Finding]:
    """The findings once every socket they name has its owners (collect.OwnerRequest):
    named now, the detectors judge again, so labels and evidence are what a fully
    attributed table gives. Their verdicts never depend on those owners, so the second
    look names no new sockets (the loop is only a guard)."""
    from sockstat.collect import gc_paused
    from sockstat.diagnose import diagnose, named_sockets

    findings = verdict.findings
    with gc_paused():
        while owners.name(snap, named_sockets(findings)):
            findings = diagnose(snap, verdict.kernel, thresholds, host=host)
    return findings


def first_sample(query: Query, source: str = "auto", *, netns: str | None = None
                 ) -> Snapshot | None:
    """The sending connections with their tcp_info, at the start of an interval: the
    slow-connection detector compares them with the end (Snapshot.previous). None
    where there is no tcp_info or nothing could send."""
    import dataclasses

    from sockstat.collect import collect
    from sockstat.diagnose.slow import SENDING_STATES
    from sockstat.model import Proto, Source

    states = query.states & SENDING_STATES
    if not states or Proto.TCP not in query.protos \
            or not (Source(source) is Source.AUTO or Source(source).can.tcp_info):
        return None
    first = collect(dataclasses.replace(query, states=states, protos=frozenset({Proto.TCP})),
                    source=source, tcp_info=True, netns=netns)
    return first if first.source.can.tcp_info else None
