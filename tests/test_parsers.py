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
    # the schema only grows: every field of the first capture keeps its value
    got = [socket_to_dict(r) for r in rows]
    expected = _expected("netlink_tcp4_dump.expected.json")
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert {k: v for k, v in row.items() if k != "tcp_info"} == \
            {k: v for k, v in want.items() if k != "tcp_info"}
        if want["tcp_info"] is None:
            assert row["tcp_info"] is None
        else:
            assert {k: row["tcp_info"][k] for k in want["tcp_info"]} == want["tcp_info"]
            assert row["tcp_info"]["bytes_acked"] is not None  # a 6.x kernel sent all
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


TCP_INFO_618 = (FIXTURES / "tcp_info_6.18.44.bin").read_bytes()


def _ss_fields(text: str) -> dict[str, str]:
    """`ss -tin` detail words -> {name: value}: `rtt:0.3/0.5`, `pacing_rate 92bps`."""
    words = text.split()
    fields = {}
    for i, word in enumerate(words):
        if ":" in word and not word.startswith(("127.", "[", "bbr:(")):
            name, _, value = word.partition(":")
            fields[name] = value
        elif word in ("send", "pacing_rate", "delivery_rate"):
            fields[word] = words[i + 1]
    return fields


def test_tcp_info_of_a_current_kernel_reads_as_ss_shows_it():
    """The capture of a window-limited bulk sender, decoded by ss at the same moment
    (tests/fixtures/make_tcp_info_fixture.py): every number ss shows agrees."""
    ss = _ss_fields((FIXTURES / "tcp_info_6.18.44.ss.txt").read_text())
    info = netlink.parse_tcp_info(TCP_INFO_618)
    assert len(TCP_INFO_618) == 280  # longer than sockstat's declaration: the rest is skipped
    assert f"{info.rtt_ms:g}/{info.rttvar_ms:g}" == ss["rtt"]
    assert info.rto_ms == float(ss["rto"]) and info.min_rtt_ms == float(ss["minrtt"])
    for ours, theirs in (("snd_mss", "mss"), ("rcv_mss", "rcvmss"), ("advmss", "advmss"),
                         ("pmtu", "pmtu"), ("snd_cwnd", "cwnd"), ("snd_ssthresh", "ssthresh"),
                         ("bytes_sent", "bytes_sent"), ("bytes_retrans", "bytes_retrans"),
                         ("bytes_acked", "bytes_acked"), ("segs_out", "segs_out"),
                         ("segs_in", "segs_in"), ("data_segs_out", "data_segs_out"),
                         ("delivered", "delivered"), ("rcv_space", "rcv_space"),
                         ("rcv_ssthresh", "rcv_ssthresh"), ("snd_wnd", "snd_wnd")):
        assert getattr(info, ours) == int(ss[theirs]), ours
    # ages: ss read the socket a few milliseconds after the capture
    for ours, theirs in (("last_data_sent_ms", "lastsnd"), ("last_data_recv_ms", "lastrcv"),
                         ("last_ack_recv_ms", "lastack")):
        assert 0 <= int(ss[theirs]) - getattr(info, ours) < 1000, ours
    assert f"{info.retrans}/{info.total_retrans}" == ss["retrans"]
    # ss shows rates in bits per second; sockstat keeps the kernel's bytes per second
    assert info.pacing_rate * 8 == int(ss["pacing_rate"].removesuffix("bps"))
    assert info.delivery_rate * 8 == int(ss["delivery_rate"].removesuffix("bps"))
    assert int(info.busy_time_ms) == int(ss["busy"].removesuffix("ms"))
    assert int(info.rwnd_limited_ms) == int(ss["rwnd_limited"].split("ms")[0])
    assert info.sndbuf_limited_ms == 0 and info.delivery_rate_app_limited is False
    assert info.rcv_wnd is not None and info.total_rto is not None


# (length a kernel sends, the last field it has, the first it does not)
KERNEL_LENGTHS = [
    (104, "total_retrans", "pacing_rate"),  # 2.6 - 3.14
    (120, "pacing_rate", "bytes_acked"),  # 3.15 (max_pacing_rate: unlimited here)
    (136, "bytes_acked", "segs_out"),  # 4.1
    (144, "segs_in", "notsent_bytes"),  # 4.2
    (160, "data_segs_out", "delivery_rate"),  # 4.6
    (168, "delivery_rate", "busy_time_ms"),  # 4.9
    (192, "rwnd_limited_ms", "delivered"),  # 4.10
    (200, "delivered", "bytes_sent"),  # 4.18
    (224, "reord_seen", "rcv_ooopack"),  # 4.19
    (232, "snd_wnd", "rcv_wnd"),  # 5.4
    (240, "rehash", "total_rto"),  # 6.2
    (248, "total_rto_time_ms", None),  # 6.7
]


