"""Resetting sockets: choose them with a Query, preview, then ask the kernel to destroy
them one by one (SOCK_DESTROY over sock_diag, as `ss -K` does).

    from sockstat import kill
    from sockstat.query import Query
    plan = kill.plan(Query.build(states=["close-wait"], pids=[1234]))
    for target in plan.targets:          # what would be reset, and what that frees
        print(target.socket.local, target.frees, target.keeps)
    results = kill.apply(plan)           # needs CAP_NET_ADMIN

Safety lives here, not in the CLI: an empty filter is refused (UsageError), LISTEN and
unconnected UDP sockets are left out unless the query asks for listeners, and each
request carries the socket's cookie from the dump, so a socket that closed in between
and whose four-tuple was taken by a new one is reported as gone, never killed.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
from dataclasses import dataclass, field

from sockstat.errors import PermissionDenied, SourceUnavailable, UsageError
from sockstat.humanize import printable
from sockstat.model import Proto, Socket, TcpState
from sockstat.query import Query

CAPABILITY = "CAP_NET_ADMIN"
KERNEL_OPTION = "CONFIG_INET_DIAG_DESTROY"


class Outcome(enum.StrEnum):
    """What happened to one socket; the values are what JSON and people see."""

    WOULD_RESET = "would_reset"  # preview: nothing was done
    DESTROYED = "destroyed"
    ALREADY_GONE = "already_gone"
    NOT_PERMITTED = "not_permitted"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        return self in (Outcome.WOULD_RESET, Outcome.DESTROYED, Outcome.ALREADY_GONE)


@dataclass(slots=True)
class Target:
    """One socket to reset, what resetting it frees and what it does not."""

    socket: Socket
    frees: str
    keeps: str  # empty when nothing is left behind
    outcome: Outcome = Outcome.WOULD_RESET
    error: str | None = None  # the kernel's reason when it refused

    def to_dict(self) -> dict:
        """The stable JSON shape of one result (docs/kill.md)."""
        return {"result": self.outcome.value, "error": self.error, "frees": self.frees,
                "does_not_free": self.keeps or None, "socket": self.socket.to_dict()}


@dataclass(slots=True)
class Plan:
    targets: list[Target]
    listening_skipped: list[Socket] = field(default_factory=list)
    applied: bool = False
    netns: str | None = None  # the --netns selection the sockets were read from

    def counts(self) -> dict[str, int]:
        counts = {o.value: 0 for o in Outcome}
        for target in self.targets:
            counts[target.outcome.value] += 1
        return counts

    @property
    def all_ok(self) -> bool:
        return all(t.outcome.ok for t in self.targets)

    def to_dict(self) -> dict:
        return {"applied": self.applied, "matched": len(self.targets),
                "listening_skipped": len(self.listening_skipped), "counts": self.counts(),
                "sockets": [t.to_dict() for t in self.targets]}


def narrows(query: Query) -> bool:
    """True when the query selects something narrower than 'every socket': protocol and
    address family alone do not count (`sockstat kill -t` would reset every TCP socket), nor
    does --listening (`sockstat kill -l` would reset every listener, sshd's too)."""
    return query != dataclasses.replace(Query(), protos=query.protos,
                                        families=query.families,
                                        listening=query.listening)


def is_listener(sock: Socket) -> bool:
    return sock.state is TcpState.LISTEN or (sock.proto is Proto.UDP
                                             and sock.state is TcpState.CLOSE)


def plan(query: Query, *, source: str = "netlink", netns: str | None = None) -> Plan:
    """The sockets `query` selects, as reset targets (nothing is changed). Listeners
    are kept apart unless the query is for listeners (`--listening`). netns: the
    network namespaces to read instead of this one, as collect() reads them."""
    if not narrows(query):
        raise UsageError("kill needs a filter (a port, state, process, user or address): "
                         "it never resets every socket")
    if Proto.UNIX in query.protos:
        # SOCK_DESTROY is an inet_diag request: the kernel has no reset for AF_UNIX
        if not query.protos - {Proto.UNIX}:
            raise UsageError("kill resets TCP and UDP sockets: the kernel cannot reset a "
                             "UNIX socket (stop or restart the program that holds it)")
        query = dataclasses.replace(query, protos=query.protos - {Proto.UNIX})
    from sockstat.collect import collect

    # cookies and exact ids come only from a netlink dump; owners name the fds left behind
    snap = collect(query, source=source, processes=True, netns=netns)
    if netns is None and not snap.source.can.cookies:
        raise SourceUnavailable("resetting sockets needs the netlink sock_diag source")
    targets, skipped = [], []
    for sock in snap.sockets:
        if is_listener(sock) and not query.listening:
            skipped.append(sock)
        else:
            targets.append(describe(sock))
    return Plan(targets=targets, listening_skipped=skipped, netns=netns)


def _kind(sock: Socket) -> str:
    # UDP first: an unconnected UDP socket counts as a listener for safety, but a reset
    # frees its port binding, not a TCP accept queue
    if sock.proto is Proto.UDP:
        return "udp"
    if is_listener(sock):
        return "listener"
    if sock.state is TcpState.CLOSE_WAIT:
        return "close_wait"
    if not sock.inode:  # TIME_WAIT, SYN_RECV, orphans: no program holds them
        return "mini"
    return "connection"


def describe(sock: Socket) -> Target:
    """What resetting `sock` frees and keeps, in words (texts: sockstat.explain)."""
    from sockstat.explain import KILL_FREES, KILL_KEEPS, KILL_UNKNOWN_OWNER

    kind = _kind(sock)
    proc = sock.process
    if proc is not None and proc.via_listener:  # a guess from the port, not a holder
        proc = None
    owner = printable(f"{proc.name}/{proc.pid}") if proc else KILL_UNKNOWN_OWNER
    if proc is not None and sock.others:  # forked children hold the same socket
        n = len(sock.others)
        owner += f" (and {n} more process{'es' if n != 1 else ''}: {_pids(sock.others)})"
    fd = f"fd {proc.fd}" if proc is not None and proc.fd is not None else "its fd"
    values = {"owner": owner, "fd": fd, "port": sock.local.port}
    return Target(socket=sock, frees=KILL_FREES[kind].format(**values),
                  keeps=KILL_KEEPS[kind].format(**values))


def _pids(processes, limit: int = 5) -> str:
    shown = printable(", ".join(f"{p.name}/{p.pid}" for p in processes[:limit]))
    return shown + (", …" if len(processes) > limit else "")


def apply(plan: Plan) -> Plan:
    """Reset every target, recording each outcome. Raises PermissionDenied (one line
    naming the capability) or SourceUnavailable (kernel without support) when the very
    first request shows that none can succeed. A socket of another network namespace is
    reset through a netlink socket made inside it (sock_diag acts on its own namespace)."""
    from sockstat.collect import netlink

    sockets = _namespace_sockets(plan.netns)
    own = netlink.open_socket()
    try:
        first = True
        for seq, target in enumerate(plan.targets, start=1):
            sock = target.socket
            nl = own if sock.netns is None or sock.netns.current \
                else sockets.get(sock.netns.inode)
            if nl is None:
                target.outcome = Outcome.NOT_PERMITTED
                target.error = (f"cannot enter network namespace {sock.netns.label} "
                                "(needs CAP_SYS_ADMIN)")
                continue
            if sock.cookie is None:  # read from /proc/<pid>/net: nothing to name it by
                target.outcome, target.error = Outcome.FAILED, "no socket cookie (read from /proc)"
                continue
            code = netlink.destroy(sock, nl, seq)
            target.outcome, target.error = _outcome(code)
            if first and code in (errno.EPERM, errno.EACCES):
                raise PermissionDenied(
                    f"resetting sockets needs {CAPABILITY} (the kernel refused: "
                    f"{_strerror(code)}); nothing was changed",
                    hint=f"run as root or grant {CAPABILITY}")
            if first and code == errno.EOPNOTSUPP:
                raise SourceUnavailable(
                    f"this kernel cannot reset sockets: it was built without "
                    f"{KERNEL_OPTION}; nothing was changed")
            first = False
    finally:
        own.close()
        for nl in sockets.values():
            nl.close()
    plan.applied = True
    return plan


def _namespace_sockets(spec: str | None) -> dict:
    """netns inode -> a sock_diag socket made inside it, for the other namespaces of a
    --netns selection (none where entering is not allowed)."""
    if spec is None:
        return {}
    from sockstat.collect import netns as netns_mod

    out = {}
    for opened in netns_mod.open_all(netns_mod.select(spec)):
        if opened.netlink is None:
            continue
        if opened.namespace.current:
            opened.netlink.close()
        else:
            out[opened.namespace.inode] = opened.netlink
    return out


def _strerror(code: int) -> str:
    import os

    return os.strerror(code)


def _outcome(code: int) -> tuple[Outcome, str | None]:
    if code == 0:
        return Outcome.DESTROYED, None
    # ENOENT: no such socket any more; ESTALE: its four-tuple belongs to a new socket now
    if code in (errno.ENOENT, errno.ESTALE):
        return Outcome.ALREADY_GONE, None
    if code in (errno.EPERM, errno.EACCES):
        return Outcome.NOT_PERMITTED, _strerror(code)
    return Outcome.FAILED, _strerror(code)
