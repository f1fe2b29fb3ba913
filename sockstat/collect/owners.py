"""Who owns each socket: inode -> (pid, fd, process name, user), from /proc/*/fd.

The kernel's socket table knows inodes, not processes; the only way to name the process
is to read every /proc/<pid>/fd/* link and match `socket:[<inode>]`. That is the costly
part of `ss -p` (its inode map is a 256-bucket hash); here a dict and a scan that stops
as soon as every wanted inode is found (`watch` keeps the map across refreshes). Per fd
the scan pays one readlink relative to the open fd directory (~4 us, nearly all of it
the kernel's); everything else happens once per process, over its lists, in C.

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
attributed to the primary holder of the LISTEN socket on the same local port (and
address, or a wildcard one), marked `via_listener`, so `sockstat --port 8080` names the
server behind its TIME_WAITs. A listener that is not listed itself needs no other
holder: its scan stops at the first one (`scan(primary_only=...)`).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import field
from itertools import compress, repeat
from operator import attrgetter, itemgetter, not_

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.model import (
    Attribution,
    ProcessRef,
    Socket,
    TcpState,
    new_process_refs,
)

_SOCKET_PREFIX = "socket:["
_INODE_DIGITS = itemgetter(slice(len(_SOCKET_PREFIX), -1))  # 'socket:[123]' -> '123'
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


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

    def add_process(self, pid: int, name: str, user: str | None, fds: list[int],
                    inodes: list[int]) -> None:
        """Record one process's sockets (fd i holds inodes[i], in fd order) at once: one
        dict update for the inodes not known yet, add() for the few already held by
        another process (prefork workers, a socketpair shared with a forked child)."""
        refs = new_process_refs(pid, name, fds, user)
        # one ref per inode, the first fd's (a dup'ed socket is held once per process)
        mine = dict(zip(reversed(inodes), reversed(refs), strict=True))
        known = mine.keys() & self.by_inode.keys()
        for inode in known:
            self.add(inode, mine.pop(inode))
        self.by_inode.update(mine)

    @classmethod
    def from_processes(cls, processes, denied: int = 0, vanished: int = 0,
                       denied_uids=(), wanted: set[int] | None = None) -> OwnerMap:
        """The map of (pid, name, user, fds, inodes) per process, as a scan found them;
        of the `wanted` inodes only, when given."""
        result = cls(denied_processes=denied, vanished_processes=vanished,
                     denied_uids=set(denied_uids))
        for pid, name, user, fds, inodes in processes:
            if wanted is not None:
                fds, inodes = _only_wanted(fds, inodes, wanted)
            if inodes:
                result.add_process(pid, name, user, fds, inodes)
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
            from sockstat.users import user_name

            name = self._users[uid] = user_name(uid)
        return name


def scan(procfs: str = "/proc", wanted: set[int] | None = None,
         exclude_pid: int | None = None,
         primary_only: set[int] | frozenset[int] = frozenset()) -> OwnerMap:
    """Map socket inodes to every process holding them.

    `wanted`: only these inodes (None: every socket). Processes are read in ascending
    pid order, so the first holder found of an inode is its primary holder (the lowest
    pid). The scan stops once each wanted inode has been seen, then reads the fds of the
    found holders' relatives only (their children, their parent, and siblings under a
    common parent other than init), since a shared socket is held by forked relatives: a
    narrow query does not pay for reading every process's fds. `watch` keeps the map
    across refreshes and asks only for new inodes (sockstat/watch/owners.py).

    `primary_only`: wanted inodes whose primary holder alone is needed (listeners that
    only name the fileless sockets on their port, "via listener", and are not listed
    themselves): no relatives are read for them, since none can have a lower pid than
    the first holder found. When every wanted inode is such, _first_holders() reads
    each process's fds only up to the wanted ones (the listener is usually among a
    server's first fds) and compares, rather than reads, the big processes with lower
    pids than a holder.
    """
    result = OwnerMap()
    if wanted is not None and not wanted:
        return result
    pids = sorted(_pids(procfs, exclude_pid))
    me = os.getpid()
    if wanted is not None and me in pids:
        # a narrow query is often about the caller's own sockets (the lab's, a library
        # user's): read this process first, so the scan can stop before the others
        pids.remove(me)
        pids.insert(0, me)
    names = ProcessNames(procfs)
    if wanted is None:
        _scan_pids(result, procfs, pids, None, names, stop=False)
        return result
    every = wanted - primary_only
    if every:
        unread = pids[_scan_pids(result, procfs, pids, wanted, names, stop=True):]
    else:
        unread = _first_holders(result, procfs, pids, wanted, names, me)
    if unread:
        # the holders of the inodes whose every holder is wanted, and this process
        # when it holds one read out of pid order (it may have inherited it from an
        # older relative)
        found = {inode for inode, ref in result.by_inode.items()
                 if inode in every or ref.pid == me}
        holders = {result.by_inode[inode].pid for inode in found}
        holders |= {r.pid for inode in found for r in result.shared.get(inode, ())}
        if found:
            relatives = _relatives(procfs, holders, unread)
            _scan_pids(result, procfs, relatives, found, names, stop=False)
    return result


# a process with more fds than this is passed over at first by a primary-only scan
DEFER_FDS = 512


def _first_holders(result: OwnerMap, procfs: str, pids: list[int], wanted: set[int],
                   names: ProcessNames, me: int) -> list[int]:
    """The primary holder (lowest pid, its lowest fd) of each wanted inode into `result`,
    reading as little as exactness allows; returns the pids whose links were not read.

    In pid order (this process first), each process's fds are read up to the wanted
    inodes not seen yet, but one with more than DEFER_FDS fds (stat of its fd
    directory: Linux >= 6.2) is passed over at first. If an inode is still unseen, the
    passed-over processes are read, fewest fds first, until each has a holder. Then a
    passed-over process not read, with a lower pid than an inode's holder so far, is
    asked by kcmp whether it holds that same open file (sockstat.collect.kcmp: no link
    read); those with a higher pid need not be read at all. So a server's listener
    behind workers holding 70k connections costs a kcmp per worker fd, not a readlink.
    Where kcmp is not there, or cannot answer for a process, its links are read."""
    from sockstat.collect.kernel import told_fd_count  # (only this scan needs it)

    remaining = set(wanted)
    passed: list[tuple[int, int]] = []  # (pid, fd count), in pid order
    comparer = None

    def pending(pid: int, own: bool = False) -> dict[int, ProcessRef]:
        """The inodes whose holder so far has a higher pid than `pid` (this process's
        own are left to its relatives, as before, unless `own`)."""
        return {inode: ref for inode, ref in result.by_inode.items()
                if ref.pid > pid and (own or ref.pid != me)}

    def read(pid: int) -> None:
        # past this process's own too: a process read here is not read again for them
        # by the relatives' scan (an older parent it inherited a listener from)
        found = _read_process(result, procfs, pid, wanted,
                              until=remaining | pending(pid, own=True).keys())
        if found is not None:
            name, user = names.lookup(pid)
            result.add_process(pid, name, user, *found)
            remaining.difference_update(found[1])

    for at, pid in enumerate(pids):
        if not remaining:
            unread = pids[at:]
            break
        if pid != me:
            count = told_fd_count(pid, procfs)
            if count > DEFER_FDS:
                if comparer is None:
                    from sockstat.collect import kcmp

                    comparer = kcmp.open_comparer(procfs) or False
                if comparer:
                    passed.append((pid, count))
                    continue
        read(pid)
    else:
        unread = []
    done = set()
    for pid, _count in sorted(passed, key=itemgetter(1)):
        if not remaining:
            break
        read(pid)
        done.add(pid)
    for at, (pid, count) in enumerate(passed):
        if pid in done:
            continue
        asked = pending(pid)
        if not asked:  # nor for any higher pid
            unread += [p for p, _ in passed[at:] if p not in done]
            break
        unread.append(pid)
        for inode, ref in asked.items():
            fd = comparer.fd_holding(pid, count, ref.pid, ref.fd, inode, procfs)
            if fd is None:  # cannot tell: read its links after all
                unread.pop()
                read(pid)
                break
            if fd is not False:
                name, user = names.lookup(pid)
                result.add_process(pid, name, user, [fd], [inode])
    return unread


def _pids(procfs: str, exclude_pid: int | None = None) -> list[int]:
    try:
        pids = [int(e) for e in os.listdir(procfs) if e.isdigit()]
    except OSError:
        return []
    return [pid for pid in pids if pid != exclude_pid] if exclude_pid is not None else pids


def scan_processes(procfs: str = "/proc", exclude_pid: int | None = None
                   ) -> tuple[list[tuple], OwnerMap]:
    """A full scan as plain data: (pid, name, user, fds, inodes) for every process
    holding sockets, in pid order, and an OwnerMap counting only what could not be
    read: what the forked scan sends (marshal takes lists of ints and strings in C);
    the tests' reference for it (no caller of the package's own needs a full scan now:
    a failed child falls back to scan(), as collect() does)."""
    counts = OwnerMap()
    found: list[tuple] = []
    _scan_pids(counts, procfs, sorted(_pids(procfs, exclude_pid)), None,
               ProcessNames(procfs), stop=False, record=lambda *process: found.append(process))
    return found, counts


def _scan_pids(result: OwnerMap, procfs: str, pids: list[int], wanted: set[int] | None,
               names: ProcessNames, stop: bool, record=None) -> int:
    """Read the fds of `pids` into `result`; returns how many pids were read (all of
    them, or fewer when `stop` and every wanted inode has been seen). `record(pid, name,
    user, fds, inodes)`: where each process's sockets go instead (the forked scan sends
    them as they are); `result` then only counts what could not be read."""
    record = record or result.add_process
    remaining = set(wanted) if (stop and wanted is not None) else None
    for done, pid in enumerate(pids, 1):
        found = _read_process(result, procfs, pid, wanted)
        if found is None:
            continue
        fds, inodes = found
        name, user = names.lookup(pid)
        record(pid, name, user, fds, inodes)
        if remaining is not None:
            remaining.difference_update(inodes)
            if not remaining:
                return done
    return len(pids)


def _read_process(result: OwnerMap, procfs: str, pid: int, wanted: set[int] | None,
                  until: set[int] | None = None, share: _ChildEnd | None = None
                  ) -> tuple[list[int], list[int]] | None:
    """(fd numbers, socket inodes) of one process's socket fds (only `wanted` inodes
    unless None), in fd order; None when it holds none. Counts it in `result` when it
    exited or may not be read. `until`: stop reading at the fd that leaves none of
    these inodes unseen (the rest of the process's fds are not read). `share`: the
    forked scan's end of a scan the caller may take over from the other end, which
    reads the open directory (_ChildEnd.read_links; every inode is wanted there).

    The per-fd work is the readlink alone (relative to the open fd directory: no path
    walk through /proc/<pid> per fd); matching and converting the links happens on the
    process's socket links at once, in C (map, compress), not per fd in Python."""
    fd_dir = f"{procfs}/{pid}/fd"
    try:
        dir_fd = os.open(fd_dir, _DIR_FLAGS)
    except PermissionError:
        _denied(result, procfs, pid)
        return None
    except OSError:  # exited (ENOENT) or a zombie
        result.vanished_processes += 1
        return None
    fd_names: list[str] = []
    links: list[str] = []
    try:
        if share is not None:
            return share.read_links(result, procfs, pid, dir_fd, fd_dir)
        if not _read_links(result, procfs, pid, dir_fd, until, fd_names, links):
            return None
    finally:
        os.close(dir_fd)
    if not links:
        return None
    fds, inodes = _socket_fds(fd_dir, fd_names, links)
    if wanted is not None:
        fds, inodes = _only_wanted(fds, inodes, wanted)
    return (fds, inodes) if inodes else None


def _socket_fds(fd_dir: str, fd_names: list[str], links: list[str]
                ) -> tuple[list[int], list[int]]:
    """(fd numbers, inodes) of socket links read from `fd_dir`, checked and converted
    at once in C; a link that only looks like a socket's is a ParseError naming it."""
    digits = list(map(_INODE_DIGITS, links))
    joined = "".join(digits)
    if not (joined.isascii() and joined.isdigit() and "" not in digits
            and all(map(str.endswith, links, repeat("]")))):
        for entry, target in zip(fd_names, links, strict=True):
            _socket_inode(target, f"{fd_dir}/{entry}", len(_SOCKET_PREFIX))  # names it
    return list(map(int, fd_names)), list(map(int, digits))


def _read_links(result: OwnerMap, procfs: str, pid: int, dir_fd: int,
                until: set[int] | None, fd_names: list[str], links: list[str]) -> bool:
    """The socket links of an open fd directory into (fd_names, links), in fd order;
    False when the process exited meanwhile. `until`: stop at the fd where every one of
    these inodes has been seen; the directory is read in batches (scandir, no dearer
    than listdir), so a server's thousands of connections after its listener are neither
    listed nor read."""
    readlink = os.readlink
    missing = None if until is None else {f"{_SOCKET_PREFIX}{inode}]" for inode in until}
    try:
        entries = os.scandir(dir_fd)
    except OSError:
        result.vanished_processes += 1
        return False
    with entries:
        for entry in entries:
            name = entry.name
            try:
                target = readlink(name, dir_fd=dir_fd)
            except PermissionError:  # listable but not readable (ptrace rules)
                _denied(result, procfs, pid)
                break
            except OSError:
                continue  # fd closed while we looked
            if target.startswith(_SOCKET_PREFIX):
                fd_names.append(name)
                links.append(target)
                if missing is not None and target in missing:
                    missing.discard(target)
                    if not missing:
                        break
    return True


def _socket_links(dir_fd: int, entries: list[str]) -> tuple[list[str], list[str], bool]:
    """(fd names, links) of the socket fds among `entries` of an open fd directory, and
    whether one may not be read (the reading stops there)."""
    readlink = os.readlink
    names: list[str] = []
    links: list[str] = []
    for name in entries:
        try:
            target = readlink(name, dir_fd=dir_fd)
        except PermissionError:  # listable but not readable (ptrace rules)
            return names, links, True
        except OSError:
            continue  # fd closed while we looked
        if target.startswith(_SOCKET_PREFIX):
            names.append(name)
            links.append(target)
    return names, links, False


def _only_wanted(fds: list[int], inodes: list[int], wanted: set[int]
                 ) -> tuple[list[int], list[int]]:
    """A process's (fds, inodes) with only the `wanted` inodes (kept in C)."""
    keep = list(map(wanted.__contains__, inodes))
    if all(keep):
        return fds, inodes
    return list(compress(fds, keep)), list(compress(inodes, keep))


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


# The two ends of the forked scan. The child reads every process in ascending pid
# order; once the caller has nothing else to do (result()), it asks the child for what
# is left and reads that from the other end while the child goes on, both stopping where
# they meet. What is left ("items", in the child's order) is the rest of the process
# the child is reading (its fd names from where it is, one item each) and then the
# pids after it (one item each). Each end says in an anonymous shared mmap how far it
# has got, only after reading that far: the child "every item below C is read", the
# caller "every item from M on is read". So a stale value makes both read an item near
# the meeting point, never neither; the merge takes the child's reading of items below
# the child's last C and the caller's of the others, so the map is one scan's.
_REQUEST, _CHILD_AT, _MAIN_AT, _DONE = range(4)  # int64 slots of the shared mmap
_CHUNK = 64  # fd links read between two looks at the other end (~0.3 ms)


class _ChildEnd:
    """The forked scan's end: reads every process ascending, hands the rest over once
    asked (through `answer_fd`), then stops where the caller's end is."""

    def __init__(self, shared: memoryview, answer_fd: int, parent: int) -> None:
        self.shared = shared
        self.answer_fd = answer_fd
        self.parent = parent  # the caller's pid: the scan ends once it is gone
        self.handed = False
        self.handed_at = 0  # index in pids of the process handed over
        self.base: int | None = None  # entry index of item 0 in the process handed over
        self.pids: list[int] = []
        self.at = 0  # index in pids of the process being read
        self.rest = 0  # fd items of the process handed over
        self.position = 0  # items read (published as _CHILD_AT)

    def scan(self, procfs: str, exclude_pid: int) -> tuple:
        """(every process's (pid, name, user, fds, inodes), in pid order; counts before
        the hand-over; the counts of the pid items read after it as (item, denied,
        vanished, uids); the child's final position; the pid handed over or None)."""
        self.pids = pids = sorted(_pids(procfs, exclude_pid))
        counts = OwnerMap()
        names = ProcessNames(procfs)
        found: list[tuple] = []
        items: list[tuple] = []
        shared = self.shared
        parent = self.parent
        for at, pid in enumerate(pids):
            self.at = at
            _end_if_orphaned(parent)
            if self.handed:
                item = self.rest + at - self.handed_at - 1
                if item >= shared[_MAIN_AT]:
                    break
                mine = OwnerMap()
                got = _read_process(mine, procfs, pid, None)
                if mine.denied_processes or mine.vanished_processes:
                    items.append((item, mine.denied_processes, mine.vanished_processes,
                                  list(mine.denied_uids)))
                self.position = shared[_CHILD_AT] = item + 1
            else:
                got = _read_process(counts, procfs, pid, None, share=self)
                if self.handed:  # handed over while reading this one
                    self.base = None
                    if self.position < self.rest:  # met the caller in it: the rest is read
                        if got is not None:
                            found.append((pid, *names.lookup(pid), *got))
                        break
            if got is not None:
                found.append((pid, *names.lookup(pid), *got))
        self.close_answer()
        return (found, counts.denied_processes, counts.vanished_processes,
                list(counts.denied_uids), items, self.position,
                pids[self.handed_at] if self.handed else None)

    def close_answer(self) -> None:
        if self.answer_fd >= 0:
            os.close(self.answer_fd)  # no answer, or the one sent: the caller reads EOF
            self.answer_fd = -1

    def hand_over(self, rest: list[str]) -> None:
        """Send the caller what is left: this process's fd names from `rest` on, and the
        pids after it."""
        import marshal

        self.handed, self.handed_at, self.rest = True, self.at, len(rest)
        total = self.rest + len(self.pids) - self.at - 1
        self.shared[_CHILD_AT] = 0
        self.shared[_MAIN_AT] = total
        view = memoryview(marshal.dumps((self.pids[self.at], rest, self.pids[self.at + 1:])))
        while view:
            view = view[os.write(self.answer_fd, view):]
        self.close_answer()

    def read_links(self, result: OwnerMap, procfs: str, pid: int, dir_fd: int,
                   fd_dir: str) -> tuple[list[int], list[int]] | None:
        """_read_links and the conversion for the child: the directory listed at once,
        its links read and converted a chunk at a time, looking between chunks whether
        the caller asks for the rest and, once this process is handed over, where the
        caller's end is (converting as it goes leaves nothing but sending once they
        meet)."""
        try:
            entries = os.listdir(dir_fd)
        except OSError:
            result.vanished_processes += 1
            return None
        shared = self.shared
        fds: list[int] = []
        inodes: list[int] = []
        at, end = 0, len(entries)
        while at < end:
            stop = min(at + _CHUNK, end)
            if at:  # a big process: the caller may have gone since the last look
                _end_if_orphaned(self.parent)
            if not self.handed and shared[_REQUEST]:
                self.hand_over(entries[at:])
                self.base = at
            if self.base is not None:
                self.position = shared[_CHILD_AT] = at - self.base
                limit = self.base + shared[_MAIN_AT]
                if at >= limit:
                    break
                stop = min(stop, limit)
            names, links, denied = _socket_links(dir_fd, entries[at:stop])
            if links:
                got = _socket_fds(fd_dir, names, links)
                fds += got[0]
                inodes += got[1]
            if denied:
                _denied(result, procfs, pid)
                if self.base is not None:  # a scan reads no further: nor the caller
                    self.position = shared[_CHILD_AT] = self.rest
                break
            at = stop
        else:
            if self.base is not None:
                self.position = shared[_CHILD_AT] = at - self.base
        return (fds, inodes) if inodes else None


class _MainEnd:
    """The caller's end: what it read of the items handed over, from the last one down,
    until it meets the child."""

    def __init__(self, shared: memoryview, procfs: str) -> None:
        self.shared = shared
        self.procfs = procfs
        self.pid: int | None = None  # the process handed over
        self.rest: list[str] = []
        # (first item, item after the last, fds, inodes) per chunk of self.pid's read,
        # the highest first
        self.chunks: list[tuple[int, int, list[int], list[int]]] = []
        self.processes: list[tuple[int, tuple | None, OwnerMap]] = []  # (item, record, counts)
        self.taken_over = 0  # processes and socket fds of those kept by merge()

    def take_over(self, answer_fd: int) -> bool:
        """Ask for the rest and read it; False when the child had finished already."""
        import marshal

        self.shared[_REQUEST] = 1
        data = _read_all(answer_fd)
        try:
            self.pid, self.rest, pids = marshal.loads(data)
        except (EOFError, ValueError, TypeError):  # none (it had finished), or it died
            return False
        shared, procfs, rest = self.shared, self.procfs, len(self.rest)
        names = ProcessNames(procfs)
        for item in range(rest + len(pids) - 1, rest - 1, -1):
            if item < shared[_CHILD_AT]:
                return True
            counts = OwnerMap()
            pid = pids[item - rest]
            got = _read_process(counts, procfs, pid, None)
            self.processes.append((item, got and (pid, *names.lookup(pid), *got), counts))
            shared[_MAIN_AT] = item
        self._read_rest(rest)
        return True

    def _read_rest(self, top: int) -> None:
        """The handed-over process's fds, a chunk at a time from the last one down."""
        shared, entries = self.shared, self.rest
        fd_dir = f"{self.procfs}/{self.pid}/fd"
        try:
            dir_fd = os.open(fd_dir, _DIR_FLAGS)
        except OSError:
            return  # gone or not readable now: the child's reading stands
        try:
            while True:
                low = max(top - _CHUNK, shared[_CHILD_AT])
                if low >= top:
                    return
                names, links, denied = _socket_links(dir_fd, entries[low:top])
                if denied:
                    return  # the child meets it too, and counts it once
                if links:
                    self.chunks.append((low, top, *_socket_fds(fd_dir, names, links)))
                shared[_MAIN_AT] = top = low
        finally:
            os.close(dir_fd)

    def merge(self, found: list[tuple], counts: OwnerMap, items: list[tuple],
              child_at: int) -> list[tuple]:
        """The child's processes with what this end read of the items from `child_at`
        on (the child's own reading of the items below): one scan's processes, in pid
        order; `counts` gets the counts of both ends' items."""
        for _item, denied, vanished, uids in items:
            counts.denied_processes += denied
            counts.vanished_processes += vanished
            counts.denied_uids.update(uids)
        extra = [record for item, record, _ in self.processes if item >= child_at and record]
        for item, _, mine in self.processes:
            if item >= child_at:
                self.taken_over += 1
                counts.denied_processes += mine.denied_processes
                counts.vanished_processes += mine.vanished_processes
                counts.denied_uids |= mine.denied_uids
        fds: list[int] = []
        inodes: list[int] = []
        for low, top, chunk_fds, chunk_inodes in reversed(self.chunks):  # lowest first
            if low < child_at:  # where they met: the fds of the items the child did not read
                unread = set(map(int, self.rest[child_at:top]))
                keep = list(map(unread.__contains__, chunk_fds))
                chunk_fds = list(compress(chunk_fds, keep))
                chunk_inodes = list(compress(chunk_inodes, keep))
            fds += chunk_fds
            inodes += chunk_inodes
        self.taken_over += len(fds)
        if inodes:
            for at, record in enumerate(found):
                if record[0] == self.pid:
                    pid, name, user, have_fds, have_inodes = record
                    found[at] = (pid, name, user, have_fds + fds, have_inodes + inodes)
                    break
            else:
                extra.append((self.pid, *ProcessNames(self.procfs).lookup(self.pid),
                              fds, inodes))
        if extra:
            found = sorted(found + extra, key=itemgetter(0))
        return found


def _read_all(fd: int) -> bytes:
    """Everything a pipe gives until its writer closes it (the caller keeps the fd: it
    closes it once, wherever an interruption leaves it)."""
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


# the signals that end the forked child as they end the caller, whatever the caller's
# Python handler does: a user or supervisor ending the job (Ctrl-C, Ctrl-\, kill, a
# closed terminal), and the faults a process raises on itself (ignoring those would
# spin). The caller's handler decides the caller's fate; the child is killed on its
# leaving the `with`, or its end is seen in result(), which then scans itself.
_ENDING = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT",
           "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGSYS")


