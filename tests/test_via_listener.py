"""TIME_WAIT rows named "via listener": the listener's primary holder (the lowest pid
holding it), as `ss -tanp` and a full /proc scan name it, on real forked servers whose
listener is held by processes of different uids, passed over SCM_RIGHTS to an older
process, or inherited by the process that asks; the listener's own row still lists
every holder; watch names the same. Plus the scan's primary-only mode on a handmade
/proc tree and which listeners can name a fileless socket at all."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import (
    NEEDS_NETNS,
    TABLE_MAKERS,
    ProcessGroup,
    in_own_namespaces,
    kernel_rows,
    make_socket,
    python_says,
    run_sockstat,
    wait_for,
)

from sockstat.collect import collect, kcmp, owners
from sockstat.model import Endpoint, TcpState
from sockstat.query import Query

needs_ss = pytest.mark.skipif(shutil.which("ss") is None,
                              reason="ss (iproute2) is not installed")

# Makes TIME_WAITs on a listener it keeps: the server side closes first, so they sit on
# the listener's port. Shared by the scripts below.
MAKE_TIME_WAITS = TABLE_MAKERS + r"""
def make_time_waits(srv, count):
    time_wait(srv, srv.getsockname()[0], srv.family, count)
"""

# A server: listener, 40 accepted connections after it (fds its holder has besides the
# listener), two forked children that switch to other uids (prefork workers), then 3
# TIME_WAITs on its port. Prints "port pid child child"; waits for stdin to close.
SERVER = r"""
import os, socket, sys
""" + MAKE_TIME_WAITS + r"""
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
keep = []
for _ in range(40):
    keep.append(socket.create_connection(srv.getsockname()))
    keep.append(srv.accept()[0])
children = []
for uid in (65534, 1):
    pid = os.fork()
    if pid == 0:
        os.setgid(uid)
        os.setuid(uid)
        sys.stdin.read()
        os._exit(0)
    children.append(pid)
make_time_waits(srv, 3)
print(srv.getsockname()[1], os.getpid(), *children, flush=True)
sys.stdin.read()
"""

# Receives one fd over a UNIX socket at argv[1] and holds it, after opening argv[2] fds
# of /dev/null (0: none), at fd argv[3] if given. Prints its pid, then "got FD".
RECEIVER = r"""
import os, socket, sys
pad = [os.open("/dev/null", os.O_RDONLY) for _ in range(int(sys.argv[2]))]
box = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
box.bind(sys.argv[1])
box.listen(1)
print(os.getpid(), flush=True)
conn, _ = box.accept()
_, [fd], _, _ = socket.recv_fds(conn, 16, 1)
if len(sys.argv) > 3:
    os.dup2(fd, int(sys.argv[3]))
    os.close(fd)
    fd = int(sys.argv[3])
print("got", fd, flush=True)
sys.stdin.read()
"""

# Holds argv[1] fds of /dev/null and no socket. Prints its pid.
MANY_FDS = r"""
import os, sys
pad = [os.open("/dev/null", os.O_RDONLY) for _ in range(int(sys.argv[1]))]
print(os.getpid(), flush=True)
sys.stdin.read()
"""

# A listener passed to the RECEIVER at argv[1] and kept (closed after its TIME_WAITs
# with argv[2] "close"); TIME_WAITs on it. Prints "port pid" once the receiver holds it.
SENDER = r"""
import os, socket, sys
""" + MAKE_TIME_WAITS + r"""
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
box = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
box.connect(sys.argv[1])
socket.send_fds(box, [b"x"], [srv.fileno()])
sys.stdin.readline()  # the receiver has it
make_time_waits(srv, 3)
port = srv.getsockname()[1]
if sys.argv[2:] == ["close"]:
    srv.close()
print(port, os.getpid(), flush=True)
sys.stdin.read()
"""

# The listener and its TIME_WAITs made by this process, then a forked child (which
# inherits the listener) asks sockstat who serves them: its own scan reads itself
# first, yet names its parent, the older holder. Prints the parent's pid, then the
# child's pid and the pids the TIME_WAIT rows name.
INHERITED = r"""
import json, os, socket, sys
""" + MAKE_TIME_WAITS + r"""
from sockstat.collect import collect
from sockstat.query import Query
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
make_time_waits(srv, 3)
port = srv.getsockname()[1]
print(os.getpid(), flush=True)
pid = os.fork()
if pid == 0:
    rows = [s for s in collect(Query.build(states=["time-wait"], ports=[port]),
                               processes=True).sockets if s.local.address == "127.0.0.1"]
    print(json.dumps([os.getpid(), [[s.process.pid, s.process.via_listener]
                                    for s in rows if s.process is not None], len(rows)]),
          flush=True)
    os._exit(0)
