"""Prometheus metric families built from one collection: sockets, findings, kernel.

Pure: a Snapshot, the findings diagnose made of it and a kernel sample go in, a list of
MetricFamily (plain data) comes out. sockstat.exporter turns them into prometheus-client
families and serves them; tests read them directly. Nothing here does I/O or imports
prometheus-client.

Conventions (https://prometheus.io/docs/practices/naming/): every name starts with
`sockstat_`, counters end in `_total`, units are base units in the name (`_seconds`,
`_bytes`, `_ratio` for 0-1), and every family has a real HELP line. Labels whose values
come from the machine (process, destination, listener) are bounded: the top N series
are kept and the rest are folded into one `other` series, so a host with 50 000 clients
does not become 50 000 time series.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, countOf, is_, is_not
from typing import TYPE_CHECKING

from sockstat.model import DISPLAY_STATES, Proto, Snapshot, Socket, TcpState

if TYPE_CHECKING:
    from sockstat.kernelmodel import KernelSample, Sysctls
    from sockstat.sides import SideSplit

DEFAULT_TOP = 10
OTHER = "other"  # the label value of the folded series
NO_PROCESS = "unknown"  # CLOSE_WAIT sockets no visible process holds

GAUGE = "gauge"
COUNTER = "counter"

# States exported for TCP (zero-filled so that every series always exists: an absent
# series and a zero look different to PromQL). NEW_SYN_RECV is counted as SYN_RECV,
# as people (and ss) call it.
TCP_STATES: tuple[TcpState, ...] = DISPLAY_STATES
# A UDP socket is only ever unconnected (shown as UNCONN) or connected.
UDP_STATES: tuple[TcpState, ...] = (TcpState.ESTABLISHED, TcpState.CLOSE)
DESTINATION_STATES: tuple[TcpState, ...] = (TcpState.ESTABLISHED, TcpState.TIME_WAIT)
_PROTO_FAMILY_STATE = attrgetter("proto", "family", "state")
_STATE = attrgetter("state")
_UNIX = attrgetter("unix")
_MEMORY = attrgetter("memory")
SEVERITIES = ("warning", "critical")

# Kernel counters (since boot, per network namespace): metric name (without _total),
# "Section.Name" in /proc/net/netstat or snmp, HELP.
KERNEL_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("sockstat_kernel_tcp_listen_overflows", "TcpExt.ListenOverflows",
     "Handshakes dropped because a listener's accept queue was full (TcpExt.ListenOverflows)."),
    ("sockstat_kernel_tcp_listen_drops", "TcpExt.ListenDrops",
     "SYNs and handshake ACKs dropped by listeners for any reason, overflows included "
     "(TcpExt.ListenDrops)."),
    ("sockstat_kernel_tcp_syncookies_sent", "TcpExt.SyncookiesSent",
     "SYN cookies sent because a SYN queue was full (TcpExt.SyncookiesSent)."),
    ("sockstat_kernel_tcp_syncookies_received", "TcpExt.SyncookiesRecv",
     "Valid SYN cookies received back (TcpExt.SyncookiesRecv)."),
    ("sockstat_kernel_tcp_syncookies_failed", "TcpExt.SyncookiesFailed",
     "Invalid SYN cookies received (TcpExt.SyncookiesFailed)."),
    ("sockstat_kernel_tcp_request_queue_full_drops", "TcpExt.TCPReqQFullDrop",
     "SYNs dropped because the SYN queue was full and SYN cookies are off "
     "(TcpExt.TCPReqQFullDrop)."),
    ("sockstat_kernel_tcp_time_wait_overflows", "TcpExt.TCPTimeWaitOverflow",
     "Connections destroyed without TIME_WAIT because net.ipv4.tcp_max_tw_buckets was "
     "reached (TcpExt.TCPTimeWaitOverflow)."),
    ("sockstat_kernel_tcp_time_wait_finished", "TcpExt.TW",
     "TIME_WAIT sockets that ended after their timer (TcpExt.TW)."),
    ("sockstat_kernel_tcp_backlog_drops", "TcpExt.TCPBacklogDrop",
     "Packets dropped because a busy socket's backlog was full (TcpExt.TCPBacklogDrop)."),
    ("sockstat_kernel_tcp_aborts_on_memory", "TcpExt.TCPAbortOnMemory",
     "Connections reset because TCP ran out of memory or orphans (TcpExt.TCPAbortOnMemory)."),
    ("sockstat_kernel_tcp_aborts_on_timeout", "TcpExt.TCPAbortOnTimeout",
     "Connections reset after too many retransmissions or keepalive probes "
     "(TcpExt.TCPAbortOnTimeout)."),
    ("sockstat_kernel_tcp_aborts_on_close", "TcpExt.TCPAbortOnClose",
     "Connections reset because they were closed with unread data (TcpExt.TCPAbortOnClose)."),
    ("sockstat_kernel_tcp_active_opens", "Tcp.ActiveOpens",
     "Outgoing connections started: CLOSED -> SYN_SENT (Tcp.ActiveOpens)."),
    ("sockstat_kernel_tcp_passive_opens", "Tcp.PassiveOpens",
     "Incoming connections accepted by the kernel: LISTEN -> SYN_RECV (Tcp.PassiveOpens)."),
    ("sockstat_kernel_tcp_attempt_fails", "Tcp.AttemptFails",
     "Connection attempts that failed: SYN_SENT/SYN_RECV -> CLOSED or LISTEN "
     "(Tcp.AttemptFails)."),
    ("sockstat_kernel_tcp_established_resets", "Tcp.EstabResets",
     "Resets of ESTABLISHED or CLOSE_WAIT connections (Tcp.EstabResets)."),
    ("sockstat_kernel_tcp_retransmitted_segments", "Tcp.RetransSegs",
     "TCP segments retransmitted (Tcp.RetransSegs)."),
    ("sockstat_kernel_tcp_resets_sent", "Tcp.OutRsts",
     "TCP segments sent with the RST flag (Tcp.OutRsts)."),
    ("sockstat_kernel_tcp_receive_errors", "Tcp.InErrs",
     "TCP segments received in error, e.g. bad checksums (Tcp.InErrs)."),
    ("sockstat_kernel_udp_receive_buffer_errors", "Udp.RcvbufErrors",
     "UDP datagrams dropped because a socket's receive buffer was full (Udp.RcvbufErrors)."),
    ("sockstat_kernel_udp_receive_errors", "Udp.InErrors",
     "UDP datagrams that could not be delivered, buffer errors included (Udp.InErrors)."),
    ("sockstat_kernel_udp_no_port", "Udp.NoPorts",
     "UDP datagrams received for a port nobody listens on (Udp.NoPorts)."),
)

# Current totals from /proc/net/sockstat: name, "Section.key", HELP. TCP's orphan, tw,
# alloc and mem lines are host-wide (both families); "inuse" is per family.
KERNEL_TOTALS: tuple[tuple[str, str, str], ...] = (
    ("sockstat_kernel_tcp_orphan_sockets", "TCP.orphan",
     "TCP sockets no process holds any more, still finishing their close (TCP orphan in "
     "/proc/net/sockstat; capped by net.ipv4.tcp_max_orphans)."),
    ("sockstat_kernel_tcp_time_wait_sockets", "TCP.tw",
     "TIME_WAIT sockets on the host, by the kernel's own count (TCP tw in "
     "/proc/net/sockstat; capped by net.ipv4.tcp_max_tw_buckets)."),
    ("sockstat_kernel_tcp_allocated_sockets", "TCP.alloc",
     "TCP sockets allocated by the kernel, of every state (TCP alloc in /proc/net/sockstat)."),
    ("sockstat_kernel_sockets_used", "sockets.used",
     "Sockets of every kind in use (sockets used in /proc/net/sockstat)."),
)
# "inuse" per protocol and family: section in /proc/net/sockstat{,6} -> labels
KERNEL_INUSE: tuple[tuple[str, str, str], ...] = (
    ("TCP", "tcp", "ipv4"), ("TCP6", "tcp", "ipv6"), ("UDP", "udp", "ipv4"),
    ("UDP6", "udp", "ipv6"),
)

# Sysctls exported as they are (name in Sysctls -> metric name suffix). Values that are
# durations carry their unit in the name.
SYSCTL_METRICS: tuple[tuple[str, str], ...] = (
    ("somaxconn", "somaxconn"),
    ("tcp_max_syn_backlog", "tcp_max_syn_backlog"),
    ("tcp_syncookies", "tcp_syncookies"),
    ("tcp_max_tw_buckets", "tcp_max_tw_buckets"),
    ("tcp_max_orphans", "tcp_max_orphans"),
    ("tcp_fin_timeout", "tcp_fin_timeout_seconds"),
    ("tcp_tw_reuse", "tcp_tw_reuse"),
)


@dataclass
class MetricFamily:
    """One metric family: a name, a type, HELP, label names and (labels, value) samples.

    Counter names are given without `_total`; the exposition adds it.
    """

    name: str
    kind: str  # GAUGE or COUNTER
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == COUNTER else self.name

    def add(self, value: float, *label_values: str) -> None:
        self.samples.append((tuple(label_values), value))

    def value(self, **labels: str) -> float | None:
        """The value of the sample with exactly these labels (for tests and callers)."""
        want = tuple(labels.get(name) for name in self.labels)
        for got, value in self.samples:
            if got == want:
                return value
        return None


@dataclass
class Collection:
    """What one scrape saw. Parts that failed are None, and named in `errors`
    (collector name -> message) so that sockstat_collector_success can say which."""

    snapshot: Snapshot | None
    findings: Sequence | None = None  # sockstat.diagnose Finding objects
    kernel: KernelSample | None = None
    duration_seconds: float | None = None
    errors: dict[str, str] = field(default_factory=dict)
    finding_kinds: Sequence[str] = ()  # every kind diagnose can report (zero-filled)
    # the detectors' client/server split of snapshot's table with kernel's sysctls
    # (observe.Judgement.sides), when they made one: the per-destination families read
    # it rather than split the table again
    sides: SideSplit | None = None


COLLECTORS = ("sockets", "kernel", "findings")


def _ranking(item: tuple) -> tuple:
    """Biggest first; ties by key, so that the chosen series do not flap."""
    return -item[1], str(item[0])


def top_with_other(counts: dict, n: int, fold: Callable[[Iterable], float] = sum) -> list:
    """The n biggest (key, value) pairs, then (OTHER, fold(values of the rest)).

    Ties are broken by key so that the chosen series do not flap between scrapes.
    The OTHER entry is always present (0 when nothing was folded), so that the family
    has a series to graph and alert on even on a quiet host.

    >>> top_with_other({"a": 5, "b": 1, "c": 3}, 2)
    [('a', 5), ('c', 3), ('other', 1)]
    """
    ranked = sorted(counts.items(), key=_ranking)
    kept, rest = ranked[:n], ranked[n:]
    return kept + [(OTHER, fold(v for _, v in rest) if rest else 0)]


def build(collection: Collection, *, top: int = DEFAULT_TOP,
          version: str | None = None, page_size: int = 4096) -> list[MetricFamily]:
    """Every family sockstat exports, in a stable order."""
    snap = collection.snapshot
    families: list[MetricFamily] = []
    sysctls = collection.kernel.sysctls if collection.kernel is not None else None
    if snap is not None:
        sockets = snap.sockets
        # the few sockets each family reads, picked in C passes (a 100k table has a
        # handful of listeners and CLOSE_WAIT); each family still checks its own
        states = list(map(_STATE, sockets))
        listening = _picked(sockets, map(is_, states, repeat(TcpState.LISTEN)))
        families.append(socket_counts(sockets))
        families.extend(listeners(listening, top))
        families.append(unix_socket_counts(_picked(sockets, map(is_not, map(
            _UNIX, sockets), repeat(None)))))
        families.extend(unix_listeners(listening, top))
        families.append(socket_drops(_picked(sockets, map(is_not, map(
            _MEMORY, sockets), repeat(None))), top))
        families.append(close_wait_by_process(
            _picked(sockets, map(is_, states, repeat(TcpState.CLOSE_WAIT))), top,
            snap.services))
        families.extend(destinations(sockets, sysctls, top, collection.sides))
    if collection.findings is not None:
        families.append(findings_by_kind(collection.findings, collection.finding_kinds))
    if collection.kernel is not None:
        families.extend(kernel_families(collection.kernel, page_size))
    families.extend(_self_families(collection, version))
    return families


def _picked(sockets: list[Socket], keep: Iterable[bool]) -> list[Socket]:
    return list(compress(sockets, keep))


def socket_counts(sockets: Iterable[Socket]) -> MetricFamily:
    counts: Counter = Counter()
    # counted in C (attrgetter, Counter), folded per distinct (proto, family, state)
    for (proto, family, state), n in Counter(map(_PROTO_FAMILY_STATE, sockets)).items():
        counts[(proto, family.value, state.shown)] += n
    fam = MetricFamily(
        "sockstat_sockets", GAUGE,
        "Sockets by protocol, address family and state (UDP: UNCONN or ESTABLISHED); "
        "NEW_SYN_RECV is counted as SYN_RECV.",
        ("proto", "family", "state"))
    for proto, states in ((Proto.TCP, TCP_STATES), (Proto.UDP, UDP_STATES)):
        for family in (4, 6):
            for state in states:
                fam.add(counts.get((proto, family, state), 0), proto.value, f"ipv{family}",
                        state.label)
    return fam


def listeners(sockets: Iterable[Socket], top: int) -> list[MetricFamily]:
    """Accept queue length and backlog per listening address:port (top N by queue)."""
    # SO_REUSEPORT groups are several LISTEN sockets on one address:port: their queues
    # add up, like their backlogs (each has its own queue).
    queues: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for s in sockets:
        if s.proto is Proto.TCP and s.state is TcpState.LISTEN:
            entry = queues[(s.local.address, s.local.port)]
            entry[0] += s.recv_q  # on LISTEN: connections waiting for accept()
            entry[1] += s.send_q  # on LISTEN: the backlog given to listen()
    # Rank by how full the queue is, then by length. The folded listeners are shown by
    # the fullest of them (its queue and its backlog): a sum of unrelated backlogs means
    # nothing, and queue/backlog of "other" stays a real listener's ratio for the rules.
    ranked = sorted(queues.items(), key=lambda kv: (
        -(kv[1][0] / kv[1][1] if kv[1][1] else kv[1][0]), -kv[1][0], kv[0][1], kv[0][0]))
    kept, rest = ranked[:top], ranked[top:]
    length = MetricFamily(
        "sockstat_listen_queue_length", GAUGE,
        "Connections waiting in a TCP listener's accept queue (Recv-Q of a LISTEN socket), "
        "summed over SO_REUSEPORT sockets. When it exceeds the backlog the kernel drops "
        f"handshakes. Top listeners by fullness; address=\"{OTHER}\" is the fullest of "
        "the rest.",
        ("address", "port"))
    backlog = MetricFamily(
        "sockstat_listen_backlog", GAUGE,
        "The accept queue limit of a TCP listener (listen() backlog, capped by "
        "net.core.somaxconn; Send-Q of a LISTEN socket), summed over SO_REUSEPORT "
        f"sockets; address=\"{OTHER}\" is that of the fullest of the rest.",
        ("address", "port"))
    for (address, port), (queued, limit) in kept:
        length.add(queued, address, str(port))
        backlog.add(limit, address, str(port))
    fullest_rest = rest[0][1] if rest else (0, 0)  # `ranked` is fullest first
    length.add(fullest_rest[0], OTHER, OTHER)
    backlog.add(fullest_rest[1], OTHER, OTHER)
    return [length, backlog]


def unix_socket_counts(sockets: Iterable[Socket]) -> MetricFamily:
    """UNIX sockets by type and state (zero-filled: every series always exists)."""
    from sockstat.model import UnixType

    counts: Counter = Counter((s.unix.type, s.state) for s in sockets if s.unix is not None)
    fam = MetricFamily(
        "sockstat_unix_sockets", GAUGE,
        "UNIX (AF_UNIX) sockets by type (stream, dgram, seqpacket) and state (LISTEN, "
        "ESTABLISHED, UNCONN).", ("type", "state"))
    for kind in UnixType:
        for state in (TcpState.LISTEN, TcpState.ESTABLISHED, TcpState.CLOSE):
            fam.add(counts.get((kind, state), 0), kind.label, state.label)
    return fam


def unix_listeners(sockets: Iterable[Socket], top: int) -> list[MetricFamily]:
    """Accept queue length and backlog per UNIX listener path (top N by fullness)."""
    queues: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in sockets:
        if s.unix is not None and s.state is TcpState.LISTEN:
            entry = queues[s.unix.display_name]
            entry[0] += s.recv_q  # connections waiting for accept()
            entry[1] += s.send_q  # the listen() backlog
    ranked = sorted(queues.items(), key=lambda kv: (
        -(kv[1][0] / kv[1][1] if kv[1][1] else kv[1][0]), -kv[1][0], kv[0]))
    kept, rest = ranked[:top], ranked[top:]
    length = MetricFamily(
        "sockstat_unix_listen_queue_length", GAUGE,
        "Connections waiting in a UNIX listener's accept queue (php-fpm, gunicorn, a "
        "database socket). Above the backlog, connect() fails with EAGAIN. Top listeners "
        f"by fullness; the rest are summed as path=\"{OTHER}\".", ("path",))
    backlog = MetricFamily(
        "sockstat_unix_listen_backlog", GAUGE,
        "The accept queue limit of a UNIX listener (its listen() backlog, capped by "
        "net.core.somaxconn).", ("path",))
    for path, (queued, limit) in kept:
        length.add(queued, path)
        backlog.add(limit, path)
    length.add(sum(v[0] for _, v in rest), OTHER)
    backlog.add(sum(v[1] for _, v in rest), OTHER)
    return [length, backlog]


def socket_drops(sockets: Iterable[Socket], top: int) -> MetricFamily:
    """Packets dropped per UDP socket and TCP listener (skmem drops), top N + other."""
    counts: Counter = Counter()
    for s in sockets:
        m = s.memory
        if m is None or m.drops is None:
            continue
        if s.proto is Proto.UDP or (s.proto is Proto.TCP and s.state is TcpState.LISTEN):
            proc = s.process
            counts[(s.proto.value, str(s.local), proc.name if proc else NO_PROCESS,
                    str(proc.pid) if proc else "")] += m.drops
    fam = MetricFamily(
        "sockstat_socket_drops", COUNTER,
        "Packets the kernel dropped for a UDP socket (mostly: its receive buffer was full) "
        "or a TCP listener (SYNs and handshakes refused), since the socket was created "
        "(ss -m's d). Top sockets by drops; the rest summed as local=\"other\" (not "
        "monotonic: alert on the named series).", ("proto", "local", "process", "pid"))
    for key, n in top_with_other(counts, top):
        if key == OTHER:
            fam.add(n, OTHER, OTHER, OTHER, "")
        else:
            fam.add(n, *key)
    return fam


def close_wait_by_process(sockets: Iterable[Socket], top: int,
                          services: dict | None = None) -> MetricFamily:
    """CLOSE_WAIT per service (a master and its forked children: one series for a
    fork-per-connection leak, not one per child); per process where services are not
    known. pid is the process's, or the master's for a service of several processes.

    Bounded: the top N series, then process="other" holding the LARGEST count among the
    rest (not their sum), so that an alert on the count may include it: "other" >= 10
    means some folded service holds at least 10, never that many small ones add up."""
    services = services or {}
    counts: Counter = Counter()
    names: dict = {}
    pids: dict = defaultdict(set)
    for s in sockets:
        if s.proto is Proto.TCP and s.state is TcpState.CLOSE_WAIT:
            proc = s.process
            if proc is None:
                key = (NO_PROCESS, "", "")
            else:
                service = services.get(proc.pid)
                key = ("service", service.key) if service is not None else ("pid", proc.pid)
                names.setdefault(key, (proc, service, _where(s, service)))
                pids[key].update(p.pid for p in s.holders)
            counts[key] += 1
    fam = MetricFamily(
        "sockstat_close_wait_sockets", GAUGE,
        "TCP sockets in CLOSE_WAIT per service (processes of one executable under a common "
        "parent, e.g. a forking server and its children; service names its systemd unit "
        "or container when known): the peer hung up and the process has not called "
        "close(). CLOSE_WAIT never times out, so a count that only grows is a leak. pid "
        "is the process, or the master of a service of several; container is the "
        "container it runs in, or its network namespace when not the host's, else "
        "empty. Top services; "
        f"process=\"{OTHER}\" is the largest count among the rest; sockets no visible "
        f"process holds are process=\"{NO_PROCESS}\".",
        ("process", "pid", "service", "container"))
    for key, n in top_with_other(counts, top, fold=max):
        if key == OTHER:
            fam.add(n, OTHER, "", OTHER, "")
        elif key[0] == NO_PROCESS:
            fam.add(n, NO_PROCESS, "", NO_PROCESS, "")
        else:
            proc, service, where = names[key]
            holders = pids[key]
            if service is None:
                fam.add(n, proc.name, str(proc.pid), proc.name, where)
            elif len(holders) == 1:
                fam.add(n, proc.name, str(next(iter(holders))), service.label, where)
            else:
                fam.add(n, service.name, str(service.master_pid), service.label, where)
    return fam


def _where(sock: Socket, service) -> str:
    """The container label's value: the container (not a systemd unit: the service
    label names those), else a network namespace other than the host's, else ''."""
    container = service.container if service is not None else sock.container
    if container is not None and container.runtime != "systemd":
        return container.name
    ns = sock.netns
    return ns.label if ns is not None and not ns.current else ""


