"""Who owns each socket: inode -> (pid, fd, process name, user), from /proc/*/fd.

The kernel's socket table knows inodes, not processes; the only way to name the process
is to read every /proc/<pid>/fd/* link and match `socket:[<inode>]`. That is the costly
part of `ss -p` (its inode map is a 256-bucket hash); here a dict and a scan that stops
as soon as every wanted inode is found (`watch` keeps the map across refreshes).

Processes that exit during the scan, or whose fds we may not read (other users', unless
root), are skipped and counted: the output then says how many sockets could not be
attributed and that root would show them.

A socket can have several holders: a forked child shares its parent's sockets (prefork
servers: every worker holds the listener). The lowest pid is the primary holder
(`Socket.process`); the others go to `Socket.others`. A narrow scan still stops once it
has seen every wanted inode, then reads the fds of the holders' forked relatives
(children, parent, siblings) to find the other holders. A socket passed to an unrelated
process over a UNIX socket (SCM_RIGHTS) is found there only by a full scan (the default
listing's).

TIME_WAIT and SYN_RECV sockets have no inode (they are kernel mini-sockets owned by no
file), nor do connections still in the accept queue or orphans after close(). They are
attributed to the process whose LISTEN socket holds the same local port,
marked `via_listener`, so `sockstat --port 8080` names the server behind its TIME_WAITs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sockstat.model import Attribution, ProcessRef, Socket, TcpState, new_process_ref

_SOCKET_PREFIX = "socket:["


@dataclass
class OwnerMap:
    """inode -> ProcessRef, plus what the scan could not see."""

    by_inode: dict[int, ProcessRef] = field(default_factory=dict)
    denied_processes: int = 0
    vanished_processes: int = 0
    # inode -> the holders besides the primary one (only for shared sockets)
    shared: dict[int, list[ProcessRef]] = field(default_factory=dict)
    denied_uids: set[int] = field(default_factory=set)  # owners of unreadable processes

    def add(self, inode: int, ref: ProcessRef) -> None:
        """Record a holder; the lowest pid stays primary, one entry per process."""
        first = self.by_inode.get(inode)
        if first is None:
            self.by_inode[inode] = ref
            return
        if first.pid == ref.pid:
            return  # the same socket twice in one process (dup): one holder
        others = self.shared.setdefault(inode, [])
        if any(o.pid == ref.pid for o in others):
            return
        if ref.pid < first.pid:
            self.by_inode[inode] = ref
            others.append(first)
        else:
            others.append(ref)
        others.sort(key=lambda o: o.pid)

    def rows(self) -> list[tuple]:
        """Every (inode, pid, fd, name, user), primary holders first (for marshal)."""
        out = [(inode, r.pid, r.fd, r.name, r.user) for inode, r in self.by_inode.items()]
        out += [(inode, r.pid, r.fd, r.name, r.user)
                for inode, refs in self.shared.items() for r in refs]
        return out

    @classmethod
    def from_rows(cls, rows, denied: int = 0, vanished: int = 0,
                  denied_uids=(), wanted: set[int] | None = None) -> OwnerMap:
        """The map of `rows` (see rows()); of the `wanted` inodes only, when given."""
        result = cls(denied_processes=denied, vanished_processes=vanished,
                     denied_uids=set(denied_uids))
        if wanted is not None:
            rows = [row for row in rows if row[0] in wanted]
        by_inode, add = result.by_inode, result.add
        for inode, pid, fd, name, user in rows:
            ref = new_process_ref(pid, name, fd, user)
            if inode in by_inode:
                add(inode, ref)  # shared or dup'ed: the rare path
            else:
                by_inode[inode] = ref
        return result


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
    """Map socket inodes to every process holding them.

    `wanted`: only these inodes (None: every socket). The scan stops once each wanted
    inode has been seen, then reads the fds of the found holders' relatives only (their
    children, their parent, and siblings under a common parent other than init), since a
    shared socket is held by forked relatives: a narrow query does not pay for reading
    every process's fds. `watch` keeps the map across refreshes and asks only for new
    inodes (sockstat/watch/owners.py).
    """
    result = OwnerMap()
    if wanted is not None and not wanted:
        return result
    try:
        pids = [int(e) for e in os.listdir(procfs) if e.isdigit()]
    except OSError:
        return result
    if exclude_pid is not None:
        pids = [pid for pid in pids if pid != exclude_pid]
    me = os.getpid()
    if wanted is not None and me in pids:
        # a narrow query is often about the caller's own sockets (the lab's, a library
        # user's): read this process first, so the scan can stop before the others
        pids.remove(me)
        pids.insert(0, me)
    names = ProcessNames(procfs)
    done = _scan_pids(result, procfs, pids, wanted, names, stop=True)
    if wanted is not None and done < len(pids):
        holders = {r.pid for r in result.by_inode.values()}
        holders |= {r.pid for refs in result.shared.values() for r in refs}
        found = set(result.by_inode)
        relatives = _relatives(procfs, holders, pids[done:])
        _scan_pids(result, procfs, relatives, found, names, stop=False)
    return result


def _scan_pids(result: OwnerMap, procfs: str, pids: list[int], wanted: set[int] | None,
               names: ProcessNames, stop: bool) -> int:
    """Read the fds of `pids` into `result`; returns how many pids were read (all of
    them, or fewer when `stop` and every wanted inode has been seen)."""
    add = result.add
    by_inode = result.by_inode
    readlink = os.readlink
    prefix_len = len(_SOCKET_PREFIX)
    remaining = set(wanted) if (stop and wanted is not None) else None
    for done, pid in enumerate(pids, 1):
        fd_dir = f"{procfs}/{pid}/fd"
        try:
            entries = os.listdir(fd_dir)
        except PermissionError:
            _denied(result, procfs, pid)
            continue
        except OSError:  # exited (ENOENT) or a zombie
            result.vanished_processes += 1
            continue
        proc_ref = None
        for entry in entries:
            try:
                target = readlink(f"{fd_dir}/{entry}")
            except PermissionError:  # listable but not readable (another user, ptrace rules)
                _denied(result, procfs, pid)
                break
            except OSError:
                continue  # fd closed while we looked
            if not target.startswith(_SOCKET_PREFIX):
                continue
            inode = _socket_inode(target, f"{fd_dir}/{entry}", prefix_len)
            if wanted is not None and inode not in wanted:
                continue
            if proc_ref is None:
                name, user = names.lookup(pid)
                proc_ref = ProcessRef(pid, name, None, user)
            ref = new_process_ref(pid, proc_ref.name, int(entry), proc_ref.user)
            if inode in by_inode:
                add(inode, ref)  # shared (fork) or dup'ed: the rare path
            else:
                by_inode[inode] = ref
            if remaining is not None:
                remaining.discard(inode)
        if remaining is not None and not remaining:
            return done
    return len(pids)


def _relatives(procfs: str, holders: set[int], candidates: list[int]) -> list[int]:
    """The candidates that are a child, the parent or a sibling (common parent other
    than init) of a holder; one small /proc/<pid>/stat read each."""
    from sockstat.collect.services import parse_stat

    def ppid(pid: int) -> int | None:
        try:
            with open(f"{procfs}/{pid}/stat", "rb") as f:
                return parse_stat(f.read().decode("utf-8", "replace"))[0]
        except (OSError, ValueError):
            return None

    parents = {p for p in (ppid(h) for h in holders) if p is not None}
    siblings_of = {p for p in parents if p > 1}
    out = []
    for pid in candidates:
        parent = ppid(pid)
        if pid in parents or parent in holders or parent in siblings_of:
            out.append(pid)
    return out


def _denied(result: OwnerMap, procfs: str, pid: int) -> None:
    result.denied_processes += 1
    try:
        result.denied_uids.add(os.stat(f"{procfs}/{pid}").st_uid)
    except OSError:
        pass


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
        # every (inode, pid, fd, name, user) the child saw, once result() has them:
        # a caller that asked for some inodes can build the map of others later
        self.rows: list[tuple] | None = None

    @property
    def forked(self) -> bool:
        """Whether a child is scanning every process (result() then reads its rows;
        without one, result(wanted) scans for the wanted inodes only)."""
        return self._pid is not None

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
                data = marshal.dumps((found.rows(), found.denied_processes,
                                      found.vanished_processes, list(found.denied_uids)))
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
        """The owner map of the `wanted` inodes (None: all) from the child's full scan
        (waits for it); a plain scan where there was none."""
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
        rows, denied, vanished, denied_uids = marshal.loads(b"".join(chunks))
        self.rows = rows
        return OwnerMap.from_rows(rows, denied, vanished, denied_uids, wanted)

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
    shared = owners.shared
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
    if shared:  # few sockets are shared: a pass over those only
        for group in (sockets, listeners or ()):
            for sock in group:
                others = shared.get(sock.inode) if sock.inode else None
                if others:
                    sock.others = tuple(others)
    attribute_via_listeners(sockets, listeners if listeners is not None else sockets)
    return Attribution(
        scanned=True, unattributed=unattributed,
        denied_processes=owners.denied_processes,
        vanished_processes=owners.vanished_processes,
    )


def attribute_via_listeners(sockets: list[Socket], listeners: list[Socket]) -> None:
    """Give sockets with no owner of their own the process of the listener on their
    local port (marked via_listener)."""
    # keyed by namespace too: every network namespace has its own port 80
    by_port: dict[tuple[int, str, int], ProcessRef] = {}
    for sock in listeners:
        if sock.state is TcpState.LISTEN and sock.process is not None:
            ns = sock.netns.inode if sock.netns is not None else 0
            by_port.setdefault((ns, sock.local.address, sock.local.port), sock.process)
    if not by_port:
        return
    via: dict[ProcessRef, ProcessRef] = {}  # one via_listener ref per listener, shared
    for sock in sockets:
        # inode 0: a mini-socket (TIME_WAIT, SYN_RECV), a connection still waiting in
        # the accept queue, or an orphan the server already closed
        if sock.process is None and not sock.inode and sock.state is not TcpState.LISTEN:
            port = sock.local.port
            ns = sock.netns.inode if sock.netns is not None else 0
            ref = (by_port.get((ns, sock.local.address, port))
                   or by_port.get((ns, "0.0.0.0", port)) or by_port.get((ns, "::", port)))
            if ref is not None:
                found = via.get(ref)
                if found is None:
                    found = via[ref] = ProcessRef(ref.pid, ref.name, None, ref.user,
                                                  via_listener=True)
                sock.process = found



GONE, DENIED, HIDDEN = "gone", "denied", "hidden"
CAUSE_CHECK_LIMIT = 256  # kernel lookups per collection, at most


def unattributed_causes(sockets: list[Socket], owners: OwnerMap,
                        still_there=None) -> dict[int, str]:
    """inode -> why no process was found for it, for each socket left without one:
    GONE (the socket closed, or its process exited, after the table was read),
    DENIED (its uid owns processes whose fds we may not read), or HIDDEN (no process
    we can see holds it: another PID namespace, a restricted /proc).
    `still_there(sock)`: True/False/None, whether the kernel still has the socket."""
    causes: dict[int, str] = {}
    checked = 0
    for sock in sockets:
        if not sock.inode or sock.process is not None:
            continue
        alive = None
        if still_there is not None and checked < CAUSE_CHECK_LIMIT:
            checked += 1
            alive = still_there(sock)
        if alive is False:
            causes[sock.inode] = GONE
        elif sock.uid in owners.denied_uids:
            causes[sock.inode] = DENIED
        elif alive is None and owners.vanished_processes:
            causes[sock.inode] = GONE  # cannot check: processes did exit meanwhile
        else:
            causes[sock.inode] = HIDDEN
    return causes
