"""The kernel's counters and settings as data: what a sample of them holds.

The model layer for everything beside the socket table: `KernelSample` (one reading of
/proc/net/netstat, snmp, sockstat, the sysctls and fd limits), `KernelChange` (two
readings and their deltas), `Sysctls`, `ProcessLimits`, the fixed TIME_WAIT length, and
`DropBaseline` (each socket's drop counter at an earlier moment).
The readers that fill them live in `sockstat.collect.kernel`; the detectors in
`sockstat.diagnose` read them. No I/O here, nothing imported beyond the stdlib.
"""

from __future__ import annotations

from dataclasses import field

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once

# Linux keeps a socket in TIME_WAIT for a fixed 60 s (TCP_TIMEWAIT_LEN in
# include/net/tcp.h); no sysctl changes it, tcp_fin_timeout included.
TIME_WAIT_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Sysctls:
    """The sysctl values diagnose needs; None where the file was absent or unreadable."""

    port_range: tuple[int, int] | None = None
    reserved_ports: frozenset[int] = frozenset()
    tcp_max_tw_buckets: int | None = None
    somaxconn: int | None = None
    tcp_syncookies: int | None = None
    tcp_max_syn_backlog: int | None = None
    tcp_max_orphans: int | None = None
    tcp_fin_timeout: int | None = None
    tcp_tw_reuse: int | None = None
    rmem_max: int | None = None  # the largest SO_RCVBUF a program may ask for (bytes)
    rmem_default: int | None = None  # the receive buffer of a socket that asks for none

    @property
    def usable_ports(self) -> int | None:
        """Ephemeral ports connect() may pick: the range minus the reserved ports in it."""
        if self.port_range is None:
            return None
        low, high = self.port_range
        reserved = sum(1 for p in self.reserved_ports if low <= p <= high)
        return max(high - low + 1 - reserved, 0)

    def is_ephemeral(self, port: int) -> bool:
        if self.port_range is None:
            return False
        return self.port_range[0] <= port <= self.port_range[1] \
            and port not in self.reserved_ports

    def to_dict(self) -> dict:
        return {
            "ip_local_port_range": list(self.port_range) if self.port_range else None,
            "ip_local_reserved_ports": _format_ports(self.reserved_ports),
            "usable_ephemeral_ports": self.usable_ports,
            "tcp_max_tw_buckets": self.tcp_max_tw_buckets,
            "somaxconn": self.somaxconn,
            "tcp_syncookies": self.tcp_syncookies,
            "tcp_max_syn_backlog": self.tcp_max_syn_backlog,
            "tcp_max_orphans": self.tcp_max_orphans,
            "tcp_fin_timeout": self.tcp_fin_timeout,
            "tcp_tw_reuse": self.tcp_tw_reuse,
            "rmem_max": self.rmem_max,
            "rmem_default": self.rmem_default,
        }


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    """RLIMIT_NOFILE of one process (None = unlimited) and how many fds it has open."""

    pid: int
    nofile_soft: int | None
    nofile_hard: int | None
    open_fds: int | None = None  # None when /proc/<pid>/fd could not be listed


@dataclass(frozen=True, slots=True)
class KernelSample:
    """One reading of the kernel's counters and settings, at `taken_at` (time.monotonic)."""

    taken_at: float
    counters: dict[str, int] = field(default_factory=dict)  # "TcpExt.ListenOverflows" -> n
    sockstat: dict[str, int] = field(default_factory=dict)  # "TCP.tw" -> n, "TCP6.inuse"
    sysctls: Sysctls = field(default_factory=Sysctls)
    limits: dict[int, ProcessLimits] = field(default_factory=dict)

    def counter(self, name: str) -> int | None:
        return self.counters.get(name)


@dataclass(frozen=True, slots=True)
class KernelChange:
    """Two samples of the same kernel: the latest values and what changed in between.

    `before` is None when only one sample was taken: then there are no rates, and
    counters are totals since boot, which say little about now.
    """

    after: KernelSample
    before: KernelSample | None = None

    @property
    def seconds(self) -> float | None:
        if self.before is None:
            return None
        return max(self.after.taken_at - self.before.taken_at, 0.0)

    @property
    def sysctls(self) -> Sysctls:
        return self.after.sysctls

    @property
    def limits(self) -> dict[int, ProcessLimits]:
        return self.after.limits

    def value(self, name: str) -> int | None:
        """A counter (netstat/snmp) or a socket total ("TCP.orphan") from the latest sample."""
        got = self.after.counters.get(name)
        return got if got is not None else self.after.sockstat.get(name)

    def delta(self, name: str) -> int | None:
        """How much a counter grew between the samples; None without two samples."""
        if self.before is None:
            return None
        old, new = self.before.counters.get(name), self.after.counters.get(name)
        if old is None or new is None:
            return None
        # Counters are unsigned in the kernel; a wrap or a namespace change shows as a drop
        return max(new - old, 0)


@dataclass(slots=True, frozen=True)
class DropBaseline:
    """Each socket's drop counter at an earlier moment: the drop detector judges what
    was dropped since (`check --interval`, the previous watch refresh or scrape)."""

    taken_at: float  # time.time(), like Snapshot.taken_at
    drops: dict  # Socket.key -> SkMemInfo.drops

    @classmethod
    def of(cls, sockets, taken_at: float) -> DropBaseline:
        return cls(taken_at, {s.key: s.memory.drops for s in sockets
                              if s.memory is not None and s.memory.drops is not None})


def _format_ports(ports: frozenset[int]) -> str:
    """The inverse of parse_port_list, compacted into ranges: {1,2,3,7} -> '1-3,7'."""
    out: list[str] = []
    run: list[int] = []
    for port in sorted(ports):
        if run and port == run[-1] + 1:
            run.append(port)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [port]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)