def _python_handlers_replaced() -> None:
    """In the forked child, where the caller has a Python handler: the kernel's default
    for the _ENDING signals, ignored for the others. A Python handler never runs in the
    child: one raising (Ctrl-C's KeyboardInterrupt, watch's SIGTERM/SIGHUP) anywhere out
    of the child's try, as the finally ends it, would run the caller's code on in a
    second copy of it. Ignored rather than defaulted, a signal the caller handles and
    lives through (SIGUSR1 sent to the whole process group, a SIGWINCH, SIGCHLD) leaves
    the child's scan going; defaulted, it ended the child (most defaults terminate) and
    the caller scanned again by itself."""
    import signal

    ending = {getattr(signal, name) for name in _ENDING if hasattr(signal, name)}
    for signum in signal.valid_signals():
        try:
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL if signum in ending else signal.SIG_IGN)
        except (OSError, ValueError):
            pass


def _children_share_pid_namespace() -> bool:
    """Whether a child forked now is in this process's PID namespace. Not after an
    unshare(CLONE_NEWPID) without a fork (`unshare --pid` without --fork): the child
    would be its namespace's first process, its pid not /proc's (the scan would name
    it, the holder of copies of every fd, and pass over the caller's pid 1), its parent
    outside (no orphan check), and it would ignore signals left at their default.
    Unknown (no /proc/self/ns: an old kernel, no /proc): yes, as before."""
    try:
        mine = os.readlink("/proc/self/ns/pid")
    except OSError:
        return True
    children = "/proc/self/ns/pid_for_children"
    try:
        return os.readlink(children) == mine
    except FileNotFoundError:  # there but unreadable: a namespace of the children's own
        return not os.path.lexists(children)  # with no process yet; absent: Linux < 4.12
    except OSError:
        return True


