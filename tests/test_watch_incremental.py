"""The incremental watch on real loopback sockets with churn: what the tracker counts
from the changes alone (Changes: new, renamed and gone sockets) equals a full recount of
the same snapshots, refresh after refresh, while connections open, send, half-close,
close into TIME_WAIT, reset and change owners between refreshes."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

import pytest
from conftest import end_child, wait_for

from sockstat import Query, TcpState, collect
from sockstat.watch.session import Watcher
from sockstat.watch.tracker import Tracker

S = TcpState
LINGER_RST = struct.pack("ii", 1, 0)

# A client in another process (the owner scan names it: it skips its own process):
# "open N" connects N times, "close N" closes its N oldest normally (they end in
# TIME_WAIT on its side), "reset N" resets its N oldest; it answers "ok" each time.
CLIENT = r"""
import socket, struct, sys
port = int(sys.argv[1])
held = []
for line in sys.stdin:
    verb, n = line.split()
    for _ in range(int(n)):
        if verb == "open":
            held.append(socket.create_connection(("127.0.0.1", port)))
        else:
            s = held.pop(0)
            if verb == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    print("ok", flush=True)
for s in held:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""


@pytest.fixture
def client(loop):
    server = loop.listener(backlog=512)  # every connection of one "open" waits in it
    port = server.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    accepted: list[socket.socket] = []

    def say(verb: str, n: int) -> None:
        proc.stdin.write(f"{verb} {n}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"
        if verb == "open":
            for _ in range(n):
                conn, _ = server.accept()
                loop.sockets.append(conn)
                accepted.append(conn)

    try:
        yield port, say, accepted
    finally:
        end_child(proc)


def _same(incremental, full) -> None:
    """Two Refreshes of the same snapshot agree in everything a view shows."""
    a, b = incremental.to_dict(), full.to_dict()
    for d in (a, b):
        d.pop("findings"), d.pop("findings_at"), d.pop("interval")
    assert a == b
    assert [(x.socket, x.owner) for x in incremental.oldest_close_wait] == \
        [(x.socket, x.owner) for x in full.oldest_close_wait]
    assert incremental.service_sizes == full.service_sizes


def _check(watcher: Watcher, shadow: Tracker):
    refresh = watcher.refresh()
    snap = watcher.snapshot
    _same(refresh, shadow.update(snap))
    # and the counts are the table's
    by_state = dict.fromkeys(refresh.counts, 0)
    for sock in snap.sockets:
        by_state[sock.state.shown] += 1
    assert refresh.counts == by_state and refresh.total == len(snap.sockets)
    return refresh


@pytest.mark.parametrize("query", ["whole", "port", "address"])
def test_incremental_counts_equal_a_full_recount_under_churn(loop, client, query):
    """The whole table (blocks of strided reports, other programs' sockets churning
    too), a port-filtered one (the kernel filter, report by report) and one the query
    filters in Python (what it rejects is remembered in its blocks)."""
    port, say, accepted = client
    query = {"whole": Query(), "port": Query.build(ports=[port]),
             "address": Query.build(local=["127.0.0.1"])}[query]
    loop.listener("127.0.0.2")  # one socket the address filter rejects, at least
    watcher = Watcher(query, findings=False, interval=1.0)
    shadow = Tracker()
    say("open", 150)  # 300 sockets: a few blocks of the collector's (~64 sockets each)
    first = _check(watcher, shadow)
    assert first.number == 1

    def ours(state=None):
        return [s for s in collect(Query.build(ports=[port])).sockets
                if state is None or s.state is state]

    # new connections, data queued, a half-close (CLOSE_WAIT / FIN_WAIT2), resets
    say("open", 4)
    accepted[0].sendall(b"x" * 300)  # Recv-Q on the client's side: a record that moves
    accepted[1].shutdown(socket.SHUT_WR)  # the client's end goes to CLOSE_WAIT
    say("reset", 1)  # the oldest client end resets: its server end is gone too
    wait_for(lambda: ours(S.CLOSE_WAIT), what="a CLOSE_WAIT")
    r = _check(watcher, shadow)
    assert r.opened >= 8 and r.closed >= 2
    r = _check(watcher, shadow)  # nothing of ours changed: the counts carry over

    # the client closes first (FIN_WAIT2 / CLOSE_WAIT), then the server: the client's
    # ends go to TIME_WAIT; another server end resets, two more connections open
    say("close", 3)
    wait_for(lambda: len(ours(S.CLOSE_WAIT)) >= 2, what="the server's ends in CLOSE_WAIT")
    r = _check(watcher, shadow)
    for conn in accepted[1:4]:
        conn.close()
    accepted[4].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    accepted[4].close()
    say("open", 2)
    wait_for(lambda: len(ours(S.TIME_WAIT)) >= 2, what="TIME_WAIT")
    r = _check(watcher, shadow)
    assert r.counts[S.TIME_WAIT] >= 2
    countdown = {s.cookie: s.timer_ms for s in ours(S.TIME_WAIT)}
    wait_for(lambda: any(s.timer_ms < countdown.get(s.cookie, 0) - 20
                         for s in ours(S.TIME_WAIT)), what="the countdown to move")
    r = _check(watcher, shadow)
    tw = [s for s in watcher.snapshot.sockets if s.state is S.TIME_WAIT
          and s.cookie in countdown]
    assert tw and all(s.timer_ms < countdown[s.cookie] for s in tw)  # set in place
    for _ in range(2):
        r = _check(watcher, shadow)
    assert watcher.collector.unchanged > 0  # whole blocks were reused
    # churn all over the table: resets from both sides, new connections
    for round_ in range(3):
        say("reset", 10)
        for conn in accepted[20 + 10 * round_:25 + 10 * round_]:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            conn.close()
        say("open", 15)
        r = _check(watcher, shadow)
        assert r.opened >= 30 and r.closed >= 20
        assert _view(watcher.snapshot.sockets, port) == _view(ours(), port)
    assert r.top_processes  # the client process is named (it is not this one)
    assert watcher.collector._rejects_kept is (query.local_networks != ())  # noqa: SLF001


def _view(sockets, port):
    """What the incremental collector must agree with collect() about (one port's)."""
    return sorted((s.cookie, s.state, s.local, s.remote, s.recv_q, s.send_q, s.inode)
                  for s in sockets if port in (s.local.port, s.remote.port))


def test_incremental_top_lists_pick_the_same_entries_among_many_ties():
    """A big table's ports, one socket each: the narrowed-down top list is the full one."""
    from collections import Counter

    from sockstat.watch.tracker import _most

    ports = Counter({p: 1 for p in range(30000, 31000)})
    ports.update({8080: 50, 443: 50, 22: 7})
    hosts = Counter({f"10.0.{i // 256}.{i % 256}": 1 + i % 3 for i in range(500)})
    owners = Counter({None: 4, (1, False): 4, (2, True): 4} | {(p, False): 1
                                                               for p in range(100, 200)})
    for counter in (ports, hosts, owners):
        for n in (1, 3, 10):
            slow = sorted(((k, v) for k, v in counter.items() if v > 0),
                          key=lambda kv: (-kv[1], kv[0] is None, kv[0]))[:n]
            assert _most(counter, n) == slow


def _report(state: int, cookie: int, length: int = 124, msg_type: int = 18,
            family: int = socket.AF_INET) -> bytes:
    """One inet_diag report as the kernel sends it, `length` bytes (attributes: zeros)."""
    from sockstat.collect import netlink

    header = netlink.NLMSGHDR.pack(length, msg_type, 2, 1, 0)
    body = netlink.INET_DIAG_MSG.pack(family, state, 0, 0, 0x5000, 0x6000, b"\x7f\0\0\1",
                                      b"\x7f\0\0\1", 0, cookie & 0xFFFFFFFF, cookie >> 32,
                                      0, 0, 0, 0, 1000 + cookie)
    return (header + body).ljust(length, b"\0")


DONE = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)


