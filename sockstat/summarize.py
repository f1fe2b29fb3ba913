"""summarize(): a Snapshot -> counts by state and family, top ports, hosts, processes.

Pure: the kernel's own totals (/proc/net/sockstat) are passed in by the caller.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import field
from itertools import compress, repeat
from operator import and_, attrgetter, is_not, not_

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.model import STATE_ORDER, Snapshot, TcpState

COLUMNS = ("tcp4", "tcp6", "udp4", "udp6", "unix")


@dataclass
class Summary:
    """What `sockstat summary` shows: sockets by state and table column, the busiest
    local ports, remote hosts, processes and containers, and the kernel's counters."""

    total: int
    by_state: dict[str, dict[str, int]]  # state label -> column -> count
    top_local_ports: list[tuple[int, int]]
    top_remote_hosts: list[tuple[str, int]]
    top_processes: list[tuple[str, int]]
    processes_scanned: bool
    kernel: dict[str, dict[str, int]] = field(default_factory=dict)
    # sockets per container (or network namespace other than the host's), when known
    top_containers: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "by_state": self.by_state,
            "top_local_ports": [{"port": p, "sockets": n} for p, n in self.top_local_ports],
            "top_remote_hosts": [{"host": h, "sockets": n} for h, n in self.top_remote_hosts],
            "top_processes": [{"process": p, "sockets": n} for p, n in self.top_processes]
            if self.processes_scanned else None,
            "kernel": self.kernel,
            "top_containers": [{"container": c, "sockets": n}
                               for c, n in self.top_containers],
        }


# Sockets that are no connection: they count by state but not under a port or a host.
NOT_CONNECTIONS = frozenset({TcpState.LISTEN, TcpState.CLOSE})


@dataclass
class Tally:
    """What the counting views need of a table: sockets per state (as shown) and table
    column, and connections per local port and per remote host. Built from Sockets
    (`tally_sockets`) or, without a Socket per row, from the kernel's dump
    (`add_rows`, fed by sockstat.collect.count)."""

    by_state: dict[TcpState, Counter] = field(default_factory=dict)
    local_ports: Counter = field(default_factory=Counter)
    remote_hosts: Counter = field(default_factory=Counter)
    total: int = 0

    def add_rows(self, column: str, states: bytes, local_ports: Iterable[int],
                 remote_hosts: Iterable, host: Callable[[object], str]) -> None:
        """The sockets of one table column ("tcp4"...) as columns: `states` one byte per
        socket (the kernel's state number), `local_ports` their port numbers and
        `remote_hosts` raw remote addresses in the same order, `host` turning a raw
        address into its text (once per distinct address). Every pass is in C (bytes
        counts and translate, compress, Counter): nothing runs per socket in Python."""
        self.add_states(column, states)
        connections = states.translate(_IS_CONNECTION)  # a 1 per connection, else 0
        # counted straight into the tally: a Counter made first and merged after would
        # be a second pass, in Python for every column after the first
        self.local_ports.update(compress(local_ports, connections))
        for raw, n in Counter(compress(remote_hosts, connections)).items():
            self.remote_hosts[host(raw)] += n

    def add_states(self, column: str, states: bytes) -> None:
        """Sockets counted by state only (UNIX sockets: no port, no host), one byte each."""
        self.total += len(states)
        for state in TcpState:
            n = states.count(state)
            if n:
                self.by_state.setdefault(state.shown, Counter())[column] += n

    def add_sockets(self, sockets: list) -> None:
        """Counted from Socket rows (summary with processes): every pass over the rows is
        in C (attrgetter, map, compress, Counter), the rest per distinct value."""
        self.total += len(sockets)
        by_state = self.by_state
        states = list(map(_state, sockets))
        unix = list(map(is_not, map(_unix, sockets), repeat(None)))
        kinds = Counter(zip(states, map(_proto, sockets), map(_family, sockets), unix,
                            strict=True))
        for (state, proto, family, is_unix), n in kinds.items():
            column = "unix" if is_unix else f"{proto.value}{family.value}"
            by_state.setdefault(state.shown, Counter())[column] += n
        # UNIX sockets count by state only: the top lists are about the network
        connections = list(compress(sockets, map(
            and_, map(not_, map(NOT_CONNECTIONS.__contains__, states)), map(not_, unix))))
        # every connection counts under its local port: a service's port gathers all of
        # its connections and rises to the top, while an outgoing connection's ephemeral
        # port counts once (watch's top list follows the same rule)
        self.local_ports.update(map(_local_port, connections))
        self.remote_hosts.update(map(_remote_address, connections))


_state, _proto, _family, _unix = (attrgetter(name)
                                  for name in ("state", "proto", "family", "unix"))
_local_port, _remote_address = attrgetter("local.port"), attrgetter("remote.address")


# state number -> 1 for a connection: a bytes.translate table for add_rows
_IS_CONNECTION = bytes(int(n in TcpState._value2member_map_
                           and TcpState(n) not in NOT_CONNECTIONS) for n in range(256))


def tally_sockets(sockets: list) -> Tally:
    tally = Tally()
    tally.add_sockets(sockets)
    return tally


def summarize(snapshot: Snapshot, top: int = 10,
              kernel: dict[str, dict[str, int]] | None = None,
              tally: Tally | None = None) -> Summary:
    """`tally`: the counts when they were taken without Sockets (then `snapshot` has
    none and only says whether processes were scanned)."""
    processes: Counter = Counter()
    services = snapshot.services
    members: dict = {}  # service key -> its pids seen here
    containers: Counter = Counter()
    labels: dict = {}
    if tally is None:
        tally = tally_sockets(snapshot.sockets)
    for s in snapshot.sockets:
        if s.unix is not None:  # counted by state in the tally; the rest is the network's
            continue
        if s.container is not None and s.container.runtime != "systemd":
            containers[s.container.name] += 1
        elif s.netns is not None and not s.netns.current:
            containers[s.netns.label] += 1
        proc = s.process
        if proc is not None:
            # a socket counts once, for its service (a forking server and its children
            # are one line), else for its primary holder
            service = services.get(proc.pid) if services else None
            key = service.key if service is not None else proc.pid
            processes[key] += 1
            members.setdefault(key, set()).add(proc.pid)
            labels.setdefault(key, (proc, service))
    by_state = tally.by_state
    table = {
        state.label: {col: counts.get(col, 0) for col in COLUMNS} | {
            "total": sum(counts.values())}
        for state in STATE_ORDER if (counts := by_state.get(state))
    }
    return Summary(
        total=tally.total,
        by_state=table,
        top_local_ports=tally.local_ports.most_common(top),
        top_remote_hosts=tally.remote_hosts.most_common(top),
        top_processes=[(_label(labels[key], members[key]), n)
                       for key, n in processes.most_common(top)],
        processes_scanned=snapshot.attribution.scanned or not snapshot.source.can.inodes,
        kernel=kernel or {},
        top_containers=containers.most_common(top),
    )


def _label(first, pids: set[int]) -> str:
    """'nginx/812', or 'socat/500 (30 processes)' for a service of several."""
    proc, service = first
    if service is None or len(pids) == 1:
        return f"{proc.name}/{proc.pid}"
    return f"{service.name}/{service.master_pid} ({len(pids):,} processes)"
