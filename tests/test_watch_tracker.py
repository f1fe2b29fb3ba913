"""The watch tracker on hand-built Snapshots: identity across refreshes, deltas, opened
and closed counts and rates, CLOSE_WAIT ages, TIME_WAIT owners, top lists, JSON shape."""

from __future__ import annotations

import json

from conftest import make_snapshot, make_socket

from sockstat.model import ProcessRef, Proto, Snapshot, Socket, TcpState
from sockstat.watch.tracker import DISPLAY_STATES, Tracker

S = TcpState
APP = ProcessRef(100, "app", fd=5, user="root")
CLIENT = ProcessRef(200, "curl", fd=3, user="root")
SERVER_VIA_LISTENER = ProcessRef(100, "app", user="root", via_listener=True)


def sock(state: TcpState, cookie: int | None, lport: int = 8080, rport: int = 40000,
         raddr: str = "10.0.0.1", process: ProcessRef | None = None,
         proto: Proto = Proto.TCP, recv_q: int = 0) -> Socket:
    remote = ("0.0.0.0", 0) if state in (S.LISTEN, S.CLOSE) else (raddr, rport)
    return make_socket(state, ("127.0.0.1", lport), remote, proto=proto, recv_q=recv_q,
                       inode=0 if state is S.TIME_WAIT else 1000 + (cookie or 0),
                       cookie=cookie, process=process)


def snap(t: float, *sockets: Socket) -> Snapshot:
    return make_snapshot(sockets, taken_at=t)


def test_first_refresh_is_the_baseline():
    r = Tracker().update(snap(100.0, sock(S.LISTEN, 1), sock(S.ESTABLISHED, 2),
                              sock(S.ESTABLISHED, 3)))
    assert r.number == 1 and r.elapsed is None and r.total == 3
    assert r.counts[S.ESTABLISHED] == 2 and r.counts[S.LISTEN] == 1
    assert set(r.counts) == set(DISPLAY_STATES)
    assert not any(r.delta.values()) and not any(r.since_start.values())
    assert (r.opened, r.closed, r.opened_per_s, r.closed_per_s) == (0, 0, None, None)


def test_opened_closed_deltas_and_rates():
    t = Tracker()
    t.update(snap(100.0, sock(S.LISTEN, 1), sock(S.ESTABLISHED, 2), sock(S.ESTABLISHED, 3)))
    # 2 gone (RST), 3 still there, 4 and 5 new, a new listener (not a connection)
    r = t.update(snap(102.0, sock(S.LISTEN, 1), sock(S.LISTEN, 9), sock(S.ESTABLISHED, 3),
                      sock(S.ESTABLISHED, 4), sock(S.SYN_SENT, 5)))
    assert r.elapsed == 2.0
    assert r.opened == 2 and r.closed == 1
    assert r.opened_per_s == 1.0 and r.closed_per_s == 0.5
    assert r.delta[S.ESTABLISHED] == 0 and r.delta[S.SYN_SENT] == 1 and r.delta[S.LISTEN] == 1
    r = t.update(snap(104.0, sock(S.LISTEN, 1)))
    assert r.closed == 3 and r.opened == 0
    assert r.since_start[S.ESTABLISHED] == -2 and r.delta[S.ESTABLISHED] == -2
    assert (r.opened_total, r.closed_total) == (2, 4)


def test_deltas_add_up_to_since_start():
    t = Tracker()
    frames = [
        (S.ESTABLISHED, [1, 2]), (S.ESTABLISHED, [1, 2, 3, 4]), (S.ESTABLISHED, [4]),
        (S.ESTABLISHED, [4, 5, 6]),
    ]
    summed = dict.fromkeys(DISPLAY_STATES, 0)
    for i, (state, cookies) in enumerate(frames):
        r = t.update(snap(100.0 + i, *(sock(state, c) for c in cookies)))
        for s in DISPLAY_STATES:
            summed[s] += r.delta[s]
    assert summed == r.since_start
    assert r.since_start[S.ESTABLISHED] == 1


