"""Parsers on captured and hand-made kernel output, malformed and truncated included."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from conftest import FIXTURES

from sockstat.collect import netlink, procfs
from sockstat.errors import ParseError, PermissionDenied, SourceUnavailable
from sockstat.model import Family, Proto, TcpState, Timer, socket_to_dict


def _expected(name):
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("table,family", [("tcp", Family.INET), ("tcp6", Family.INET6)])
def test_proc_parser_matches_captured_output(table, family):
    text = (FIXTURES / f"proc_net_{table}.txt").read_text()
    rows = procfs.parse(text, Proto.TCP, family)
    assert [socket_to_dict(r) for r in rows] == _expected(f"proc_net_{table}.expected.json")


def test_proc_parser_decodes_host_byte_order_timers_and_drops_duplicates():
    text = (FIXTURES / "proc_net_tcp_handmade.txt").read_text()
    rows = procfs.parse(text, Proto.TCP, Family.INET)
    assert len(rows) == 4  # the duplicated CLOSE_WAIT row is dropped
    listen, tw, cw, est = rows
    assert (listen.local.address, listen.local.port) == ("127.0.0.1", 8080)
    assert listen.state is TcpState.LISTEN and listen.recv_q == 3 and listen.uid == 1000
    assert tw.state is TcpState.TIME_WAIT and tw.inode == 0
    assert tw.timer is Timer.TIMEWAIT and tw.timer_ms == 0x1770 * 1000 // procfs.USER_HZ
    assert cw.state is TcpState.CLOSE_WAIT and cw.recv_q == 1
    assert est.send_q == 16 and est.retransmits == 2 and est.timer is Timer.ON


def test_proc_parser_ipv6_and_v4_mapped():
    text = (FIXTURES / "proc_net_tcp6_handmade.txt").read_text()
    ssh, mapped = procfs.parse(text, Proto.TCP, Family.INET6)
    assert ssh.local.address == "::1" and ssh.local.port == 22
    assert mapped.local.address == "127.0.0.1" and mapped.remote.port == 0xD431
    assert mapped.family is Family.INET6


def test_decode_address_example():
    assert procfs.decode_address("0100007F:1F90") == ("127.0.0.1", 8080)
    with pytest.raises(ValueError):
        procfs.decode_address("01007F:1F90")


@pytest.mark.parametrize("bad", [
    "   0: 0100007F:1F90 00000000:0000 ZZ 00000000:00000000 00:00000000 00000000 0 0 1",
    "   0: 0100007F:1F90 00000000:0000 0A",
    "   0: 0100007F 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
    "   0: 0100007F:1F90 00000000:0000 63 00000000:00000000 00:00000000 00000000 0 0 1",
])
def test_proc_parser_names_file_line_and_text_of_a_bad_line(bad):
    text = "  sl  local_address ...\n" + bad + "\n"
    with pytest.raises(ParseError) as err:
        procfs.parse(text, Proto.TCP, Family.INET, "/proc/net/tcp")
    assert "/proc/net/tcp: line 2" in str(err.value)
    assert bad.strip()[:10] in str(err.value)


def _parse_bytes(data):
    out = []
    done = netlink.parse_messages(data, Proto.TCP, netlink.AddressCache(socket.AF_INET), out,
                                  want_info=True)
    return done, out


def test_netlink_parser_matches_captured_dump():
    data = (FIXTURES / "netlink_tcp4_dump.bin").read_bytes()
    done, rows = _parse_bytes(data)
    assert done
    assert [socket_to_dict(r) for r in rows] == _expected("netlink_tcp4_dump.expected.json")
    assert any(r.tcp_info is not None and r.tcp_info.snd_mss > 0 for r in rows)


def test_netlink_truncated_messages_are_errors_not_silence():
    data = (FIXTURES / "netlink_tcp4_dump.bin").read_bytes()
    first_len = struct.unpack_from("=I", data)[0]
    for cut in (5, 15, 40, first_len - 1):
        with pytest.raises(ParseError):
            _parse_bytes(data[:cut])


def test_netlink_short_inet_diag_msg_and_bad_attribute():
    short = netlink.NLMSGHDR.pack(16 + 10, netlink.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + b"\0" * 12
    with pytest.raises(ParseError):
        _parse_bytes(short)
    data = (FIXTURES / "netlink_tcp4_dump.bin").read_bytes()
    first_len = struct.unpack_from("=I", data)[0]
    msg = bytearray(data[:first_len])
    # corrupt the first attribute's length so it runs past the message
    struct.pack_into("=H", msg, 16 + netlink.INET_DIAG_MSG.size, 0xFFF0)
    with pytest.raises(ParseError):
        _parse_bytes(bytes(msg))


@pytest.mark.parametrize("errno_value,exc", [(1, PermissionDenied), (2, SourceUnavailable),
                                             (12, SourceUnavailable)])
def test_netlink_error_replies_are_raised(errno_value, exc):
    header = netlink.NLMSGHDR.pack(36, netlink.NLMSG_ERROR, 0, 1, 0)
    err = header + struct.pack("=i", -errno_value) + b"\0" * 16
    with pytest.raises(exc):
        _parse_bytes(err)


def test_netlink_done_without_sockets():
    done_msg = netlink.NLMSGHDR.pack(20, netlink.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    assert _parse_bytes(done_msg) == (True, [])


def test_request_layout():
    req = netlink.build_request(socket.AF_INET, socket.IPPROTO_TCP, 1 << 6, ext=2)
    assert len(req) == 16 + 56
    length, mtype, flags = struct.unpack_from("=IHH", req)
    assert (length, mtype, flags) == (72, 20, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP)
    family, proto, ext, _, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, proto, ext, states) == (socket.AF_INET, socket.IPPROTO_TCP, 2, 1 << 6)


def test_tcp_info_short_payload_is_none():
    assert netlink.parse_tcp_info(b"\0" * 50) is None
    info = netlink.parse_tcp_info(b"\0" * 104)
    assert info is not None and info.snd_wnd is None


def test_netlink_unknown_family_or_state_is_a_parse_error():
    data = bytearray((FIXTURES / "netlink_tcp4_dump.bin").read_bytes())
    first_len = struct.unpack_from("=I", data)[0]
    bad_family = bytearray(data[:first_len])
    bad_family[16] = 99
    with pytest.raises(ParseError):
        _parse_bytes(bytes(bad_family))
    bad_state = bytearray(data[:first_len])
    bad_state[17] = 77
    with pytest.raises(ParseError):
        _parse_bytes(bytes(bad_state))


# ---- malformed input found by fuzzing: errors naming the file, never a crash or hang --

ROW = "   0: {local} {remote} 0A 00000000:00000000 00:00000000 00000000 0 0 1"


@pytest.mark.parametrize("local,remote", [
    ("0100007F:10000", "00000000:0000"),     # port above 65535
    ("0100007F:-001", "00000000:0000"),      # negative port
    ("0100007F:+1F9", "00000000:0000"),      # int(x, 16) would take the sign
    ("0100007F:1F90", "00000000:0x00"),      # ... and a 0x prefix
    ("00000000000000000000000001000000:1F90", "00000000:0000"),  # IPv6 in an IPv4 table
])
def test_proc_parser_refuses_impossible_ports_and_the_wrong_family(local, remote):
    text = "  sl  local_address ...\n" + ROW.format(local=local, remote=remote) + "\n"
    with pytest.raises(ParseError, match="/proc/net/tcp: line 2"):
        procfs.parse(text, Proto.TCP, Family.INET, "/proc/net/tcp")


def test_proc_parser_refuses_an_ipv4_address_in_an_ipv6_table():
    text = "  sl  local_address ...\n" + ROW.format(local="0100007F:1F90",
                                                  remote="0100007F:0000") + "\n"
    with pytest.raises(ParseError, match="/proc/net/tcp6: line 2"):
        procfs.parse(text, Proto.TCP, Family.INET6, "/proc/net/tcp6")


@pytest.mark.parametrize("raw_error", [-(2**31), 5, -4096, -70000])
def test_netlink_error_that_is_no_errno_is_a_parse_error(raw_error):
    header = netlink.NLMSGHDR.pack(36, netlink.NLMSG_ERROR, 0, 1, 0)
    err = header + struct.pack("=i", raw_error) + b"\0" * 16
    with pytest.raises(ParseError, match="no errno"):
        _parse_bytes(err)


def _fake_procfs(root, make_tcp):
    """A procfs root whose net/tcp is whatever make_tcp(path) makes of it."""
    (root / "net").mkdir(parents=True)
    make_tcp(root / "net" / "tcp")
    return root


@pytest.mark.parametrize("kind", ["directory", "symlink loop", "fifo"])
def test_a_procfs_table_that_is_not_a_file_is_unavailable_and_never_blocks(tmp_path, kind):
    import os

    make = {"directory": lambda p: p.mkdir(),
            "symlink loop": lambda p: p.symlink_to(p),
            "fifo": lambda p: os.mkfifo(p)}[kind]
    root = _fake_procfs(tmp_path / "proc", make)
    with pytest.raises(SourceUnavailable, match=str(root / "net" / "tcp")):
        procfs.read_table(str(root), Proto.TCP, Family.INET)


def test_kernel_counters_file_that_is_a_fifo_is_unavailable_not_a_hang(tmp_path):
    import os

    from sockstat.collect import kernel

    (tmp_path / "net").mkdir()
    os.mkfifo(tmp_path / "net" / "netstat")
    with pytest.raises(SourceUnavailable, match="netstat"):
        kernel.read_counters(str(tmp_path))


def test_an_fd_link_that_only_looks_like_a_socket_is_a_parse_error_naming_it(tmp_path):
    from sockstat.collect import owners

    fd_dir = tmp_path / "4242" / "fd"
    fd_dir.mkdir(parents=True)
    (tmp_path / "4242" / "comm").write_text("fake\n")
    (fd_dir / "3").symlink_to("socket:[abc]")
    with pytest.raises(ParseError, match=str(fd_dir / "3")):
        owners.scan(str(tmp_path))