def _end_if_orphaned(parent: int) -> None:
    """In the forked child: end at once when the caller it was forked from (`parent`)
    is gone (it is reparented then), instead of scanning on for up to a whole scan for
    nobody. Asked before the scan, each process and each further chunk of a big
    process's fds: a getppid() each, ~0.3 µs (a scan of 300 small processes took the
    same time with or without: 10.95-10.98 ms, best of 60 each), so an orphan ends
    within one process's or chunk's read.

    Not the kernel's parent-death signal (prctl(PR_SET_PDEATHSIG)), which would also end
    a child blocked in a read (reads of /proc's fd links and comm files do not block):
    the standard library has no binding, and loading ctypes after the fork took the
    child 5-14 ms, its C module alone 2-3 ms (shared libraries mapped, pages copied on
    write), on the command's critical path: the caller waits for the scan (and reads
    its rest from the other end, _MainEnd)."""
    if os.getppid() != parent:
        os._exit(1)


class BackgroundScan:
    """A full scan running in a forked child, on the other core, while the caller reads
    the socket table: at 100k sockets both take ~0.3 s, and a thread would not overlap
    them (the scan's Python loop holds the GIL). Only in a single-threaded process
    (forking one with threads is unsafe); elsewhere `result()` simply scans then.
    `result()` is where the caller has nothing else to do: it takes over what the child
    has not read yet from the other end (_ChildEnd, _MainEnd), so a caller done first
    waits for half the rest, and one still busy until the child is done changes nothing.

    Use as a context manager: leaving it early (an error, Ctrl-C) kills the child; once
    the caller is gone (killed by SIGKILL), the child ends too, within a chunk's read
    (_end_if_orphaned). A signal the caller handles in Python waits out the fork (it
    then raises in the caller alone); in the child it is ignored, except those that end
    a job (SIGINT, SIGTERM, SIGHUP...), which end the child by the kernel's default
    (_python_handlers_replaced). A caller that reaps children itself (SIGCHLD ignored,
    a handler of its own) still gets the child's scan.
    """

    # whether the caller asks for the rest before the child starts, so every process
    # but the first chunk is the caller's to meet the child in: the tests' subclass
    # sets it to make the two ends meet anywhere (the command asks in result() alone)
    hand_over_at_once = False

    def __init__(self, procfs: str = "/proc") -> None:
        self.procfs = procfs
        # fd links and processes the caller's end read that went into result()
        self.taken_over = 0
        self._pid: int | None = None
        self._read_fd: int | None = None
        self._answer_fd: int | None = None  # where the child hands over what is left
        self._shared = None  # (mmap, its int64 view): how far each end has read
        # every process's (pid, name, user, fds, inodes) the child saw, once result()
        # has them: a caller that asked for some inodes can build the map of others later
        self.processes: list[tuple] | None = None

    @property
    def forked(self) -> bool:
        """Whether a child is scanning every process (result() then reads what it found;
        without one, result(wanted) scans for the wanted inodes only)."""
        return self._pid is not None

    def __enter__(self) -> BackgroundScan:
        import threading

        if threading.active_count() != 1 or not hasattr(os, "fork") \
                or not _children_share_pid_namespace():
            return self
        import signal

        # no signal handled in Python from the first pipe until the child is known: one
        # raising in between (Ctrl-C's KeyboardInterrupt) would leave the child scanning
        # on and the pipes open, as the caller's `with` has not started yet
        restore = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # the mask as it is
        try:
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                self._fork(restore)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, restore)  # pending ones run now
        except BaseException:
            self.__exit__()
            raise
        return self

    def _fork(self, mask) -> None:
        """Start the child (with every signal blocked; `mask`: the caller's)."""
        import mmap

        read_fd, write_fd = os.pipe()
        try:
            answer_read, answer_write = os.pipe()
        except OSError:  # at the fd limit (EMFILE): as one pipe failing, nothing kept
            os.close(read_fd)
            os.close(write_fd)
            raise
        shared = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and shared with the child
        view = memoryview(shared).cast("q")
        view[_REQUEST] = self.hand_over_at_once
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            for fd in (read_fd, write_fd, answer_read, answer_write):
                os.close(fd)
            view.release()
            shared.close()
            return
        if pid == 0:  # the child: scan, send, and leave without any Python clean-up
            code = 1
            try:
                import signal

                _python_handlers_replaced()
                _end_if_orphaned(parent)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                os.close(read_fd)
                os.close(answer_read)
                import marshal

                # the child holds copies of the caller's fds: never name it
                end = _ChildEnd(view, answer_write, parent)
                found = end.scan(self.procfs, os.getpid())
                view[_DONE] = 1
                data = marshal.dumps(found)
                out = memoryview(data)
                while out:
                    out = out[os.write(write_fd, out):]
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        os.close(answer_write)
        self._pid, self._read_fd, self._answer_fd = pid, read_fd, answer_read
        self._shared = (shared, view)

    def result(self, wanted: set[int] | None = None,
               primary_only: set[int] | frozenset[int] = frozenset()) -> OwnerMap:
        """The owner map of the `wanted` inodes (None: all) from the child's full scan
        (waits for it); a plain scan where there was none (scan()'s `primary_only`)."""
        finished = self._finish() if self._pid is not None else None
        if finished is None:  # no child, or it failed
            return scan(self.procfs, wanted, primary_only=primary_only)
        found, counts = finished
        return OwnerMap.from_processes(found, counts.denied_processes,
                                       counts.vanished_processes, counts.denied_uids,
                                       wanted)

    def done(self) -> bool:
        """Whether the child has read every process (no system call: a look at the
        shared page). True where there is no child."""
        return self._shared is None or bool(self._shared[1][_DONE])

    def processes_found(self) -> tuple[list[tuple], OwnerMap] | None:
        """Every process's (pid, name, user, fds, inodes) from the child's full scan
        (waits for it), in pid order, and an OwnerMap counting only what could not be
        read; None where there was no child or it failed (then result(wanted) scans as
        collect() does). For a caller that makes no ProcessRef per socket
        (collect.rows: ~0.1 s less at 100k)."""
        return self._finish() if self._pid is not None else None

    def _finish(self) -> tuple[list[tuple], OwnerMap] | None:
        """The child's scan (self.processes) and its counts, this end's take-over
        merged in; None when the child failed."""
        import marshal

        # nothing else to do here: read what the child has not yet from the other end
        helper = _MainEnd(self._shared[1], self.procfs)
        helped = helper.take_over(self._answer_fd)
        data = _read_all(self._read_fd)
        self._close_pipes()
        try:
            _, status = os.waitpid(self._pid, 0)
        except ChildProcessError:  # reaped already: SIGCHLD ignored, or the caller's handler
            status = None  # then the answer tells: marshal refuses one cut short
        self._pid = None
        try:
            answer = marshal.loads(data) if status in (0, None) else None
        except (EOFError, ValueError, TypeError):
            answer = None
        if answer is None:
            return None
        found, denied, vanished, denied_uids, items, child_at, handed = answer
        counts = OwnerMap(denied_processes=denied, vanished_processes=vanished,
                          denied_uids=set(denied_uids))
        if helped and handed is not None:
            found = helper.merge(found, counts, items, child_at)
            self.taken_over = helper.taken_over
        self.processes = found
        return found, counts

    def _close_pipes(self) -> None:
        # each fd forgotten before it is closed: an interruption leaves it open at
        # worst, never closed twice (the second time, maybe someone else's fd)
        for name in ("_read_fd", "_answer_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)

    def __exit__(self, *exc) -> None:
        self._close_pipes()
        if self._shared is not None:
            mm, view = self._shared
            view.release()
            mm.close()
            self._shared = None
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
    unattributed = fill_processes(sockets, owners)
    if listeners is not None:
        fill_processes(listeners, owners)
    attribute_via_listeners(sockets, listeners if listeners is not None else sockets)
    return attribution(owners, unattributed)


def attribution(owners: OwnerMap, unattributed: int) -> Attribution:
    """What a scan could not see, for a table with `unattributed` sockets it found no
    process for."""
    return Attribution(
        scanned=True, unattributed=unattributed,
        denied_processes=owners.denied_processes,
        vanished_processes=owners.vanished_processes,
    )


inode_of = attrgetter("inode")
_SET_PROCESS = Socket.process.__set__
_SET_OTHERS = Socket.others.__set__


def fill_processes(sockets: list[Socket], owners: OwnerMap) -> int:
    """Socket.process (and .others) of every socket with an inode, each step a map in C
    over the whole list (100k sockets on a big host); how many found no owner."""
    inodes = list(map(inode_of, sockets))
    if not all(inodes):  # TIME_WAIT and the like: no file, left for the listener pass
        sockets = list(compress(sockets, inodes))
        inodes = list(filter(None, inodes))
    refs = list(map(owners.by_inode.get, inodes))
    deque(map(_SET_PROCESS, sockets, refs), 0)
    shared = owners.shared
    if shared:  # few sockets are shared
        held = list(map(shared.__contains__, inodes))
        for sock in compress(sockets, held):
            _SET_OTHERS(sock, tuple(shared[sock.inode]))
    return len(refs) - len(list(filter(None, refs)))  # not count(None): that calls __eq__


# the listeners that serve a connection on an address: those on that address, then
# the wildcard of its family. An address shown as IPv4 may be an IPv4-mapped one
# accepted by a dual-stack `::` listener, so `::` comes after `0.0.0.0` there (both on
# one port means `::` is v6-only: IPv4 goes to `0.0.0.0`); an IPv6 connection can only
# have come through an IPv6 listener, never `0.0.0.0`.
_ANY4, _ANY6 = "0.0.0.0", "::"


def serves(listener: Socket, fileless: set, ports: set[int]) -> bool:
    """Whether this LISTEN socket can name one of the fileless sockets, given their
    local endpoints and ports: it is on one of those endpoints, or on a wildcard
    address and one of those ports (what attribute_via_listeners looks up)."""
    local = listener.local
    return local in fileless or (local.port in ports and local.address in (_ANY4, _ANY6))


def via_listener_refs(listeners: list[Socket]) -> dict[tuple[int, str, int], ProcessRef]:
    """(namespace inode, address, port) of each LISTEN socket with a holder -> the ref
    a socket without a file on it is named by: its primary holder, fd None, marked
    via_listener (one per listener, shared by every socket it names; the first
    listener on an address and port names them)."""
    # keyed by namespace too: every network namespace has its own port 80
    by_port: dict[tuple[int, str, int], ProcessRef] = {}
    for sock in listeners:
        if sock.state is TcpState.LISTEN and sock.process is not None:
            ns = sock.netns.inode if sock.netns is not None else 0
            key = (ns, sock.local.address, sock.local.port)
            if key not in by_port:
                ref = sock.process
                by_port[key] = ProcessRef(ref.pid, ref.name, None, ref.user,
                                          via_listener=True)
    return by_port


def via_listener(by_port: dict[tuple[int, str, int], ProcessRef], ns: int, address: str,
                 port: int) -> ProcessRef | None:
    """The via-listener ref of a socket without a file at (address, port) in namespace
    `ns`: the listener on that address, else on its family's wildcard (`::` too for an
    address shown as IPv4: it may be IPv4-mapped)."""
    exact = by_port.get((ns, address, port))
    if exact is not None:
        return exact
    if ":" in address:
        return by_port.get((ns, _ANY6, port))
    return by_port.get((ns, _ANY4, port)) or by_port.get((ns, _ANY6, port))


def attribute_via_listeners(sockets: list[Socket], listeners: list[Socket]) -> None:
    """Give sockets with no owner of their own the process of the listener on their
    local port (marked via_listener)."""
    by_port = via_listener_refs(listeners)
    if not by_port:
        return
    # inode 0: a mini-socket (TIME_WAIT, SYN_RECV), a connection still waiting in the
    # accept queue, or an orphan the server already closed (picked out in C)
    for sock in compress(sockets, map(not_, map(inode_of, sockets))):
        if sock.process is None and sock.state is not TcpState.LISTEN:
            local = sock.local
            ref = via_listener(by_port, sock.netns.inode if sock.netns is not None else 0,
                               local.address, local.port)
            if ref is not None:
                sock.process = ref


GONE, DENIED, HIDDEN = "gone", "denied", "hidden"
CAUSE_CHECK_LIMIT = 256  # kernel lookups per collection, at most


def unattributed(sockets: list[Socket]) -> list[Socket]:
    """The sockets with a file that no process was found for (those a cause is given)."""
    return [s for s in sockets if s.inode and s.process is None]


def checked_for_causes(sockets: list[Socket]) -> list[Socket]:
    """The ones of them whose presence the kernel is asked about (CAUSE_CHECK_LIMIT)."""
    return unattributed(sockets)[:CAUSE_CHECK_LIMIT]


def unattributed_causes(sockets: list[Socket], owners: OwnerMap,
                        still_there=None) -> dict[int, str]:
    """inode -> why no process was found for it, for each socket left without one:
    GONE (the socket closed, or its process exited, after the table was read),
    DENIED (its uid owns processes whose fds we may not read), or HIDDEN (no process
    we can see holds it: another PID namespace, a restricted /proc, or none at all: an
    in-kernel tunnel's socket, one in flight over a UNIX socket; a socket made after
    the scan read its process looks the same, so "held by the kernel" is never said).
    `still_there(sock)`: True/False/None, whether the kernel still has the socket."""
    causes: dict[int, str] = {}
    checked = 0
    for sock in unattributed(sockets):
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
