"""The watch screen: sparklines, the row budget, and whole frames rendered by rich at a
fixed size (what a terminal of that size would show)."""

from __future__ import annotations

import pytest
from conftest import make_socket

from sockstat.model import ProcessRef, Snapshot, TcpState
from sockstat.render.live import BARS, LiveFrame, layout_rows, sparkline
from sockstat.watch.tracker import Tracker

S = TcpState
APP = ProcessRef(4242, "leaky", fd=9)


def test_sparkline_scales_between_min_and_max():
    assert sparkline([0, 1, 2, 3], 4) == "▁▃▆█"
    assert sparkline([5, 5, 5], 3) == BARS[3] * 3  # flat, not zero: the middle
    assert sparkline([0, 0], 2) == BARS[0] * 2
    assert sparkline([1, 2], 5) == "   ▁█"  # newest on the right
    assert sparkline(range(100), 3) == "▁▅█"  # only the last `width` values
    assert sparkline([], 3) == "   " and sparkline([1], 0) == ""


def test_layout_gives_rows_by_importance():
    rows = layout_rows(50, states=5, findings=2, top=10, close_wait=100)
    assert (rows.findings, rows.top) == (2, 10)
    # header+blank, table (header, 5 states, total), churn, blank+title, 2 findings,
    # blank + top headers + 10 rows, blank + title + header
    assert rows.close_wait == 50 - (2 + 7 + 1) - (2 + 2) - (2 + 10) - 3
    assert layout_rows(50, states=5, findings=2, top=10, close_wait=4).close_wait == 4
    small = layout_rows(20, states=5, findings=8, top=10, close_wait=10)
    assert small.findings >= 3 and small.close_wait == 0
    assert small.top == 20 - 10 - 2 - small.findings - 1 - 2
    # a screen too small for anything but the state table
    assert layout_rows(8, states=5, findings=3, top=10, close_wait=5) == \
        layout_rows(8, states=5, findings=3, top=10, close_wait=5).__class__(0, 0, 0)
    # nothing below the findings: they may use all the room
    assert layout_rows(30, states=2, findings=40, top=0, close_wait=0).findings == 30 - 7 - 2


def _sock(state, cookie, lport=8080, rport=50000, process=None, recv_q=0):
    return make_socket(state, ("127.0.0.1", lport), ("127.0.0.1", rport), recv_q=recv_q,
                       inode=cookie, cookie=cookie, process=process)


def _refresh():
    t = Tracker()
    base = [_sock(S.LISTEN, 1, rport=0, process=APP)]
    t.update(Snapshot(base + [_sock(S.ESTABLISHED, 10 + i, process=APP) for i in range(3)],
                      100.0, "netlink"))
    r = t.update(Snapshot(
        base + [_sock(S.CLOSE_WAIT, 10 + i, process=APP, recv_q=1) for i in range(3)]
        + [_sock(S.ESTABLISHED, 20 + i, process=APP) for i in range(5)], 102.0, "netlink"))
    return r


class _Finding:
    kind = "close_wait_leak"
    severity = "warning"
    subject = "leaky/4242"
    summary = "3 sockets in CLOSE_WAIT held by leaky/4242"


def _render(frame, width=120, height=40) -> str:
    import io

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system=None)
    console.print(frame)
    return out.getvalue()


def test_frame_shows_counts_changes_churn_tops_and_findings():
    r = _refresh()
    r.findings = [_Finding()]
    r.findings_at = r.timestamp
    text = _render(LiveFrame(r, title="port 8080", interval=2.0))
    lines = text.splitlines()
    assert "port 8080" in lines[0] and "refresh 2" in lines[0] and "q quits" in lines[0]
    row = next(line for line in lines if line.startswith("ESTABLISHED")).split()
    assert row[:4] == ["ESTABLISHED", "5", "+2", "+2"]
    row = next(line for line in lines if line.startswith("CLOSE_WAIT")).split()
    assert row[:4] == ["CLOSE_WAIT", "3", "+3", "+3"]
    assert next(line for line in lines if line.startswith("total")).split()[:2] == \
        ["total", "9"]
    churn = next(line for line in lines if line.startswith("connections"))
    assert "new 2.5/s" in churn and "closed 0.0/s" in churn  # 5 new in 2 s
    assert "WARNING  3 sockets in CLOSE_WAIT held by leaky/4242" in text
    assert "leaky/4242" in text and "Top local ports" in text
    assert "Oldest CLOSE_WAIT" in text and "≥" not in text.split("Oldest CLOSE_WAIT")[1] \
        .split("\n", 2)[2]  # entered CLOSE_WAIT during the watch: a real age


def test_frame_fits_a_small_terminal():
    r = _refresh()
    r.findings = [_Finding()] * 6
    text = _render(LiveFrame(r, title="", interval=2.0), width=80, height=16)
    assert "CLOSE_WAIT" in text and "WARNING" in text
    assert "… and" in text  # the findings that did not fit are counted
    assert "Oldest CLOSE_WAIT" not in text


def test_frame_before_the_first_refresh_and_without_detectors():
    assert "collecting" in _render(LiveFrame(None, title="", interval=2.0))
    text = _render(LiveFrame(_refresh(), title="", interval=2.0, findings_available=False,
                             keys=False))
    assert "detectors not available" in text and "Ctrl-C quits" in text


@pytest.mark.parametrize("width", [60, 100, 200])
def test_frame_lines_never_wrap(width):
    r = _refresh()
    r.findings = [_Finding()]
    text = _render(LiveFrame(r, title="port 8080, state close-wait", interval=0.5),
                   width=width, height=50)
    assert all(len(line) <= width for line in text.splitlines())


def test_header_describes_the_query():
    from sockstat import Query
    from sockstat.render.live import describe

    assert describe(Query()) == "all sockets"
    query = Query.build(states=["syn-recv", "close-wait"], ports=["80", "8000-8002"],
                        remote=["10.0.0.0/8"], tcp=True, ipv4=True, listening=False)
    assert describe(query) == ("state close-wait,syn-recv, port 80,8000-8002, "
                               "remote 10.0.0.0/8, tcp, ipv4")


def test_history_says_the_time_it_covers_not_its_capacity():
    r = _refresh()  # two refreshes, 2 s apart
    text = _render(LiveFrame(r, title="", interval=2.0), width=200)
    assert "History (last 2s)" in text  # not 2 s x the sparkline's 120 points = 4m
    first = Tracker().update(Snapshot([_sock(S.LISTEN, 1, rport=0)], 100.0, "netlink"))
    header = next(line for line in _render(LiveFrame(first, title="", interval=2.0))
                  .splitlines() if line.startswith("State"))
    assert header.split()[-1] == "History"


def test_the_two_close_wait_ages_have_two_names():
    """The table's time in the state (as watch saw it) and tcp_info's idle time (what
    the findings call 'oldest idle') are different ages: each column says which."""
    from sockstat.model import TcpInfo

    r = _refresh()
    aged = r.oldest_close_wait[0]
    aged.socket.tcp_info = TcpInfo(**{**{f: 0 for f in TcpInfo.__dataclass_fields__},
                                      "last_data_recv_ms": 138_000})
    text = _render(LiveFrame(r, title="", interval=2.0), width=160)
    section = text.split("Oldest CLOSE_WAIT")[1]
    header = section.splitlines()[1].split()
    assert header[:3] == ["In", "state", "Idle"] and "Age" not in header
    row = section.splitlines()[2].split()
    assert row[1] == "2m18s"  # idle since data last arrived, the age Findings judge by
