"""Exact sock_diag look-ups (netlink.look_up, Query.exact): sockets found by their
4-tuple, one hash look-up each, instead of a dump that walks the whole table. The
parser on captured replies (truncated and malformed ones too), the kernel on loopback
(TIME_WAIT, an orphaned FIN_WAIT2, a request socket, listeners, gone sockets), and the
demo lab, which polls its own sockets this way."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct

import pytest
from conftest import FIXTURES, wait_for

from sockstat.collect import collect, netlink
from sockstat.errors import ParseError, PermissionDenied, SourceUnavailable
from sockstat.model import Family, Proto, TcpState, Timer, socket_to_dict
from sockstat.query import Query

REPLIES = FIXTURES / "netlink_lookup_replies.bin"
HOST = "127.0.0.1"
WILD = (netlink.WILDCARD[Family.INET], 0)


def _parse(data):
    return netlink.parse_lookup_replies(data, Proto.TCP, netlink.AddressCache(socket.AF_INET))


def _messages(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each netlink message in a captured buffer."""
    out, offset = [], 0
    while offset < len(data):
        length = struct.unpack_from("=I", data, offset)[0]
        out.append((offset, length))
        offset += (length + 3) & ~3
    return out


# ---- the parser, on the kernel's captured replies (tests/fixtures/make_lookup_fixture.py)

def test_captured_replies_parse_as_recorded_gone_one_included():
    expected = json.loads((FIXTURES / "netlink_lookup_replies.expected.json").read_text())
    got = _parse(REPLIES.read_bytes())
    assert [[seq, found and socket_to_dict(found)] for seq, found in got] == \
        expected["replies"]
    states = [found and found.state for _, found in got]
    # listener, orphaned FIN_WAIT2, TIME_WAIT, request socket; the gone connection's
    # server side is answered with the listener, its client side with ENOENT
    assert states == [TcpState.LISTEN, TcpState.FIN_WAIT2, TcpState.TIME_WAIT,
                      TcpState.SYN_RECV, TcpState.LISTEN, None]
    tw = got[2][1]
    assert tw.inode == 0 and tw.timer is Timer.TIMEWAIT and tw.timer_ms > 0


def test_the_enoent_reply_is_an_nlmsg_error_echoing_the_request():
    data = REPLIES.read_bytes()
    offset, length = _messages(data)[-1]
    _, msg_type, _, seq, _ = netlink.NLMSGHDR.unpack_from(data, offset)
    assert msg_type == netlink.NLMSG_ERROR and seq == 6
    assert struct.unpack_from("=i", data, offset + 16)[0] == -errno.ENOENT
    assert length == 16 + 4 + 16 + netlink.INET_DIAG_REQ_V2.size  # the request, echoed
    assert _parse(data[offset:offset + length]) == [(6, None)]


def test_truncated_replies_are_parse_errors_not_silence():
    data = REPLIES.read_bytes()
    messages = _messages(data)
    first_len = messages[0][1]
    error_at = messages[-1][0]
    for cut in (5, 15, 40, first_len - 1, error_at + 10, error_at + 19, len(data) - 1):
        with pytest.raises(ParseError):
            _parse(data[:cut])
    short = netlink.NLMSGHDR.pack(16 + 10, netlink.SOCK_DIAG_BY_FAMILY, 0, 1, 0) + b"\0" * 12
    with pytest.raises(ParseError):
        _parse(short)
    bogus_length = netlink.NLMSGHDR.pack(8, netlink.NLMSG_ERROR, 0, 1, 0) + b"\0" * 4
    with pytest.raises(ParseError):
        _parse(bogus_length)


@pytest.mark.parametrize("code,outcome", [
    (errno.ENOENT, None), (errno.ESTALE, None), (errno.EPERM, PermissionDenied),
    (errno.EINVAL, SourceUnavailable), (0, ParseError), (-5, ParseError),
])
def test_an_error_reply_is_gone_or_raised(code, outcome):
    data = bytearray(REPLIES.read_bytes())
    offset, length = _messages(bytes(data))[-1]
    struct.pack_into("=i", data, offset + 16, -code)
    reply = bytes(data[offset:offset + length])
    if outcome is None:
        assert _parse(reply) == [(6, None)]
    else:
        with pytest.raises(outcome):
            _parse(reply)


