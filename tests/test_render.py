"""Renderers on hand-built sockets: the fast JSON path means exactly the documented
schema, the plain listing aligns and caps, cells format as documented."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from sockstat.model import (
    Endpoint,
    Family,
    ProcessRef,
    Proto,
    SkMemInfo,
    Socket,
    TcpInfo,
    TcpState,
    Timer,
    socket_to_dict,
)
from sockstat.render import fmt, jsonout, plain

INFO = TcpInfo(rtt_ms=0.05, rttvar_ms=0.02, snd_cwnd=10, snd_mss=65483, rcv_mss=536,
               retransmits=0, total_retrans=3, unacked=0, lost=0, last_data_sent_ms=5,
               last_data_recv_ms=7, last_ack_recv_ms=5, snd_wnd=65536, rcv_wnd=None)

SOCKETS = [
    Socket(Proto.TCP, Family.INET, TcpState.LISTEN, Endpoint("0.0.0.0", 8080),
           Endpoint("0.0.0.0", 0), 3, 128, 33, 1234, 77,
           process=ProcessRef(10, 'we"ird\\name\n', 3, "www-data")),
    Socket(Proto.TCP, Family.INET6, TcpState.TIME_WAIT, Endpoint("::1", 8080),
           Endpoint("::1", 40000), timer=Timer.TIMEWAIT, timer_ms=59000,
           process=ProcessRef(10, "nginx", None, "www-data", via_listener=True)),
    Socket(Proto.UDP, Family.INET, TcpState.CLOSE, Endpoint("127.0.0.1", 53),
           Endpoint("0.0.0.0", 0), cookie=None),
    Socket(Proto.TCP, Family.INET, TcpState.ESTABLISHED, Endpoint("127.0.0.1", 5000),
           Endpoint("127.0.0.1", 6000), 0, 10, tcp_info=INFO, timer=Timer.ON, timer_ms=200,
           retransmits=2, process=ProcessRef(11, "ünïcode", 4, None)),
]


def test_fast_json_equals_the_schema_function():
    out = io.StringIO()
    jsonout.write_sockets(out, SOCKETS)
    assert json.loads(out.getvalue()) == [socket_to_dict(s) for s in SOCKETS]


def test_fast_json_rows_are_the_general_encoders_bytes():
    """Each fast row is byte for byte what encoding the schema's dict gives (key order
    included), for every kind of row in SOCKETS, with and without --memory."""
    memory = SkMemInfo(7488, 8192, 0, 212992, 704, 0, 0, 0, 2991)
    rows = [*SOCKETS, *(dataclasses.replace(s, memory=memory) for s in SOCKETS),
            dataclasses.replace(SOCKETS[1], timer=Timer.OFF, cookie=42, uid=7, inode=9)]
    for sock in rows:
        assert jsonout._fast_row(sock) == jsonout._encode_obj(socket_to_dict(sock))


def test_fast_json_with_memory_equals_the_schema_function():
    full = SkMemInfo(7488, 8192, 0, 212992, 704, 0, 0, 0, 2991)
    old_kernel = SkMemInfo(1, 2, 3, 4, 5, 6, 7)  # no backlog nor drops: null
    rows = [Socket(Proto.UDP, Family.INET, TcpState.CLOSE, Endpoint("127.0.0.1", 53),
                   Endpoint("0.0.0.0", 0), memory=m) for m in (full, old_kernel)]
    out = io.StringIO()
    jsonout.write_sockets(out, rows)
    got = json.loads(out.getvalue())
    assert got == [socket_to_dict(s) for s in rows]
    assert got[0]["memory"]["drops"] == 2991 and got[1]["memory"]["drops"] is None


def test_json_of_nothing_is_an_empty_array():
    out = io.StringIO()
    jsonout.write_sockets(out, [])
    assert json.loads(out.getvalue()) == []


def test_json_batches_join_correctly():
    many = SOCKETS[:3] * 3000  # crosses the 4096-row batch boundary
    out = io.StringIO()
    jsonout.write_sockets(out, many)
    assert len(json.loads(out.getvalue())) == 9000


@pytest.mark.parametrize("ms,text", [(5, "5ms"), (59000, "59s"), (252000, "4m12s"),
                                     (7500000, "2h05m"), (3 * 86400000 + 4 * 3600000, "3d4h")])
def test_durations(ms, text):
    assert fmt.duration(ms) == text


def test_listen_queue_cells_and_timer():
    listen, tw, _, est = SOCKETS
    assert fmt.recv_q(listen) == "3/128" and fmt.send_q(listen) == ""
    assert fmt.timer(tw) == "timewait 59s"
    assert fmt.timer(est) == "on 200ms (2 retrans)"
    assert fmt.process(tw) == "nginx/10 (listener)"


def test_plain_listing_groups_caps_and_marks():
    many = [Socket(Proto.TCP, Family.INET, TcpState.ESTABLISHED, Endpoint("127.0.0.1", 5000),
                   Endpoint("127.0.0.1", 10000 + i)) for i in range(30)]
    lines = list(plain.render(SOCKETS + many, limit_per_state=5, colour=False,
                              marked={many[0].key}))
    assert lines[0] == ("34 sockets: LISTEN 1 · ESTABLISHED 31 · TIME_WAIT 1 · UNCONN 1")
    assert "ESTABLISHED (31)" in lines
    assert "  … and 26 more (--all shows every row)" in lines
    assert sum(1 for ln in lines if ln.startswith("! ")) == 1
    assert all(ln == ln.rstrip() for ln in lines)
    every = list(plain.render(SOCKETS + many, limit_per_state=None, colour=False))
    assert not any("more" in ln for ln in every)


def test_summary_kernel_memory_is_shown_in_bytes():
    from sockstat.render.summary import _counter

    assert _counter("mem", 350, 4096) == "mem 350 pages (1.4 MiB)"
    assert _counter("memory", 2048, 4096) == "memory 2 KiB"
    assert _counter("tw", 35029, 4096) == "tw 35,029"


def test_info_cells_show_rate_limit_and_congestion_and_stay_empty_when_unknown():
    full = dataclasses.replace(INFO, delivery_rate=125_000_000, busy_time_ms=1000.0,
                               rwnd_limited_ms=980.0, sndbuf_limited_ms=5.0,
                               congestion="cubic")
    sock = dataclasses.replace(SOCKETS[3], tcp_info=full)
    cells = dict(zip(fmt.INFO_COLUMNS, fmt.info_cells(sock), strict=True))
    assert (cells["Rate"], cells["Limited"], cells["CC"]) == ("1Gbps", "rwnd 98%", "cubic")
    old = dict(zip(fmt.INFO_COLUMNS, fmt.info_cells(SOCKETS[3]), strict=True))  # 4.x kernel
    assert (old["Rate"], old["Limited"], old["CC"]) == ("", "", "")
    assert fmt.bit_rate(1500) == "12Kbps" and fmt.bit_rate(10) == "80bps"
    assert fmt.bit_rate(0) == fmt.bit_rate(None) == ""
    idle = dataclasses.replace(INFO, busy_time_ms=10.0, rwnd_limited_ms=0.0,
                               sndbuf_limited_ms=0.0)
    assert fmt.limited(idle) == ""


def test_csv_carries_tcp_info_flattened_and_empty_for_absent_fields():
    import csv as csv_mod

    from sockstat.render import csvout

    info = dataclasses.replace(INFO, bytes_acked=4096, delivery_rate_app_limited=True,
                               congestion="bbr")
    out = io.StringIO()
    csvout.write_sockets(out, [SOCKETS[0], dataclasses.replace(SOCKETS[3], tcp_info=info)])
    rows = list(csv_mod.DictReader(io.StringIO(out.getvalue())))
    assert rows[0]["tcp_info.rtt_ms"] == "" and rows[0]["retransmits"] == "0"
    est = rows[1]
    assert est["tcp_info.rtt_ms"] == "0.05" and est["tcp_info.cwnd"] == "10"
    assert est["tcp_info.bytes_acked"] == "4096" and est["tcp_info.congestion"] == "bbr"
    assert est["tcp_info.delivery_rate_app_limited"] == "1"
    assert est["tcp_info.rcv_wnd"] == "" and est["tcp_info.min_rtt_ms"] == ""  # not sent
    assert est["retransmits"] == "2" and est["tcp_info.retransmits"] == "0"


def test_json_tcp_info_keeps_the_first_schema_and_grows():
    row = socket_to_dict(SOCKETS[3])["tcp_info"]
    first = ["rtt_ms", "rttvar_ms", "cwnd", "mss", "retransmits", "total_retrans",
             "unacked", "last_send_ms", "last_recv_ms", "last_ack_ms", "snd_wnd", "rcv_wnd"]
    assert list(row)[:len(first)] == first
    for name in ("delivery_rate", "rwnd_limited_ms", "sndbuf_limited_ms", "min_rtt_ms",
                 "bytes_acked", "congestion", "busy_time_ms", "snd_ssthresh", "notsent_bytes",
                 "pacing_rate", "reord_seen", "segs_in", "segs_out", "bytes_retrans"):
        assert name in row and row[name] is None  # hand-built like an old kernel's


def test_printable_escapes_control_characters_and_keeps_printable_names():
    from sockstat.humanize import printable

    name = "nginx"
    assert printable(name) is name  # the common case is returned untouched
    assert printable("a\x1b[31mb\nc\td\x7fe\x85f") == "a\\x1b[31mb\\nc\\td\\x7fe\\x85f"
    assert printable("x\u2028y") == "x\\u2028y"
    assert printable("café ünïcode") == "café ünïcode"


def test_process_and_unix_cells_escape_control_characters():
    from conftest import make_socket

    from sockstat.model import Family, Proto, UnixInfo, UnixType

    evil = ProcessRef(pid=7, name="ev\x1b[7mil")
    sock = make_socket(TcpState.LISTEN, ("", 0), ("", 0), proto=Proto.UNIX,
                       family=Family.UNIX, inode=9, process=evil,
                       unix=UnixInfo(UnixType.STREAM, name="@a\nb"))
    cells = plain.row_cells(sock)
    assert cells[1] == "@a\\nb 9" and cells[5] == "ev\\x1b[7mil/7"
    assert all(c.isprintable() for c in cells)


@pytest.mark.parametrize(("n", "text"), [
    (None, "unknown"), (512, "512 B"), (8192, "8 KiB"), (7475, "7.3 KiB"),
    (950272, "928 KiB"), (1433600, "1.4 MiB"), (3 << 30, "3.0 GiB")])
def test_one_byte_size_format_for_summary_and_drops(n, text):
    from sockstat.humanize import size

    assert size(n) == text


def test_findings_and_the_kill_preview_escape_names():
    from conftest import make_socket

    from sockstat import kill
    from sockstat.diagnose.findings import Finding, Severity
    from sockstat.diagnose.report import plain_block

    evil = "ev\x1b[7mil\nFAKE"
    finding = Finding("close_wait_leak", Severity.WARNING, f"{evil}/7", f"{evil} leaks",
                      {"process": evil}, "why", "fix")
    lines = plain_block(finding)
    assert len(lines) == 5 and all(line.isprintable() for line in lines)
    assert "ev\\x1b[7mil\\nFAKE/7" in lines[0]
    sock = make_socket(TcpState.CLOSE_WAIT, inode=5,
                       process=ProcessRef(7, evil, 3, "root"),
                       others=(ProcessRef(8, evil, 3, "root"),))
    target = kill.describe(sock)
    assert "\x1b" not in target.frees + target.keeps
    assert "ev\\x1b[7mil\\nFAKE/7 (and 1 more process: ev\\x1b[7mil\\nFAKE/8)" in target.keeps