os.waitpid(pid, 0)
sys.stdin.read()
"""


# Where the tests' listeners are. The host's table is shared: bind(port 0) on one
# address may be given a port on which another program has sockets on another address
# (a TIME_WAIT there does not stop the bind), so the tests look at their own address
# and port, never at the port alone.
HOST = "127.0.0.1"


def _time_waits(port: int, host: str = HOST) -> int:
    """TIME_WAITs on host:port, as the kernel lists them."""
    return sum(r["state"] == "TIME_WAIT" and r["local"] == (host, port)
               for r in kernel_rows({port}))


def _listening(sockets, port: int, host: str = HOST) -> list:
    return [s for s in sockets if s.state is TcpState.LISTEN and s.local == Endpoint(host, port)]


def _ss_listener_pids(port: int) -> list[int]:
    """The pids `ss -tlnp` names for the listener on `port`."""
    out = subprocess.run(["ss", "-tlnpH", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    return sorted({int(p) for p in re.findall(r"pid=(\d+)", out)})


def _full_scan_holders(port: int) -> list[int]:
    """Every holder of the listener on `port`, from a scan of every process."""
    [listener] = _listening(collect(Query.build(states=["listen"], ports=[port])).sockets, port)
    full = owners.scan()
    return sorted([full.by_inode[listener.inode].pid]
                  + [r.pid for r in full.shared.get(listener.inode, ())])


def _via_rows(sockets, port: int) -> list:
    rows = [s for s in sockets
            if s.state is TcpState.TIME_WAIT and s.local == Endpoint(HOST, port)]
    assert len(rows) == 3, rows
    return rows


@pytest.fixture
def server():
    """(port, server pid, children's pids): SERVER running, its TIME_WAITs made."""
    group = ProcessGroup([sys.executable, "-c", SERVER])
    try:
        port, pid, *children = (int(w) for w in group.readline().split())
        wait_for(lambda: _time_waits(port) == 3, what="3 TIME_WAITs on the server's port")
        yield port, pid, children
    finally:
        group.stop()


@pytest.mark.root
@needs_ss
def test_time_wait_rows_name_the_listeners_lowest_pid_as_ss_and_a_full_scan(server):
    """The listener is held by its creator (root) and two forked workers (other uids):
    every way of asking names the lowest pid for the TIME_WAITs (marked via listener,
    no fd, no others), and the listener's own row lists all three holders."""
    port, pid, children = server
    holders = sorted([pid, *children])
    wait_for(lambda: _ss_listener_pids(port) == holders, what="ss -tlnp to list 3 holders")
    assert _full_scan_holders(port) == holders
    primary = holders[0]
    for query in (Query.build(states=["time-wait"]),  # -s time-wait: listener not listed
                  Query.build(states=["time-wait"], ports=[port]),
                  Query.build(ports=[port])):  # the listener listed too
        sockets = collect(query, processes=True).sockets
        for row in _via_rows(sockets, port):
            assert row.process.pid == primary and row.process.via_listener, query
            assert row.process.fd is None and row.others == (), query
            assert row.process.user == "root"
    listing = collect(Query.build(ports=[port]), processes=True).sockets
    [listener] = _listening(listing, port)
    assert [r.pid for r in listener.holders] == holders
    out = run_sockstat("-s", "time-wait", "--json", "--port", str(port))
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout) if r["local_address"] == HOST]
    assert len(rows) == 3
    assert all([p["pid"] for p in r["processes"]] == [primary] and r["process"]["via_listener"]
               for r in rows)



@pytest.mark.root
def test_watch_names_the_same_holder_as_the_listing(server):
    """watch names the TIME_WAITs through the same listeners as the one-shot listing
    (collect._listeners_on): the listener's lowest pid, whether the listener is in
    view or only looked up for them, and the listener's own row keeps every holder."""
    from sockstat.watch.session import Watcher

    port, pid, children = server
    holders = sorted([pid, *children])
    for query in (Query.build(states=["time-wait"]), Query.build(ports=[port])):
        watcher = Watcher(query, interval=1.0, findings=False)
        watcher.refresh()
        rows = _via_rows(watcher.snapshot.sockets, port)
        listing = _via_rows(collect(query, processes=True).sockets, port)
        assert [(r.process.pid, r.process.via_listener) for r in rows] == \
            [(r.process.pid, r.process.via_listener) for r in listing] == \
            [(holders[0], True)] * 3, query
    [listener] = _listening(watcher.snapshot.sockets, port)
    assert [r.pid for r in listener.holders] == holders