def test_strided_batches_are_taken_whole_and_anything_else_is_refused():
    """Compactor.strided on hand-made batches: one kind of report (with or without the
    closing DONE) is returned as it came; mixed lengths, a bad state or family, a
    truncated report and an error reply are refused (the parser then decides)."""
    from sockstat.collect import netlink

    strided = netlink.Compactor().strided
    full = b"".join(_report(1, c) for c in range(5))
    assert strided(full) == (124, full, False)
    assert strided(full + DONE) == (124, full, True)
    assert strided(DONE) == (netlink.RECORD, b"", True)
    minis = b"".join(_report(6, c, length=96) for c in range(3))
    assert strided(minis + DONE) == (96, minis, True)
    assert strided(full + minis) is None  # two kinds: the compactor's business
    assert strided(full[:-4]) is None  # truncated
    assert strided(_report(1, 1) + _report(99, 2)) is None  # no such state
    assert strided(_report(1, 1, family=99)) is None
    error = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -2) + bytes(16)
    assert strided(error) is None
    assert strided(b"\x01\x02") is None


def test_the_count_of_sockets_comes_from_sockstat(tmp_path):
    from sockstat.watch.incremental import sockets_used

    (tmp_path / "net").mkdir()
    sockstat_file = tmp_path / "net" / "sockstat"
    sockstat_file.write_text("sockets: used 14\nTCP: inuse 1 orphan 0 tw 6 alloc 1 mem 0\n"
                             "UDP: inuse 0 mem 0\n")
    assert sockets_used(str(tmp_path)) == 14
    sockstat_file.write_text("sockets: used 14\nTCP: inuse 1 orphan 0 tw")  # truncated
    assert sockets_used(str(tmp_path)) is None
    sockstat_file.write_text("sockets: used many\n")
    assert sockets_used(str(tmp_path)) is None
    sockstat_file.write_text("")
    assert sockets_used(str(tmp_path)) is None
    assert sockets_used(str(tmp_path / "nowhere")) is None
    assert isinstance(sockets_used(), int)  # this machine's
