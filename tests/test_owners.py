"""The /proc/*/fd owner scan: every holder of a socket, as `ss -tanp` names them, on real
forked processes; the per-process reader and the merge on a handmade /proc tree; the
streamed /proc/net/tcp reader on captured text cut into small chunks."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from conftest import FIXTURES, ProcessGroup, wait_for

from sockstat.collect import collect, owners, procfile, procfs
from sockstat.errors import ParseError
from sockstat.model import Family, Proto, TcpState
from sockstat.query import Query

# A server holding a listener and 3 accepted connections, the first one twice (dup), then
# forked twice: every socket has 3 holders, one of them with two fds. Prints the port,
# then its pids once the clients are accepted; waits for its stdin to close.
HOLDERS = r"""
import os, socket, sys
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
conns = [srv.accept()[0] for _ in range(3)]
extra = os.dup(conns[0].fileno())
pids = [os.getpid()]
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        sys.stdin.read()
        os._exit(0)
    pids.append(pid)
print(*pids, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holders():
    """(port, server pids, client sockets): the HOLDERS server with 3 clients of ours."""
    group = ProcessGroup([sys.executable, "-c", HOLDERS])
    clients = []
    try:
        port = int(group.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30)
                   for _ in range(3)]
        pids = [int(w) for w in group.readline().split()]
        yield port, pids, clients
    finally:
        for client in clients:
            client.close()
        group.stop()