@pytest.mark.root
@needs_ss
def test_a_listener_passed_to_an_older_process_names_that_process(tmp_path):
    """SCM_RIGHTS: the receiver started first (the lower pid) holds the listener the
    sender made: ss and a full scan name both, and the TIME_WAITs name the receiver,
    the lowest pid, on the narrow path as on the broad one."""
    path = str(tmp_path / "box")
    receiver = ProcessGroup([sys.executable, "-c", RECEIVER, path, "0"])
    sender = None
    try:
        older = int(receiver.readline())
        sender = ProcessGroup([sys.executable, "-c", SENDER, path])
        assert receiver.readline().startswith("got")
        sender.proc.stdin.write("\n")
        sender.proc.stdin.flush()
        port, newer = (int(w) for w in sender.readline().split())
        if older > newer:
            pytest.skip("pids wrapped around between the two processes")
        wait_for(lambda: _time_waits(port) == 3, what="3 TIME_WAITs on the sender's port")
        wait_for(lambda: _ss_listener_pids(port) == [older, newer],
                 what="ss -tlnp to list both holders")
        assert _full_scan_holders(port) == [older, newer]
        for query, sockets in (
                ("narrow", collect(Query.build(states=["time-wait"]), processes=True).sockets),
                ("broad", collect(processes=True).sockets)):
            for row in _via_rows(sockets, port):
                assert (row.process.pid, row.process.via_listener) == (older, True), query
        broad = collect(processes=True).sockets
        [listener] = _listening(broad, port)
        assert [r.pid for r in listener.holders] == [older, newer]
    finally:
        for group in (sender, receiver):
            if group is not None:
                group.stop()


def test_a_process_that_inherited_the_listener_names_its_older_parent():
    """The asking process holds the listener too (forked after it was made) and reads
    itself first: the TIME_WAITs still name the parent, the lowest pid."""
    group = ProcessGroup([sys.executable, "-c", INHERITED])
    try:
        parent = int(group.readline())
        child, named, count = json.loads(group.readline())
        assert count == 3 and child != parent
        assert named == [[parent, True]] * 3
    finally:
        group.stop()


def _fake_proc(root, processes: dict[int, dict[int, str]]) -> str:
    """A /proc tree: /proc/<pid>/comm, /proc/<pid>/fd/<fd> -> link text, and a stat
    file naming ppid 2 (every process a sibling of the others: relatives)."""
    for pid, links in processes.items():
        fd_dir = root / str(pid) / "fd"
        fd_dir.mkdir(parents=True)
        (root / str(pid) / "comm").write_text(f"proc{pid}\n")
        (root / str(pid) / "stat").write_text(f"{pid} (proc{pid}) S 2 {pid} {pid} 0\n")
        for fd, target in links.items():
            (fd_dir / str(fd)).symlink_to(target)
    return str(root)


def test_a_primary_only_inode_is_its_lowest_pid_holders_and_the_others_keep_every_holder(
        tmp_path):
    root = _fake_proc(tmp_path, {
        30: {3: "socket:[100]", 4: "socket:[200]"},
        7: {5: "socket:[100]", 6: "pipe:[1]"},
        12: {3: "socket:[100]", 8: "socket:[200]"},
    })
    only = owners.scan(root, {100}, primary_only={100})
    assert only.by_inode[100].pid == 7 and only.by_inode[100].fd == 5
    assert 100 not in only.shared
    mixed = owners.scan(root, {100, 200}, primary_only={100})
    assert mixed.by_inode[100].pid == 7
    assert [mixed.by_inode[200].pid, *(r.pid for r in mixed.shared[200])] == [12, 30]
    assert owners.scan(root, {300}, primary_only={300}).by_inode == {}


def test_only_a_listener_on_the_rows_address_or_a_wildcard_can_name_them():
    tw = make_socket(TcpState.TIME_WAIT, local=("127.0.0.3", 8080))
    fileless, ports = {tw.local}, {8080}
    for address, serves in (("127.0.0.3", True), ("0.0.0.0", True), ("::", True),
                            ("127.0.0.2", False), ("::1", False)):
        listener = make_socket(TcpState.LISTEN, local=(address, 8080), remote=("0.0.0.0", 0))
        assert owners.serves(listener, fileless, ports) is serves, address
    other_port = make_socket(TcpState.LISTEN, local=("127.0.0.3", 8081))
    assert not owners.serves(other_port, fileless, ports)
    assert Endpoint("127.0.0.3", 8080) in fileless


def test_fileless_ends_are_the_tcp_sockets_without_a_file_but_listeners():
    """One helper for the listing, its namespaces path and watch: TCP sockets with no
    inode give their local endpoint; sockets with a file, UDP, and a listener (even one
    without a file) give none."""
    from sockstat.collect import fileless_ends
    from sockstat.model import Proto

    table = [
        make_socket(TcpState.TIME_WAIT, local=("127.0.0.3", 8080)),
        make_socket(TcpState.SYN_RECV, local=("::1", 8443), remote=("::1", 40000)),
        make_socket(TcpState.ESTABLISHED, local=("127.0.0.1", 8081)),  # not yet accepted
        make_socket(TcpState.ESTABLISHED, local=("127.0.0.1", 8082), inode=5),
        make_socket(TcpState.ESTABLISHED, local=("127.0.0.1", 8083), proto=Proto.UDP),
        make_socket(TcpState.LISTEN, local=("127.0.0.1", 8084), remote=("0.0.0.0", 0)),
    ]
    ends = {Endpoint("127.0.0.3", 8080), Endpoint("::1", 8443), Endpoint("127.0.0.1", 8081)}
    assert fileless_ends(table) == fileless_ends(table, [s.inode for s in table]) == ends
    assert fileless_ends([]) == set()


