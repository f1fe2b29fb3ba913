"""Who owns each socket: inode -> (pid, fd, process name, user), from /proc/*/fd.

The kernel's socket table knows inodes, not processes; the only way to name the process
is to read every /proc/<pid>/fd/* link and match `socket:[<inode>]`. That is the costly
part of `ss -p` (its inode map is a 256-bucket hash); here a dict and a scan that stops
as soon as every wanted inode is found (`watch` keeps the map across refreshes).

Processes that exit during the scan, or whose fds we may not read (other users', unless
root), are skipped and counted: the output then says how many sockets could not be
attributed and that root would show them.

TIME_WAIT and SYN_RECV sockets have no inode (they are kernel mini-sockets owned by no
file), nor do connections still in the accept queue or orphans after close(). They are
attributed to the process whose LISTEN socket holds the same local port,
marked `via_listener`, so `sockstat --port 8080` names the server behind its TIME_WAITs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sockstat.model import Attribution, ProcessRef, Socket, TcpState

_SOCKET_PREFIX = "socket:["


@dataclass
class OwnerMap:
    """inode -> ProcessRef, plus what the scan could not see."""

    by_inode: dict[int, ProcessRef] = field(default_factory=dict)
    denied_processes: int = 0
    vanished_processes: int = 0


class ProcessNames:
    """pid -> (name, user) from /proc/<pid>/comm and the owner of /proc/<pid>."""

    def __init__(self, procfs: str) -> None:
        self.procfs = procfs
        self._users: dict[int, str] = {}

    def lookup(self, pid: int) -> tuple[str, str | None]:
        base = f"{self.procfs}/{pid}"
        try:
            with open(f"{base}/comm", "rb") as f:
                name = f.read().decode("utf-8", "replace").rstrip("\n")
            uid = os.stat(base).st_uid
        except OSError:
            return "?", None
        return name, self.user_name(uid)

    def user_name(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            import pwd

            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name


def scan(procfs: str = "/proc", wanted: set[int] | None = None,
         exclude_pid: int | None = None) -> OwnerMap:
    """Map socket inodes to their processes.

    `wanted`: stop as soon as all of these are found (None: scan everything). `watch`
    keeps the map across refreshes and asks only for new inodes (sockstat/watch/owners.py).
    """
    result = OwnerMap()
    remaining = None if wanted is None else set(wanted)
    if remaining is not None and not remaining:
        return result
    names = ProcessNames(procfs)
    readlink = os.readlink
    prefix_len = len(_SOCKET_PREFIX)
    try:
        pids = [int(e) for e in os.listdir(procfs) if e.isdigit()]
    except OSError:
        return result
    for pid in pids:
        if pid == exclude_pid:
            continue
        fd_dir = f"{procfs}/{pid}/fd"
        try:
            entries = os.listdir(fd_dir)
        except PermissionError:
            result.denied_processes += 1
            continue
        except OSError:  # exited (ENOENT) or a zombie
            result.vanished_processes += 1
            continue
        proc_ref = None
        for entry in entries:
            try:
                target = readlink(f"{fd_dir}/{entry}")
            except PermissionError:  # listable but not readable (another user, ptrace rules)
                result.denied_processes += 1
                break
            except OSError:
                continue  # fd closed while we looked
            if not target.startswith(_SOCKET_PREFIX):
                continue
            inode = _socket_inode(target, f"{fd_dir}/{entry}", prefix_len)
            if remaining is not None and inode not in remaining:
                continue
            if inode in result.by_inode and result.by_inode[inode].pid < pid:
                continue  # shared (fork): the parent, the lowest pid, is named
            if proc_ref is None:
                name, user = names.lookup(pid)
                proc_ref = ProcessRef(pid, name, None, user)
            result.by_inode[inode] = ProcessRef(pid, proc_ref.name, int(entry), proc_ref.user)
            if remaining is not None:
                remaining.discard(inode)
        if remaining is not None and not remaining:
            break
    return result


def _socket_inode(target: str, link: str, prefix_len: int) -> int:
    """'socket:[12345]' -> 12345; a link that only looks like one is a ParseError."""
    digits = target[prefix_len:-1]
    if not (target.endswith("]") and digits.isascii() and digits.isdigit()):
        from sockstat.errors import ParseError

        raise ParseError(f"{link}: fd link {target!r} is not socket:[<inode>]")
    return int(digits)


class BackgroundScan:
    """A full scan running in a forked child, on the other core, while the caller reads
    the socket table: at 100k sockets both take ~0.3 s, and a thread would not overlap
    them (the scan's Python loop holds the GIL). Only in a single-threaded process
    (forking one with threads is unsafe); elsewhere `result()` simply scans then.

    Use as a context manager: leaving it early (an error, Ctrl-C) kills the child.
    """

    def __init__(self, procfs: str = "/proc") -> None:
        self.procfs = procfs
        self._pid: int | None = None
        self._read_fd: int | None = None

    def __enter__(self) -> BackgroundScan:
        import threading

        if threading.active_count() != 1 or not hasattr(os, "fork"):
            return self
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            return self
        if pid == 0:  # the child: scan, send, and leave without any Python clean-up
            code = 1
            try:
                os.close(read_fd)
                import marshal

                # the child holds copies of the caller's fds: never name it
                found = scan(self.procfs, None, exclude_pid=os.getpid())
                rows = [(inode, ref.pid, ref.fd, ref.name, ref.user)
                        for inode, ref in found.by_inode.items()]
                data = marshal.dumps((rows, found.denied_processes,
                                      found.vanished_processes))
                view = memoryview(data)
                while view:
                    view = view[os.write(write_fd, view):]
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self._pid, self._read_fd = pid, read_fd
        return self

    def result(self, wanted: set[int] | None = None) -> OwnerMap:
        """The owner map (waits for the child); a plain scan where there was none."""
        if self._pid is None:
            return scan(self.procfs, wanted)
        import marshal

        chunks = []
        with os.fdopen(self._read_fd, "rb") as pipe:
            self._read_fd = None
            while chunk := pipe.read(1 << 20):
                chunks.append(chunk)
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if status != 0 or not chunks:
            return scan(self.procfs, wanted)  # the child failed: do it here
        rows, denied, vanished = marshal.loads(b"".join(chunks))
        return OwnerMap({inode: ProcessRef(pid, name, fd, user)
                         for inode, pid, fd, name, user in rows}, denied, vanished)

    def __exit__(self, *exc) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
        if self._pid is not None:
            import signal

            try:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
            except OSError:
                pass
            self._pid = None


def attribute(sockets: list[Socket], owners: OwnerMap,
              listeners: list[Socket] | None = None) -> Attribution:
    """Fill Socket.process from the owner map; TIME_WAIT/SYN_RECV via the listener."""
    by_inode = owners.by_inode
    unattributed = 0
    for sock in sockets:
        if sock.inode:
            ref = by_inode.get(sock.inode)
            if ref is None:
                unattributed += 1
            sock.process = ref
    if listeners is not None:
        for sock in listeners:
            if sock.inode:
                sock.process = by_inode.get(sock.inode)
    attribute_via_listeners(sockets, listeners if listeners is not None else sockets)
    return Attribution(
        scanned=True, unattributed=unattributed,
        denied_processes=owners.denied_processes,
        vanished_processes=owners.vanished_processes,
    )


def attribute_via_listeners(sockets: list[Socket], listeners: list[Socket]) -> None:
    """Give sockets with no owner of their own the process of the listener on their
    local port (marked via_listener)."""
    by_port: dict[tuple[str, int], ProcessRef] = {}
    for sock in listeners:
        if sock.state is TcpState.LISTEN and sock.process is not None:
            by_port.setdefault((sock.local.address, sock.local.port), sock.process)
    if not by_port:
        return
    for sock in sockets:
        # inode 0: a mini-socket (TIME_WAIT, SYN_RECV), a connection still waiting in
        # the accept queue, or an orphan the server already closed
        if sock.process is None and not sock.inode and sock.state is not TcpState.LISTEN:
            port = sock.local.port
            ref = (by_port.get((sock.local.address, port)) or by_port.get(("0.0.0.0", port))
                   or by_port.get(("::", port)))
            if ref is not None:
                sock.process = ProcessRef(ref.pid, ref.name, None, ref.user, via_listener=True)
