"""Network namespaces: find them, and open a sock_diag socket inside each.

Every container has its own network namespace, with its own socket table: a plain
sock_diag dump (or /proc/net/tcp) sees only the namespace sockstat runs in. Namespaces
are found from /proc/<pid>/ns/net (deduplicated by inode: thousands of processes share
a handful) and /run/netns/* (`ip netns add` names, which may hold no process at all).

A netlink socket belongs to the namespace it was created in, for its whole life. So a
short-lived thread enters each other namespace in turn with setns() (which moves only
that thread), creates a socket there and ends; the dumps run on the usual code, from
any thread, and the process itself never changes namespace: no fork, no second parser.
Where setns() is not allowed (no CAP_SYS_ADMIN) the table is read from
/proc/<pid>/net/* of a process inside, when there is one.

Python 3.11 has no os.setns: ctypes calls libc's (stdlib only; one call).

Nothing here runs unless --netns is given.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from sockstat.errors import UsageError
from sockstat.placement import NetNamespace

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), include/uapi/linux/nsfs.h (Linux 4.11+)
RUN_NETNS = "/run/netns"
CONTAINER_SAMPLE = 16  # processes per namespace whose cgroup names its container


@dataclass
class Target:
    """A namespace to read: where to enter it, and which processes live in it."""

    inode: int
    path: str  # /proc/<pid>/ns/net or /run/netns/<name>
    name: str | None = None
    pids: list[int] = field(default_factory=list)
    current: bool = False


@dataclass
class Discovery:
    targets: list[Target]
    unreadable_processes: int = 0  # /proc/<pid>/ns/net we may not stat (not root)


def current_inode(procfs: str = "/proc") -> int:
    return os.stat(f"{procfs}/self/ns/net").st_ino


def discover(procfs: str = "/proc", run_netns: str = RUN_NETNS) -> Discovery:
    """Every network namespace visible from here, current one first."""
    here = current_inode(procfs)
    by_inode: dict[int, Target] = {}
    unreadable = 0
    try:
        pids = sorted(int(e) for e in os.listdir(procfs) if e.isdigit())
    except OSError:
        pids = []
    for pid in pids:
        path = f"{procfs}/{pid}/ns/net"
        try:
            inode = os.stat(path).st_ino
        except PermissionError:
            unreadable += 1
            continue
        except OSError:
            continue  # exited, or a kernel thread
        target = by_inode.get(inode)
        if target is None:
            target = by_inode[inode] = Target(inode, path, current=inode == here)
        target.pids.append(pid)
    for name, inode in named(run_netns).items():
        target = by_inode.get(inode)
        if target is None:
            by_inode[inode] = Target(inode, f"{run_netns}/{name}", name, current=inode == here)
        elif target.name is None:
            target.name = name
    if here not in by_inode:
        by_inode[here] = Target(here, f"{procfs}/self/ns/net", current=True,
                                pids=[os.getpid()])
    targets = sorted(by_inode.values(), key=lambda t: (not t.current, t.name or "", t.inode))
    return Discovery(targets, unreadable)


def named(run_netns: str = RUN_NETNS) -> dict[str, int]:
    """`ip netns` names -> namespace inode (the bind mounts in /run/netns)."""
    out = {}
    try:
        names = sorted(os.listdir(run_netns))
    except OSError:
        return out
    for name in names:
        try:
            st = os.stat(f"{run_netns}/{name}")
        except OSError:
            continue  # a stale entry (namespace gone, mount left)
        if _is_nsfs(st):  # else the bare file `ip netns add` mounts on: no mount here
            out[name] = st.st_ino  # (deleted meanwhile, or mounted in another mount ns)
    return out


THIS = "self"  # in --netns: the namespace sockstat runs in (`--netns rvtest,self`)
PID_MAX = 4194304  # the kernel's PID_MAX_LIMIT: no pid is larger


def select(spec: str, procfs: str = "/proc", run_netns: str = RUN_NETNS) -> Discovery:
    """--netns all | self | NAME | PID | PATH, or a comma list of them -> the namespaces
    to read, each once (UsageError for any that does not exist: every item is checked,
    even next to `all`)."""
    parts = [p.strip() for p in spec.split(",")]
    if not any(parts):
        raise UsageError("--netns needs a value: all, self, an `ip netns` name, a pid "
                         "or a path")
    found = discover(procfs, run_netns)
    chosen: dict[int, Target] = {}
    for part in parts:
        if part and part != "all":
            for target in _select_one(part, found, procfs, run_netns):
                chosen.setdefault(target.inode, target)
    if "all" in parts:
        return found
    return Discovery(list(chosen.values()), found.unreadable_processes)


def _select_one(spec: str, found: Discovery, procfs: str, run_netns: str) -> list[Target]:
    if spec == THIS:
        return [t for t in found.targets if t.current]
    if spec.isascii() and spec.isdigit():  # "²".isdigit() too, which int() refuses
        if len(spec) > len(str(PID_MAX)) or int(spec) > PID_MAX:
            raise UsageError(f"--netns {spec}: no such pid (pids go up to {PID_MAX})")
        path = f"{procfs}/{int(spec)}/ns/net"
    elif "/" in spec:
        path = spec
    else:
        path = f"{run_netns}/{spec}"
        if not os.path.exists(path):
            known = ", ".join(sorted(named(run_netns))) or "none"
            raise UsageError(f"no network namespace named {spec!r} (ip netns names: "
                             f"{known}; or all, self, a pid or a path)")
    try:
        st = os.stat(path)
    except PermissionError:
        why = ("another user namespace keeps it from root here" if os.geteuid() == 0
               else "entering another network namespace needs root")
        raise UsageError(f"{path}: permission denied ({why})") from None
    except OSError as exc:
        raise UsageError(f"no network namespace at {path} ({exc.strerror})") from None
    for target in found.targets:
        if target.inode == st.st_ino:
            return [target]
    if not _is_nsfs(st, procfs) or not _is_network(path):
        raise UsageError(f"{path} is not a network namespace")
    return [Target(st.st_ino, path, name=os.path.basename(path)
                   if path.startswith(run_netns) else None)]


def _is_nsfs(st: os.stat_result, procfs: str = "/proc") -> bool:
    """Namespace files (/proc/PID/ns/*, their bind mounts) all live on the nsfs
    pseudo-filesystem: the same device as our own /proc/self/ns/net."""
    try:
        return st.st_dev == os.stat(f"{procfs}/self/ns/net").st_dev
    except OSError:
        return False


def _is_network(path: str) -> bool:
    """Whether the nsfs file at `path` is a network namespace's (every kind of namespace
    lives on nsfs: /proc/PID/ns/pid too): the kernel's NS_GET_NSTYPE, else, on a kernel
    without it, the kind a /proc/PID/ns/* link names ("net:[4026531840]")."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True  # cannot tell here: entering it says, as before
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        try:
            return os.readlink(path).startswith("net:")
        except OSError:
            return True  # a bind mount on such a kernel: entering it says
    finally:
        os.close(fd)


def label(target: Target, procfs: str = "/proc") -> NetNamespace:
    """The namespace as the model names it, with the container its processes run in
    (the most common one among a few of them; systemd units are not containers)."""
    from sockstat.collect import cgroup

    containers: Counter = Counter()
    for pid in target.pids[:CONTAINER_SAMPLE]:
        c = cgroup.read(procfs, pid)
        if c is not None and c.runtime != "systemd":
            containers[c] += 1
    container = containers.most_common(1)[0][0] if containers and not target.current \
        else None
    return NetNamespace(target.inode, target.name, container, target.current)


def _setns_function():
    """setns(fd, CLONE_NEWNET) for the calling thread: os.setns where Python has it
    (3.12+), else libc's through ctypes (stdlib only; one call)."""
    if hasattr(os, "setns"):
        return lambda fd: os.setns(fd, CLONE_NEWNET)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def setns(fd: int) -> None:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return setns


def netlink_sockets(paths: list[str]) -> list[tuple[socket.socket, dict] | None]:
    """(a sock_diag socket created inside, its /proc/net/sockstat counts) for each
    namespace at `paths`, in that order; None where entering is not allowed (no
    CAP_SYS_ADMIN) or failed.

    setns() moves only the calling thread, so one short-lived thread enters each
    namespace in turn, creates the socket there and reads that namespace's counters
    (/proc/thread-self/net: /proc/self/net would show the main thread's), then ends:
    the rest of the process never leaves its namespace, and nothing has to find the
    way back. No fork (which costs a big process, watch's or the exporter's, its page
    tables) and no descriptor passing: ~0.1 ms a namespace."""
    if not paths:
        return []
    import threading

    from sockstat.collect import netlink
    from sockstat.collect.kernel import read_sockstat

    setns = _setns_function()
    out: list[tuple[socket.socket, dict] | None] = [None] * len(paths)

    def enter_each() -> None:
        for i, path in enumerate(paths):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    setns(fd)
                finally:
                    os.close(fd)
                nl = netlink.open_socket()
            except Exception:  # noqa: BLE001 - not allowed, or gone: the caller falls back
                continue
            try:  # the namespace's own socket counts: empty tables need no dump
                counts = read_sockstat("/proc/thread-self")
            except Exception:  # noqa: BLE001 - unknown counts: every table is dumped
                counts = {}
            out[i] = (nl, counts)

    worker = threading.Thread(target=enter_each, name="sockstat-setns", daemon=True)
    worker.start()
    worker.join()
    return out


@dataclass
class Opened:
    namespace: NetNamespace
    netlink: socket.socket | None  # None: read /proc/<pid>/net/* instead, or nothing
    proc_root: str | None = None  # /proc/<pid> of a process inside, for that fallback
    counts: dict = field(default_factory=dict)  # its /proc/net/sockstat{,6}, if read

    def may_have(self, proto, family, states=None) -> bool:
        """False when the namespace's own counters say the table holds none of `states`
        (None: any), so its dump can be skipped (collect.kernel.may_hold)."""
        if not self.counts:
            return True
        from sockstat.collect.kernel import may_hold

        return may_hold(self.counts, proto, family, states)


def open_all(found: Discovery, procfs: str = "/proc",
             netlink: bool = True) -> Iterator[Opened]:
    """One Opened per target namespace; the caller closes the sockets. netlink=False
    (--source proc): /proc/<pid>/net/* of a process inside each, no sockets."""
    from sockstat.collect import netlink as netlink_mod
    from sockstat.collect.kernel import read_sockstat

    others = [t for t in found.targets if not t.current]
    made = netlink_sockets([t.path for t in others]) if netlink else [None] * len(others)
    sockets = dict(zip((t.inode for t in others), made, strict=True))
    try:
        for target in found.targets:
            ns = label(target, procfs)
            if target.current:
                yield Opened(ns, netlink_mod.open_socket() if netlink else None,
                             f"{procfs}/self", read_sockstat(f"{procfs}/self"))
                continue
            got = sockets.pop(target.inode)
            if got is None:
                path = _alive_path(target, procfs)
                if path is None:
                    continue  # it ended since it was found: nothing hidden, nothing to show
                if netlink and path != target.path:  # its first process exited meanwhile
                    got = netlink_sockets([path])[0]
            root = next((f"{procfs}/{pid}" for pid in target.pids
                         if os.access(f"{procfs}/{pid}/net/tcp", os.R_OK)), None)
            yield Opened(ns, None, root) if got is None else Opened(ns, got[0], root, got[1])
    finally:
        for got in sockets.values():  # the caller left early: close what it never got
            if got is not None:
                got[0].close()


def _alive_path(target: Target, procfs: str = "/proc") -> str | None:
    """A path that still leads to this namespace: its own, or another of its processes'
    (the first may have exited since discovery); None when it has ended (its processes
    gone, `ip netns delete`d). A path there but not ours to see counts as alive: that
    namespace is hidden, not gone."""
    candidates = [target.path] + [f"{procfs}/{pid}/ns/net"
                                  for pid in target.pids[1:CONTAINER_SAMPLE]]
    for path in candidates:
        try:
            if os.stat(path).st_ino == target.inode:
                return path
        except (FileNotFoundError, ProcessLookupError):
            continue
        except OSError:
            return path
    return None