def test_a_listener_without_a_file_asks_for_no_listener_and_changes_no_name():
    """Why fileless_ends leaves listeners out (watch always did; the listing took their
    endpoints too): a LISTEN socket is never named through another listener, so with or
    without its endpoint every socket of a table gets the same owner; only the look-up
    of listeners is smaller. Here a listener without a file on 127.0.0.2:9090 beside a
    wildcard one held by pid 50, and a TIME_WAIT on 127.0.0.1:8080 whose wildcard
    listener pid 40 holds."""
    from sockstat.collect import _listeners_on, fileless_ends
    from sockstat.model import ProcessRef

    def table():
        return [make_socket(TcpState.LISTEN, local=("127.0.0.2", 9090), remote=("0.0.0.0", 0)),
                make_socket(TcpState.LISTEN, local=("0.0.0.0", 9090), remote=("0.0.0.0", 0),
                            inode=88),
                make_socket(TcpState.LISTEN, local=("0.0.0.0", 8080), remote=("0.0.0.0", 0),
                            inode=77),
                make_socket(TcpState.TIME_WAIT, local=("127.0.0.1", 8080))]

    def named(ends: set) -> tuple[list, list]:
        sockets = table()
        listeners = _listeners_on(ends, Query(), sockets, lambda _: [])
        owner_map = owners.OwnerMap(by_inode={77: ProcessRef(40, "server", 3),
                                              88: ProcessRef(50, "other", 3)})
        owners.attribute(sockets, owner_map, listeners)
        return ([s.local.port for s in listeners],
                [(s.process.pid, s.process.via_listener) if s.process else None
                 for s in sockets])

    with_listener = {s.local for s in table() if not s.inode}  # the listing's old filter
    assert fileless_ends(table()) == {Endpoint("127.0.0.1", 8080)}
    (fewer, names), (more, names_before) = named(fileless_ends(table())), named(with_listener)
    assert fewer == [8080] and more == [9090, 9090, 8080]
    assert names == names_before == [None, (50, False), (40, False), (40, True)]


def _time_waits_beside_another_address(loop) -> int:
    """TIME_WAITs on 127.0.0.3:P whose listener closed, and a live listener on
    127.0.0.2:P; returns P."""
    gone = loop.listener("127.0.0.3")
    port = gone.getsockname()[1]
    other = socket.socket()
    loop.sockets.append(other)
    other.bind(("127.0.0.2", port))
    other.listen(4)
    for _ in range(2):
        client, conn = loop.connect(gone)
        conn.close()
        client.recv(1)
        client.close()
    gone.close()
    wait_for(lambda: _time_waits(port, "127.0.0.3") == 2, what="2 TIME_WAITs on 127.0.0.3")
    return port


def test_a_listener_on_the_same_port_of_another_address_is_not_asked_for(loop):
    """No listener serves the rows, so none is looked up, and they stay without a
    process."""
    port = _time_waits_beside_another_address(loop)
    sockets = collect(Query.build(states=["time-wait"], ports=[port]), processes=True).sockets
    rows = [s for s in sockets if s.local == Endpoint("127.0.0.3", port)]
    assert len(rows) == 2 and all(s.process is None for s in rows)
    assert not any(owners.serves(s, {r.local for r in rows}, {port})
                   for s in collect(Query.build(states=["listen"], ports=[port])).sockets)


def test_a_listener_given_a_port_with_time_waits_elsewhere_counts_none_as_its_own(loop):
    """The cause of a rare failure here: bind(port 0) on 127.0.0.1 may be given a port
    on which other addresses have TIME_WAITs and a listener (no conflict), and counting
    every TIME_WAIT on the port then never saw the one the test waited for alone."""
    port = _time_waits_beside_another_address(loop)
    mine = socket.socket()
    loop.sockets.append(mine)
    mine.bind((HOST, port))
    mine.listen(1)
    assert (_time_waits(port), _time_waits(port, "127.0.0.3")) == (0, 2)
    [listener] = _listening(collect(Query.build(states=["listen"], ports=[port])).sockets,
                            port)
    assert listener.inode == os.fstat(mine.fileno()).st_ino


