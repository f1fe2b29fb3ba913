"""Kernel counters, socket totals, sysctls and per-process fd limits.

What the socket table alone cannot say: how many SYNs were dropped because an accept
queue was full (`ListenOverflows`), how big the ephemeral port range is, how many
TIME_WAIT buckets the kernel allows. Sources:

  /proc/net/netstat, /proc/net/snmp   header line + value line pairs ("TcpExt: A B",
                                      "TcpExt: 1 2"): counters since boot, per network
                                      namespace of the reader
  /proc/net/sockstat, sockstat6       "TCP: inuse 5 orphan 0 tw 3 ...": current totals
  /proc/sys/net/...                   the sysctls in SYSCTLS below
  /proc/<pid>/limits                  RLIMIT_NOFILE ("Max open files"), soft and hard

Pure parsers take text (and the file name, for error messages) and return plain data;
raising ParseError naming file and line for anything malformed. Tiny readers take the
procfs root as a parameter so tests point them at fixture trees. Nothing here prints,
and nothing here judges: deciding what is a problem is sockstat.diagnose's job.
"""

from __future__ import annotations

import os
import time

from sockstat.errors import ParseError, SourceUnavailable

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (summary starts up)

if TYPE_CHECKING:
    from sockstat.kernelmodel import KernelSample, ProcessLimits, Sysctls

# re-exported (the readers fill them), imported when first asked for: `summary` reads
# /proc/net/sockstat only, and the model's dataclasses are ~10 ms of its start-up
_FROM_KERNELMODEL = ("TIME_WAIT_SECONDS", "KernelChange", "KernelSample", "ProcessLimits",
                     "Sysctls")