def test_request_names_one_socket_without_a_dump():
    req = netlink.build_pair_lookup(Family.INET, Proto.TCP, ((HOST, 8080), (HOST, 40000)), 7,
                                    ext=2)
    length, msg_type, flags, seq, _ = netlink.NLMSGHDR.unpack_from(req)
    assert (length, msg_type, flags, seq) == (len(req), netlink.SOCK_DIAG_BY_FAMILY,
                                              netlink.NLM_F_REQUEST, 7)
    fields = netlink.INET_DIAG_REQ_V2.unpack_from(req, 16)
    family, proto, ext, _, states, sport, dport, src, dst, ifindex, c0, c1 = fields
    assert (family, proto, ext, states) == (socket.AF_INET, socket.IPPROTO_TCP, 2, 0xFFFFFFFF)
    assert (socket.ntohs(sport), socket.ntohs(dport)) == (8080, 40000)
    assert src[:4] == dst[:4] == socket.inet_aton(HOST) and ifindex == 0
    assert (c0, c1) == (0xFFFFFFFF, 0xFFFFFFFF)  # any cookie


# ---- the kernel, on loopback -------------------------------------------------------

def _pair(sock: socket.socket) -> tuple:
    return sock.getsockname()[:2], sock.getpeername()[:2]


@pytest.fixture
def closed_ends(loop):
    """A listener; the server side of one connection closed by its program (an orphan
    in FIN_WAIT2); the server side of another in TIME_WAIT (the server closed first);
    a request socket (TCP_DEFER_ACCEPT ignores the bare ACK): name -> (local, remote)."""
    listener = loop.listener()
    port = listener.getsockname()[1]
    client, server = loop.connect(listener)
    fin_wait2 = _pair(server)
    server.close()
    tw_client, tw_server = loop.connect(listener)
    time_wait = _pair(tw_server)
    tw_server.close()
    tw_client.recv(1)
    tw_client.close()
    deferred = loop.listener()
    deferred.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
    syn_client, _ = loop.connect(deferred, accept=False)
    syn_recv = (deferred.getsockname()[:2], syn_client.getsockname()[:2])
    ends = {"listener": ((HOST, port), WILD), "fin_wait2": fin_wait2,
            "time_wait": time_wait, "syn_recv": syn_recv, "client": _pair(client)}

    def settled() -> bool:
        found = netlink.look_up(Family.INET, Proto.TCP, [ends["fin_wait2"], ends["time_wait"]])
        return [s.state for s in found] == [TcpState.FIN_WAIT2, TcpState.TIME_WAIT]

    wait_for(settled, what="FIN_WAIT2 and TIME_WAIT")
    return ends


def test_look_up_finds_time_wait_fin_wait2_request_sockets_and_listeners(closed_ends):
    names = ["listener", "fin_wait2", "time_wait", "syn_recv", "client"]
    found = netlink.look_up(Family.INET, Proto.TCP, [closed_ends[n] for n in names])
    assert [(s.local, s.remote) for s in found] == [closed_ends[n] for n in names]
    assert [s.state for s in found] == [TcpState.LISTEN, TcpState.FIN_WAIT2,
                                        TcpState.TIME_WAIT, TcpState.SYN_RECV,
                                        TcpState.CLOSE_WAIT]
    listener, fin_wait2, time_wait, syn_recv, client = found
    assert listener.send_q == 16  # the backlog, as a dump reports it
    assert fin_wait2.inode == 0 and fin_wait2.timer is Timer.TIMEWAIT  # an orphan
    assert time_wait.inode == 0 and time_wait.timer_ms > 0
    assert client.inode and client.cookie


def test_look_up_reports_what_a_dump_reports(closed_ends):
    pairs = list(closed_ends.values())
    ports = {local[1] for local, _ in pairs}
    dumped = {(s.local, s.remote): s for s in collect(Query.build(ports=ports, tcp=True,
                                                                   ipv4=True)).sockets}
    for sock in netlink.look_up(Family.INET, Proto.TCP, pairs):
        other = dumped[sock.local, sock.remote]
        assert (sock.state, sock.inode, sock.cookie, sock.uid, sock.recv_q, sock.send_q,
                sock.timer) == (other.state, other.inode, other.cookie, other.uid,
                                other.recv_q, other.send_q, other.timer)


def test_look_up_leaves_out_gone_sockets_and_the_listener_answering_for_them(loop):
    listener = loop.listener()
    port = listener.getsockname()[1]
    client, server = loop.connect(listener)
    server_side, client_side = _pair(server), _pair(client)
    for sock in (client, server):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    gone = [server_side, client_side]
    wait_for(lambda: not netlink.look_up(Family.INET, Proto.TCP, gone), what="the RSTs")
    # the server side's 4-tuple is on the listening port: the kernel answers with the
    # listener (what a SYN there would reach); look_up does not count it as that socket
    nl = netlink.open_socket()
    try:
        nl.send(netlink.build_pair_lookup(Family.INET, Proto.TCP, server_side, 1))
        [(_, answer)] = _parse(nl.recv(netlink.RECV_BUFFER))
    finally:
        nl.close()
    assert answer.state is TcpState.LISTEN and answer.local == (HOST, port)
    found = netlink.look_up(Family.INET, Proto.TCP, [*gone, ((HOST, port), WILD)])
    assert [s.state for s in found] == [TcpState.LISTEN]


