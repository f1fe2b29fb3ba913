"""The data model: TCP states, endpoints, sockets, snapshots.

This module is the ONE place where kernel state numbers map to names (both the hex
numbers in /proc/net/tcp and the integers in sock_diag netlink replies are the same
`enum` from the kernel's include/net/tcp_states.h). It does no I/O and imports no UI
code, so every other stage (collect, query, diagnose, render) can build and test on it.
"""

from __future__ import annotations

import enum
import sys
from collections import deque, namedtuple
from dataclasses import field
from itertools import repeat

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from sockstat.kernelmodel import DropBaseline
    from sockstat.placement import Container, NetNamespace, Service
    from sockstat.tcpinfo import TcpInfo
    from sockstat.unixinfo import UnixInfo


class TcpState(enum.IntEnum):
    """Kernel socket states, numbered as in include/net/tcp_states.h."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7  # UDP sockets that are not connected sit here ("UNCONN" in ss)
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12  # request sockets inside the kernel; reported to users as SYN_RECV
    BOUND_INACTIVE = 13  # bound but neither listening nor connecting (kernel >= 6.7)

    @property
    def shown(self) -> TcpState:
        """The state as people (and ss) know it: the kernel's NEW_SYN_RECV request
        sockets are SYN_RECV. Every view counts and groups by this, never by hand."""
        return _SHOWN.get(self, self)

    @property
    def label(self) -> str:
        """The name shown to people: kernel spelling, except CLOSE which ss calls UNCONN."""
        return "UNCONN" if self is TcpState.CLOSE else self.name

    @property
    def slug(self) -> str:
        """The spelling typed on a command line and used for topics: 'time-wait',
        'fin-wait1', 'syn-recv' (for NEW_SYN_RECV too), 'unconn'."""
        return _SLUGS[self]

    @property
    def colour(self) -> str:
        """The state's colour (a rich style name; render.style maps it to ANSI)."""
        return _COLOURS[self]

    @classmethod
    def parse(cls, text: str) -> TcpState:
        """Accept a state in any case and with '-' or '_' (time-wait, TIME_WAIT, Time_Wait).

        Raises ValueError naming the accepted states for anything else.
        """
        key = text.strip().upper().replace("-", "_")
        key = _STATE_ALIASES.get(key, key)
        try:
            return cls[key]
        except KeyError:
            raise ValueError(f"unknown state {text!r}") from None


# Other spellings people type (netstat, RFC 793, ss).
_STATE_ALIASES = {
    "FIN_WAIT_1": "FIN_WAIT1",
    "FIN_WAIT_2": "FIN_WAIT2",
    "SYN_RCVD": "SYN_RECV",
    "SYN_RECEIVED": "SYN_RECV",
    "CLOSED": "CLOSE",
    "UNCONN": "CLOSE",
    "LISTENING": "LISTEN",
    "ESTAB": "ESTABLISHED",
}

_SHOWN = {TcpState.NEW_SYN_RECV: TcpState.SYN_RECV}
_SLUGS = {state: _SHOWN.get(state, state).label.lower().replace("_", "-")
          for state in TcpState}
_COLOURS = {
    TcpState.LISTEN: "cyan",
    TcpState.ESTABLISHED: "green",
    TcpState.SYN_SENT: "yellow",
    TcpState.SYN_RECV: "yellow",
    TcpState.NEW_SYN_RECV: "yellow",
    TcpState.FIN_WAIT1: "magenta",
    TcpState.FIN_WAIT2: "magenta",
    TcpState.CLOSING: "magenta",
    TcpState.LAST_ACK: "magenta",
    TcpState.TIME_WAIT: "blue",
    TcpState.CLOSE_WAIT: "red",
    TcpState.CLOSE: "white",
    TcpState.BOUND_INACTIVE: "white",
}

# State groups, named as ss(8) names them.
ALL_STATES: frozenset[TcpState] = frozenset(TcpState)
STATE_GROUPS: dict[str, frozenset[TcpState]] = {
    "all": ALL_STATES,
    # every state but LISTEN and CLOSE
    "connected": ALL_STATES - {TcpState.LISTEN, TcpState.CLOSE},
    # connected, minus SYN_SENT (ss(8): "all the connected states except for syn-sent")
    "synchronized": ALL_STATES - {TcpState.LISTEN, TcpState.CLOSE, TcpState.SYN_SENT},
    # states kept as mini-sockets (no full socket, no inode)
    "bucket": frozenset({TcpState.SYN_RECV, TcpState.NEW_SYN_RECV, TcpState.TIME_WAIT}),
    # the opposite of bucket
    "big": ALL_STATES - {TcpState.SYN_RECV, TcpState.NEW_SYN_RECV, TcpState.TIME_WAIT},
}