def _ss_holders(port: int) -> dict[tuple, dict[int, set[int]]]:
    """(local, remote) -> {pid: fds} from `ss -tanpH` for the sockets on `port`."""
    out = subprocess.run(["ss", "-tanpH", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    found: dict[tuple, dict[int, set[int]]] = {}
    for line in out.splitlines():
        fields = line.split()
        if fields[0] == "TIME-WAIT":
            continue
        by_pid: dict[int, set[int]] = {}
        for pid, fd in re.findall(r"pid=(\d+),fd=(\d+)", line):
            by_pid.setdefault(int(pid), set()).add(int(fd))
        found[(fields[3], fields[4])] = by_pid
    return found


def _ss_address(endpoint) -> str:
    return f"{endpoint.address}:{endpoint.port if endpoint.port else '*'}"


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="ss -p names other processes' sockets as root")
def test_every_holder_and_fd_equal_ss_p_on_the_broad_and_the_narrow_path(holders):
    """Every process holding a socket (forked holders, a dup'ed fd), as ss -tanp lists
    them: the broad listing's forked scan and a port query's scan that stops early
    give the same holders, with the lowest fd of each process."""
    port, pids, _ = holders
    wait_for(lambda: len(_ss_holders(port)) == 7, what="the listener and 3 pairs in ss")
    expected = _ss_holders(port)
    assert sorted(expected[("127.0.0.1:" + str(port), "0.0.0.0:*")]) == sorted(pids)
    broad = [s for s in collect(processes=True).sockets
             if port in (s.local.port, s.remote.port) and s.state is not TcpState.TIME_WAIT]
    narrow = collect(Query.build(ports=[port]), processes=True).sockets
    for sockets in (broad, narrow):
        assert len(sockets) == 7
        for sock in sockets:
            want = expected[(_ss_address(sock.local), _ss_address(sock.remote))]
            assert [r.pid for r in sock.holders] == sorted(want), sock
            assert all(r.fd == min(want[r.pid]) for r in sock.holders), sock
    shared = [s for s in broad if s.local.port == port]
    assert len(shared) == 4 and all(len(s.others) == 2 for s in shared)


def _fake_proc(root, processes: dict[int, dict[int, str]]):
    """A /proc tree: /proc/<pid>/comm and /proc/<pid>/fd/<fd> -> link text."""
    for pid, links in processes.items():
        fd_dir = root / str(pid) / "fd"
        fd_dir.mkdir(parents=True)
        (root / str(pid) / "comm").write_text(f"proc{pid}\n")
        for fd, target in links.items():
            (fd_dir / str(fd)).symlink_to(target)
    return str(root)


def _holders_of(owner_map: owners.OwnerMap) -> dict[int, list[tuple[int, int]]]:
    return {inode: [(r.pid, r.fd) for r in (ref, *owner_map.shared.get(inode, ()))]
            for inode, ref in owner_map.by_inode.items()}


def test_the_scan_reads_sockets_only_keeps_one_fd_per_process_and_the_lowest_pid_first(
        tmp_path):
    root = _fake_proc(tmp_path, {
        10: {3: "socket:[100]", 4: "pipe:[7]", 5: "socket:[100]", 6: "/dev/null",
             7: "socket:[200]", 8: "anon_inode:[eventfd]"},
        5: {9: "socket:[200]"},
        20: {1: "socket:[300]", 2: "socket:[200]"},
        30: {0: "/dev/null"},
    })
    full = owners.scan(root)
    assert _holders_of(full) == {100: [(10, 3)], 200: [(5, 9), (10, 7), (20, 2)],
                                 300: [(20, 1)]}
    assert full.by_inode[100].name == "proc10"
    # the forked scan's plain data, merged in any order, gives the same map
    found, counts = owners.scan_processes(root)
    assert counts.denied_processes == counts.vanished_processes == 0
    for order in (found, found[::-1]):
        assert _holders_of(owners.OwnerMap.from_processes(order)) == _holders_of(full)
    # a narrow scan keeps only the wanted inodes
    assert _holders_of(owners.scan(root, {300})) == {300: [(20, 1)]}


@pytest.mark.parametrize("link", ["socket:[]", "socket:[12", "socket:[\uff11\uff12]",
                                  "socket:[+12]", "socket:[1 2]"])
def test_a_malformed_socket_link_among_good_ones_is_a_parse_error_naming_it(tmp_path, link):
    root = _fake_proc(tmp_path, {7: {3: "socket:[100]", 4: link, 5: "socket:[101]"}})
    with pytest.raises(ParseError, match=re.escape(f"{root}/7/fd/4")):
        owners.scan(root)


def test_a_process_that_is_gone_is_counted_not_fatal(tmp_path):
    root = _fake_proc(tmp_path, {7: {3: "socket:[100]"}})
    (tmp_path / "8").mkdir()  # listed, but no fd directory: it exited meanwhile
    result = owners.scan(root)
    assert _holders_of(result) == {100: [(7, 3)]} and result.vanished_processes == 1


def test_attribute_fills_every_socket_and_counts_the_ones_without_an_owner():
    from conftest import make_socket

    ref = owners.OwnerMap()
    ref.add_process(10, "a", "root", [3, 4], [100, 101])
    ref.add_process(11, "b", "root", [5], [100])
    listener = make_socket(TcpState.LISTEN, remote=("0.0.0.0", 0), inode=102)
    ref.add_process(12, "srv", "root", [6], [102])
    sockets = [make_socket(TcpState.ESTABLISHED, inode=100),
               make_socket(TcpState.ESTABLISHED, inode=999),
               make_socket(TcpState.TIME_WAIT, inode=0), listener]
    result = owners.attribute(sockets, ref)
    assert result.unattributed == 1
    assert [(r.pid, r.fd) for r in sockets[0].holders] == [(10, 3), (11, 5)]
    assert sockets[1].process is None
    assert sockets[2].process.pid == 12 and sockets[2].process.via_listener
    assert listener.process.pid == 12 and not listener.process.via_listener


# -- the streamed /proc/net/tcp reader ---------------------------------------------------

@pytest.mark.parametrize("name,family", [("proc_net_tcp.txt", Family.INET),
                                         ("proc_net_tcp6.txt", Family.INET6),
                                         ("proc_net_tcp_handmade.txt", Family.INET)])
@pytest.mark.parametrize("chunk", [1, 7, 150, 1 << 20])
def test_parsing_as_read_in_chunks_equals_parsing_the_whole_text(name, family, chunk):
    path = FIXTURES / name
    text = path.read_text()
    lines = list(procfile.read_lines(str(path), chunk=chunk))
    assert lines == text.splitlines()
    whole = procfs.parse(text, Proto.TCP, family)
    streamed = procfs.parse_lines(procfile.read_lines(str(path), chunk=chunk), Proto.TCP,
                                  family)
    assert streamed == whole and whole
    states = {TcpState.LISTEN, TcpState.TIME_WAIT}
    assert procfs.parse(text, Proto.TCP, family, states=states) == \
        [s for s in whole if s.state in states]


def test_line_breaks_cut_between_chunks_are_the_same_lines(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(b"head\r\none\rtwo\r\n\r\nthree\nlast without newline")
    for chunk in range(1, 12):
        assert list(procfile.read_lines(str(path), chunk=chunk)) == \
            path.read_bytes().decode().splitlines()


def _procfs_root(tmp_path, data: bytes) -> str:
    (tmp_path / "net").mkdir(parents=True)
    (tmp_path / "net" / "tcp").write_bytes(data)
    return str(tmp_path)


def test_a_truncated_table_is_a_parse_error_naming_the_last_line(tmp_path):
    data = (FIXTURES / "proc_net_tcp.txt").read_bytes()
    lines = data.count(b"\n")
    root = _procfs_root(tmp_path, data[:data.rindex(b"\n", 0, len(data) - 1) + 40])
    with pytest.raises(ParseError, match=f"line {lines}: "):
        procfs.read_table(root, Proto.TCP, Family.INET)


def test_read_table_with_states_builds_only_those(tmp_path):
    data = (FIXTURES / "proc_net_tcp.txt").read_bytes()
    root = _procfs_root(tmp_path, data)
    every = procfs.read_table(root, Proto.TCP, Family.INET)
    listening = procfs.read_table(root, Proto.TCP, Family.INET, {TcpState.LISTEN})
    assert listening == [s for s in every if s.state is TcpState.LISTEN] and listening
    # a malformed line in a state that is not asked for is skipped, one that is fails
    bad = data + b"  99: 0100007F:1F90 0100007F:ZZZZ 01 00000000:00000000 00:00000000 " \
                 b"00000000     0        0 1 1 0000000000000000 20 4 30 10 -1\n"
    root = _procfs_root(tmp_path / "bad", bad)
    assert procfs.read_table(root, Proto.TCP, Family.INET, {TcpState.LISTEN}) == listening
    with pytest.raises(ParseError, match="ZZZZ"):
        procfs.read_table(root, Proto.TCP, Family.INET)


def test_a_read_table_is_left_to_full_collections_and_a_callers_freeze_stays(loop):
    """collect() pauses the cyclic collector and hands what it built to the oldest
    generation (so no young collection walks a 100k table right after); a caller that
    froze its own objects keeps them frozen."""
    import gc

    server = loop.listener()
    loop.connect(server)
    port = server.getsockname()[1]
    snap = collect(Query.build(ports=[port]), processes=True)
    assert snap.sockets and gc.isenabled()
    young = {id(o) for o in gc.get_objects(generation=0)}
    assert not any(id(s) in young for s in snap.sockets)
    assert any(s is snap.sockets[0] for s in gc.get_objects(generation=2))
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        collect(Query.build(ports=[port]), processes=True)
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


# A process holding a listener and `n` socketpairs, forked `kids` times (each child keeps
# the listener and makes a socketpair of its own). Prints the port and the pids, then
# waits for its stdin to close.
MANY = r"""
import os, socket, sys
n, kids = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
pairs = [socket.socketpair() for _ in range(n)]
pids = [os.getpid()]
for _ in range(kids):
    pid = os.fork()
    if pid == 0:
        for pair in pairs:
            for end in pair:
                end.close()
        own = socket.socketpair()
        sys.stdin.read()
        os._exit(0)
    pids.append(pid)
print(srv.getsockname()[1], *pids, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def many():
    """The pids of a MANY server (150 socketpairs, 12 forked children): started before
    the other fixtures, so its server has the lowest pid of the test's processes."""
    group = ProcessGroup([sys.executable, "-c", MANY, "150", "12"])
    try:
        yield [int(w) for w in group.readline().split()[1:]]
    finally:
        group.stop()


def _proc_of(tmp_path, pids):
    """A /proc holding only these processes: a link to each one's real /proc/<pid>,
    so a scan of it reads the kernel's own fd links of the test's processes alone."""
    for pid in pids:
        (tmp_path / str(pid)).symlink_to(f"/proc/{pid}")
    return str(tmp_path)


class _TakenOverAtOnce(owners.BackgroundScan):
    """A forked scan whose caller asks for the rest before the child starts: the two
    ends meet wherever their speeds have them meet, not only near the end."""

    hand_over_at_once = True


def _two_ended(procfs: str) -> tuple[owners.OwnerMap, list[tuple], int]:
    """The map, processes and what the caller read of a forked scan the caller takes
    over at once (it meets the child wherever their speeds have them meet)."""
    with _TakenOverAtOnce(procfs) as background:
        result = background.result()
    assert background.processes is not None, "the scan did not fork"
    return result, background.processes, background.taken_over


def _two_ended_scans(procfs: str, taken_over: int = 5, at_most: int = 60):
    """_two_ended() scans until the caller has read part of `taken_over` of them: on a
    busy machine the child may read everything before the caller is scheduled (that
    scan too must equal one scan, but takes nothing over)."""
    took = 0
    for _ in range(at_most):
        result, processes, taken = _two_ended(procfs)
        yield result, processes
        took += taken > 0
        if took == taken_over:
            return
    assert took, "the caller never read any of the scan"


def _counts(owner_map: owners.OwnerMap) -> tuple:
    return owner_map.denied_processes, owner_map.vanished_processes, owner_map.denied_uids


def test_a_scan_taken_over_from_the_other_end_equals_one_scan(tmp_path, many, holders):
    """The forked scan with the caller reading from the last process down (to the lowest
    pid, MANY's server with ~300 socket fds, read from both ends) gives one scan's
    map: every holder of the forked relatives' shared sockets, the primary the lowest
    pid, the dup'ed fd once, the same processes in pid order and the same counts (a
    process that exited before it was read counted once)."""
    import threading

    if threading.active_count() != 1:
        pytest.skip("the scan forks only in a single-threaded process")
    _, server_pids, _ = holders
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is in our /proc, and nothing there: it exited
    procfs = _proc_of(tmp_path, [*many, *server_pids, gone.pid])
    plain = owners.scan(procfs)
    found, counts = owners.scan_processes(procfs)
    found.sort()  # listed in pid order, as /proc itself lists them
    assert _counts(plain) == _counts(counts) == (0, 1, set())
    assert max(map(len, plain.shared.values())) == 12  # the listener: parent, 12 children
    for result, processes in _two_ended_scans(procfs):
        assert _holders_of(result) == _holders_of(plain)
        assert processes == found
        assert _counts(result) == _counts(plain)


def test_the_two_ends_meet_anywhere_in_a_big_process_and_merge_to_one_scan(tmp_path):
    """On a handmade /proc (a first process with 1,000 socket links among other files,
    then 40 small ones, some gone before their read, on both ends), the caller's
    reading from the top and the child's from the bottom join to a plain scan's."""
    big = {fd: (f"socket:[{1000 + fd}]" if fd % 3 else "pipe:[9]") for fd in range(1500)}
    processes = {100: big}
    for pid in range(200, 240):
        processes[pid] = {0: "/dev/null", 3: f"socket:[{pid}]", 4: "socket:[1003]"}
    root = _fake_proc(tmp_path, processes)
    for pid in (150, 250, 999):  # listed, no fd directory: exited meanwhile
        (tmp_path / str(pid)).mkdir()
    plain = owners.scan(root)
    found, _ = owners.scan_processes(root)
    found.sort()  # listed in pid order, as /proc itself lists them
    assert plain.vanished_processes == 3
    for result, got in _two_ended_scans(root):
        assert (_holders_of(result), got) == (_holders_of(plain), found)
        assert _counts(result) == _counts(plain)


def test_a_process_exiting_while_both_ends_read_is_read_or_counted_once(tmp_path, many):
    """A process killed as the two ends start leaves every other process's holders as
    one scan has them; it is read (in part) or counted gone, once."""
    import signal
    import threading

    if threading.active_count() != 1:
        pytest.skip("the scan forks only in a single-threaded process")
    doomed = ProcessGroup([sys.executable, "-c", MANY, "50", "0"])
    try:
        victim = int(doomed.readline().split()[1])
        procfs = _proc_of(tmp_path, [*many, victim])
        before = sorted(owners.scan_processes(procfs)[0])
        with _TakenOverAtOnce(procfs) as background:
            os.kill(victim, signal.SIGKILL)
            result = background.result()
        others = [p for p in before if p[0] != victim]
        assert [p for p in background.processes if p[0] != victim] == others
        read = [p for p in background.processes if p[0] == victim]
        assert len(read) + result.vanished_processes <= 1
        mine = {i for p in others for i in p[4]}
        plain = owners.OwnerMap.from_processes(others)
        assert {i: h for i, h in _holders_of(result).items() if i in mine} == \
            _holders_of(plain)
    finally:
        doomed.stop()


def _reap_every_child(*_) -> None:
    """A program's own SIGCHLD handler that reaps any child it gets told of."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


@pytest.mark.parametrize("handler", [signal.SIG_IGN, _reap_every_child],
                         ids=["ignored", "reaped-by-the-caller"])
def test_a_caller_that_reaps_its_own_children_still_gets_the_forked_scan(tmp_path,
                                                                         handler):
    """A library user with SIGCHLD ignored (the kernel reaps children) or a handler
    reaping every child leaves nothing for result()'s waitpid: the child's answer on
    the pipe is still the scan, not a ChildProcessError."""
    import threading

    if threading.active_count() != 1:
        pytest.skip("the scan forks only in a single-threaded process")
    root = _fake_proc(tmp_path, {pid: {3: f"socket:[{pid}]", 4: "pipe:[1]"}
                                 for pid in range(100, 140)})
    found, _ = owners.scan_processes(root)
    found.sort()  # listed in pid order, as /proc itself lists them
    previous = signal.signal(signal.SIGCHLD, handler)
    try:
        for kind in (owners.BackgroundScan, _TakenOverAtOnce):
            with kind(root) as background:
                result = background.result()
            assert background.processes == found
            assert _holders_of(result) == _holders_of(owners.OwnerMap.from_processes(found))
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_a_forked_scan_that_cannot_open_its_pipes_leaves_no_fd_behind():
    """At the fd limit with room for one pipe but not the second, entering the scan
    fails with EMFILE (as os.pipe does) and leaves every fd it had opened closed."""
    import errno
    import resource
    import threading

    if threading.active_count() != 1:
        pytest.skip("the scan forks only in a single-threaded process")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        for _ in range(2):  # room for one pipe
            os.close(fillers.pop())
        with pytest.raises(OSError) as failed, owners.BackgroundScan("/proc"):
            pass
        assert failed.value.errno == errno.EMFILE
        fillers.append(os.open(os.devnull, os.O_RDONLY))  # both free slots are free again
        fillers.append(os.open(os.devnull, os.O_RDONLY))
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_sockstat_started_with_sigchld_ignored_lists_its_sockets(tmp_path):
    """A program that ignores SIGCHLD hands that on through exec (supervisors, a Python
    program's subprocess): `sockstat --json` then still lists every socket with its
    process, as it does with the default disposition."""
    import json

    launcher = ("import os, signal, sys\n"
                "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
                "os.execv(sys.executable, [sys.executable, '-m', 'sockstat', '--json'])\n")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        run = subprocess.run([sys.executable, "-c", launcher], capture_output=True,
                             text=True, timeout=60, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = [r for r in json.loads(run.stdout) if r["local_port"] == port]
    assert [r["process"]["pid"] for r in rows] == [os.getpid()]


def _open_fds() -> dict[int, str]:
    """This process's fds and what each is (the listing's own fd left out)."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return fds


def _pipes(fds: dict[int, str]) -> dict[int, str]:
    return {fd: what for fd, what in fds.items() if what.startswith("pipe:")}


class _Interrupted(Exception):
    """What the test's SIGALRM handler raises, as Ctrl-C's handler raises
    KeyboardInterrupt: a signal handled in Python ends whatever code runs then."""


def test_a_signal_handled_in_python_during_the_fork_leaves_no_child_nor_pipe(tmp_path):
    """A signal whose Python handler raises (Ctrl-C's KeyboardInterrupt, watch's
    SIGTERM/SIGHUP) arriving while the scan forks is raised as soon as fork returns:
    in the caller it leaves no child scanning on nor a pipe open; in the child it is
    never raised into the caller's code (a second copy of the program going on).
    (An fd directory the scan just opened may stay open: os.open's number is lost when
    the handler raises as it returns.)"""
    import random
    import threading

    if threading.active_count() != 1:
        pytest.skip("the scan forks only in a single-threaded process")
    root = _fake_proc(tmp_path, {pid: {3: f"socket:[{pid}]"} for pid in range(100, 110)})
    me = os.getpid()
    fds = _open_fds()

    def interrupt(signum, frame):
        raise _Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    rng = random.Random(15)
    try:
        for _ in range(300):
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0, 0.004))
                with owners.BackgroundScan(root) as background:
                    background.result()
            except _Interrupted:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                if os.getpid() != me:  # the forked child went on into the caller's code
                    os._exit(7)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        left = []
        try:
            while True:
                left.append(os.waitpid(-1, 0))
        except ChildProcessError:
            pass
    assert left == []
    assert _pipes(_open_fds()) == _pipes(fds)