@pytest.mark.parametrize("length,last,missing", KERNEL_LENGTHS)
def test_tcp_info_from_older_kernels_has_the_later_fields_absent(length, last, missing):
    full = netlink.parse_tcp_info(TCP_INFO_618)
    short = netlink.parse_tcp_info(TCP_INFO_618[:length])
    assert getattr(short, last) == getattr(full, last) and getattr(short, last) is not None
    if missing is not None:
        assert getattr(short, missing) is None and getattr(full, missing) is not None
    # the fields every kernel sends are the same whatever the length
    for name in ("rtt_ms", "snd_cwnd", "total_retrans", "unacked", "last_data_recv_ms"):
        assert getattr(short, name) == getattr(full, name)


@pytest.mark.parametrize("length", [0, 8, 103, 110, 170, 230, 247])
def test_tcp_info_truncated_inside_a_field(length):
    info = netlink.parse_tcp_info(TCP_INFO_618[:length])
    if length < 104:
        assert info is None
        return
    full = netlink.parse_tcp_info(TCP_INFO_618)
    values = [getattr(info, f) for f in ("pacing_rate", "delivery_rate", "busy_time_ms",
                                         "snd_wnd", "rcv_wnd", "total_rto_time_ms")]
    # a field cut in half is absent, never a garbled number
    assert all(v is None or v == getattr(full, f) for v, f in zip(
        values, ("pacing_rate", "delivery_rate", "busy_time_ms", "snd_wnd", "rcv_wnd",
                 "total_rto_time_ms"), strict=True))
    assert values[-1] is None


@pytest.mark.parametrize("length", [104, 110, 120, 136, 167, 168, 170, 192, 230, 248, 280])
def test_tcp_info_decoded_when_read_equals_every_way_of_reading_it(length):
    """parse_tcp_info keeps the bytes and decodes them on the first read: the screened
    fields alone (as the slow detector's idle screen reads them), then the rest, give
    the values of a whole decode, at every length a kernel (or truncation) gives; and
    it equals, and hashes as, a TcpInfo built from those values."""
    import copy
    import pickle
    from dataclasses import astuple, fields, replace

    from sockstat.tcpinfo import TcpInfo

    payload = TCP_INFO_618[:length]
    whole = netlink.parse_tcp_info(payload, "bbr")
    values = astuple(whole)  # every field read: one whole decode
    screened = netlink.parse_tcp_info(payload, "bbr")
    for name in sorted(netlink.SCREENED_FIELDS):
        assert getattr(screened, name) == values[[f.name for f in fields(TcpInfo)]
                                                 .index(name)], name
    assert astuple(screened) == values
    plain = TcpInfo(*values)
    fresh = netlink.parse_tcp_info(payload, "bbr")
    assert fresh == plain and plain == fresh and hash(fresh) == hash(plain)
    assert repr(fresh) == repr(plain) and isinstance(fresh, TcpInfo)
    assert fresh != replace(plain, snd_cwnd=plain.snd_cwnd + 1)
    for copied in (pickle.loads(pickle.dumps(netlink.parse_tcp_info(payload, "bbr"))),
                   copy.deepcopy(netlink.parse_tcp_info(payload, "bbr"))):
        assert copied == plain and type(copied) is TcpInfo


def test_tcp_info_attribute_walk_takes_the_congestion_name():
    def attr(kind: int, payload: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(payload), kind) + payload
        return raw + b"\0" * (-len(raw) % 4)

    data = attr(netlink.INET_DIAG_CONG, b"cubic\0") + attr(netlink.INET_DIAG_INFO,
                                                          TCP_INFO_618[:232])
    info = netlink._find_tcp_info(data, 0, len(data))
    assert info.congestion == "cubic" and info.snd_wnd is not None and info.rcv_wnd is None
    assert netlink.parse_congestion(b"") is None and netlink.parse_congestion(b"bbr") == "bbr"
    no_info = attr(netlink.INET_DIAG_CONG, b"bbr\0")
    assert netlink._find_tcp_info(no_info, 0, len(no_info)) is None


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


def _tally_bytes(data):
    out = []
    done = netlink.parse_messages(data, Proto.TCP, netlink.AddressCache(socket.AF_INET), out,
                                  tally=True)
    return done, out


def _records_fields(af, chunks):
    """(state, local port, remote address) of each record, read as Records reads them."""
    records = netlink.Records(af, chunks)
    return [(TcpState(st), port, records.address_text(dst))
            for st, port, dst in zip(records.states(), records.local_ports(),
                                     records.remote_addresses(), strict=True)]