def test_time_wait_keeps_the_owner_it_had_while_alive():
    t = Tracker()
    t.update(snap(100.0, sock(S.ESTABLISHED, 7, lport=41000, rport=443, process=CLIENT),
                  sock(S.ESTABLISHED, 8, process=APP)))
    # same cookies, now mini-sockets without inode or fd; the server one is attributed
    # through its listener by collect, which must not replace the real owner
    r = t.update(snap(102.0, sock(S.TIME_WAIT, 7, lport=41000, rport=443),
                      sock(S.TIME_WAIT, 8, process=SERVER_VIA_LISTENER)))
    assert r.closed == 2 and r.opened == 0
    owners = {ref.pid if ref else None: n for ref, n in r.time_wait_owners}
    assert owners == {200: 1, 100: 1}
    assert all(ref is not None and not ref.via_listener for ref, _ in r.time_wait_owners)
    # the expiry of a TIME_WAIT socket is not a second close
    r = t.update(snap(104.0))
    assert r.closed == 0 and r.delta[S.TIME_WAIT] == -2


def test_time_wait_never_seen_alive_falls_back_to_the_listener_or_unknown():
    t = Tracker()
    t.update(snap(100.0))
    r = t.update(snap(101.0, sock(S.TIME_WAIT, 1, process=SERVER_VIA_LISTENER),
                      sock(S.TIME_WAIT, 2), sock(S.TIME_WAIT, 3)))
    # opened and closed between two refreshes: counts as both
    assert r.opened == 3 and r.closed == 3
    assert r.time_wait_owners == [(None, 2), (SERVER_VIA_LISTENER, 1)]


def test_four_tuple_identity_and_reuse_after_time_wait():
    # /proc has no cookies: the 4-tuple is the identity; a TIME_WAIT 4-tuple taken over
    # by a new connection is a new connection
    t = Tracker()
    t.update(snap(100.0, sock(S.ESTABLISHED, None, process=CLIENT)))
    r = t.update(snap(101.0, sock(S.TIME_WAIT, None)))
    assert (r.opened, r.closed) == (0, 1)
    assert r.time_wait_owners == [(CLIENT, 1)]
    r = t.update(snap(102.0, sock(S.ESTABLISHED, None)))
    assert (r.opened, r.closed) == (1, 0)
    assert r.top_processes == []  # the new connection's owner is not the old one's


def test_reset_connection_left_in_close_is_closed_once():
    t = Tracker()
    t.update(snap(100.0, sock(S.ESTABLISHED, 1)))
    r = t.update(snap(101.0, sock(S.CLOSE, 1)))  # the app has not closed the fd yet
    assert r.closed == 1
    r = t.update(snap(102.0))
    assert r.closed == 0


def test_udp_socket_that_connects_is_opened():
    t = Tracker()
    t.update(snap(100.0, sock(S.CLOSE, 1, proto=Proto.UDP)))
    r = t.update(snap(101.0, sock(S.ESTABLISHED, 1, proto=Proto.UDP)))
    assert r.opened == 1


def test_close_wait_ages():
    t = Tracker(oldest=2)
    t.update(snap(100.0, sock(S.CLOSE_WAIT, 1, process=APP), sock(S.ESTABLISHED, 2),
                  sock(S.ESTABLISHED, 3)))
    t.update(snap(110.0, sock(S.CLOSE_WAIT, 1), sock(S.CLOSE_WAIT, 2),
                  sock(S.ESTABLISHED, 3)))
    r = t.update(snap(130.0, sock(S.CLOSE_WAIT, 1), sock(S.CLOSE_WAIT, 2),
                      sock(S.CLOSE_WAIT, 3)))
    ages = [(a.socket.cookie, a.age_s, a.at_least) for a in r.oldest_close_wait]
    # oldest first; #1 was already in CLOSE_WAIT at start: its age is a lower bound
    assert ages == [(1, 30.0, True), (2, 20.0, False)]
    assert r.oldest_close_wait[0].owner == APP  # remembered, though this refresh had none


def test_new_syn_recv_is_shown_as_syn_recv():
    r = Tracker().update(snap(100.0, sock(S.NEW_SYN_RECV, 1), sock(S.SYN_RECV, 2)))
    assert r.counts[S.SYN_RECV] == 2
    assert S.NEW_SYN_RECV not in r.counts


def test_history_is_bounded_and_in_order():
    t = Tracker(history=3)
    for i in range(5):
        r = t.update(snap(100.0 + i, *(sock(S.ESTABLISHED, c) for c in range(i))))
    assert r.history[S.ESTABLISHED] == (2, 3, 4)
    assert r.history[S.LISTEN] == (0, 0, 0)