def _ended(pid: int) -> bool:
    """Whether process `pid` has exited (gone, or a zombie its new parent has not
    reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _proc_read_in_steps(tmp_path) -> str:
    """A /proc of two processes whose comm files are FIFOs: a scan waits in the first
    one's read until the test writes it, and in the second one's for ever."""
    root = _fake_proc(tmp_path, {100: {3: "socket:[100]"}, 200: {3: "socket:[200]"}})
    for pid in (100, 200):
        (tmp_path / str(pid) / "comm").unlink()
        os.mkfifo(tmp_path / str(pid) / "comm")
    return root


def _writer_once_read(fifo) -> int:
    """The write end of `fifo` once a reader has it open (ENXIO until then)."""
    def opened():
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
            return None

    return wait_for(opened, what=f"a reader of {fifo}")


# Forks the scan of argv[1], prints the child's pid, and waits for its stdin to close.
SCAN_AND_WAIT = r"""
import sys
from sockstat.collect import owners
with owners.BackgroundScan(sys.argv[1]) as background:
    print(background._pid, flush=True)
    sys.stdin.read()
"""


def test_the_forked_scan_ends_once_its_caller_is_killed_by_sigkill(tmp_path):
    """A caller killed by SIGKILL (no `with` left, no clean-up run) while its child reads
    the first process: the orphaned child does not read on to the second (whose comm
    would keep it waiting for ever) but ends."""
    root = _proc_read_in_steps(tmp_path)
    group = ProcessGroup([sys.executable, "-c", SCAN_AND_WAIT, root])
    first = None
    try:
        child = int(group.readline())
        first = _writer_once_read(f"{root}/100/comm")  # the child waits in its read
        os.kill(group.proc.pid, signal.SIGKILL)
        group.proc.wait(timeout=30)
        assert not _ended(child)
        os.write(first, b"first\n")
        os.close(first)  # its read is done: the child goes on
        first = None
        wait_for(lambda: _ended(child), what="the orphaned scan to end")
    finally:
        group.stop()  # the child too, if it lives on: it stays in the caller's group
        if first is not None:
            os.close(first)


# A child forked by `a`, which exits at once: once reparented, the child calls
# owners._end_if_orphaned(a) as the scan's child does, and says it went on if it
# returns (or what it raised). Prints what it said, or "ended".
PARENT_GONE_FIRST = r"""
import os, time
from sockstat.collect import owners
r, w = os.pipe()
a = os.fork()
if a == 0:
    if os.fork() == 0:
        os.close(r)
        while os.getppid() == a:
            time.sleep(0.001)
        try:
            owners._end_if_orphaned(a)
            os.write(w, b"went on")
        except BaseException as error:
            os.write(w, repr(error).encode())
        os._exit(0)
    os._exit(0)
