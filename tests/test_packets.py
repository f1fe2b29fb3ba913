"""The segment decoder, the capture's BPF program and the sequence diagram, on captured
frames: tests/fixtures/segments_<demo>.json hold what `demo <demo> --packets` read on
this project's lab machine (Linux 6.18): each packet's bytes as the AF_PACKET socket
delivered them (IP header first, cut at the snap length), its kernel timestamp, the
kernel's states read after it, and who was who. Truncated and malformed frames too.

The capture itself (root only) is tested on real loopback traffic at the end.
"""

from __future__ import annotations

import json
import os
import socket
import struct

import pytest
from conftest import FIXTURES, wait_for

from sockstat import explain
from sockstat.demo import capture, sequence
from sockstat.demo.capture import Captured
from sockstat.packets import ACK, FIN, SYN, DecodeError, decode, flag_names, parse_options

NOTES = explain.SEGMENT_NOTES
DEMOS = ["handshake", "handshake_ipv6", "teardown", "syn-recv", "syn-sent", "zero-window",
         "closing"]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"segments_{name}.json").read_text())


def packets(doc: dict) -> list[Captured]:
    return [Captured(p["time"], bytes.fromhex(p["data"]),
                     None if p["states"] is None else
                     {(tuple(a), tuple(b)): state for a, b, state in p["states"]})
            for p in doc["packets"]]


def story(name: str) -> sequence.Story:
    doc = fixture(name)
    roles = {(tuple(a), tuple(b)): role for a, b, role in doc["roles"]}
    return sequence.build(packets(doc), role_of=lambda local, remote: roles.get((local, remote)),
                          server_ports=set(doc["server_ports"]),
                          cleanup_from=doc["cleanup_from"], defer_accept=doc["defer_accept"])


# ---- the decoder ---------------------------------------------------------------------

@pytest.mark.parametrize("name", DEMOS)
def test_every_captured_frame_decodes(name):
    doc = fixture(name)
    host = "::1" if name.endswith("ipv6") else "127.0.0.1"
    for p in doc["packets"]:
        seg = decode(bytes.fromhex(p["data"]))
        assert seg.ip_version == (6 if host == "::1" else 4)
        assert seg.src == seg.dst == host
        assert doc["server_ports"][0] in (seg.src_port, seg.dst_port)
        assert 20 <= seg.header_length <= 60 and seg.length >= 0


def test_a_syn_decoded_field_by_field():
    syn = decode(bytes.fromhex(fixture("handshake")["packets"][0]["data"]))
    assert syn.flags == SYN and syn.flag_names == "SYN" and syn.ack == 0
    assert syn.header_length == 40 and syn.length == 0 and syn.window == 65495
    opts = syn.options
    assert opts.mss == 65495 and opts.sack_permitted and opts.wscale is not None
    assert opts.timestamps is not None and opts.timestamps[1] == 0
    assert opts.to_dict().keys() == {"mss", "wscale", "sack_permitted", "timestamps"}
    synack = decode(bytes.fromhex(fixture("handshake")["packets"][1]["data"]))
    assert synack.flag_names == "SYN,ACK" and synack.ack == (syn.seq + 1) % (1 << 32)


def test_data_length_comes_from_the_ip_header_not_the_snap_length():
    frames = [bytes.fromhex(p["data"]) for p in fixture("zero-window")["packets"]]
    data = [(f, decode(f)) for f in frames if decode(f).length]
    assert data and all(seg.length >= 16384 and len(f) < 200 for f, seg in data)


@pytest.mark.parametrize("name", ["handshake", "handshake_ipv6"])
def test_truncated_frames_raise_decode_error(name):
    frame = bytes.fromhex(fixture(name)["packets"][0]["data"])  # a SYN with options
    full = decode(frame)
    headers = len(frame)  # the SYN carries no data: the frame is all headers
    for cut in range(headers):
        with pytest.raises(DecodeError):
            decode(frame[:cut])
    assert decode(frame[:headers]) == full


def _ipv4_tcp(tcp: bytes, *, proto: int = 6, frag: int = 0, total: int | None = None) -> bytes:
    total = 20 + len(tcp) if total is None else total
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0,
                     socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    return ip + tcp


def _tcp(offset_words: int = 5, flags: int = SYN, options: bytes = b"") -> bytes:
    return struct.pack("!HHIIHHHH", 1000, 2000, 7, 0, (offset_words << 12) | flags, 512, 0,
                       0) + options


