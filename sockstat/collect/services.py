"""Services: which processes form the unit a person restarts, and what they run in.

A prefork server (nginx, gunicorn, Apache, PostgreSQL) or a fork-per-connection one
(inetd style, `socat ...,fork`) is one master and many children of the same executable;
a leak spread over 30 children is one problem of one service, not 30 small ones. So each
process holding a socket is grouped with its parent when the parent runs the same
executable (the master keeps itself: it is the parent of the others), and the group is
named with its systemd unit or container from /proc/<pid>/cgroup (sockstat.collect.cgroup).

Costs a few small /proc reads per process that holds a socket (never per socket), and
runs only when asked for (check, summary, export, watch, --json, --netns, --container).
"""

from __future__ import annotations

import os
from operator import attrgetter

from sockstat.collect import cgroup
from sockstat.model import Snapshot
from sockstat.placement import Container, Service

_pid, _process = attrgetter("pid"), attrgetter("process")
_others, _peer_process = attrgetter("others"), attrgetter("peer_process")


class ProcessInfo:
    """pid -> (parent pid, executable, name), read once per pid."""

    def __init__(self, procfs: str = "/proc") -> None:
        self.procfs = procfs
        self._cache: dict[int, tuple[int, str, str] | None] = {}
        self._containers: dict[int, Container | None] = {}

    def get(self, pid: int) -> tuple[int, str, str] | None:
        if pid in self._cache:
            return self._cache[pid]
        info = None
        stat = self._stat(pid)
        if stat is not None:
            try:
                ppid, name = parse_stat(stat)
            except ValueError:
                pass
            else:
                try:
                    exe = os.readlink(f"{self.procfs}/{pid}/exe")
                except OSError:  # another user's process, a kernel thread: compare names
                    exe = "comm:" + name
                info = (ppid, exe, name)
        self._cache[pid] = info
        return info

    def _stat(self, pid: int) -> str | None:
        """The text of /proc/<pid>/stat, None once the process is gone. By os.open and
        one read (the line is well under 4 KiB): a buffered open() took twice as long."""
        try:
            fd = os.open(f"{self.procfs}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.read(fd, 4096).decode("utf-8", "replace")
        except OSError:
            return None
        finally:
            os.close(fd)

    def container(self, pid: int) -> Container | None:
        if pid not in self._containers:
            self._containers[pid] = cgroup.read(self.procfs, pid)
        return self._containers[pid]


class LastingProcessInfo(ProcessInfo):
    """ProcessInfo for one look after another (watch's refreshes). Each look
    (next_look()) reads a pid's /proc/<pid>/stat and executable again: its parent (a
    child is reparented when its parent exits), name (prctl, exec) and executable
    (exec; "... (deleted)" once an upgrade replaced the file) change while it runs. Its
    cgroup is read once per process: kept by pid and start time (stat's 22nd field,
    which tells a reused pid apart), forgotten when a look does not ask for it.

    So a process moved to another cgroup while it runs keeps its first container (the
    container runtimes and systemd place a process before it runs its program), as
    does a pid reused by a process started in the same clock tick (1/100 s) as the one
    it replaces.

    On the live /proc the stat files of up to `keep_open` processes stay open between
    looks and are read again with one pread (open, read and close took twice as long);
    a process gone, reading its file fails (ESRCH), even once its pid is reused. A
    tree that is not the live /proc has no such files: each look opens them. close()
    closes them (a later look opens them again)."""

    KEEP_OPEN = 256  # stat files at most, and not more than an eighth of the fd limit

    def __init__(self, procfs: str = "/proc", keep_open: int | None = None) -> None:
        super().__init__(procfs)
        if keep_open is None:
            keep_open = min(self.KEEP_OPEN, os.sysconf("SC_OPEN_MAX") // 8) \
                if procfs == "/proc" else 0
        self.keep_open = keep_open
        self._started: dict[int, str] = {}  # this look's start times, from the stat read
        self._kept: dict[int, tuple[str, Container | None]] = {}  # pid -> (start, container)
        self._last_look: dict[int, tuple[str, Container | None]] = {}
        self._files: dict[int, int] = {}  # pid -> its stat file's fd, kept open
        import weakref  # here: watch alone keeps files

        weakref.finalize(self, _close_all, self._files)

    def next_look(self) -> LastingProcessInfo:
        """Start another look: every pid is read again, but for its cgroup; the files
        of pids the last look did not ask for are closed."""
        for pid in self._files.keys() - self._cache.keys():
            os.close(self._files.pop(pid))
        self._cache = {}
        self._containers = {}
        self._started = {}
        self._last_look, self._kept = self._kept, {}
        return self

    def close(self) -> None:
        _close_all(self._files)

    def _stat(self, pid: int) -> str | None:
        stat = self._read_kept(pid)
        if stat is None:
            return None
        close_at = stat.rfind(")")
        if close_at > stat.find("(") >= 0:  # after the name, as parse_stat reads it
            fields = stat[close_at + 2:].split(None, 20)
            if len(fields) > 19:
                self._started[pid] = fields[19]
        return stat

    def _read_kept(self, pid: int) -> str | None:
        files = self._files
        fd = files.get(pid)
        if fd is not None:
            try:
                return os.pread(fd, 4096, 0).decode("utf-8", "replace")
            except OSError:  # gone (its pid may be another process's now)
                del files[pid]
                os.close(fd)
        if len(files) >= self.keep_open:
            return super()._stat(pid)
        try:
            fd = os.open(f"{self.procfs}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            stat = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            os.close(fd)
            return None
        files[pid] = fd
        return stat

    def container(self, pid: int) -> Container | None:
        if pid in self._containers:
            return self._containers[pid]
        started = self._started.get(pid)
        last = self._last_look.get(pid)
        if started is not None and last is not None and last[0] == started:
            found = last[1]
        else:
            found = cgroup.read(self.procfs, pid)
        self._containers[pid] = found
        if started is not None:
            self._kept[pid] = (started, found)
        return found


def _close_all(files: dict[int, int]) -> None:
    for fd in files.values():
        try:
            os.close(fd)
        except OSError:
            pass
    files.clear()


def parse_stat(text: str) -> tuple[int, str]:
    """(parent pid, name) from a /proc/<pid>/stat line. The name is in parentheses and
    may itself hold spaces and parentheses, so the last ')' ends it.

    >>> parse_stat("812 (nginx: worker) S 811 811 811 0 -1")
    (811, 'nginx: worker')
    """
    open_at = text.find("(")
    close_at = text.rfind(")")
    if open_at < 0 or close_at < open_at:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:60]!r}")
    fields = text[close_at + 2:].split(None, 2)  # state, parent, the rest
    if len(fields) < 2:
        raise ValueError(f"truncated /proc/<pid>/stat line: {text[:60]!r}")
    return int(fields[1]), text[open_at + 1:close_at]


def group(pids, info: ProcessInfo) -> dict[int, Service]:
    """pid -> Service for every pid given (pids that vanished are left out)."""
    pids = set(pids)
    known = {pid: info.get(pid) for pid in pids}
    known = {pid: i for pid, i in known.items() if i is not None}
    # a process whose parent runs the same executable is that parent's child
    master_of: dict[int, int] = {}
    for pid, (ppid, exe, _) in known.items():
        parent = info.get(ppid) if ppid > 1 else None
        master_of[pid] = ppid if parent is not None and parent[1] == exe else pid
    masters = {m for p, m in master_of.items() if m != p}
    out: dict[int, Service] = {}
    for pid, master in master_of.items():
        if pid in masters:
            master = pid  # the parent of other holders is a master, not a child
        ppid, exe, name = known[pid]
        master_info = known.get(master) or info.get(master) or (0, exe, name)
        container = info.container(master)
        out[pid] = Service(key=(master, exe), name=master_info[2], master_pid=master,
                           container=container)
    return out


def fill(snapshot: Snapshot, procfs: str = "/proc", info: ProcessInfo | None = None,
         sockets=None, pids=None) -> None:
    """Set snapshot.services for every holder and Socket.container (the primary
    holder's, else its namespace's). `sockets`: only for these (say, the CLOSE_WAIT
    ones a listing's marks judge), not the whole snapshot. `pids`: the services of
    these processes instead of the holders of `sockets` (collect.OwnerRequest: every
    holder of the table, though only some sockets are named)."""
    sockets = snapshot.sockets if sockets is None else sockets
    if pids is None:
        add_services(snapshot, sockets, procfs, info)
    else:
        snapshot.services.update(group(pids, info or ProcessInfo(procfs)))
    set_containers(snapshot, sockets)


def set_containers(snapshot: Snapshot, sockets) -> None:
    """Socket.container of each socket: its service's (snapshot.services), else its
    network namespace's."""
    services = snapshot.services
    for sock in sockets:
        proc = sock.process
        service = services.get(proc.pid) if proc is not None else None
        if service is not None and service.container is not None:
            sock.container = service.container
        elif sock.netns is not None and sock.netns.container is not None:
            sock.container = sock.netns.container


def add_services(snapshot: Snapshot, sockets=None, procfs: str = "/proc",
                 info: ProcessInfo | None = None) -> dict[int, Service]:
    """snapshot.services for every holder (and peer) of `sockets` (default: all), without
    touching the sockets themselves: what top lists need. Returns snapshot.services."""
    info = info or ProcessInfo(procfs)
    sockets = snapshot.sockets if sockets is None else sockets
    # in C passes (map, filter, set): a watch's refresh asks this of all 100k sockets
    pids = set(map(_pid, filter(None, map(_process, sockets))))
    pids.update(p.pid for others in filter(None, map(_others, sockets)) for p in others)
    pids.update(map(_pid, filter(None, map(_peer_process, sockets))))
    snapshot.services.update(group(pids, info))
    return snapshot.services


def fill_close_wait(snapshot: Snapshot, procfs: str = "/proc") -> None:
    """Services for the CLOSE_WAIT holders only: what the CLOSE_WAIT detector groups
    by, at the cost of those processes (a listing's marks, watch)."""
    from sockstat.model import TcpState

    close_wait = [s for s in snapshot.sockets if s.state is TcpState.CLOSE_WAIT]
    if close_wait:
        fill(snapshot, procfs, sockets=close_wait)