# The order states are listed in: the life of a connection.
STATE_ORDER: tuple[TcpState, ...] = (
    TcpState.LISTEN, TcpState.SYN_SENT, TcpState.SYN_RECV, TcpState.ESTABLISHED,
    TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.CLOSE_WAIT, TcpState.CLOSING,
    TcpState.LAST_ACK, TcpState.TIME_WAIT, TcpState.CLOSE, TcpState.NEW_SYN_RECV,
    TcpState.BOUND_INACTIVE,
)
# The states a person sees, in that order: every view that counts by state (watch,
# the exporter, summary) counts over these, NEW_SYN_RECV folded into SYN_RECV.
DISPLAY_STATES: tuple[TcpState, ...] = tuple(s for s in STATE_ORDER if s.shown is s)


class Proto(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    UNIX = "unix"  # AF_UNIX (local) sockets: only with -x/--unix, never by default


# What a query covers when it names no protocol: UNIX sockets are asked for explicitly
INET_PROTOS: frozenset[Proto] = frozenset({Proto.TCP, Proto.UDP})


class SourceAbilities(namedtuple("SourceAbilities", (
        "tcp_info",  # struct tcp_info: RTT, cwnd, idle times
        "backlog",  # a LISTEN socket's listen() backlog (Send-Q)
        "queues",  # Recv-Q / Send-Q, timers
        "cookies",  # the kernel's socket cookie: identity across refreshes
        "inodes",  # socket inodes, so /proc/*/fd can name the processes
        "namespaces",  # can be read from inside another network namespace
        "memory",  # socket memory and drops (skmem), asked with --memory
        ), defaults=(False,) * 7)):
    """What a source of the socket table can tell (one home for it: views ask here
    instead of comparing source names), each a bool. A named tuple, as Endpoint: a
    frozen dataclass cost every start-up ~5M instructions to create."""

    __slots__ = ()


class Source(enum.StrEnum):
    """Where a socket table comes from. A str enum: 'netlink' == Source.NETLINK."""

    AUTO = "auto"  # netlink, else /proc, else psutil
    NETLINK = "netlink"
    PROC = "proc"
    PSUTIL = "psutil"

    @property
    def can(self) -> SourceAbilities:
        return _ABILITIES[self]


_ABILITIES = {
    Source.AUTO: SourceAbilities(),
    Source.NETLINK: SourceAbilities(tcp_info=True, backlog=True, queues=True, cookies=True,
                                    inodes=True, namespaces=True, memory=True),
    Source.PROC: SourceAbilities(queues=True, inodes=True, namespaces=True),
    Source.PSUTIL: SourceAbilities(),
}


class Family(enum.IntEnum):
    INET = 4
    INET6 = 6
    UNIX = 1  # AF_UNIX: the family of Proto.UNIX sockets


INET_FAMILIES: frozenset[Family] = frozenset({Family.INET, Family.INET6})


class UnixType(enum.IntEnum):
    """AF_UNIX socket types (SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET), as ss names them."""

    STREAM = 1
    DGRAM = 2
    SEQPACKET = 5

    @property
    def label(self) -> str:  # what JSON says
        return {1: "stream", 2: "dgram", 5: "seqpacket"}[self.value]

    @property
    def netid(self) -> str:  # what the listing's Proto column says (ss's Netid)
        return {1: "u_str", 2: "u_dgr", 5: "u_seq"}[self.value]


class Timer(enum.IntEnum):
    """The kernel's socket timer kinds (idiag_timer / the `tr` column of /proc/net/tcp)."""

    OFF = 0
    ON = 1  # retransmit (or probe) timer
    KEEPALIVE = 2
    TIMEWAIT = 3
    PROBE = 4  # zero-window probe

    @property
    def label(self) -> str:
        return {0: "off", 1: "on", 2: "keepalive", 3: "timewait", 4: "persist"}[self.value]


# Endpoint and SkMemInfo are collections.namedtuple classes, not typing.NamedTuple ones
# (the same tuples): importing typing would cost every start-up ~3 ms.
class Endpoint(namedtuple("Endpoint", ("address", "port"))):
    """An address (str, printable: 127.0.0.1, ::1; IPv4-mapped IPv6 is shown as IPv4)
    and a port (int). A named tuple: collections build 200k of these per 100k sockets,
    and tuple construction is several times cheaper than a frozen dataclass."""

    __slots__ = ()

    def __str__(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port if self.port else '*'}"
        return f"{self.address}:{self.port if self.port else '*'}"


@dataclass(slots=True, frozen=True)
class ProcessRef:
    """A process holding a socket: its pid, name (comm), the fd it holds the socket
    by, its user, and whether it was named through the listener on the same port."""

    pid: int
    name: str
    fd: int | None = None
    user: str | None = None
    via_listener: bool = False  # attributed through the LISTEN socket on the same port

    def __str__(self) -> str:
        mark = "~" if self.via_listener else ""
        return f"{mark}{self.name}/{self.pid}"


def _nobody() -> ProcessRef:
    ref = object.__new__(ProcessRef)
    for name in ("pid", "name", "fd", "user", "via_listener"):
        getattr(ProcessRef, name).__set__(ref, None)
    return ref


# No process: the stand-in a column of holders (one per row) has for a socket without
# one, so that the whole column is read in C (attrgetter) without a test for None per
# row. Never on a Socket (Socket.process is None there).
NOBODY = _nobody()


def new_process_refs(pid: int, name: str, fds: list[int], user: str | None
                     ) -> list[ProcessRef]:
    """One ProcessRef per fd of one process (an owner scan makes one per socket: 100k on
    a big host), filled slot by slot over the whole list, each step a map in C: a third
    of the frozen __init__'s cost, which sets each field through object.__setattr__."""
    count = len(fds)
    refs = list(map(_new_object, repeat(ProcessRef, count)))
    for setter, values in ((_set_pid, repeat(pid, count)), (_set_name, repeat(name, count)),
                           (_set_fd, fds), (_set_user, repeat(user, count)),
                           (_set_via_listener, repeat(False, count))):
        deque(map(setter, refs, values), 0)
    return refs


_new_object = object.__new__
_set_pid, _set_name, _set_fd, _set_user, _set_via_listener = (
    getattr(ProcessRef, f).__set__ for f in ("pid", "name", "fd", "user", "via_listener"))


class SkMemInfo(namedtuple("SkMemInfo", (
        "rmem_alloc",  # bytes queued for reading
        "rcvbuf",  # the receive buffer limit (SO_RCVBUF, doubled by the kernel)
        "wmem_alloc",  # bytes sent but not yet freed
        "sndbuf",  # the send buffer limit (SO_SNDBUF)
        "fwd_alloc",  # memory reserved for the socket, not yet used
        "wmem_queued",  # bytes queued for sending
        "optmem",  # memory for options (ancillary data, filters)
        "backlog",  # packets waiting while the socket was busy (bytes)
        "drops",  # packets dropped: receive buffer full, filter, memory
        ), defaults=(None, None))):
    """A socket's memory accounting (the kernel's sk_meminfo: SK_MEMINFO_* in
    linux/sock_diag.h), in bytes (ints), and the packets it dropped since it was
    created. What `ss -m` shows as skmem:(r,rb,t,tb,f,w,o,bl,d). Fields a kernel does
    not send (older kernels send fewer: backlog, drops) are None. A named tuple, as
    Endpoint: `--memory` builds one per socket, and a frozen dataclass costs several
    times more to construct."""

    __slots__ = ()

    def to_dict(self) -> dict:
        return self._asdict()


UNNAMED = "(unnamed)"


@dataclass(slots=True)
class Socket:
    """One socket as the kernel reports it.

    On LISTEN sockets the kernel reuses the queue fields: recv_q is the number of
    connections waiting in the accept queue and send_q is the listen() backlog.
    TIME_WAIT and SYN_RECV sockets are kernel mini-sockets: inode 0, no owner.
    """

    proto: Proto
    family: Family
    state: TcpState
    local: Endpoint
    remote: Endpoint
    recv_q: int = 0
    send_q: int = 0
    uid: int = 0
    inode: int = 0
    cookie: int | None = None  # netlink only: stable identity across refreshes
    timer: Timer = Timer.OFF
    timer_ms: int = 0  # time until the timer fires
    retransmits: int = 0
    tcp_info: TcpInfo | None = None
    process: ProcessRef | None = None  # the primary holder: the lowest pid
    interface: int = 0  # bound device index, 0 when none
    # every process holding the socket (fork shares it), primary first; empty when only
    # `process` holds it (the common case costs nothing)
    others: tuple[ProcessRef, ...] = ()
    netns: NetNamespace | None = None  # set when several namespaces were read
    container: Container | None = None  # set when ownership details were read
    peer_process: ProcessRef | None = None  # the owner of the other end, when local

    @property
    def holders(self) -> tuple[ProcessRef, ...]:
        """Every process holding this socket, primary first."""
        if self.process is None:
            return ()
        return (self.process, *self.others)
    # AF_UNIX sockets only (proto UNIX); local/remote then hold the names, port 0
    unix: UnixInfo | None = None
    # only when a view asked for it (`--memory`, the drop detector): netlink's skmem
    memory: SkMemInfo | None = None

    @property
    def key(self) -> tuple:
        """Identity across refreshes: the cookie when the source has one, else the 4-tuple
        (a UNIX socket's inode: many unnamed ones share the same empty 'tuple')."""
        if self.cookie is not None:
            return ("c", self.cookie)
        if self.unix is not None:
            return ("u", self.inode)
        return (self.proto, self.local.address, self.local.port, self.remote.address,
                self.remote.port)

    @property
    def local_label(self) -> str:
        """Where the socket is, for people: 127.0.0.1:8080, or a UNIX socket's name."""
        return self.unix.display_name if self.unix is not None else str(self.local)

    @property
    def state_label(self) -> str:
        return self.state.label

    def to_dict(self) -> dict:
        """The stable JSON shape of a socket (documented in docs/json.md)."""
        return socket_to_dict(self)


# Classes of the model defined in modules of their own, imported where they are made or
# read, and named here too: CPython creates a dataclass by compiling its generated
# methods (2-5M instructions each, TcpInfo's 56 fields ~20M), and a plain listing makes
# none of these.
_ELSEWHERE = {
    "TcpInfo": "sockstat.tcpinfo", "UnixInfo": "sockstat.unixinfo",
    "Container": "sockstat.placement", "NetNamespace": "sockstat.placement",
    "Service": "sockstat.placement", "DropBaseline": "sockstat.kernelmodel",
}


def __getattr__(name: str):
    home = _ELSEWHERE.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)