@pytest.mark.parametrize("packet,message", [
    (b"", "empty"),
    (b"\x50" + bytes(30), "version 5"),
    (_ipv4_tcp(_tcp(), proto=17), "protocol 17"),
    (_ipv4_tcp(_tcp(), frag=0x2000), "fragment"),
    (_ipv4_tcp(_tcp(offset_words=4)), "below the minimum"),
    (_ipv4_tcp(_tcp(offset_words=6)), "options truncated"),
    (_ipv4_tcp(_tcp(offset_words=6, options=b"\x02\x09\x00\x00")), "does not fit"),
    (_ipv4_tcp(_tcp(offset_words=6, options=b"\x03\x04\x00\x00")), "expected 3"),
    (_ipv4_tcp(_tcp(), total=30), "shorter than the TCP header"),
])
def test_malformed_packets_are_named(packet, message):
    with pytest.raises(DecodeError, match=message):
        decode(packet)


def test_options_nop_end_and_unknown_kinds():
    opts = parse_options(b"\x01\x01\x04\x02\x1e\x04\xab\xcd\x00\x02\x04\x05\xb4")
    assert opts.sack_permitted and opts.other == (30,) and opts.mss is None  # END stops
    assert parse_options(b"\x05\x0a" + bytes(8)).sack == ((0, 0),)
    with pytest.raises(DecodeError):
        parse_options(b"\x05\x07" + bytes(5))  # a SACK block is 8 bytes
    with pytest.raises(DecodeError):
        parse_options(b"\x02")  # no length byte
    assert flag_names(SYN | ACK) == "SYN,ACK" and flag_names(FIN | ACK) == "FIN,ACK"


# ---- the BPF program -----------------------------------------------------------------

def test_without_ports_the_filter_drops_everything():
    assert capture.filter_program([]) == [(capture.RET_K, 0, 0, 0)]


def test_every_jump_of_the_largest_filter_is_in_range():
    program = capture.filter_program(list(range(1000, 1000 + capture.MAX_PORTS)))
    for at, (op, jt, jf, _) in enumerate(program):
        if op in (capture.JEQ_K, capture.JSET_K):
            assert at + 1 + max(jt, jf) < len(program)
    assert program[-1] == (capture.RET_K, 0, 0, capture.SNAP_LENGTH)
    assert program[-2] == (capture.RET_K, 0, 0, 0)


# ---- the diagram ---------------------------------------------------------------------

def test_handshake_seq_and_ack_relative_to_each_isn():
    rows = story("handshake").rows
    syn, synack, ack = rows[:3]
    assert [r.segment.flag_names for r in rows[:3]] == ["SYN", "SYN,ACK", "ACK"]
    assert (syn.seq, syn.ack) == (0, None)
    assert (synack.seq, synack.ack) == (0, 1) and NOTES["syn-acked"] in synack.notes
    assert (ack.seq, ack.ack) == (1, 1) and NOTES["syn-acked"] in ack.notes
    assert (syn.src_role, syn.dst_role) == ("client", "server") and syn.client_to_server
    assert not synack.client_to_server
    # windows after the SYNs are scaled by the sender's window scale
    assert ack.window == ack.segment.window << syn.segment.options.wscale
    # TCP_DEFER_ACCEPT: the kernel still showed the server in SYN_RECV after the ACK
    assert ack.states == ("ESTABLISHED", "SYN_RECV")
    assert NOTES["ack-ignored-defer"] in ack.notes
    data = rows[3]
    assert data.segment.length == 5 and data.seq == 1 and rows[4].ack == 6


def test_ipv6_handshake_reads_the_same():
    rows = story("handshake_ipv6").rows
    assert [r.segment.flag_names for r in rows[:3]] == ["SYN", "SYN,ACK", "ACK"]
    assert rows[1].ack == 1 and rows[2].ack == 1


def test_teardown_each_fin_acknowledged_and_the_last_ack():
    rows = story("teardown").rows
    fins = [r for r in rows if r.segment.has(FIN)]
    assert [r.src_role for r in fins] == ["client", "server"]
    for fin in fins:
        acked = [r for r in rows if r.src_role == fin.dst_role and r.segment.has(ACK)
                 and r.ack == fin.seq + 1]
        assert acked, f"the FIN of {fin.src_role} is not acknowledged"
    last = rows[-1] if not rows[-1].segment.flags & 4 else rows[-2]
    assert NOTES["last-ack"] in last.notes and last.src_role == "client"
    assert last.states == ("TIME_WAIT", "CLOSED")


def test_zero_window_and_its_probe():
    rows = story("zero-window").rows
    zero = [r for r in rows if NOTES["window-zero"] in r.notes]
    probes = [r for r in rows if NOTES["probe"] in r.notes]
    assert zero and zero[0].window == 0 and zero[0].src_role == "server"
    assert probes and all(p.src_role == "client" and p.segment.length == 0 for p in probes)
    assert rows.index(zero[0]) < rows.index(probes[0])
    assert any(NOTES["window-open"] in r.notes for r in rows)


