"""Query: the parsed, validated filters, and the matching of sockets against them.

Parsing turns user text into typed values and raises UsageError with a one-line message
for anything wrong (unknown state, port outside 1-65535, bad CIDR, pid that does not
exist). `Query.kernel_states()` is what can be pushed into the kernel: the sock_diag
state bitmask, so a `--state time-wait` query never copies the other sockets to user
space. Everything else is matched here, in one pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import field

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.errors import UsageError
from sockstat.model import (
    ALL_STATES,
    INET_FAMILIES,
    INET_PROTOS,
    STATE_GROUPS,
    Family,
    Proto,
    Socket,
    TcpState,
)

# The states an AF_UNIX socket can be in (the kernel reuses the TCP numbers)
UNIX_STATES = frozenset({TcpState.LISTEN, TcpState.ESTABLISHED, TcpState.CLOSE,
                         TcpState.SYN_SENT})

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    import ipaddress


def parse_states(values: Iterable[str]) -> frozenset[TcpState]:
    """'time-wait', 'ESTABLISHED', 'connected' (a group) ... -> a set of states.

    SYN_RECV also selects NEW_SYN_RECV: both are what a person calls SYN_RECV.
    """
    states: set[TcpState] = set()
    values = list(values)
    for raw in values:
        for text in raw.split(","):
            text = text.strip()
            if not text:
                continue
            group = STATE_GROUPS.get(text.lower())
            if group is not None:
                states |= group
                continue
            try:
                states.add(TcpState.parse(text))
            except ValueError:
                known = ", ".join(sorted({s.slug for s in TcpState}
                                         | set(STATE_GROUPS)))
                raise UsageError(f"unknown state {text!r} (known: {known})") from None
    if not states:
        raise UsageError(f"--state {' '.join(repr(v) for v in values)} names no state")
    if TcpState.SYN_RECV in states:
        states.add(TcpState.NEW_SYN_RECV)
    return frozenset(states)


def port_digits(text: str) -> bool:
    """Whether `text` is written as a port is: ASCII digits only (int() also reads "8_0",
    "+80", " 80" and other scripts' digits, such as fullwidth "８０")."""
    return text.isascii() and text.isdigit()


def parse_port(value: int | str) -> int:
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and not port_digits(text):
        raise UsageError(f"port {value!r} is not a number (expected 1-65535)")
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"port {value!r} is not a number (expected 1-65535)") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is out of range (expected 1-65535)")
    return port


def parse_ports(values: Iterable[int | str]) -> frozenset[int]:
    """'80', '80,443', '8000-8100' (repeatable) -> ports. An empty value is an error,
    never "no filter": `sockstat --port "$PORT"` with PORT unset must not list everything."""
    ports: set[int] = set()
    for value in values:
        parts = [p.strip() for p in str(value).split(",")]
        if not any(parts):
            raise UsageError(f"port {str(value)!r} is empty (expected 1-65535, a,b or a-b)")
        for part in parts:
            if not part:
                continue
            if "-" in part:  # a range: 8000-8100
                low, _, high = part.partition("-")
                if not low.strip() or not high.strip():
                    raise UsageError(f"port range {part!r} needs two ends, e.g. 8000-8100")
                lo, hi = parse_port(low), parse_port(high)
                if lo > hi:
                    raise UsageError(f"port range {part!r} is backwards")
                ports.update(range(lo, hi + 1))
            else:
                ports.add(parse_port(part))
    return frozenset(ports)


def parse_networks(values: Iterable[str]) -> tuple[ipaddress._BaseNetwork, ...]:
    import ipaddress  # only when an address filter is given: keeps start-up lean

    nets = []
    for value in values:
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise UsageError(f"{value!r} is not an IP address or CIDR (e.g. 10.0.0.0/8, ::1)") \
                from None
    return tuple(nets)