def client_side(sockets: Iterable[Socket], sysctls: Sysctls | None,
                sides: SideSplit | None = None) -> dict[tuple, list]:
    """Outgoing TCP connections grouped by (local address, remote address, remote port),
    by the rule `sockstat check` uses (sockstat.sides.split_sides); `sides`: the split
    of these sockets with these sysctls, when the caller has it (the detectors')."""
    if sides is not None:
        return sides.clients
    from sockstat.kernelmodel import Sysctls
    from sockstat.sides import split_sides

    return split_sides(sockets, sysctls if sysctls is not None else Sysctls()).clients


def destinations(sockets: Iterable[Socket], sysctls: Sysctls | None,
                 top: int, sides: SideSplit | None = None) -> list[MetricFamily]:
    """ESTABLISHED and TIME_WAIT per remote address:port of outgoing connections, and
    the share of the ephemeral port range each destination uses (`sides`: as for
    client_side)."""
    from sockstat.model import Endpoint

    groups = client_side(sockets, sysctls, sides)
    # dest -> sockets per DESTINATION_STATES; dest -> local ip -> sockets of any state.
    # Plain dicts and lists: a host with thousands of destinations made a Counter each.
    by_dest: dict[str, list[int]] = {}
    per_source: dict[str, dict[str, int]] = {}
    established, time_wait = DESTINATION_STATES
    # a host with many clients has thousands of one-socket groups: kept lean per group
    for (local_ip, remote_ip, remote_port), members in groups.items():
        dest = str(tuple.__new__(Endpoint, (remote_ip, remote_port)))
        counts = by_dest.get(dest)
        if counts is None:
            counts = by_dest[dest] = [0, 0]
            sources = per_source[dest] = {}
        else:
            sources = per_source[dest]
        if len(members) == 1:
            state = members[0].state
            counts[0] += state is established
            counts[1] += state is time_wait
        else:
            states = list(map(_STATE, members))
            counts[0] += countOf(states, established)  # counted in C
            counts[1] += countOf(states, time_wait)
        sources[local_ip] = sources.get(local_ip, 0) + len(members)
    # ranked by what is exported (ESTABLISHED + TIME_WAIT): a destination with neither
    # (only SYN_SENT, say) would take a top-N slot to show two zeros; the top N as
    # top_with_other ranks them, without sorting the rest
    shown = {dest: n for dest, c in by_dest.items() if (n := c[0] + c[1])}
    chosen = [dest for dest, _ in heapq.nsmallest(top, shown.items(), key=_ranking)]
    chosen_set = set(chosen)
    rest = [dest for dest in by_dest if dest not in chosen_set]

    fam = MetricFamily(
        "sockstat_destination_sockets", GAUGE,
        "Outgoing TCP connections (local port not a listening port) per remote "
        "address:port, ESTABLISHED and TIME_WAIT. Each holds an ephemeral port for that "
        f"destination. Top destinations by sockets; the rest summed as destination=\"{OTHER}\".",
        ("destination", "state"))
    for dest in chosen:
        for i, state in enumerate(DESTINATION_STATES):
            fam.add(by_dest[dest][i], dest, state.label)
    for i, state in enumerate(DESTINATION_STATES):
        fam.add(sum(by_dest[d][i] for d in rest), OTHER, state.label)

    usable = sysctls.usable_ports if sysctls is not None else None
    ratio = MetricFamily(
        "sockstat_ephemeral_ports_used_ratio", GAUGE,
        "Share (0-1) of the usable ephemeral ports (net.ipv4.ip_local_port_range minus "
        "ip_local_reserved_ports) held by outgoing connections, of any state, from one "
        "local address to this destination; connect() fails with EADDRNOTAVAIL at 1. "
        f"Top destinations; destination=\"{OTHER}\" is the highest ratio among the rest.",
        ("destination",))
    out = [fam]
    if usable:
        def used(dest: str) -> float:
            return max(per_source[dest].values()) / usable

        for dest in chosen:
            ratio.add(used(dest), dest)
        ratio.add(max((used(d) for d in rest), default=0.0), OTHER)
        out.append(ratio)
    return out


