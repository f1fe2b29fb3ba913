"""The watch's collection side on real loopback sockets: the incremental collector
agrees with collect(), the owner cache scans only for new inodes, and a Watcher turns
what the test does into counts, deltas, ages and findings."""

from __future__ import annotations

import os
import socket

import pytest
from conftest import NEEDS_NETNS, end_child, make_socket, wait_for

from sockstat import Query, TcpState, collect
from sockstat.model import ProcessRef
from sockstat.watch.incremental import IncrementalCollector
from sockstat.watch.owners import OwnerCache
from sockstat.watch.session import Watcher, next_deadline

S = TcpState


def _view(sockets):
    """What must agree between the two collectors, independent of object identity."""
    return sorted((s.key, s.state, s.local, s.remote, s.recv_q, s.send_q, s.inode,
                   s.interface) for s in sockets)


def test_incremental_collector_agrees_with_collect_and_reuses(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    pairs = [loop.connect(server) for _ in range(3)]
    query = Query.build(ports=[port])
    inc = IncrementalCollector(query, source="netlink")
    first = inc.collect()
    assert len(first.new) == len(first.snapshot.sockets) == 7 and inc.reused == 0
    assert _view(first.snapshot.sockets) == _view(collect(query, source="netlink").sockets)

    # queues move on reused sockets; a state change rebuilds; a new socket is new
    client0, conn0 = pairs[0]
    conn0.sendall(b"x" * 100)
    # and the sender's Send-Q back at 0: a delayed ACK (up to 40 ms, longer on a loaded
    # host) would otherwise move it between the two collections compared below
    wait_for(lambda: any(s.recv_q == 100 for s in collect(query).sockets)
             and all(s.send_q == 0 for s in collect(query).sockets
                     if s.state is not S.LISTEN),
             what="Recv-Q 100 with every Send-Q acknowledged")
    client1, _ = pairs[1]
    client1.shutdown(socket.SHUT_WR)  # server side -> CLOSE_WAIT, client -> FIN_WAIT2
    wait_for(lambda: {S.CLOSE_WAIT, S.FIN_WAIT2} <= {s.state for s in collect(query).sockets},
             what="CLOSE_WAIT and FIN_WAIT2")
    extra = loop.connect(server)
    second = inc.collect()
    assert _view(second.snapshot.sockets) == _view(collect(query, source="netlink").sockets)
    rebuilt = {(s.state, s.local.port) for s in second.new}
    assert rebuilt == {(S.CLOSE_WAIT, port), (S.FIN_WAIT2, client1.getsockname()[1]),
                       (S.ESTABLISHED, port), (S.ESTABLISHED, extra[0].getsockname()[1])}
    assert inc.reused == len(second.snapshot.sockets) - 4
    reused = {id(s) for s in first.snapshot.sockets} & {id(s) for s in second.snapshot.sockets}
    assert len(reused) == inc.reused
    got = next(s for s in second.snapshot.sockets
               if s.local.port == client0.getsockname()[1])
    assert got.recv_q == 100 and id(got) in reused


def test_unchanged_sockets_are_matched_byte_for_byte_and_countdowns_move(loop):
    """A refresh reuses idle sockets by their reports alone (no Python code for them),
    and a TIME_WAIT whose countdown moved too: it keeps its object, with the new
    timer_ms (set from its report in C)."""
    server = loop.listener()
    port = server.getsockname()[1]
    loop.connect(server)
    client, conn = loop.connect(server)
    conn.close()  # the server side closes first: it goes to TIME_WAIT
    client.recv(1)
    client.close()
    query = Query.build(ports=[port])
    wait_for(lambda: [s.state for s in collect(query).sockets].count(S.TIME_WAIT) == 1,
             what="one TIME_WAIT")
    inc = IncrementalCollector(query, source="netlink")
    first = inc.collect().snapshot.sockets
    tw = next(s for s in first if s.state is S.TIME_WAIT)
    started = tw.timer_ms
    wait_for(lambda: next(s for s in collect(query).sockets
                          if s.state is S.TIME_WAIT).timer_ms < started - 50,
             what="the TIME_WAIT countdown to move")
    second = inc.collect()
    assert {id(s) for s in second.snapshot.sockets} == {id(s) for s in first}
    assert second.new == [] and inc.reused == len(first) == 4
    assert inc.unchanged == 4  # the listener, the idle pair and the TIME_WAIT
    assert tw.timer_ms < started - 50
    assert _view(second.snapshot.sockets) == _view(collect(query, source="netlink").sockets)


def test_both_families_come_from_one_dump_and_agree_with_collect(loop):
    """TCP over IPv4 and IPv6 in one request (one walk of the kernel's hash): each
    socket decoded with its own family's addresses, reused on the next refresh."""
    server4 = loop.listener()
    port = server4.getsockname()[1]
    server6 = loop.listener("::1", family=socket.AF_INET6)
    port6 = server6.getsockname()[1]
    loop.connect(server4)
    loop.connect(server6)
    query = Query.build(ports=[port, port6])
    inc = IncrementalCollector(query, source="netlink")
    first = inc.collect()
    assert {s.family.value for s in first.snapshot.sockets} == {4, 6}
    assert _view(first.snapshot.sockets) == _view(collect(query, source="netlink").sockets)
    second = inc.collect()
    assert second.new == [] and inc.reused == len(first.snapshot.sockets) == 6
    assert any(s.local.address == "::1" for s in second.snapshot.sockets)


def test_incremental_collector_remembers_what_the_query_rejected(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    loop.connect(server)
    inc = IncrementalCollector(Query.build(ports=[port], local=["127.0.0.2"]),
                               source="netlink")
    assert inc.collect().snapshot.sockets == []
    assert inc.collect().snapshot.sockets == [] and inc._rejected  # noqa: SLF001


def test_a_udp_socket_connected_elsewhere_is_seen_with_its_new_peer(loop):
    # same cookie, inode and state (ESTABLISHED): only its ends tell it changed
    first_peer, second_peer = loop.udp(), loop.udp("127.0.0.2")
    client = loop.udp(connect_to=first_peer.getsockname())
    query = Query.build(ports=[client.getsockname()[1]], udp=True)
    inc = IncrementalCollector(query, source="netlink")
    assert [s.remote.port for s in inc.collect().snapshot.sockets] == \
        [first_peer.getsockname()[1]]
    client.connect(second_peer.getsockname())
    again = inc.collect()
    assert _view(again.snapshot.sockets) == _view(collect(query, source="netlink").sockets)
    assert [s.remote for s in again.new] == [s.remote for s in again.snapshot.sockets]
    if os.geteuid() == 0:  # bound to a device: the same ends, another interface
        client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        assert _view(inc.collect().snapshot.sockets) == \
            _view(collect(query, source="netlink").sockets)
    # one the query rejected is judged again at its new ends
    narrow = Query.build(ports=[client.getsockname()[1]], udp=True, remote=["127.0.0.1"])
    inc = IncrementalCollector(narrow, source="netlink")
    assert inc.collect().snapshot.sockets == []
    client.connect(first_peer.getsockname())
    assert _view(inc.collect().snapshot.sockets) == \
        _view(collect(narrow, source="netlink").sockets) != []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a socket of uid 65534")
def test_a_socket_gone_into_time_wait_leaves_a_user_filter(loop):
    # the dump reports it anew, as a TIME_WAIT socket with uid 0, which --user rejects:
    # the last refresh's socket must then be in `gone`, or the tracker keeps counting it
    server = loop.listener()
    os.seteuid(65534)  # a socket's uid is its creator's
    try:
        client = socket.socket()
    finally:
        os.seteuid(0)
    loop.sockets.append(client)
    client.connect(server.getsockname())
    served, _ = server.accept()
    loop.sockets.append(served)
    port = client.getsockname()[1]
    query = Query.build(ports=[port], tcp=True, user="65534")
    inc = IncrementalCollector(query, source="netlink")
    (before,) = inc.collect().snapshot.sockets
    assert before.local.port == port
    client.close()
    served.close()
    wait_for(lambda: collect(Query.build(ports=[port], states=["time-wait"]),
                             source="netlink").sockets, what="TIME_WAIT")
    after = inc.collect()
    assert after.snapshot.sockets == [] and before in after.gone


def test_incremental_collector_without_netlink_is_plain_collect(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    loop.connect(server)
    inc = IncrementalCollector(Query.build(ports=[port]), source="proc")
    got = inc.collect()
    assert got.snapshot.source == "proc" and len(got.new) == 3


def _fake_proc(root, processes: dict[int, tuple[str, list[int]]]):
    """A /proc tree: pid -> (comm, socket inodes held as fds 3, 4, ...)."""
    for pid, (comm, inodes) in processes.items():
        fd_dir = root / str(pid) / "fd"
        fd_dir.mkdir(parents=True, exist_ok=True)
        (root / str(pid) / "comm").write_text(comm + "\n")
        for fd, inode in enumerate(inodes, start=3):
            link = fd_dir / str(fd)
            if not link.is_symlink():
                os.symlink(f"socket:[{inode}]", link)


def _socks(*inodes, state=S.ESTABLISHED):
    return [make_socket(state, ("127.0.0.1", 1000 + i), ("127.0.0.1", 80), inode=i, cookie=i)
            for i in inodes]


def test_owner_cache_scans_only_for_new_inodes(tmp_path):
    from sockstat.model import Snapshot

    _fake_proc(tmp_path, {10: ("web", [101, 102]), 20: ("db", [201])})
    cache = OwnerCache(str(tmp_path), retry_every=5)
    sockets = _socks(101, 102, 201, 999)  # 999: held by no visible process
    cache.attribute(Snapshot(sockets, 0.0, "netlink"))
    assert cache.scans == 1
    assert [s.process.name if s.process else None for s in sockets] == \
        ["web", "web", "db", None]
    # the same sockets again: nothing new, and the unknown inode is not searched again
    cache.attribute(Snapshot(sockets, 1.0, "netlink"), sockets=[])
    cache.attribute(Snapshot(sockets, 1.0, "netlink"), sockets=sockets[3:])
    assert cache.scans == 1
    # a new socket: one scan, for it alone
    _fake_proc(tmp_path, {30: ("cache", [301])})
    new = _socks(301)
    cache.attribute(Snapshot(sockets + new, 2.0, "netlink"), sockets=new)
    assert cache.scans == 2 and new[0].process == ProcessRef(30, "cache", 3, "root")
    # every `retry_every` (5th) refresh the unknown ones are searched for again
    _fake_proc(tmp_path, {40: ("late", [999])})
    cache.attribute(Snapshot(sockets + new, 3.0, "netlink"), sockets=sockets[3:])
    assert cache.scans == 3 and sockets[3].process.name == "late"


def test_next_deadline_keeps_to_the_grid():
    assert next_deadline(10.0, 2.0, 10.5) == 12.0
    assert next_deadline(10.0, 2.0, 12.0) == 14.0
    assert next_deadline(10.0, 2.0, 17.9) == 18.0  # a slow refresh skips ticks
    assert next_deadline(10.0, 2.0, 9.0) == 10.0


def _state_counts(refresh):
    """The refresh's counts by state, TIME_WAIT left out: this test makes none, and a
    port filter on the host's shared table also matches the TIME_WAITs earlier tests
    left on other addresses at the same port number (bind(port 0) may be given it)."""
    return {s.label: n for s, n in refresh.counts.items() if n and s is not S.TIME_WAIT}


def test_watcher_follows_the_sockets_it_is_filtered_to(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    # findings_budget=1: the detectors may run at every refresh however fast they come;
    # no minimum CLOSE_WAIT age (the default 10 s would make the test wait)
    from sockstat.diagnose import Thresholds

    thresholds = Thresholds(close_wait_min_age=0)
    watcher = Watcher(Query.build(ports=[port]), interval=1.0, findings_budget=1.0,
                      thresholds=thresholds)
    first = watcher.refresh()
    assert _state_counts(first) == {"LISTEN": 1} and first.opened == 0

    pairs = [loop.connect(server) for _ in range(12)]
    r = watcher.refresh()
    assert _state_counts(r) == {"LISTEN": 1, "ESTABLISHED": 24}
    assert r.opened == 24 and r.delta[S.ESTABLISHED] == 24

    # the clients hang up, the server never closes: a CLOSE_WAIT leak in the making
    for client, _ in pairs:
        client.shutdown(socket.SHUT_WR)
    wait_for(lambda: sorted(s.state for s in collect(Query.build(ports=[port])).sockets)
             == sorted([S.LISTEN] + [S.CLOSE_WAIT, S.FIN_WAIT2] * 12),
             what="12 CLOSE_WAIT / FIN_WAIT2 pairs")
    r = watcher.refresh()
    assert _state_counts(r) == {"LISTEN": 1, "CLOSE_WAIT": 12, "FIN_WAIT2": 12}
    assert r.since_start[S.ESTABLISHED] == 0 and r.opened == 0
    assert len(r.oldest_close_wait) == 10
    assert not any(a.at_least for a in r.oldest_close_wait)  # entered during the watch
    later = watcher.refresh()
    assert later.oldest_close_wait[0].age_s > r.oldest_close_wait[0].age_s
    [leak] = [f for f in later.findings if f.kind == "close_wait_leak"]
    assert leak.evidence["close_wait"] == 12  # >= the default warning threshold (10)
    # ages came from the CLOSE_WAIT-only tcp_info dump
    assert leak.evidence["ages_known"] == 12


def test_watcher_names_the_owner_of_a_time_wait_it_saw_alive(loop, tmp_path):
    """The process scan skips the scanning process itself, so the sockets are held by
    another process: the client closes first and its TIME_WAIT keeps that process's
    name. It forks once more and its parent exits, so it is no child of this test's
    python (a child of the same executable would be counted with its parent's
    service, as a forking server's children are)."""
    import subprocess
    import sys

    server = loop.listener()
    port = server.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import os,socket,sys\n"
         "if os.fork(): os._exit(0)\n"
         f"c=socket.create_connection(('127.0.0.1',{port}))\n"
         "print(os.getpid(),c.getsockname()[1],flush=True)\n"
         "sys.stdin.readline()\n"
         "c.close()\n"
         "print('closed',flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        client_pid, client_port = map(int, _readline(child.stdout).split())
        conn, _ = server.accept()
        loop.sockets.append(conn)
        watcher = Watcher(Query.build(ports=[port]), interval=1.0)
        r = watcher.refresh()
        owners = {s.process.pid for s in collect(Query.build(ports=[port]),
                                                 processes=True).sockets if s.process}
        assert client_pid in owners
        assert any(p.pid == client_pid for p, _ in r.top_processes)
        child.stdin.write("close\n")
        child.stdin.flush()
        assert _readline(child.stdout).strip() == "closed"
        conn.close()  # the server answers with its FIN: the client ends in TIME_WAIT
        wait_for(lambda: any(s.state is S.TIME_WAIT and s.local.port == client_port
                             for s in collect(Query.build(ports=[port])).sockets),
                 what="client TIME_WAIT")
        r = watcher.refresh()
        assert r.counts[S.TIME_WAIT] == 1
        [(owner, n)] = r.time_wait_owners
        assert n == 1 and owner is not None and owner.pid == client_pid
        assert not owner.via_listener
    finally:
        end_child(child)


def _readline(pipe, timeout: float = 10.0) -> str:
    """A line from a child's stdout, or a failure after `timeout` (never a hang)."""
    import select

    ready, _, _ = select.select([pipe], [], [], timeout)
    assert ready, f"no line from the child within {timeout}s"
    return pipe.readline()


@pytest.mark.parametrize("source", ["netlink", "proc"])
def test_watcher_process_filter(loop, source):
    server = loop.listener()
    port = server.getsockname()[1]
    loop.connect(server)
    watcher = Watcher(Query.build(ports=[port], process="no-such-process-name"),
                      source=source)
    assert watcher.refresh().total == 0


def test_detectors_run_on_a_cpu_budget(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    ticks = iter(range(1000))
    # a clock where each detector run seems to cost 1 CPU second: at 1% they may run
    # again only 100 s later, so the next refreshes show that run's findings; but the
    # first run (the detectors' imports) sets no delay: the second refresh runs them too
    watcher = Watcher(Query.build(ports=[port]), clock=lambda: float(next(ticks)))
    first = watcher.refresh()
    assert first.findings_at == first.timestamp and watcher.findings_cost == 1.0
    second = watcher.refresh()
    assert second.findings_at == second.timestamp > first.timestamp
    third = watcher.refresh()
    assert third.findings_at == second.timestamp < third.timestamp
    assert third.findings is second.findings


def test_owner_scans_keep_to_a_cpu_budget(tmp_path):
    from sockstat.model import Snapshot

    _fake_proc(tmp_path, {10: ("web", [101]), 30: ("cache", [301])})
    now = [0.0]
    cpu = iter(range(0, 1000, 1))  # each scan seems to cost 1 CPU second
    cache = OwnerCache(str(tmp_path), scan_budget=0.5, clock=lambda: now[0],
                       cpu_clock=lambda: float(next(cpu)))
    first = _socks(101)
    cache.attribute(Snapshot(first, 0.0, "netlink"), first)
    assert cache.scans == 1 and first[0].process.name == "web"
    # 1 s later a new socket: the last scan's 1 s at 50% allows the next at 2 s
    now[0] = 1.0
    later = _socks(301)
    snap = Snapshot(first + later, 1.0, "netlink")
    cache.attribute(snap, cache.to_name(snap, later))
    assert cache.scans == 1 and cache.deferred and later[0].process is None
    # no new socket at 2 s, but the unnamed one is named now
    now[0] = 2.0
    snap = Snapshot(first + later, 2.0, "netlink")
    assert cache.to_name(snap, []) == later
    cache.attribute(snap, cache.to_name(snap, []))
    assert cache.scans == 2 and not cache.deferred and later[0].process.name == "cache"


def test_a_unix_socket_connected_elsewhere_is_seen_with_its_new_peer(tmp_path):
    # a datagram socket connect()ed again keeps its cookie, inode and state: only its
    # peer tells it changed, and the reused socket must show the new one
    socks = []
    try:
        for name in ("first", "second", "client"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind(str(tmp_path / name))
        first, second, client = socks
        client.connect(str(tmp_path / "first"))
        query = Query.build(paths=[str(tmp_path / "client")], unix=True)
        inc = IncrementalCollector(query, source="netlink")

        def peers(sockets):
            return [(s.remote, s.unix.peer_inode, s.unix.peer_name) for s in sockets]

        [was] = inc.collect().snapshot.sockets
        assert was.unix.peer_name == str(tmp_path / "first")
        client.connect(str(tmp_path / "second"))
        again = inc.collect()
        fresh = collect(query, source="netlink").sockets
        assert peers(again.snapshot.sockets) == peers(fresh)
        assert again.snapshot.sockets[0].unix.peer_name == str(tmp_path / "second")
        assert again.new == again.snapshot.sockets and again.gone == [was]
        # unchanged: reused again, nothing new
        last = inc.collect()
        assert last.snapshot.sockets == again.snapshot.sockets and last.new == []
    finally:
        for sock in socks:
            sock.close()



# Runs inside `unshare --net` (a quiet table: nobody else makes or closes sockets there).
# Prints, per step, whether the refresh walked the bind hash and whether its view
# equals a one-shot collect()'s.
BIND_WALK_SCRIPT = r"""
import json, socket, struct, subprocess, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from sockstat.collect import collect
from sockstat.query import Query
from sockstat.watch.incremental import IncrementalCollector

def view(sockets):
    return sorted((s.key, s.state, s.local, s.remote, s.inode) for s in sockets)

def settle():
    # a closed netlink socket leaves the count after an RCU grace period: wait until
    # it counts this process's sockets (every socket here has an fd), the collector's
    # netlink socket among them
    mine = sum(x.fileno() != -1 for x in held) + (inc._nl is not None)
    for _ in range(500):
        with open("/proc/net/sockstat") as f:
            if int(f.readline().split()[2]) == mine:
                return
        time.sleep(0.01)
    raise SystemExit("the count of sockets did not settle")

srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
held = [srv]
for _ in range(3):
    held.append(socket.create_connection(srv.getsockname())); held.append(srv.accept()[0])
# a client on a port of its own choosing keeps it when its connection is reset
probe = socket.socket(); probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]
probe.close()
client = socket.socket(); client.bind(("127.0.0.1", port)); client.connect(srv.getsockname())
conn = srv.accept()[0]
held += [client, conn]
inc = IncrementalCollector(Query(), source="netlink")
steps = []
def step(name, bound=False):
    settle()
    snap = inc.collect(bound=bound).snapshot
    steps.append([name, inc.walked, view(snap.sockets) == view(collect(Query()).sockets)])
step("first")
step("quiet")
step("asked", bound=True)
step("quiet again")
lone = socket.socket(); lone.bind(("127.0.0.1", 0))  # bound, inactive: UNCONN
held.append(lone)
step("bound one")
step("one there")
lone.close()
step("closed it")
step("after closing")
step("quiet once more")
# the client's connection reset while it keeps its fd: bound-inactive; a new socket
# keeps the namespace's count of sockets the same
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
conn.close()
held.append(socket.socket())
step("reset")
step("after the reset")
# as many sockets made as closed: a UDP socket closed, a TCP one made and bound (not
# listening) in the same interval leave the count as it was
client.close()  # the reset one: no bound-inactive socket is left
step("client closed")
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
held.append(udp)
step("udp one")
step("quiet with it")
udp.close()
other = socket.socket(); other.bind(("127.0.0.1", 0))
held.append(other)
step("swapped")
step("asked again", bound=True)
print(json.dumps(steps))
"""


@NEEDS_NETNS
def test_the_bind_hash_is_walked_when_a_bound_inactive_socket_may_have_changed():
    """collect(bound=False) leaves the kernel's bind-hash walk out only while nothing
    says a bound-inactive socket came or went: the first refresh, one asked for, a
    change in the namespace's count of sockets, one there at the last walk, and a TCP
    socket with a file leaving the view all walk it; every walked refresh equals a one-shot
    collect(), and so does each one left out while the table holds none."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", BIND_WALK_SCRIPT],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = {name: (walked, equal) for name, walked, equal in json.loads(proc.stdout)}
    assert steps == {
        "first": (True, True), "quiet": (False, True), "asked": (True, True),
        "quiet again": (False, True), "bound one": (True, True),
        "one there": (True, True), "closed it": (True, True),
        "after closing": (True, True), "quiet once more": (False, True),
        # the reset socket is missed once (no walk: the count of sockets is the same),
        # and its leaving the view makes the next refresh walk
        "reset": (False, False), "after the reset": (True, True),
        # a socket bound in an interval where another closed is missed too, until a
        # refresh asked to walk (watch: the detectors' next run)
        "client closed": (True, True), "udp one": (True, True),
        "quiet with it": (False, True), "swapped": (False, False),
        "asked again": (True, True),
    }


def test_a_refresh_that_fails_half_way_leaves_no_reply_for_the_next(loop, monkeypatch):
    """The collector keeps one netlink socket; a dump that fails after its first batch
    closes it, so the next refresh does not read the rest of that reply as its own."""
    from sockstat.collect import netlink
    from sockstat.errors import ParseError

    server = loop.listener()
    for _ in range(300):  # more than one batch of reports
        loop.connect(server)
    query = Query.build(ports=[server.getsockname()[1]])
    inc = IncrementalCollector(query, source="netlink")
    inc.collect()
    whole = netlink.batches

    def first_batch_only(nl):
        for batch in whole(nl):
            yield batch
            raise ParseError("netlink: cut short by the test")

    monkeypatch.setattr(netlink, "batches", first_batch_only)
    with pytest.raises(ParseError):
        inc.collect()
    monkeypatch.setattr(netlink, "batches", whole)
    assert _view(inc.collect().snapshot.sockets) == \
        _view(collect(query, source="netlink").sockets)


def _netlink_fds() -> int:
    """How many netlink sockets this process holds."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own fd, gone
            continue
        if target.startswith("socket:"):
            inode = target[8:-1]
            with open("/proc/net/netlink") as f:
                count += any(line.split()[-1] == inode for line in f)
    return count


def test_a_closed_watcher_keeps_no_netlink_socket(loop):
    """The collector keeps one netlink socket between refreshes; Watcher.close() (and
    leaving `with Watcher(...)`) closes it, so a program that watches for a while and
    stops holds no socket of ours (and sees no ResourceWarning when it is collected)."""
    from sockstat.watch.session import Watcher

    port = loop.listener().getsockname()[1]
    before = _netlink_fds()
    watcher = Watcher(Query.build(ports=[port]), interval=1.0, findings=False)
    watcher.refresh()
    assert _netlink_fds() == before + 1
    watcher.close()
    assert _netlink_fds() == before
    with Watcher(Query.build(ports=[port]), interval=1.0, findings=False) as watcher:
        assert watcher.refresh().total == 1
    assert _netlink_fds() == before