_STATE_LABELS = {state: state.label for state in TcpState}
_FAMILY_LABELS = {Family.INET: "ipv4", Family.INET6: "ipv6", Family.UNIX: "unix"}
_TIMER_LABELS = {timer: timer.label for timer in Timer}


def socket_to_dict(s: Socket) -> dict:
    """The documented JSON shape. Enum labels come from lookup tables: this runs 100k
    times for a big --json listing, and enum property access is slow."""
    info = s.tcp_info
    proc = s.process
    timer = _TIMER_LABELS[s.timer] if s.timer else None
    out = {
        "proto": s.proto.value,
        "family": _FAMILY_LABELS[s.family],
        "state": _STATE_LABELS[s.state],
        "local_address": s.local.address,
        "local_port": s.local.port,
        "remote_address": s.remote.address,
        "remote_port": s.remote.port,
        "recv_q": s.recv_q,
        "send_q": s.send_q,
        "uid": s.uid,
        "inode": s.inode,
        "cookie": s.cookie,
        "timer": timer,
        "timer_ms": s.timer_ms if timer else None,
        "retransmits": s.retransmits,
        "process": None if proc is None else _process_dict(proc),
        "tcp_info": None if info is None else tcp_info_to_dict(info),
        "processes": [] if proc is None else [_process_dict(p) for p in (proc, *s.others)],
        "peer_process": None if s.peer_process is None else _process_dict(s.peer_process),
        "netns": None if s.netns is None else {"inode": s.netns.inode, "name": s.netns.name},
        "container": None if s.container is None else container_dict(s.container),
    }
    # optional keys, present only where they apply (docs/json.md): the default listing
    # of TCP/UDP sockets keeps its shape and its cost
    if s.unix is not None:
        u = s.unix
        out["path"] = u.name
        out["unix_type"] = u.type.label
        out["peer_inode"] = u.peer_inode or None
        out["peer_path"] = u.peer_name
    if s.memory is not None:
        out["memory"] = s.memory.to_dict()
    return out


