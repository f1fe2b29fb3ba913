"""Each pathology built for real on loopback, then collected and diagnosed.

Every assertion is about this test's own sockets: snapshots are restricted to the
test's ports (Query.build(ports=...)) and findings are picked by subject (our pid, our
port). Host-wide counters are shared with everything else on the machine, so they are
only asserted to rise at least as much as we made them rise.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import time
from dataclasses import replace

import pytest
from conftest import my_comm, wait_for
from test_diagnose import assert_myths_stated

from sockstat.collect import collect
from sockstat.collect.kernel import read_sample
from sockstat.diagnose import diagnose, flagged_keys, wanted_pids
from sockstat.diagnose.findings import Severity
from sockstat.diagnose.thresholds import Thresholds
from sockstat.model import TcpState
from sockstat.query import Query

ME = os.getpid()



def snapshot(*ports: int):
    return collect(Query.build(ports=list(ports), tcp=True), processes=True, tcp_info=True)


def states(snap, state: TcpState, port: int | None = None):
    return [s for s in snap.sockets if s.state is state
            and (port is None or port in (s.local.port, s.remote.port))]


def mine(findings, kind):
    return [f for f in findings if f.kind == kind and f.evidence.get("pid") == ME]


def test_close_wait_leak_is_flagged_with_pid_fds_and_growing_age(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    accepted = []
    for _ in range(3):
        client, conn = loop.connect(server)
        client.sendall(b"bye")
        client.close()  # the peer hangs up; our "server" never closes `conn`
        accepted.append(conn)
    snap = wait_for(lambda: (s := snapshot(port)) and len(states(s, TcpState.CLOSE_WAIT)) == 3
                    and s, what="3 CLOSE_WAIT sockets")
    t = replace(Thresholds(), close_wait_warn=3, close_wait_min_age=0)
    kernel = read_sample(pids=wanted_pids(snap))
    [f] = mine(diagnose(snap, kernel, t, host=False), "close_wait_leak")
    assert f.subject == f"{my_comm()}/{ME}" and f.severity is Severity.WARNING
    ev = f.evidence
    assert ev["close_wait"] == 3 and ev["fin_unread"] == 3  # nobody read the FIN
    assert ev["recv_q_bytes"] == 9  # b"bye" x 3, unread
    assert ev["fds"] == sorted(c.fileno() for c in accepted)
    assert ev["peers"] == [{"value": "127.0.0.1", "count": 3}]
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        assert ev["nofile_soft_limit"] == soft
        assert ev["fd_limit_percent"] == round(300 / soft, 1)
    assert ev["open_fds"] >= 3
    assert {s.key for s in states(snap, TcpState.CLOSE_WAIT)} <= flagged_keys([f])

    # the age is the time since data last arrived: it keeps growing
    first_age = ev["oldest_age_s"]
    assert first_age is not None

    def older():
        again = mine(diagnose(snapshot(port), None, t, host=False), "close_wait_leak")
        return again and again[0].evidence["oldest_age_s"] > first_age and again[0]
    assert wait_for(older, timeout=10, what="CLOSE_WAIT age to grow")

    # reading the EOF (but still not closing) leaves the FIN read, the leak in place
    assert accepted[0].recv(100) == b"bye" and accepted[0].recv(100) == b""
    [f] = mine(diagnose(snapshot(port), None, t, host=False), "close_wait_leak")
    assert f.evidence["close_wait"] == 3 and f.evidence["fin_unread"] == 2

    # with the default thresholds (10 sockets, 10 s old) three fresh ones are no leak
    assert not mine(diagnose(snapshot(port), None, Thresholds(), host=False),
                    "close_wait_leak")


def test_client_churning_short_connections_piles_up_time_wait(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    churn = 30
    started = time.monotonic()
    for _ in range(churn):
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        client.close()  # the client closes first: the TIME_WAIT is the client's
        conn.close()
    snap = wait_for(lambda: (s := snapshot(port))
                    and len(states(s, TcpState.TIME_WAIT)) == churn and s,
                    what="the client's TIME_WAIT sockets")
    took = time.monotonic() - started
    kernel = read_sample()
    t = replace(Thresholds(), time_wait_warn=churn)
    found = [f for f in diagnose(snap, kernel, t, host=False)
             if f.kind == "time_wait_pileup" and f.evidence.get("remote_port") == port]
    [f] = found
    assert f.subject == f"127.0.0.1 -> 127.0.0.1:{port}"
    assert f.severity is Severity.WARNING
    ev = f.evidence
    assert ev["time_wait"] == churn and ev["open"] == 0
    assert ev["usable_ports"] == kernel.sysctls.usable_ports
    assert ev["tw_reuse_applies"] == (kernel.sysctls.tcp_tw_reuse in (1, 2))
    # the rate comes from the kernel's TIME_WAIT timers: these all closed just now
    assert ev["rate_measured"] is True
    assert ev["rate_window_s"] in (1, 10)
    assert ev["closed_per_s"] == round(ev["closed_in_window"] / ev["rate_window_s"], 1)
    if took < 1:  # (a machine too slow for that says nothing here)
        assert (ev["closed_in_window"], ev["rate_window_s"]) == (churn, 1)
    assert f"over the last {ev['rate_window_s']} s" in f.summary
    assert_myths_stated(f.remedy)
    # the default threshold does not call 30 TIME_WAIT a pile-up
    assert not [f for f in diagnose(snap, kernel, Thresholds(), host=False)
                if f.evidence.get("remote_port") == port]


def _connect_nonblocking(loop, port: int) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    loop.sockets.append(client)  # the lab RST-closes it at teardown
    client.setblocking(False)
    err = client.connect_ex(("127.0.0.1", port))
    assert err in (0, errno.EINPROGRESS)
    return client


def test_listener_that_never_accepts_overflows(loop):
    server = loop.listener(backlog=1)
    port = server.getsockname()[1]
    before = read_sample()
    # the queue holds backlog + 1 = 2; the kernel drops the next SYNs
    for _ in range(6):
        _connect_nonblocking(loop, port)

    def overflowed():
        snap = snapshot(port)
        listeners = states(snap, TcpState.LISTEN, port)
        after = read_sample()
        rising = after.counter("TcpExt.ListenOverflows") \
            > before.counter("TcpExt.ListenOverflows")
        return (listeners and listeners[0].recv_q == 2 and rising
                and len(states(snap, TcpState.SYN_SENT, port)) == 4 and (snap, after))
    snap, after = wait_for(overflowed, what="a full accept queue and dropped SYNs")
    t = replace(Thresholds(), syn_sent_warn=4)
    found = diagnose(snap, (before, after), t, host=False)
    [f] = [f for f in found if f.kind == "accept_queue" and f.evidence["local_port"] == port]
    assert f.severity is Severity.CRITICAL and f.evidence["full"] is True
    assert f.evidence["pid"] == ME and f.evidence["queued"] == 2
    assert f.evidence["backlog"] == 1
    assert f.evidence["listen_overflows_delta"] >= 4  # at least our 4 dropped SYNs
    assert f.evidence["interval_s"] is not None  # two samples: a delta, not a total
    # the clients whose SYNs were dropped: "unreachable peer" from their side
    [s] = [f for f in found if f.kind == "syn_sent" and f.evidence["remote_port"] == port]
    assert s.evidence["syn_sent"] == 4 and s.severity is Severity.WARNING
    assert s.evidence["processes"] == [{"value": f"{my_comm()}/{ME}", "count": 4}]


def test_receiver_that_stops_reading_stalls_both_ends(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    # small buffers: the receiver's window closes after a few KiB, not megabytes
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited on accept
    client = socket.socket()
    loop.sockets.append(client)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.connect(("127.0.0.1", port))
    conn, _ = server.accept()
    loop.sockets.append(conn)
    client.setblocking(False)
    chunk = b"x" * 1024

    def fill():
        try:
            while True:
                client.send(chunk)
        except BlockingIOError:
            pass
        snap = snapshot(port)
        sender = [s for s in states(snap, TcpState.ESTABLISHED) if s.local.port != port]
        return sender and sender[0].send_q > 0 and sender[0].tcp_info \
            and sender[0].tcp_info.snd_wnd == 0 and snap
    snap = wait_for(fill, what="the peer's window to close")
    t = replace(Thresholds(), stall_min_age=0)
    found = diagnose(snap, None, t, host=False)
    [recv] = [f for f in found if f.kind == "recv_stalled"
              and any(s.local.port == port for s in f.sockets)]
    assert recv.evidence["pid"] == ME and recv.evidence["recv_q_bytes"] > 0
    assert recv.evidence["local_ports"] == [{"value": port, "count": 1}]
    [send] = [f for f in found if f.kind == "send_stalled"
              and any(s.remote.port == port for s in f.sockets)]
    assert send.evidence["reason"] == "zero_window" and send.evidence["send_q_bytes"] > 0
    assert send.subject == f"{my_comm()}/{ME} -> 127.0.0.1:{port}"


def test_healthy_table_has_no_findings(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    for _ in range(5):
        client, conn = loop.connect(server)
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert client.recv(4) == b"pong"
    snap = wait_for(lambda: (s := snapshot(port))
                    and len(states(s, TcpState.ESTABLISHED)) == 10 and s,
                    what="10 established sockets")
    # host=False: machine-wide counters belong to everyone on this machine
    assert diagnose(snap, read_sample(pids=[ME]), Thresholds(), host=False) == []


def _owners_of(findings) -> list:
    """What a finding says about owners: its subject, its owner evidence, and every
    socket's holders, UNIX peer and container (the times and ages left out)."""
    keys = ("pid", "process", "pids", "processes", "client_processes", "service",
            "master_pid", "container", "fd_pid", "fds_total", "user", "uid")
    return [(f.kind, f.subject, f.severity, {k: f.evidence.get(k) for k in keys},
             [(s.cookie, s.state, None if s.process is None else s.process.pid,
               [p.pid for p in s.holders], s.container) for s in f.sockets])
            for f in findings]