def findings_by_kind(findings: Iterable, kinds: Sequence[str] = ()) -> MetricFamily:
    counts: Counter = Counter()
    for f in findings:
        severity = getattr(f.severity, "value", str(f.severity))
        if severity in SEVERITIES:
            counts[(f.kind, severity)] += 1
    fam = MetricFamily(
        "sockstat_findings", GAUGE,
        "Problems `sockstat check` reports right now, by kind and severity (warning, "
        "critical). Run `sockstat check` on the host for the evidence and remedy.",
        ("kind", "severity"))
    all_kinds = sorted(set(kinds) | {kind for kind, _ in counts})
    for kind in all_kinds:
        for severity in SEVERITIES:
            fam.add(counts.get((kind, severity), 0), kind, severity)
    return fam


def kernel_families(kernel: KernelSample, page_size: int = 4096) -> list[MetricFamily]:
    out: list[MetricFamily] = []
    for table, source, kind in ((KERNEL_COUNTERS, kernel.counters, COUNTER),
                                (KERNEL_TOTALS, kernel.sockstat, GAUGE)):
        for name, key, help_text in table:
            value = source.get(key)
            if value is not None:
                fam = MetricFamily(name, kind, help_text)
                fam.add(value)
                out.append(fam)
    pages = kernel.sockstat.get("TCP.mem")
    if pages is not None:
        fam = MetricFamily(
            "sockstat_kernel_tcp_memory_bytes", GAUGE,
            "Memory TCP uses for socket buffers, host-wide (TCP mem in /proc/net/sockstat, "
            "pages converted to bytes; compare with net.ipv4.tcp_mem).")
        fam.add(pages * page_size)
        out.append(fam)
    inuse = MetricFamily(
        "sockstat_kernel_sockets_in_use", GAUGE,
        "Sockets in use by protocol and family, by the kernel's own count (inuse in "
        "/proc/net/sockstat and sockstat6).", ("proto", "family"))
    for section, proto, family in KERNEL_INUSE:
        value = kernel.sockstat.get(f"{section}.inuse")
        if value is not None:
            inuse.add(value, proto, family)
    if inuse.samples:
        out.append(inuse)
    out.extend(sysctl_families(kernel.sysctls))
    return out