os.close(w)
os.waitpid(a, 0)
said = b""
while chunk := os.read(r, 100):
    said += chunk
print(said.decode() or "ended", flush=True)
"""


def test_a_child_whose_caller_died_before_its_scan_started_ends_at_once():
    """A caller gone before the child's first look (the child is reparented already,
    before it has read anything) is seen from the child's new parent: the child ends
    then instead of scanning."""
    from conftest import python_says

    assert python_says(PARENT_GONE_FIRST) == "ended"


@pytest.fixture(scope="module")
def big_answer(tmp_path_factory) -> str:
    """A /proc whose full scan's answer is larger than a pipe holds (its one socket
    holder's name is 256 KiB long): the forked child cannot exit before result() reads
    it."""
    root = tmp_path_factory.mktemp("proc")
    _fake_proc(root, {100: {3: "socket:[100]"}, 101: {3: "socket:[101]"}})
    (root / "100" / "comm").write_text("x" * 256 * 1024 + "\n")
    return str(root)


# Handles signal argv[2] in Python, forks the scan of argv[1], sends that signal to its
# whole process group (itself and the child, alive: blocked writing its big answer),
# and prints whether result() got the child's scan, how many inodes, and whether its
# handler ran (SIGCHLD's runs again as the child exits).
SIGNALLED_GROUP = r"""
import os, resource, signal, sys
from sockstat.collect import owners
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGQUIT's default dumps a core
signum = getattr(signal, sys.argv[2])
seen = []
signal.signal(signum, lambda *_: seen.append(signum))
with owners.BackgroundScan(sys.argv[1]) as background:
    assert background.forked
    os.killpg(0, signum)
    found = background.result()