def _process_dict(proc: ProcessRef) -> dict:
    return {"pid": proc.pid, "name": proc.name, "fd": proc.fd, "user": proc.user,
            "via_listener": proc.via_listener}


def container_dict(c: Container) -> dict:
    return {"name": c.name, "runtime": c.runtime, "id": c.id, "pod": c.pod, "unit": c.unit}


# tcp_info fields added to the JSON after its first schema, named as the TcpInfo
# attributes; the CSV carries the same ones, in this order (docs/json.md)
TCP_INFO_EXTRA = (
    "rcv_mss", "lost", "min_rtt_ms", "rto_ms", "ato_ms", "ca_state", "snd_ssthresh",
    "rcv_ssthresh", "pmtu", "advmss", "rcv_space", "rcv_rtt_ms", "probes", "backoff",
    "sacked", "retrans", "reordering", "reord_seen", "pacing_rate", "max_pacing_rate",
    "delivery_rate", "delivery_rate_app_limited", "busy_time_ms", "rwnd_limited_ms",
    "sndbuf_limited_ms", "bytes_acked", "bytes_received", "bytes_sent", "bytes_retrans",
    "segs_out", "segs_in", "data_segs_out", "data_segs_in", "notsent_bytes", "delivered",
    "delivered_ce", "dsack_dups", "rcv_ooopack", "rehash", "total_rto",
    "total_rto_recoveries", "total_rto_time_ms", "congestion",
)