def __getattr__(name: str):
    if name in _FROM_KERNELMODEL:
        from sockstat import kernelmodel

        return getattr(kernelmodel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# The sysctls sockstat reads, name -> path under the procfs root. The one place for them.
SYSCTLS: dict[str, str] = {
    "ip_local_port_range": "sys/net/ipv4/ip_local_port_range",
    "ip_local_reserved_ports": "sys/net/ipv4/ip_local_reserved_ports",
    "tcp_max_tw_buckets": "sys/net/ipv4/tcp_max_tw_buckets",
    "somaxconn": "sys/net/core/somaxconn",
    "tcp_syncookies": "sys/net/ipv4/tcp_syncookies",
    "tcp_max_syn_backlog": "sys/net/ipv4/tcp_max_syn_backlog",
    "tcp_max_orphans": "sys/net/ipv4/tcp_max_orphans",
    "tcp_fin_timeout": "sys/net/ipv4/tcp_fin_timeout",
    "tcp_tw_reuse": "sys/net/ipv4/tcp_tw_reuse",
    "rmem_max": "sys/net/core/rmem_max",
    "rmem_default": "sys/net/core/rmem_default",
}

# Counter files, in the order they are merged. Both use the same two-line format.
COUNTER_FILES = ("net/netstat", "net/snmp")
SOCKSTAT_FILES = ("net/sockstat", "net/sockstat6")

# -- pure parsers ---------------------------------------------------------------------

def parse_counters(text: str, source: str = "/proc/net/netstat") -> dict[str, int]:
    """Header/value line pairs -> {"Section.Name": value}.

    >>> parse_counters("TcpExt: ListenOverflows ListenDrops\\nTcpExt: 3 4\\n")
    {'TcpExt.ListenOverflows': 3, 'TcpExt.ListenDrops': 4}

    snmp's `Tcp: MaxConn` is -1 ("no limit"), so values may be negative.
    """
    out: dict[str, int] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        header = lines[i]
        if not header.strip():
            i += 1
            continue
        section, sep, names_text = header.partition(":")
        if not sep or not section or " " in section.strip():
            raise ParseError(f"{source}:{i + 1}: expected 'Section: names...', got {header!r}")
        if i + 1 >= len(lines):
            raise ParseError(f"{source}:{i + 1}: {section} header has no value line "
                             "(truncated file?)")
        values_line = lines[i + 1]
        vsection, vsep, values_text = values_line.partition(":")
        if not vsep or vsection != section:
            raise ParseError(f"{source}:{i + 2}: expected the values of {section}, got "
                             f"{values_line!r}")
        names, values = names_text.split(), values_text.split()
        if len(names) != len(values):
            raise ParseError(f"{source}:{i + 2}: {section} has {len(names)} names but "
                             f"{len(values)} values (truncated file?)")
        for name, value in zip(names, values, strict=True):
            try:
                out[f"{section}.{name}"] = int(value)
            except ValueError:
                raise ParseError(f"{source}:{i + 2}: {section}.{name} is {value!r}, "
                                 "not a number") from None
        i += 2
    return out


def parse_sockstat(text: str, source: str = "/proc/net/sockstat") -> dict[str, int]:
    """'TCP: inuse 5 orphan 0 tw 3 alloc 6 mem 1' lines -> {"TCP.inuse": 5, ...}.

    >>> parse_sockstat("sockets: used 11\\nTCP: inuse 1 orphan 0 tw 2 alloc 1 mem 0\\n")
    {'sockets.used': 11, 'TCP.inuse': 1, 'TCP.orphan': 0, 'TCP.tw': 2, 'TCP.alloc': 1, 'TCP.mem': 0}
    """
    out: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        section, sep, rest = line.partition(":")
        words = rest.split()
        if not sep or len(words) % 2:
            raise ParseError(f"{source}:{lineno}: expected 'NAME: key value ...', got {line!r}")
        for key, value in zip(words[::2], words[1::2], strict=True):
            try:
                out[f"{section.strip()}.{key}"] = int(value)
            except ValueError:
                raise ParseError(f"{source}:{lineno}: {section}.{key} is {value!r}, "
                                 "not a number") from None
    return out


def may_hold(counts: dict[str, int], proto, family, states=None) -> bool:
    """False when a namespace's /proc/net/sockstat{,6} (`counts`, parse_sockstat's, read
    inside it) say its `proto`/`family` table holds none of `states` (None: any), so a
    dump of it can be skipped: each TCP dump walks the kernel's whole TCP hash table
    (shared by every namespace), ~0.3 us per socket of the host's whatever namespace
    holds it. TIME_WAIT sockets are not "in use" but `tw` (both families together); the
    rest are (request sockets need a listener)."""
    from sockstat.model import Family, Proto, TcpState

    section = {(Proto.TCP, Family.INET): "TCP", (Proto.TCP, Family.INET6): "TCP6",
               (Proto.UDP, Family.INET): "UDP", (Proto.UDP, Family.INET6): "UDP6"}
    inuse = counts.get(f"{section[(proto, family)]}.inuse")
    if inuse is None:
        return True
    if proto is not Proto.TCP:
        return inuse > 0
    time_wait = counts.get("TCP.tw", 1) > 0
    if states is None:
        return inuse > 0 or time_wait
    others = any(state is not TcpState.TIME_WAIT for state in states)
    return (others and inuse > 0) or (TcpState.TIME_WAIT in states and time_wait)


def parse_int(text: str, source: str) -> int:
    """A one-number sysctl file."""
    try:
        return int(text.strip())
    except ValueError:
        raise ParseError(f"{source}:1: expected a number, got {text.strip()!r}") from None


def parse_port_range(text: str, source: str = "ip_local_port_range") -> tuple[int, int]:
    """'32768\\t60999' -> (32768, 60999)."""
    parts = text.split()
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        raise ParseError(f"{source}:1: expected two port numbers, got {text.strip()!r}") \
            from None
    if not 0 <= low <= high <= 65535:
        raise ParseError(f"{source}:1: {low}-{high} is not a port range")
    return low, high


def parse_port_list(text: str, source: str = "ip_local_reserved_ports") -> frozenset[int]:
    """'8000-8010,9000' (the kernel's list syntax; empty means none) -> a set of ports."""
    ports: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise ParseError(f"{source}:1: {part!r} is not a port or port range") from None
        if not 0 <= low <= high <= 65535:
            raise ParseError(f"{source}:1: {part!r} is not a port or port range")
        ports.update(range(low, high + 1))
    return frozenset(ports)


def parse_nofile(text: str, source: str = "/proc/self/limits") -> tuple[int | None, int | None]:
    """The 'Max open files' row of /proc/<pid>/limits -> (soft, hard); None = unlimited."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("Max open files"):
            continue
        words = line[len("Max open files"):].split()
        if len(words) < 2:
            raise ParseError(f"{source}:{lineno}: expected soft and hard limits, got {line!r}")
        try:
            soft, hard = (None if w == "unlimited" else int(w) for w in words[:2])
        except ValueError:
            raise ParseError(f"{source}:{lineno}: limits are not numbers in {line!r}") \
                from None
        return soft, hard
    raise ParseError(f"{source}: no 'Max open files' line")


# -- thin readers ---------------------------------------------------------------------

def _read_text(path: str) -> str | None:
    """A /proc file's text, or None when it does not exist or may not be read."""
    from sockstat.collect.procfile import read_bytes

    try:
        return read_bytes(path).decode("ascii", "replace")
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None


def read_counters(procfs: str = "/proc") -> dict[str, int]:
    """netstat + snmp counters. Raises SourceUnavailable when neither file exists."""
    counters: dict[str, int] = {}
    found = False
    for name in COUNTER_FILES:
        path = os.path.join(procfs, name)
        text = _read_text(path)
        if text is None:
            continue
        found = True
        counters.update(parse_counters(text, path))
    if not found:
        raise SourceUnavailable(f"{procfs}/net/netstat is not readable here (not Linux?)")
    return counters


def page_size() -> int:
    """Bytes per memory page: /proc/net/sockstat counts socket memory ("mem") in pages."""
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4096


def read_sockstat(procfs: str = "/proc", files: tuple[str, ...] = SOCKSTAT_FILES
                  ) -> dict[str, int]:
    """The counts of /proc/net/sockstat and sockstat6 (parse_sockstat's), of `files`
    only when given; a file that cannot be read adds none."""
    out: dict[str, int] = {}
    for name in files:
        path = os.path.join(procfs, name)
        text = _read_text(path)
        if text is not None:
            out.update(parse_sockstat(text, path))
    return out


def read_sysctls(procfs: str = "/proc") -> Sysctls:
    values: dict = {}
    for name, rel in SYSCTLS.items():
        path = os.path.join(procfs, rel)
        text = _read_text(path)
        if text is None:
            continue
        if name == "ip_local_port_range":
            values["port_range"] = parse_port_range(text, path)
        elif name == "ip_local_reserved_ports":
            values["reserved_ports"] = parse_port_list(text, path)
        else:
            values[name] = parse_int(text, path)
    from sockstat.kernelmodel import Sysctls

    return Sysctls(**values)


def read_process_limits(pid: int, procfs: str = "/proc") -> ProcessLimits | None:
    """RLIMIT_NOFILE and open fd count of one process; None if it vanished or is hidden."""
    path = os.path.join(procfs, str(pid), "limits")
    text = _read_text(path)
    if text is None:
        return None
    soft, hard = parse_nofile(text, path)
    from sockstat.kernelmodel import ProcessLimits

    return ProcessLimits(pid=pid, nofile_soft=soft, nofile_hard=hard,
                         open_fds=count_open_fds(pid, procfs))


def told_fd_count(pid: int, procfs: str = "/proc") -> int:
    """The fd count the kernel tells without a listing, 0 when it does not: Linux 6.2+
    gives it as the size of /proc/<pid>/fd (one stat() instead of listing a leaky
    server's 20k fds); older kernels say 0 there, and any other procfs root (a test's
    tree) has real directories' sizes, so it is not asked."""
    if procfs != "/proc":
        return 0
    try:
        return os.stat(f"/proc/{pid}/fd").st_size
    except OSError:  # gone, or another user's process without root
        return 0


def count_open_fds(pid: int, procfs: str = "/proc") -> int | None:
    """How many fds the process has open; None if it vanished or is hidden. The count
    the kernel tells (told_fd_count), else the fd directory's listing."""
    told = told_fd_count(pid, procfs)
    if told > 0:
        return told
    try:
        return len(os.listdir(os.path.join(procfs, str(pid), "fd")))
    except OSError:  # gone, or another user's process without root
        return None


def read_sample(procfs: str = "/proc", pids=()) -> KernelSample:
    """Everything above, read now. `pids`: the processes whose fd limits are wanted."""
    from sockstat.kernelmodel import KernelSample

    limits = {}
    for pid in pids:
        got = read_process_limits(pid, procfs)
        if got is not None:
            limits[pid] = got
    return KernelSample(
        taken_at=time.monotonic(),
        counters=read_counters(procfs),
        sockstat=read_sockstat(procfs),
        sysctls=read_sysctls(procfs),
        limits=limits,
    )