def test_top_lists_follow_the_summary_rules():
    sockets = [sock(S.LISTEN, 1, lport=80, process=APP)]
    sockets += [sock(S.ESTABLISHED, 10 + i, lport=80, raddr="10.0.0.1", process=APP)
                for i in range(3)]
    sockets += [sock(S.ESTABLISHED, 20 + i, lport=443, raddr="10.0.0.2", process=CLIENT)
                for i in range(2)]
    sockets.append(sock(S.CLOSE, 30, lport=53, proto=Proto.UDP))
    r = Tracker(top=5).update(snap(100.0, *sockets))
    assert r.top_local_ports == [(80, 3), (443, 2)]  # listeners and UNCONN left out
    assert r.top_remote_hosts == [("10.0.0.1", 3), ("10.0.0.2", 2)]
    assert r.top_processes == [(APP, 4), (CLIENT, 2)]
    assert Tracker(top=1).update(snap(100.0, *sockets)).top_local_ports == [(80, 3)]


def test_wall_clock_stepping_back_gives_no_rate():
    t = Tracker()
    t.update(snap(100.0))
    r = t.update(snap(99.0, sock(S.ESTABLISHED, 1)))
    assert r.elapsed is None and r.opened_per_s is None and r.opened == 1


def test_json_shape():
    t = Tracker()
    t.update(snap(100.0, sock(S.ESTABLISHED, 1, process=APP)))
    r = t.update(snap(102.0, sock(S.TIME_WAIT, 1), sock(S.CLOSE_WAIT, 2, process=APP)))
    r.interval = 2.0
    d = json.loads(json.dumps(r.to_dict()))
    assert set(d) == {"timestamp", "refresh", "interval", "elapsed", "source", "total",
                      "counts", "delta", "since_start", "opened", "closed", "opened_per_s",
                      "closed_per_s", "opened_total", "closed_total", "top",
                      "time_wait_owners", "oldest_close_wait", "findings", "findings_at"}
    assert list(d["counts"]) == [s.label for s in DISPLAY_STATES]
    assert d["counts"]["TIME_WAIT"] == 1 and d["delta"]["ESTABLISHED"] == -1
    assert d["opened"] == 1 and d["closed"] == 1 and d["closed_per_s"] == 0.5
    assert d["time_wait_owners"] == [{"process": "app/100", "pid": 100, "name": "app",
                                      "via_listener": False, "sockets": 1,
                                      "processes": 1}]
    assert d["top"]["processes"][0]["process"] == "app/100"
    assert d["oldest_close_wait"][0] | {"age_s": 0} == {
        "age_s": 0, "at_least": False, "local": "127.0.0.1:8080",
        "remote": "10.0.0.1:40000", "process": "app/100", "pid": 100, "name": "app",
        "via_listener": False}
    assert d["findings"] == [] and d["interval"] == 2.0


def test_json_findings_are_the_short_form():
    from sockstat.diagnose import Finding, Severity

    r = Tracker().update(snap(100.0))
    r.findings = [Finding(kind="close_wait_leak", severity=Severity.WARNING, subject="app/1",
                          summary="12 sockets in CLOSE_WAIT held by app/1", evidence={},
                          explanation="", remedy="")]
    assert r.to_dict()["findings"] == [{
        "kind": "close_wait_leak", "severity": "warning", "subject": "app/1",
        "summary": "12 sockets in CLOSE_WAIT held by app/1"}]


def test_time_wait_owner_named_through_the_listener_keeps_its_mark():
    """The listener's own socket (same pid, a real owner) must not overwrite the
    via-listener mark of TIME_WAIT sockets watch never saw alive."""
    from sockstat.render.live import process_label

    t = Tracker()
    t.update(snap(100.0))
    r = t.update(snap(101.0, sock(S.LISTEN, 9, process=APP),
                      sock(S.TIME_WAIT, 1, process=SERVER_VIA_LISTENER),
                      sock(S.TIME_WAIT, 2, process=SERVER_VIA_LISTENER)))
    [(owner, n)] = r.time_wait_owners
    assert n == 2 and owner.via_listener
    assert process_label(owner) == "~app/100"
    d = r.to_dict()
    assert d["time_wait_owners"][0]["via_listener"] is True