def test_many_look_ups_go_in_batches(loop):
    listener = loop.listener(backlog=64)
    pairs = []
    for _ in range(netlink.LOOKUP_BATCH + 5):
        client, server = loop.connect(listener)
        pairs += [_pair(client), _pair(server)]
    found = netlink.look_up(Family.INET, Proto.TCP, pairs)
    assert [(s.local, s.remote) for s in found] == pairs
    assert {s.state for s in found} == {TcpState.ESTABLISHED}


def test_look_up_in_a_process_holding_fds_past_fd_setsize(loop):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("RLIMIT_NOFILE too low to open 1,100 fds")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    listener = loop.listener()
    null = os.open(os.devnull, os.O_RDONLY)
    extra = [os.dup(null) for _ in range(1100)]
    try:
        nl = netlink.open_socket()  # its fd is past 1024: select() could not wait on it
        try:
            assert nl.fileno() > 1024
            found = netlink.look_up(Family.INET, Proto.TCP,
                                    [(listener.getsockname(), WILD)], nl=nl)
        finally:
            nl.close()
    finally:
        for fd in [*extra, null]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [s.state for s in found] == [TcpState.LISTEN]


def test_ipv6_look_up(loop):
    try:
        listener = loop.listener("::1", family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    client, server = loop.connect(listener)
    pairs = [(listener.getsockname()[:2], ("::", 0)), _pair(client), _pair(server)]
    found = netlink.look_up(Family.INET6, Proto.TCP, pairs, tcp_info=True)
    assert [(s.local, s.remote) for s in found] == pairs
    assert all(s.family is Family.INET6 for s in found)
    assert found[1].tcp_info is not None and found[1].tcp_info.snd_mss > 0


# ---- collect(Query(exact=...)) -----------------------------------------------------

@pytest.mark.parametrize("source", ["netlink", "proc"])
def test_an_exact_query_finds_just_those_sockets_with_their_owners(closed_ends, source):
    query = Query(protos=frozenset({Proto.TCP}), exact=frozenset(closed_ends.values()))
    snap = collect(query, source=source, processes=True)
    assert {(s.local, s.remote) for s in snap.sockets} == set(closed_ends.values())
    by_pair = {(s.local, s.remote): s for s in snap.sockets}
    listener = by_pair[closed_ends["listener"]]
    assert listener.process is not None and listener.process.pid == os.getpid()
    tw = by_pair[closed_ends["time_wait"]]
    assert tw.process is not None and tw.process.via_listener  # named via its listener


def test_an_exact_query_gives_tcp_info_only_where_asked(closed_ends):
    query = Query(protos=frozenset({Proto.TCP}), exact=frozenset(closed_ends.values()))
    sockets = collect(query, tcp_info=frozenset({TcpState.CLOSE_WAIT})).sockets
    with_info = {s.state for s in sockets if s.tcp_info is not None}
    assert with_info == {TcpState.CLOSE_WAIT}
    # every full socket; TIME_WAIT, request sockets and the orphaned FIN_WAIT2 (a
    # timewait mini-socket too) have none, in a dump as here
    assert {s.state for s in collect(query, tcp_info=True).sockets if s.tcp_info} == \
        {TcpState.LISTEN, TcpState.CLOSE_WAIT}


# ---- the demo lab ------------------------------------------------------------------

@pytest.mark.parametrize("state", [TcpState.SYN_SENT, TcpState.SYN_RECV, TcpState.CLOSING,
                                   TcpState.CLOSE_WAIT, TcpState.TIME_WAIT])
def test_the_lab_sees_by_look_ups_what_a_dump_of_its_ports_shows(state):
    from sockstat.demo import states

    with states.produce(state) as lab:
        assert lab.query().exact  # its polls walk no table
        by_dump = collect(Query.build(ports=lab.ports, tcp=True, ipv4=True)).sockets

        def rows(found):
            return sorted((r.role, r.sock.state, r.sock.inode, r.sock.recv_q, r.sock.send_q,
                           r.sock.timer) for r in found)

        assert rows(lab.sockets()) == rows(lab.rows_from(by_dump))
        assert state in {r.sock.state.shown for r in lab.sockets()}


def test_the_lab_dumps_its_ports_where_a_look_up_could_miss_a_listener():
    from sockstat.demo.lab import Lab

    with Lab("two listeners") as lab:
        a = lab.listen("listener A", reuseport=True)
        assert lab.query().exact
        port = a.getsockname()[1]
        b = lab.new_socket(reuseport=True)
        b.bind((lab.host, port))
        b.listen(8)
        lab.add_end("listener B", b)
        query = lab.query()
        assert not query.exact and query.ports == {port}
        assert {r.role for r in lab.sockets()} == {"listener A", "listener B"}
        b.close()  # one may listen again: look-ups find it
        assert lab.query().exact
