"""summarize(): a Snapshot -> counts by state and family, top ports, hosts, processes.

Pure: the kernel's own totals (/proc/net/sockstat) are passed in by the caller.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sockstat.model import STATE_ORDER, Snapshot, TcpState

COLUMNS = ("tcp4", "tcp6", "udp4", "udp6", "unix")


@dataclass
class Summary:
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


def summarize(snapshot: Snapshot, top: int = 10,
              kernel: dict[str, dict[str, int]] | None = None) -> Summary:
    by_state: dict[TcpState, Counter] = {}
    local_ports: Counter = Counter()
    remote_hosts: Counter = Counter()
    processes: Counter = Counter()
    services = snapshot.services
    members: dict = {}  # service key -> its pids seen here
    containers: Counter = Counter()
    labels: dict = {}
    for s in snapshot.sockets:
        state = s.state.shown
        if s.unix is not None:  # counted by state; the top lists are about the network
            by_state.setdefault(state, Counter())["unix"] += 1
            continue
        by_state.setdefault(state, Counter())[f"{s.proto.value}{s.family.value}"] += 1
        if s.state is not TcpState.LISTEN and s.state is not TcpState.CLOSE:
            remote_hosts[s.remote.address] += 1
            # every connection counts under its local port: a service's port gathers all
            # of its connections and rises to the top, while an outgoing connection's
            # ephemeral port counts once (watch's top list follows the same rule)
            local_ports[s.local.port] += 1
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
    table = {
        state.label: {col: counts.get(col, 0) for col in COLUMNS} | {
            "total": sum(counts.values())}
        for state in STATE_ORDER if (counts := by_state.get(state))
    }
    return Summary(
        total=len(snapshot.sockets),
        by_state=table,
        top_local_ports=local_ports.most_common(top),
        top_remote_hosts=remote_hosts.most_common(top),
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