def test_netlink_tally_records_are_the_rows_fields_from_the_same_bytes():
    """The counting mode of the one parser: each socket's nlmsghdr + inet_diag_msg as a
    record, the same sockets in the same order as the full rows, and the batch compacted
    in one pass gives the same records."""
    data = (FIXTURES / "netlink_tcp4_dump.bin").read_bytes()
    done, rows = _parse_bytes(data)
    tally_done, tallied = _tally_bytes(data)
    assert done and tally_done
    assert all(len(r) == netlink.RECORD for r in tallied)
    assert _records_fields(socket.AF_INET, tallied) == \
        [(r.state, r.local.port, r.remote.address) for r in rows]
    assert netlink.Compactor().compact(data) == (b"".join(tallied), True)


def test_netlink_tally_refuses_what_the_row_parser_refuses():
    data = (FIXTURES / "netlink_tcp4_dump.bin").read_bytes()
    first_len = struct.unpack_from("=I", data)[0]
    for cut in (5, 15, 40, first_len - 1):
        with pytest.raises(ParseError):
            _tally_bytes(data[:cut])
    bad_state = bytearray(data[:first_len])
    bad_state[17] = 77
    with pytest.raises(ParseError):
        _tally_bytes(bytes(bad_state))


def _parse_together(data):
    out = []
    done = netlink.parse_messages(data, Proto.TCP, netlink.BothFamilies(), out)
    return done, out


def test_netlink_both_families_reply_reads_each_message_in_its_own_family():
    """A captured TCPDIAG_GETSOCK reply (IPv4 and IPv6 in one dump): 7f00:1:: has the
    raw bytes of 127.0.0.1 padded with zeros, so only each message's family tells them
    apart."""
    data = (FIXTURES / "netlink_tcp46_together.bin").read_bytes()
    done, rows = _parse_together(data)
    assert done
    assert [socket_to_dict(r) for r in rows] == _expected("netlink_tcp46_together.expected.json")
    by_address = {(r.family, r.local.address) for r in rows}
    assert {(Family.INET, "127.0.0.1"), (Family.INET6, "::1"),
            (Family.INET6, "7f00:1::")} == by_address
    lookalike = socket.inet_pton(socket.AF_INET6, "7f00:1::")
    assert netlink.AddressCache(socket.AF_INET)[lookalike] == "127.0.0.1"  # read as IPv4


def test_netlink_both_families_reply_truncated_or_malformed_is_an_error():
    """Cut inside every message (IPv4 and IPv6 ones), or a family that is neither."""
    data = (FIXTURES / "netlink_tcp46_together.bin").read_bytes()
    starts = [0]
    while starts[-1] < len(data):
        starts.append(starts[-1] + struct.unpack_from("=I", data, starts[-1])[0])
    for start, end in zip(starts[:-2], starts[1:-1], strict=True):  # not the last: DONE
        for cut in (start + 5, start + 40, end - 1):
            with pytest.raises(ParseError):
                _parse_together(data[:cut])
    bad_family = bytearray(data)
    bad_family[16] = socket.AF_UNIX
    with pytest.raises(ParseError):
        _parse_together(bytes(bad_family))


def test_both_families_request_layout():
    req = netlink.build_both_families_request(1 << 1, ext=2, bytecode=b"\x01\x04\x08\x00")
    length, mtype, flags = struct.unpack_from("=IHH", req)
    assert (length, mtype, flags) == (16 + 60 + 8, netlink.TCPDIAG_GETSOCK,
                                      netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP)
    family, _, _, ext = struct.unpack_from("=BBBB", req, 16)
    assert (family, ext) == (socket.AF_UNSPEC, 2)
    states, = struct.unpack_from("=I", req, 16 + 4 + 48)
    assert states == 1 << 1


@pytest.mark.parametrize("fixture,addresses", [
    ("netlink_tcp4_dump.bin", lambda: netlink.AddressCache(socket.AF_INET)),
    ("netlink_tcp46_together.bin", netlink.BothFamilies),  # IPv4, IPv6 and a look-alike
])
def test_netlink_rows_built_from_compacted_records_are_the_parsers_rows(fixture, addresses):
    """The listing's bulk path (a whole batch compacted, its Sockets built column by
    column) gives the Sockets the one-by-one parser gives, in the same order; the
    attributes (tcp_info here) are what it leaves out, so it only reads dumps without."""
    data = (FIXTURES / fixture).read_bytes()
    _, one_by_one = _parse_any(data, addresses())
    packed, done = netlink.Compactor().compact(data)
    rows = list(netlink.Records(None, [packed]).sockets(Proto.TCP, addresses()))
    assert done and len(rows) == len(one_by_one) > 2
    assert rows == one_by_one
    assert {r.family for r in rows} >= ({Family.INET, Family.INET6} if "46" in fixture
                                        else {Family.INET})
    assert list(netlink.Records(None, [b""]).sockets(Proto.TCP, addresses())) == []


def _parse_any(data, addresses):
    out = []
    return netlink.parse_messages(data, Proto.TCP, addresses, out), out