print(background.processes is not None, len(found.by_inode), signum in seen)
"""


@pytest.mark.parametrize(("name", "child_scans"), [
    ("SIGUSR1", True), ("SIGUSR2", True), ("SIGWINCH", True), ("SIGCHLD", True),
    ("SIGINT", False), ("SIGTERM", False), ("SIGHUP", False), ("SIGQUIT", False),
])
def test_a_signal_the_caller_handles_sent_to_its_group_ends_the_child_only_if_it_ends_jobs(
        big_answer, name, child_scans):
    """A signal sent to the whole process group, which the caller handles in Python: the
    caller's handler runs; the child ignores it and its scan is the answer, except
    for the signals that end a job (Ctrl-C's SIGINT, SIGTERM, SIGHUP, SIGQUIT), which end
    the child (as they would end both without a handler), and the caller scans itself.
    Either way the map is the whole scan's."""
    group = ProcessGroup([sys.executable, "-c", SIGNALLED_GROUP, big_answer, name])
    try:
        said = group.readline().split()
        assert group.proc.wait(timeout=60) == 0
    finally:
        group.stop()
    assert said == [str(child_scans), "2", "True"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a PID namespace")
@pytest.mark.parametrize("fork", [True, False])
def test_a_caller_whose_children_start_a_pid_namespace_scans_itself(fork):
    """A caller that unshared its PID namespace without forking (`unshare --pid`
    without --fork) would fork its scan as the new namespace's first process, whose
    pid is not /proc's: it scans in its own process instead, and names its own
    sockets (and pid 1's), never a child; with --fork (the caller inside its
    namespace) the scan forks as usual. Both on the real /proc of their own."""
    code = ("import json, os, socket\n"
            "from sockstat.collect import owners\n"
            "server = socket.create_server(('127.0.0.1', 0))\n"
            "with owners.BackgroundScan() as background:\n"
            "    forked = background.forked\n"
            "    found = background.result()\n"
            "me = int(os.readlink('/proc/self'))\n"
            "print(json.dumps([forked, sorted({r.pid for r in found.by_inode.values()}),"
            " me, found.by_inode[os.fstat(server.fileno()).st_ino].pid]))\n")
    # python is the outer namespace's pid 1 (exec'ed by its shell); without --fork the
    # inner unshare gives its children a namespace of their own, whose first process is
    # the scan's child (no fork before it: once a namespace's first process ends, no
    # other can be made in it)
    inner = f"exec {'' if fork else 'unshare --pid '}{shlex.quote(sys.executable)} -c " \
        + shlex.quote(code)
    argv = ["unshare", "--net", "--pid", "--mount-proc", "--fork", "--kill-child", "sh",
            "-c", f"ip link set lo up && {inner}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [fork, [1], 1, 1]