# JSON name -> TcpInfo attribute: the first schema's names, then the later ones
TCP_INFO_JSON: tuple[tuple[str, str], ...] = (
    ("rtt_ms", "rtt_ms"), ("rttvar_ms", "rttvar_ms"), ("cwnd", "snd_cwnd"),
    ("mss", "snd_mss"), ("retransmits", "retransmits"), ("total_retrans", "total_retrans"),
    ("unacked", "unacked"), ("last_send_ms", "last_data_sent_ms"),
    ("last_recv_ms", "last_data_recv_ms"), ("last_ack_ms", "last_ack_recv_ms"),
    ("snd_wnd", "snd_wnd"), ("rcv_wnd", "rcv_wnd"),
    *((name, name) for name in TCP_INFO_EXTRA),
)
TCP_INFO_KEYS: tuple[str, ...] = tuple(name for name, _ in TCP_INFO_JSON)


def tcp_info_to_dict(info: TcpInfo) -> dict:
    """The documented JSON shape of tcp_info (docs/json.md)."""
    return {name: getattr(info, attr) for name, attr in TCP_INFO_JSON}


@dataclass(slots=True)
class Attribution:
    """How well the process scan went: what it could not see, and why."""

    scanned: bool = False
    unattributed: int = 0  # sockets with an inode that no visible process holds
    denied_processes: int = 0  # /proc/<pid>/fd we may not read (other users' processes)
    vanished_processes: int = 0  # exited while we scanned
    # inode -> why that socket has no owner: "gone" (closed or its process exited
    # after the table was read), "denied" (its uid's processes are unreadable),
    # "hidden" (no visible process holds it: another PID namespace, a restricted /proc)
    causes: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class Snapshot:
    """Everything one collection saw, at one moment."""

    sockets: list[Socket]
    taken_at: float  # time.time()
    source: Source  # the source actually used: netlink, proc or psutil
    attribution: Attribution = field(default_factory=Attribution)
    # what a person should know about how this was collected (a fallback, say); the CLI
    # prints them on stderr, the library never prints
    notes: list[str] = field(default_factory=list)
    # pid -> the service it belongs to; filled when ownership details were asked for
    services: dict[int, Service] = field(default_factory=dict)
    namespaces: list[NetNamespace] = field(default_factory=list)  # the ones read
    hidden_namespaces: int = 0  # namespaces that exist but could not be read

    # an earlier sample of the same sockets (with tcp_info), for detectors that compare
    # two moments (slow connections); None when only one was taken
    previous: Snapshot | None = None

    def service_of(self, proc: ProcessRef | None) -> Service | None:
        return None if proc is None else self.services.get(proc.pid)
    # drop counters of an earlier moment, for the drop detector (None: no earlier look)
    drops_before: DropBaseline | None = None

    def __post_init__(self) -> None:
        self.source = Source(self.source)  # library callers may pass the name


class _Model(type(enum)):  # types.ModuleType, without importing types
    """This module, whose namespace as a whole (`model.__dict__`, `vars(model)`) holds
    the classes named lazily too: typing.get_type_hints() and inspect.get_annotations()
    resolve annotations in it (`tcp_info: TcpInfo | None`), and cannot reach the module's
    __getattr__. Asking for the whole namespace imports their modules; an attribute, a
    from-import or `import sockstat.model` does not (none reads it through `__dict__`)."""

    @property
    def __dict__(self):
        namespace = _NAMESPACE(self)
        for name in _ELSEWHERE.keys() - namespace.keys():
            namespace[name] = __getattr__(name)
        return namespace


_NAMESPACE = type(enum).__dict__["__dict__"].__get__
# last: creating a dataclass reads the namespace of the module it is defined in, which
# must not import the lazy classes (they import this module) while it is executed
sys.modules[__name__].__class__ = _Model