def sysctl_families(sysctls: Sysctls) -> list[MetricFamily]:
    from sockstat.collect.kernel import SYSCTLS

    def dotted(name: str) -> str:
        return SYSCTLS[name].removeprefix("sys/").replace("/", ".")

    out: list[MetricFamily] = []
    for field_name, suffix in SYSCTL_METRICS:
        value = getattr(sysctls, field_name)
        if value is None:
            continue
        fam = MetricFamily(f"sockstat_sysctl_{suffix}", GAUGE,
                           f"The sysctl {dotted(field_name)}.")
        fam.add(value)
        out.append(fam)
    if sysctls.port_range is not None:
        for bound, value in zip(("low", "high"), sysctls.port_range, strict=True):
            fam = MetricFamily(
                f"sockstat_sysctl_ip_local_port_range_{bound}", GAUGE,
                f"The {'first' if bound == 'low' else 'last'} port of "
                f"{dotted('ip_local_port_range')}, the ephemeral port range.")
            fam.add(value)
            out.append(fam)
    usable = sysctls.usable_ports
    if usable is not None:
        fam = MetricFamily(
            "sockstat_ephemeral_ports_usable", GAUGE,
            "Ephemeral ports connect() may pick: net.ipv4.ip_local_port_range minus "
            "ip_local_reserved_ports.")
        fam.add(usable)
        out.append(fam)
    return out


def _self_families(collection: Collection, version: str | None) -> list[MetricFamily]:
    out: list[MetricFamily] = []
    if collection.duration_seconds is not None:
        fam = MetricFamily(
            "sockstat_scrape_duration_seconds", GAUGE,
            "How long collecting sockets, processes, kernel counters and findings took for "
            "this scrape (cached scrapes repeat the value of the collection they reuse).")
        fam.add(collection.duration_seconds)
        out.append(fam)
    success = MetricFamily(
        "sockstat_collector_success", GAUGE,
        "Whether this part of the collection worked (1) or failed (0; the exporter says "
        "why on stderr): sockets, kernel (counters and sysctls), findings.", ("collector",))
    for name in COLLECTORS:
        success.add(0 if name in collection.errors else 1, name)
    out.append(success)
    if version is not None:
        fam = MetricFamily("sockstat_build_info", GAUGE,
                           "The sockstat version exporting these metrics (the value is always 1).",
                           ("version",))
        fam.add(1, version)
        out.append(fam)
    return out