def test_watch_does_not_look_up_a_listener_on_another_address_either(loop):
    """The same table in watch: it finds its listeners as the listing does
    (collect._listeners_on), so the listener on 127.0.0.2 is not looked up (its inode
    is not in the owner cache) and the rows stay unnamed."""
    from sockstat.watch.session import Watcher

    port = _time_waits_beside_another_address(loop)
    watcher = Watcher(Query.build(states=["time-wait"], ports=[port]), interval=1.0,
                      findings=False)
    watcher.refresh()
    rows = [s for s in watcher.snapshot.sockets if s.local == Endpoint("127.0.0.3", port)]
    assert len(rows) == 2 and all(s.process is None for s in rows)
    [listener] = _listening(collect(Query.build(states=["listen"], ports=[port])).sockets,
                            port, "127.0.0.2")
    assert listener.inode not in watcher.owners.by_inode


@needs_ss
@pytest.mark.parametrize(("moved", "only"), [(False, False), (True, False), (False, True)],
                         ids=["among-its-first-fds", "beyond", "its-only-holder"])
def test_older_processes_with_many_fds_are_compared_not_read_and_name_the_same(
        tmp_path, moved, only):
    """Two processes with more than DEFER_FDS fds started before the listener's
    creator: one holds nothing, one received the listener (at one of its first fd
    numbers, or moved beyond them). The primary-only scan passes over both, finds the
    creator, then asks the kernel (kcmp) whether they hold the same file: it names the
    receiver and its fd, as ss and a full scan do. When the creator closed its copy,
    the passed-over processes are read, fewest fds first, and name the same."""
    many = str(owners.DEFER_FDS + 20)
    groups = []
    try:
        groups.append(ProcessGroup([sys.executable, "-c", MANY_FDS, many]))
        idle = int(groups[-1].readline())
        path = str(tmp_path / "box")
        groups.append(ProcessGroup([sys.executable, "-c", RECEIVER, path, many,
                                    *(["900"] if moved else [])]))
        older = int(groups[-1].readline())
        groups.append(ProcessGroup([sys.executable, "-c", SENDER, path,
                                    *(["close"] if only else [])]))
        sender = groups[-1]
        fd = int(groups[1].readline().split()[1])
        sender.proc.stdin.write("\n")
        sender.proc.stdin.flush()
        port, newer = (int(w) for w in sender.readline().split())
        if not idle < older < newer:
            pytest.skip("pids wrapped around between the processes")
        assert (fd == 900) is moved and fd > 2
        wait_for(lambda: _time_waits(port) == 3, what="3 TIME_WAITs on the sender's port")
        holders = [older] if only else [older, newer]
        wait_for(lambda: _ss_listener_pids(port) == holders, what="ss -tlnp's holders")
        [listener] = _listening(collect(Query.build(states=["listen"], ports=[port])).sockets,
                                port)
        full = owners.scan()
        assert (full.by_inode[listener.inode].pid, full.by_inode[listener.inode].fd) \
            == (older, fd)
        only = owners.scan(wanted={listener.inode}, primary_only={listener.inode})
        assert (only.by_inode[listener.inode].pid, only.by_inode[listener.inode].fd) \
            == (older, fd)
        sockets = collect(Query.build(states=["time-wait"]), processes=True).sockets
        assert all(r.process.pid == older for r in _via_rows(sockets, port))
        comparer = kcmp.open_comparer()
        if comparer is not None and not only:  # the kernel's answers themselves
            count = os.stat(f"/proc/{older}/fd").st_size
            assert count > owners.DEFER_FDS
            [theirs] = [r for r in full.shared[listener.inode] if r.pid == newer]
            assert comparer.fd_holding(older, count, newer, theirs.fd, listener.inode,
                                       "/proc") == fd
            assert comparer.fd_holding(idle, os.stat(f"/proc/{idle}/fd").st_size, newer,
                                       theirs.fd, listener.inode, "/proc") is False
    finally:
        for group in reversed(groups):
            group.stop()


def _fd_count(pid: int) -> int:
    """How many fds `pid` has (stat of its fd directory, Linux >= 6.2; else listed)."""
    return os.stat(f"/proc/{pid}/fd").st_size or len(os.listdir(f"/proc/{pid}/fd"))