def parse_paths(values: Iterable[str]) -> tuple[str, ...]:
    """--path globs ('/run/php/*.sock', '@*'); an empty one is an error, never 'all'."""
    globs = tuple(values)
    for glob in globs:
        if not glob.strip():
            raise UsageError("--path is empty (expected a path or a glob such as "
                             "'/run/*.sock' or '@*')")
    return globs


def check_pid(pid: int, procfs: str = "/proc") -> int:
    if pid <= 0 or not os.path.isdir(f"{procfs}/{pid}"):
        raise UsageError(f"no process with pid {pid}")
    return pid


MAX_UID = 2**32 - 2  # uid_t is 32 bits and (uid_t)-1 means "no uid"


def _process_text(value: str | None) -> str | None:
    """--process: a name or part of one; empty is an error (it would match every
    process), as for --path and --container."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError("--process is empty (give a process name or part of one)")
    return value.lower()


def _user_uid(user: str) -> int:
    if not user.strip():
        raise UsageError("--user is empty (give a user name or a uid)")
    import pwd

    # isdigit() alone takes '²' and other Unicode digits that int() refuses
    if user.isascii() and user.isdigit():
        if len(user) > len(str(MAX_UID)) or int(user) > MAX_UID:
            raise UsageError(f"uid {user[:20]}{'…' if len(user) > 20 else ''} is out of "
                             f"range (0-{MAX_UID})")
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):  # ValueError: a name with a NUL byte
        raise UsageError(f"no user named {user!r}") from None


@dataclass(frozen=True)
class Query:
    """What the user asked for. Empty fields match everything."""

    states: frozenset[TcpState] = ALL_STATES
    ports: frozenset[int] = frozenset()  # either end
    local_ports: frozenset[int] = frozenset()
    remote_ports: frozenset[int] = frozenset()
    local_networks: tuple = ()
    remote_networks: tuple = ()
    protos: frozenset[Proto] = INET_PROTOS
    families: frozenset[Family] = INET_FAMILIES  # of TCP/UDP sockets; UNIX has its own
    paths: tuple[str, ...] = ()  # globs a UNIX socket's name must match (selects UNIX)
    pids: frozenset[int] = frozenset()
    process_name: str | None = None
    uid: int | None = None
    listening: bool = False
    container: str | None = None  # --container: id prefix, runtime:id, unit or LXC name
    # only the sockets at these ((local address, port), (remote address, port)), each
    # found by an exact look-up instead of a walk of the table (collect/netlink.look_up);
    # a listener's remote is the wildcard address, port 0. Not a user filter: the demo
    # lab knows its sockets' addresses.
    exact: frozenset[tuple[tuple[str, int], tuple[str, int]]] = frozenset()
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def build(
        cls,
        *,
        states: Iterable[str] = (),
        ports: Iterable[int | str] = (),
        sports: Iterable[int | str] = (),
        dports: Iterable[int | str] = (),
        local: Iterable[str] = (),
        remote: Iterable[str] = (),
        tcp: bool = False,
        udp: bool = False,
        unix: bool = False,
        paths: Iterable[str] = (),
        ipv4: bool = False,
        ipv6: bool = False,
        pids: Iterable[int] = (),
        process: str | None = None,
        user: str | None = None,
        listening: bool = False,
        container: str | None = None,
        procfs: str = "/proc",
    ) -> Query:
        """Validate user input into a Query; raises UsageError with a one-line reason."""
        states = list(states)
        protos = set()
        if tcp:
            protos.add(Proto.TCP)
        if udp:
            protos.add(Proto.UDP)
        if unix:
            protos.add(Proto.UNIX)
        paths = parse_paths(paths)
        if paths:  # a path names UNIX sockets: --path implies --unix
            protos.add(Proto.UNIX)
        families = set()
        if ipv4:
            families.add(Family.INET)
        if ipv6:
            families.add(Family.INET6)
        return cls(
            states=parse_states(states) if states else ALL_STATES,
            ports=parse_ports(ports),
            local_ports=parse_ports(sports),
            remote_ports=parse_ports(dports),
            local_networks=parse_networks(local) if local else (),
            remote_networks=parse_networks(remote) if remote else (),
            protos=frozenset(protos) or INET_PROTOS,
            families=frozenset(families) or INET_FAMILIES,
            paths=paths,
            pids=frozenset(check_pid(p, procfs) for p in pids),
            process_name=_process_text(process),
            uid=None if user is None else _user_uid(user),
            listening=listening,
            container=_container_text(container),
        )

    # -- what the kernel can filter -------------------------------------------------
    def kernel_states(self, proto: Proto) -> frozenset[TcpState]:
        """States to ask the kernel for (the sock_diag bitmask) for one protocol."""
        states = self.states
        if proto is Proto.UNIX:
            states = states & UNIX_STATES
            # listening, as ss -xl: listeners and unconnected (datagram) sockets
            return states & {TcpState.LISTEN, TcpState.CLOSE} if self.listening else states
        if self.listening:
            states = states & ({TcpState.LISTEN} if proto is Proto.TCP else {TcpState.CLOSE})
        return states

    @property
    def needs_processes(self) -> bool:
        """True when matching needs the owner of each socket (pid/name filters)."""
        return bool(self.pids) or self.process_name is not None

    @property
    def is_everything(self) -> bool:
        return self == Query()

    # -- matching ----------------------------------------------------------------------
    def matches(self, sock: Socket) -> bool:
        """Everything but the process filters, which need attribution first."""
        if sock.proto not in self.protos:
            return False
        if sock.unix is not None:
            if self.paths and not _name_matches(sock.unix.name, self.paths):
                return False
        elif sock.family not in self.families or self.paths:
            return False
        if sock.state not in self.kernel_states(sock.proto):
            return False
        if self.ports and sock.local.port not in self.ports \
                and sock.remote.port not in self.ports:
            return False
        if self.local_ports and sock.local.port not in self.local_ports:
            return False
        if self.remote_ports and sock.remote.port not in self.remote_ports:
            return False
        if self.uid is not None and sock.uid != self.uid:
            return False
        if self.local_networks and not _in_networks(sock.local.address, self.local_networks):
            return False
        if self.remote_networks and not _in_networks(sock.remote.address,
                                                     self.remote_networks):
            return False
        return not self.exact or (sock.local, sock.remote) in self.exact

    def matches_process(self, sock: Socket) -> bool:
        if not self.needs_processes:
            return True
        proc = sock.process
        if proc is None:
            return False
        if not sock.others:
            return self._matches_holder(proc)
        # a shared socket (fork) matches when any of its holders does
        return any(self._matches_holder(p) for p in (proc, *sock.others))

    def matches_container(self, sock: Socket) -> bool:
        """--container: the socket's container (or unit) by name, id or id prefix, or
        Kubernetes pod UID prefix."""
        if self.container is None:
            return True
        c = sock.container
        if c is None:
            return False
        text = self.container
        return (text in (c.name.lower(), c.id.lower(), (c.unit or "").lower())
                or c.id.lower().startswith(text) or (c.pod or "").startswith(text)
                or c.name.lower().startswith(text))

    def _matches_holder(self, proc) -> bool:
        if self.pids and proc.pid not in self.pids:
            return False
        return self.process_name is None or self.process_name in proc.name.lower()


def _container_text(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if not text:
        raise UsageError("--container is empty (give an id or its prefix, runtime:id, a "
                         "systemd unit or an LXC name)")
    return text


def _name_matches(name: str | None, globs: tuple[str, ...]) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name or "", glob) for glob in globs)


def _in_networks(address: str, networks: tuple) -> bool:
    import ipaddress

    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for net in networks:
        if ip.version == net.version and ip in net:
            return True
        # a v4 network also matches v4-mapped v6 peers, which we print as v4 anyway
        if ip.version == 6 and net.version == 4 and ip.ipv4_mapped is not None \
                and ip.ipv4_mapped in net:
            return True
    return False
