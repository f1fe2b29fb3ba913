"""The unix_diag and sk_meminfo parsers on captured kernel bytes (made by
tests/fixtures/make_unix_fixtures.py), and on truncated and malformed ones; the
/proc/net/unix parser on captured text."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from conftest import FIXTURES

from sockstat.collect import netlink, unix
from sockstat.errors import ParseError, PermissionDenied, SourceUnavailable
from sockstat.model import Proto, TcpState, UnixType, socket_to_dict

UNIX_DUMP = FIXTURES / "netlink_unix_dump.bin"
UDP_DUMP = FIXTURES / "netlink_udp_skmem_dump.bin"


def _expected(name: str):
    return json.loads((FIXTURES / name).read_text())


def _unix(data: bytes, memory: bool = True):
    out: list = []
    done = unix.parse_messages(data, out, want_memory=memory)
    unix.pair_peers(out)
    return done, out


def _first(data: bytes) -> bytearray:
    return bytearray(data[:struct.unpack_from("=I", data)[0]])


def test_unix_parser_matches_captured_dump():
    done, rows = _unix(UNIX_DUMP.read_bytes())
    assert done
    assert [socket_to_dict(s) for s in rows] == _expected("netlink_unix_dump.expected.json")
    by_state = {(s.state, s.unix.type) for s in rows}
    assert (TcpState.LISTEN, UnixType.STREAM) in by_state
    assert (TcpState.LISTEN, UnixType.SEQPACKET) in by_state
    assert (TcpState.CLOSE, UnixType.DGRAM) in by_state
    listener = next(s for s in rows if s.unix.name and s.unix.name.endswith("app.sock"))
    # a listener's queues are the accept queue: one client waiting, backlog 2
    assert (listener.recv_q, listener.send_q) == (1, 2)
    assert any(s.unix.name == "@sockstat-fixture" for s in rows)
    pair = [s for s in rows if s.unix.peer_inode and s.unix.peer_inode in
            {r.inode for r in rows}]
    assert len(pair) == 2 and pair[0].unix.peer_inode == pair[1].inode
    assert all(s.memory is not None and s.memory.rcvbuf > 0 for s in rows)


def test_unix_parser_leaves_memory_out_unless_asked():
    _, rows = _unix(UNIX_DUMP.read_bytes(), memory=False)
    assert rows and all(s.memory is None for s in rows)


def test_unix_truncated_dumps_are_errors_not_silence():
    data = UNIX_DUMP.read_bytes()
    first_len = struct.unpack_from("=I", data)[0]
    for cut in (3, 15, 20, 31, first_len - 1, first_len + 5):
        with pytest.raises(ParseError):
            unix.parse_messages(data[:cut], [])


def test_unix_short_message_and_attributes_are_parse_errors():
    short = netlink.NLMSGHDR.pack(16 + 8, netlink.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + b"\0" * 8
    with pytest.raises(ParseError, match="unix_diag_msg"):
        unix.parse_messages(short, [])
    msg = _first(UNIX_DUMP.read_bytes())
    struct.pack_into("=H", msg, 16 + unix.UNIX_DIAG_MSG.size, 0xFFF0)  # runs past the end
    with pytest.raises(ParseError, match="attribute"):
        unix.parse_messages(bytes(msg), [])
    # a peer attribute of 2 bytes cannot hold an inode
    head = netlink.NLMSGHDR.pack(16 + 16 + 8, netlink.SOCK_DIAG_BY_FAMILY, 2, 1, 0)
    body = unix.UNIX_DIAG_MSG.pack(1, 1, 1, 0, 42, 0, 0)
    peer = netlink.RTATTR.pack(6, unix.UNIX_DIAG_PEER) + b"\0\0" + b"\0\0"
    with pytest.raises(ParseError, match="too short"):
        unix.parse_messages(head + body + peer, [])


@pytest.mark.parametrize("offset,value", [(16, 2), (17, 9), (18, 99)])
def test_unix_wrong_family_type_or_state_is_a_parse_error(offset, value):
    msg = _first(UNIX_DUMP.read_bytes())
    msg[offset] = value
    with pytest.raises(ParseError, match="not a UNIX socket"):
        unix.parse_messages(bytes(msg), [])


@pytest.mark.parametrize("errno_value,exc", [(1, PermissionDenied), (2, SourceUnavailable)])
def test_unix_error_replies_are_raised(errno_value, exc):
    err = netlink.NLMSGHDR.pack(36, netlink.NLMSG_ERROR, 0, 1, 0) \
        + struct.pack("=i", -errno_value) + b"\0" * 16
    with pytest.raises(exc):
        unix.parse_messages(err, [])


def test_unix_request_layout():
    req = unix.build_request(1 << 10, unix.SHOW)
    assert len(req) == 16 + 24
    length, mtype, flags = struct.unpack_from("=IHH", req)
    assert (length, mtype, flags) == (40, 20, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP)
    family, protocol, _, states, ino, show = struct.unpack_from("=BBHIII", req, 16)
    assert (family, protocol, states, ino) == (socket.AF_UNIX, 0, 1 << 10, 0)
    assert show & unix.UDIAG_SHOW_NAME and show & unix.UDIAG_SHOW_PEER
    assert show & unix.UDIAG_SHOW_RQLEN and show & unix.UDIAG_SHOW_VFS
    assert not show & unix.UDIAG_SHOW_MEMINFO  # only when a view asks for memory


@pytest.mark.parametrize("raw,name", [
    (b"/run/php/php-fpm.sock\0", "/run/php/php-fpm.sock"),
    (b"/run/x.sock", "/run/x.sock"),
    (b"\0abstract", "@abstract"),
    (b"\0with\0nul", "@with@nul"),
    (b"", None),
])
def test_decode_name(raw, name):
    assert unix.decode_name(raw) == name


def test_proc_net_unix_matches_captured_text():
    rows = unix.parse_proc((FIXTURES / "proc_net_unix.txt").read_text())
    assert [socket_to_dict(s) for s in rows] == _expected("proc_net_unix.expected.json")
    states = {s.unix.name: s.state for s in rows}
    assert states["@sockstat-fixture"] is TcpState.LISTEN
    assert any(state is TcpState.ESTABLISHED for state in states.values())
    assert all(s.proto is Proto.UNIX and s.cookie is None for s in rows)


def test_proc_net_unix_keeps_spaces_in_paths_and_names_bad_lines():
    text = ("Num       RefCount Protocol Flags    Type St Inode Path\n"
            "0000000000000000: 00000002 00000000 00010000 0001 01 4711 /run/my app.sock\n")
    (row,) = unix.parse_proc(text)
    assert row.unix.name == "/run/my app.sock" and row.inode == 4711
    bad = text + "0000000000000000: 00000002 00000000 00000000 0009 01 4712\n"
    with pytest.raises(ParseError, match="line 3"):
        unix.parse_proc(bad, "/proc/net/unix")
    with pytest.raises(ParseError, match="line 2"):
        unix.parse_proc(text.replace(" 4711 ", " x "))


def test_skmeminfo_in_a_captured_udp_dump():
    data = UDP_DUMP.read_bytes()
    out: list = []
    assert netlink.parse_messages(data, Proto.UDP, netlink.AddressCache(socket.AF_INET), out,
                                  want_memory=True)
    assert [socket_to_dict(s) for s in out] == \
        _expected("netlink_udp_skmem_dump.expected.json")
    (udp,) = out
    # SO_RCVBUF 4096 is doubled by the kernel; the receiver never read, so it dropped
    assert udp.memory.rcvbuf == 8192 and udp.memory.drops > 0
    assert udp.memory.rmem_alloc > 0
    plain: list = []
    netlink.parse_messages(data, Proto.UDP, netlink.AddressCache(socket.AF_INET), plain)
    assert plain[0].memory is None  # asked only when wanted


def test_skmeminfo_short_odd_and_long_payloads():
    seven = struct.pack("=7I", 1, 2, 3, 4, 5, 6, 7)
    m = netlink.parse_meminfo(seven)
    assert (m.rmem_alloc, m.optmem, m.backlog, m.drops) == (1, 7, None, None)
    nine = struct.pack("=9I", *range(1, 10))
    assert netlink.parse_meminfo(nine).drops == 9
    eleven = struct.pack("=11I", *range(1, 12))  # a future kernel: extra values ignored
    assert netlink.parse_meminfo(eleven).drops == 9
    for bad in (seven[:24], seven + b"\0\0"):
        with pytest.raises(ParseError, match="sk_meminfo"):
            netlink.parse_meminfo(bad)


def test_skmeminfo_attribute_running_past_the_message_is_an_error():
    data = UDP_DUMP.read_bytes()
    msg = _first(data)
    struct.pack_into("=H", msg, 16 + netlink.INET_DIAG_MSG.size, 0xFFF0)
    with pytest.raises(ParseError):
        netlink.parse_messages(bytes(msg), Proto.UDP, netlink.AddressCache(socket.AF_INET),
                               [], want_memory=True)


def test_collect_reads_proc_net_unix_from_a_procfs_tree(tmp_path):
    from sockstat import collect
    from sockstat.query import Query

    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "unix").write_text((FIXTURES / "proc_net_unix.txt").read_text())
    snap = collect(Query.build(unix=True, states=["listen"]), source="proc",
                   procfs=str(tmp_path))
    assert snap.source == "proc"
    assert sorted(s.unix.name for s in snap.sockets) == \
        ["/tmp/sockstat-fixture-XXXXXXXX/app.sock", "@sockstat-fixture"]
    # the listing shows an unknown backlog as ?, as for TCP from /proc
    from sockstat.render import fmt

    assert {fmt.recv_q(s) for s in snap.sockets} == {"0/?"}


def test_proc_net_unix_leaves_out_an_unaccepted_connection_as_netlink_does():
    # captured with one connection not yet accepted: the server end (inode 0, St 02,
    # the listener's path) is not a connecting socket; netlink and ss do not list it
    text = (FIXTURES / "proc_net_unix_accept_queue.txt").read_text()
    rows = unix.parse_proc(text)
    assert [(s.inode, s.state) for s in rows] == [(1953904, TcpState.LISTEN),
                                                 (1953905, TcpState.ESTABLISHED)]