def test_kcmp_cannot_tell_once_the_holders_fd_or_the_asked_process_is_gone():
    """The kernel answers EBADF for a holder's closed fd as for a gap in the asked
    process's fds, and an exiting process has no fds left: so a holder that closes its
    copy of the listener during the check (here: before it), or puts another file at
    that fd number, or an asked process that exits, is "cannot tell" (None, and the scan
    reads links), never "holds none"."""
    comparer = kcmp.open_comparer()
    if comparer is None:
        pytest.skip("kcmp is not there or not allowed here")
    me = os.getpid()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    inode = os.fstat(srv.fileno()).st_ino
    holder_fd = srv.fileno()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, pass_fds=[holder_fd])
    try:
        wait_for(lambda: os.path.exists(f"/proc/{child.pid}/fd/{holder_fd}"),
                 what="the child holding the listener")
        count = _fd_count(child.pid)
        assert comparer.fd_holding(child.pid, count, me, holder_fd, inode, "/proc") \
            == holder_fd
        srv.close()  # the child's copy stays: it still holds the listener
        assert comparer.fd_holding(child.pid, count, me, holder_fd, inode, "/proc") is None
        other = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:  # another file at the holder's fd number
            if other != holder_fd:  # (the lowest free number, as a rule)
                os.dup2(other, holder_fd, inheritable=False)
            assert comparer.fd_holding(child.pid, count, me, holder_fd, inode,
                                       "/proc") is None
        finally:
            os.close(holder_fd)
            if other != holder_fd:
                os.close(other)
        # an asked process that exited (a zombie: not reaped yet) holds no fds
        again = socket.socket()
        again.bind(("127.0.0.1", 0))
        again.listen(1)
        child.stdin.close()
        wait_for(lambda: _proc_state(child.pid) == "Z", what="the child exited")
        assert comparer.fd_holding(child.pid, count, me, again.fileno(),
                                   os.fstat(again.fileno()).st_ino, "/proc") is None
        again.close()
    finally:
        srv.close()
        child.kill()
        child.wait(timeout=30)
        if not child.stdin.closed:
            child.stdin.close()


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()[0]


def test_no_kcmp_for_a_proc_tree_that_is_not_this_pid_namespaces(tmp_path):
    """kcmp numbers processes as this PID namespace does: over another /proc tree (a
    handmade one, another namespace's) the scan reads links instead."""
    assert kcmp.open_comparer(str(tmp_path)) is None
    (tmp_path / "self").symlink_to("1")
    assert kcmp.open_comparer(str(tmp_path)) is None or os.getpid() == 1


def test_no_kcmp_where_python_has_no_ctypes():
    """A Python built without libffi has no ctypes (importing it raises ImportError): the
    comparer is None and the scan reads links, with no traceback."""
    code = ("import sys; sys.modules['ctypes'] = None\n"
            "from sockstat.collect import kcmp\n"
            "print(kcmp.open_comparer())\n")
    assert python_says(code) == "None"


@pytest.mark.parametrize(("machine", "pointer_size", "number"), [
    ("x86_64", 8, 312), ("i686", 4, 349), ("aarch64", 8, 272),
    ("x86_64", 4, None),  # i386 or x32 userland on a 64-bit kernel: two tables
    ("aarch64", 4, None),  # arm userland on arm64: the arm table
    ("s390x", 4, None),  # 31-bit
    ("i686", 8, None),  # a 64-bit Python under `setarch i686`
    ("armv7l", 4, None), ("mips64", 8, None),  # machines not listed
])
def test_kcmp_number_only_for_a_machine_and_pointer_size_it_is_sure_of(
        machine, pointer_size, number):
    """The number libc's syscall() needs depends on the interpreter's ABI as well as the
    kernel's machine: any pair not known is refused."""
    assert kcmp.syscall_number(machine, pointer_size) == number


@pytest.mark.skipif(shutil.which("setarch") is None or os.uname().machine != "x86_64",
                    reason="needs setarch (util-linux) on x86_64")