@pytest.mark.parametrize("full_scan", [False, True], ids=["narrow-scan", "full-scan-child"])
def test_check_names_the_owners_of_what_it_finds_as_a_full_attribution(loop, monkeypatch,
                                                                        full_scan):
    """check names the owners of the sockets its verdicts depend on first (CLOSE_WAIT,
    listeners, ...) and those of the sockets its findings name afterwards (idle
    ESTABLISHED connections of a TIME_WAIT destination group): every holder of each,
    a forked child's too, and the service they form, exactly as when every socket of
    the table is named before judging. Both ways of scanning: the narrow scan a
    port-filtered check makes, and the full scan in a child an unfiltered one makes
    (its rows kept, the refs made for the named sockets only)."""
    import contextlib

    import sockstat.collect as collect_mod
    from sockstat.collect import DROPS, owners
    from sockstat.diagnose import tcp_info_reader
    from sockstat.observe import Judge, observe

    server = loop.listener()
    port = server.getsockname()[1]
    pairs = [loop.connect(server) for _ in range(6)]
    pairs[0][0].shutdown(socket.SHUT_WR)  # our accepted end sits in CLOSE_WAIT
    wait_for(lambda: states(snapshot(port), TcpState.CLOSE_WAIT, port), what="CLOSE_WAIT")
    scans = []
    if full_scan:  # as for an unfiltered check: the whole /proc, in a forked child
        def child_scan(query, processes, source, procfs):
            if not processes:
                return contextlib.nullcontext(None)
            scans.append(owners.BackgroundScan(procfs))
            return scans[-1]
        monkeypatch.setattr(collect_mod, "_owner_scan", child_scan)
    read_end, write_end = os.pipe()
    child = os.fork()  # holds every socket too: a second holder of each
    if child == 0:
        try:
            os.read(read_end, 1)
        finally:
            os._exit(0)
    try:
        # every client group is a port-usage finding: its idle ESTABLISHED sockets
        # are named, with their owners, only by that finding
        t = replace(Thresholds(), close_wait_warn=1, close_wait_min_age=0,
                    port_usage_warn=0, port_usage_crit=100)
        query = Query.build(ports=[port])
        seen = observe(query, interval=0, thresholds=t, host=False)
        narrowed = seen.findings
        # what check did before: every socket's owner named, then judged
        every = collect(query, processes=True, tcp_info=tcp_info_reader(), services=True,
                        memory=DROPS)
        full = Judge(t).judge(every, host=False).findings
    finally:
        os.write(write_end, b"x")
        os.waitpid(child, 0)
        os.close(read_end)
        os.close(write_end)
    kinds = {f.kind for f in narrowed}
    assert {"close_wait_leak", "time_wait_pileup"} <= kinds
    [pileup] = [f for f in narrowed if f.kind == "time_wait_pileup"]
    assert {s.state for s in pileup.sockets} >= {TcpState.ESTABLISHED}
    assert all(sorted(p.pid for p in s.holders) == sorted([ME, child])
               for s in pileup.sockets)
    assert pileup.evidence["processes"]
    assert _owners_of(narrowed) == _owners_of(full)
    # the services are grouped over every holder of the table, named or not
    assert seen.snapshot.services == every.services and len(every.services) == 2
    if full_scan:
        assert scans and all(scan.processes for scan in scans)  # the child's were read