def test_syn_sent_retransmissions_with_growing_gaps():
    built = story("syn-sent")
    syns = [r for r in built.rows if r.segment.flag_names == "SYN" and r.src_role == "client 2"]
    gaps = [b.time - a.time for a, b in zip(syns, syns[1:], strict=False)]
    assert len(gaps) >= 2 and gaps[-1] > 1.5 * gaps[0]
    assert all(b >= a * 0.9 for a, b in zip(gaps, gaps[1:], strict=False))
    assert all(r.seq == 0 for r in syns)  # the same SYN, sent again
    assert not syns[0].repeat and all(r.repeat for r in syns[1:])
    assert all(NOTES["syn-unanswered"] in r.notes for r in syns[:-1])
    assert NOTES["syn-unanswered"] not in syns[-1].notes  # its fate is not known yet
    assert len(built.notes) == 1 and "client 2" in built.notes[0]
    assert "exponential backoff" in built.notes[0]
    assert sequence.backoff_seen(packets(fixture("syn-sent")))


def test_syn_recv_ignored_ack_and_closing_states():
    ack = story("syn-recv").rows[2]
    assert ack.states == ("ESTABLISHED", "SYN_RECV")
    assert NOTES["ack-ignored-defer"] in ack.notes
    closing = [r for r in story("closing").rows if r.states and "CLOSING" in r.states]
    assert closing and NOTES["closing"] in closing[0].notes
    assert all(NOTES["closing"] not in r.notes for r in closing[1:])


def test_the_clean_up_rst_says_so_linger_0():
    rows = story("handshake").rows
    assert rows[-1].segment.flag_names == "RST,ACK"
    assert rows[-1].notes == [NOTES["rst-linger"]]


def test_truncated_frames_in_a_capture_are_counted_not_fatal():
    doc = fixture("handshake")
    captured = packets(doc)
    captured.insert(1, Captured(captured[0].time, captured[0].data[:30]))
    built = sequence.build(captured, role_of=lambda a, b: None, server_ports=set())
    assert built.undecodable == 1 and len(built.rows) == len(doc["packets"])
    assert built.rows[0].src_role.startswith(":")  # unknown roles: the port
    other = sequence.build(captured, role_of=lambda a, b: None, server_ports=set(),
                           host="127.0.0.2")
    assert other.foreign == len(doc["packets"]) and not other.rows


def test_json_rows_carry_the_documented_fields():
    row = story("handshake").rows[1].to_dict()
    assert {"time", "src_port", "dst_port", "flags", "seq", "ack", "len", "window",
            "options"} <= row.keys()
    assert row["flags"] == "SYN,ACK" and row["ack"] == 1 and row["options"]["mss"] == 65495


# ---- the capture (root) --------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET needs CAP_NET_RAW")


@needs_root
@pytest.mark.parametrize("host,family", [("127.0.0.1", socket.AF_INET),
                                         ("::1", socket.AF_INET6)])
def test_the_filter_reads_only_the_watched_port(loop, host, family):
    with capture.open_capture() as cap:
        watched = loop.listener(host, family=family)
        other = loop.listener(host, family=family)
        cap.watch(watched.getsockname()[1])
        cap.start()
        loop.connect(other)
        loop.connect(watched)
        wait_for(lambda: len(cap.packets) >= 3, what="the handshake to be captured")
    assert cap.sock.fileno() == -1
    segments = [decode(p.data) for p in cap.packets]
    assert all(watched.getsockname()[1] in (s.src_port, s.dst_port) for s in segments)
    assert {s.src for s in segments} == {host}
    flags = [s.flag_names for s in segments[:3]]
    assert flags == ["SYN", "SYN,ACK", "ACK"]  # each segment once, not twice (loopback)


@needs_root
def test_the_capture_keeps_at_most_max_packets_and_closes_on_ctrl_c(loop, monkeypatch):
    monkeypatch.setattr(capture, "MAX_PACKETS", 4)
    with pytest.raises(KeyboardInterrupt), capture.open_capture() as cap:
        listener = loop.listener()
        cap.watch(listener.getsockname()[1])
        cap.start()
        for _ in range(3):
            loop.connect(listener)
        wait_for(lambda: cap.over_cap > 0, what="more segments than the cap")
        raise KeyboardInterrupt
    assert len(cap.packets) == 4 and cap.sock.fileno() == -1
    assert cap._thread is not None and not cap._thread.is_alive()


def test_a_reading_of_states_goes_to_the_segment_just_before_it():
    """A reading taken while another segment was sent could show either: it is dropped;
    a segment keeps the first reading after it."""
    with socket.socket() as unused:  # assign_states never touches the socket
        cap = capture.Capture(unused, packets=[Captured(t, b"") for t in (1.0, 3.0, 2.0)])
        for began, ended, name in ((1.5, 1.6, "A"), (1.7, 1.8, "B"), (2.5, 3.5, "C"),
                                   (3.1, 3.2, "D"), (0.1, 0.2, "E")):
            cap.reading(began, ended, {"state": name})
        cap.assign_states()
    by_time = {p.time: p.states and p.states["state"] for p in cap.packets}
    assert by_time == {1.0: "A", 2.0: None, 3.0: "D"}