def test_no_kcmp_when_the_kernel_reports_another_machine_than_the_interpreters():
    """Under `setarch i686` the kernel reports i686 to this 64-bit interpreter, whose
    syscalls still take the x86_64 table (where 349, i386's kcmp, is no kcmp): the
    probe refuses it without trying, and the scan reads links."""
    code = ("import os\n"
            "from sockstat.collect import kcmp\n"
            "print(os.uname().machine, kcmp.syscall_number(), kcmp.open_comparer())\n")
    done = subprocess.run(["setarch", "i686", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["i686", "None", "None"]


def test_no_kcmp_and_no_fd_left_open_when_the_probe_cannot_open_its_fds():
    """At the fd limit (a low `ulimit -n`) the probe's own fds cannot be opened: the
    comparer is None (the scan reads links) and none of the probe's fds stays open."""
    code = ("import ctypes, os, resource\n"  # ctypes imported before the limit
            "from sockstat.collect import kcmp\n"
            "before = sorted(os.listdir('/proc/self/fd'))\n"
            "def _open(fd):\n"
            "    try:\n"
            "        return os.fstat(fd) is not None\n"
            "    except OSError:\n"
            "        return False\n"
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
            "for room in range(3):  # free fds under the limit: 0, 1, 2 (the probe needs 3)\n"
            "    held = {fd for fd in range(1024) if _open(fd)}\n"
            "    limit = 0\n"
            "    while limit - len(held & set(range(limit))) < room or limit in held:\n"
            "        limit += 1\n"
            "    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))\n"
            "    assert kcmp.open_comparer() is None, room\n"
            "    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n"
            "    assert sorted(os.listdir('/proc/self/fd')) == before, room\n"
            "print('ok')\n")
    assert python_says(code) == "ok"


def test_an_older_process_read_for_another_listener_still_names_the_one_this_process_holds(
        tmp_path):
    """This process holds listener 100 (inherited: the older process holds it too) and
    reads itself first; the older process is read for listener 200, which comes first in
    its fds: reading it must not stop there, or 100 would name this process instead of
    the lowest pid, as a full scan does."""
    me = os.getpid()
    root = _fake_proc(tmp_path, {me - 1: {3: "socket:[200]", 4: "socket:[100]"},
                                 me: {5: "socket:[100]"}})
    only = owners.scan(root, {100, 200}, primary_only={100, 200})
    full = owners.scan(root, {100, 200})
    assert {inode: ref.pid for inode, ref in only.by_inode.items()} == \
        {inode: ref.pid for inode, ref in full.by_inode.items()} == {100: me - 1, 200: me - 1}
    assert only.by_inode[100].fd == 4


def _listener_in_flight(loop) -> tuple[int, socket.socket]:
    """A listener held by no process, only by a message in flight over SCM_RIGHTS; its
    port, and the UNIX socket to receive it from (_hold_and_time_wait)."""
    listener = loop.listener()
    port = listener.getsockname()[1]
    box, inbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop.sockets += [box, inbox]
    socket.send_fds(box, [b"x"], [listener.fileno()])
    listener.close()  # only the message in flight holds it now
    return port, inbox


def _hold_and_time_wait(loop, inbox: socket.socket, port: int) -> None:
    """This process receives the listener in flight and holds it, then makes one
    TIME_WAIT on its port (the server side closes first)."""
    _, fds, _, _ = socket.recv_fds(inbox, 1, 1)
    held = socket.socket(fileno=fds[0])
    loop.sockets.append(held)
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = held.accept()
    server.close()
    client.recv(1)
    client.close()
    wait_for(lambda: _time_waits(port) == 1, what="a TIME_WAIT on the listener's port")


def test_watch_counts_a_table_listener_named_late_under_its_holder(loop):
    """A listener of the table whose holder turns up late (it was in flight over
    SCM_RIGHTS, held by no process) is named in place when a TIME_WAIT on its port asks
    for it: the tracker counts it under that holder, as a recount of the same table
    does, not under "unknown" where the first refresh left it. (The whole TCP table: only
    a table with every listener names them in place; this test's pid alone is judged.)"""
    from sockstat.watch.tracker import Tracker

    watcher, seen, first, hold_and_refresh = _watch_a_listener_in_flight(
        loop, lambda port: Query.build(tcp=True))
    assert seen.process is None and _mine(first) == 0
    refresh = hold_and_refresh()
    assert seen.process is not None and seen.process.pid == os.getpid()
    assert _mine(refresh) == _mine(Tracker().update(watcher.snapshot)) >= 1


def _watch_a_listener_in_flight(loop, query_of):
    """A watch of `query_of(port)` refreshed once over a listener in flight (held by no
    process): (the watcher, the listener's Socket, the refresh, a function that has
    this process hold the listener, make a TIME_WAIT on its port, and refresh again)."""
    from sockstat.watch.session import Watcher

    port, inbox = _listener_in_flight(loop)
    watcher = Watcher(query_of(port), interval=1.0, findings=False)
    watcher.owners.retry_every = 2  # the second refresh looks for the unfound again
    watcher.owners.scan_budget = None  # ... at once, not deferred to a later refresh
    first = watcher.refresh()
    [seen] = _listening(watcher.snapshot.sockets, port)

    def hold_and_refresh():
        _hold_and_time_wait(loop, inbox, port)
        return watcher.refresh()

    return watcher, seen, first, hold_and_refresh


def _mine(refresh) -> int:
    """How many sockets a watch's top list counts under this process."""
    return sum(n for ref, n in refresh.top_processes if ref and ref.pid == os.getpid())


def test_watch_port_renames_a_table_listener_named_late(loop):
    """`watch --port P`: the table's listener on P, unnamed when first seen (in flight
    over SCM_RIGHTS), is named in place once its holder turns up and a socket without a
    file on P asks for it, as in a watch of the whole table. With a port filter the
    listeners come from a LISTEN dump of their own, whose Socket objects are not the
    table's: the table's listener was left unnamed, counted under "unknown", for good."""
    from sockstat.watch.tracker import Tracker

    watcher, seen, first, hold_and_refresh = _watch_a_listener_in_flight(
        loop, lambda port: Query.build(ports=[port]))
    assert seen.process is None and _mine(first) == 0
    refresh = hold_and_refresh()
    [again] = _listening(watcher.snapshot.sockets, seen.local.port)
    assert again is seen and seen.process is not None and seen.process.pid == os.getpid()
    assert [(r.pid, r.via_listener) for r in seen.holders] == [(os.getpid(), False)]
    # the listener and its TIME_WAIT, as a recount of the same table counts them
    assert _mine(refresh) == _mine(Tracker().update(watcher.snapshot)) == 2


# Receives a listener over argv[1] (a UNIX stream socket) once told on stdin, forks a
# child that keeps it too, accepts one connection and closes it (a TIME_WAIT on the
# listener's port once the client closes). Prints its pid, then its child's.
HOLDS_WITH_A_CHILD = r"""
import os, socket, sys, time
box = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
box.bind(sys.argv[1])
box.listen(1)
print(os.getpid(), flush=True)
conn, _ = box.accept()
sys.stdin.readline()
_, [fd], _, _ = socket.recv_fds(conn, 16, 1)
srv = socket.socket(fileno=fd)
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
accepted, _ = srv.accept()
accepted.close()
print(child, flush=True)
sys.stdin.read()
"""


@pytest.mark.root
def test_watch_lists_every_holder_of_a_table_listener_named_late(loop, tmp_path):
    """A listener of the table whose holders turn up late (it was in flight, then held
    by a process and its forked child), named in place for a TIME_WAIT on its port: it
    is in view, so its own row lists both holders, as the one-shot listing's does (only
    a listener looked up for the TIME_WAITs alone needs its primary holder only)."""
    from sockstat.watch.session import Watcher

    path = str(tmp_path / "box")
    holder = ProcessGroup([sys.executable, "-c", HOLDS_WITH_A_CHILD, path])
    try:
        pid = int(holder.readline())
        listener = loop.listener()
        port = listener.getsockname()[1]
        box = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        loop.sockets.append(box)
        box.connect(path)
        socket.send_fds(box, [b"x"], [listener.fileno()])
        listener.close()  # only the message in flight holds it now
        watcher = Watcher(Query.build(tcp=True), interval=1.0, findings=False)
        watcher.owners.retry_every = 2  # the second refresh looks for the unfound again
        watcher.owners.scan_budget = None  # ... at once, not deferred to a later refresh
        watcher.refresh()
        holder.proc.stdin.write("\n")
        holder.proc.stdin.flush()
        client = socket.create_connection(("127.0.0.1", port))
        child = int(holder.readline())
        client.recv(1)  # the server's FIN
        client.close()
        wait_for(lambda: _time_waits(port) == 1, what="a TIME_WAIT on the listener's port")
        watcher.refresh()
        [seen] = _listening(watcher.snapshot.sockets, port)
        [listed] = _listening(collect(Query.build(ports=[port]), processes=True).sockets, port)
        assert [r.pid for r in listed.holders] == [pid, child]
        assert [r.pid for r in seen.holders] == [pid, child]
    finally:
        holder.stop()


# In a namespace of its own: 0.0.0.0:P held by this process and a v6-only [::]:P held by
# a forked child, TIME_WAITs through each; prints which pid each family's rows name.
TWO_WILDCARDS = r"""
import json, os, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from sockstat.collect import collect
from sockstat.query import Query
""" + TABLE_MAKERS + r"""
v4 = socket.socket()
v4.bind(("0.0.0.0", 0))
v4.listen(8)
port = v4.getsockname()[1]
v6 = socket.socket(socket.AF_INET6)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::", port))
v6.listen(8)
made_r, made_w = os.pipe()
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:
    v4.close()
    time_wait(v6, "::1", socket.AF_INET6, 2)
    os.write(made_w, b"x")
    os.read(done_r, 1)  # until the parent has looked
    os._exit(0)
v6.close()
time_wait(v4, "127.0.0.1", socket.AF_INET, 2)
os.read(made_r, 1)
named = {}
for sock in collect(Query.build(states=["time-wait"]), processes=True).sockets:
    named.setdefault(sock.family.name, set()).add(sock.process.pid if sock.process else None)
cli = subprocess.run([sys.executable, "-m", "sockstat", "-s", "time-wait", "--json"],
                     capture_output=True, text=True)
rows = {}
for row in json.loads(cli.stdout):
    rows.setdefault(row["family"], set()).add(row["process"]["pid"] if row["process"] else None)
os.write(done_w, b"x")
os.waitpid(child, 0)
print(json.dumps({"parent": os.getpid(), "child": child,
                  "collect": {k: sorted(v, key=str) for k, v in named.items()},
                  "cli": {k: sorted(v, key=str) for k, v in rows.items()}}))
"""


@pytest.mark.root
@NEEDS_NETNS
def test_an_ipv6_time_wait_is_named_by_the_ipv6_wildcard_not_the_ipv4_one():
    """0.0.0.0:P and a v6-only [::]:P held by different processes (docker-proxy's way):
    an IPv6 connection can only have come through the IPv6 listener, so its TIME_WAIT
    names that holder, never the IPv4 wildcard's; an IPv4 one names the IPv4 holder."""
    got = in_own_namespaces(TWO_WILDCARDS)
    assert got["collect"] == {"INET": [got["parent"]], "INET6": [got["child"]]}, got
    assert got["cli"] == {"ipv4": [got["parent"]], "ipv6": [got["child"]]}, got
