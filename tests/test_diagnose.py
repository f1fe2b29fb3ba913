"""Every detector on hand-built Sockets and kernel samples: below, at and above each
threshold, with the subject and evidence it reports. No I/O (the real-socket versions
of these pathologies are in test_diagnose_real.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import count

import pytest
from conftest import make_snapshot, make_socket

from sockstat.diagnose import (
    as_change,
    diagnose,
    exit_status,
    flagged_keys,
    quick_findings,
    relevant_counters,
    wanted_pids,
)
from sockstat.diagnose import report as rep
from sockstat.diagnose.findings import Scope, Severity
from sockstat.diagnose.thresholds import Thresholds
from sockstat.errors import UsageError
from sockstat.kernelmodel import KernelChange, KernelSample, ProcessLimits, Sysctls
from sockstat.model import (
    ProcessRef,
    Proto,
    Snapshot,
    Socket,
    TcpInfo,
    TcpState,
    Timer,
)
from sockstat.status import CheckStatus

_ports = count(40000)
_inodes = count(1000)
_fds = count(10)


def info(**kw) -> TcpInfo:
    base = dict(rtt_ms=0.1, rttvar_ms=0.05, snd_cwnd=10, snd_mss=65483, rcv_mss=65483,
                retransmits=0, total_retrans=0, unacked=0, lost=0, last_data_sent_ms=0,
                last_data_recv_ms=0, last_ack_recv_ms=0, snd_wnd=65535, rcv_wnd=65535)
    base.update(kw)
    return TcpInfo(**base)


def proc(pid=100, name="app", fd=None, via_listener=False) -> ProcessRef:
    return ProcessRef(pid=pid, name=name, fd=next(_fds) if fd is None else fd, user="u",
                      via_listener=via_listener)


def sock(state, local=None, remote=("10.0.0.5", 5432), *, process="default", inode=None,
         **kw) -> Socket:
    local = local or ("10.0.0.1", next(_ports))
    if process == "default":
        process = proc()
    if inode is None:
        inode = 0 if state in (TcpState.TIME_WAIT, TcpState.NEW_SYN_RECV) else next(_inodes)
    return make_socket(state, local, remote, inode=inode, process=process, **kw)


def snap(sockets, source="netlink") -> Snapshot:
    return make_snapshot(sockets, source=source)


def change(sysctls=None, before=None, after=None, sockstat=None, limits=None,
           seconds=1.0) -> KernelChange:
    sysctls = sysctls or Sysctls(port_range=(32768, 60999), tcp_tw_reuse=0,
                                 somaxconn=4096, tcp_syncookies=1, tcp_max_syn_backlog=2048,
                                 tcp_max_tw_buckets=1000, tcp_max_orphans=1000,
                                 tcp_fin_timeout=60)
    after_sample = KernelSample(taken_at=100.0 + seconds, counters=after or {},
                                sockstat=sockstat or {}, sysctls=sysctls,
                                limits=limits or {})
    before_sample = None if before is None else KernelSample(taken_at=100.0,
                                                             counters=before)
    return KernelChange(after=after_sample, before=before_sample)


def kinds(findings, kind):
    return [f for f in findings if f.kind == kind]


def assert_myths_stated(remedy: str) -> None:
    """The TIME_WAIT remedies state the two myths, in the words of sockstat.explain
    (the one home of these texts)."""
    from sockstat import explain

    stated = [m for m in explain.text("time-wait").myths
              if "tcp_fin_timeout" in m or "tcp_tw_recycle" in m]
    assert len(stated) == 2
    for myth in stated:
        assert myth in remedy


T = Thresholds()


# -- CLOSE_WAIT ---------------------------------------------------------------------------

def close_waits(n, age_ms=60_000, recv_q=1, process=None, remote=("10.0.0.5", 5432)):
    p = process or proc()
    return [sock(TcpState.CLOSE_WAIT, remote=remote, recv_q=recv_q,
                 process=replace(p, fd=next(_fds)),
                 tcp_info=None if age_ms is None else info(last_data_recv_ms=age_ms))
            for _ in range(n)]


def test_close_wait_below_threshold_is_quiet():
    assert not diagnose(snap(close_waits(T.close_wait_warn - 1)), change(), T)


def test_close_wait_at_warn_threshold():
    socks = close_waits(T.close_wait_warn, age_ms=3_723_000)
    socks[0].recv_q = 0  # this one read EOF but never closed
    [f] = diagnose(snap(socks), change(), T)
    assert f.kind == "close_wait_leak" and f.severity is Severity.WARNING
    assert f.subject == "app/100"
    ev = f.evidence
    assert ev["pid"] == 100 and ev["close_wait"] == T.close_wait_warn
    assert ev["oldest_age_s"] == 3723.0 and ev["fin_unread"] == T.close_wait_warn - 1
    assert ev["peers"] == [{"value": "10.0.0.5", "count": T.close_wait_warn}]
    assert ev["fds"] == sorted(s.process.fd for s in socks)
    assert "1h02m" in f.summary and "close()" in f.remedy and "10.0.0.5" in f.remedy
    assert f.socket_keys == {s.key for s in socks}


def test_close_wait_at_crit_threshold():
    [f] = diagnose(snap(close_waits(T.close_wait_crit)), change(), T)
    assert f.severity is Severity.CRITICAL


def test_close_wait_young_sockets_are_in_flight_not_leaks():
    young = close_waits(T.close_wait_warn, age_ms=int(T.close_wait_min_age * 1000) - 1)
    assert not diagnose(snap(young), change(), T)
    at_age = close_waits(T.close_wait_warn, age_ms=int(T.close_wait_min_age * 1000))
    assert kinds(diagnose(snap(at_age), change(), T), "close_wait_leak")


def test_close_wait_without_tcp_info_counts_every_socket():
    [f] = diagnose(snap(close_waits(T.close_wait_warn, age_ms=None)), None, T)
    assert f.evidence["oldest_age_s"] is None and f.evidence["ages_known"] == 0
    assert "oldest" not in f.summary


def test_close_wait_share_of_fd_limit_is_critical():
    limits = {100: ProcessLimits(pid=100, nofile_soft=20, nofile_hard=4096, open_fds=19)}
    [f] = diagnose(snap(close_waits(10)), change(limits=limits), T)
    assert f.severity is Severity.CRITICAL
    assert f.evidence["fd_limit_percent"] == 50.0 and f.evidence["nofile_soft_limit"] == 20
    assert f.evidence["open_fds"] == 19 and "fd limit" in f.explanation


def test_close_wait_grouped_per_process():
    a = close_waits(10, process=proc(pid=1, name="a"))
    b = close_waits(9, process=proc(pid=2, name="b"))
    unknown = [replace(s, process=None, uid=33) for s in close_waits(10)]
    found = diagnose(snap(a + b + unknown), None, T)
    assert sorted(f.subject for f in found) == ["a/1", "unknown process (uid 33)"]
    assert wanted_pids(snap(a + b)) == {1, 2}


# -- TIME_WAIT and ports ------------------------------------------------------------------

SMALL = Sysctls(port_range=(40000, 40099), tcp_tw_reuse=0, tcp_max_tw_buckets=100_000)


def client_tw(n, dest=("10.0.0.5", 5432), local_ip="10.0.0.1", held=0, first_port=40000):
    out = [sock(TcpState.TIME_WAIT, local=(local_ip, first_port + i), remote=dest,
                process=None) for i in range(n)]
    out += [sock(TcpState.ESTABLISHED, local=(local_ip, first_port + n + i), remote=dest)
            for i in range(held)]
    return out


def test_port_usage_below_warn():
    assert not diagnose(snap(client_tw(49)), change(sysctls=SMALL), T)


def test_port_usage_at_warn_counts_open_connections_too():
    found = diagnose(snap(client_tw(40, held=10)), change(sysctls=SMALL), T)
    [f] = kinds(found, "time_wait_pileup")
    assert f.severity is Severity.WARNING
    assert f.subject == "10.0.0.1 -> 10.0.0.5:5432"
    ev = f.evidence
    assert ev["time_wait"] == 40 and ev["open"] == 10 and ev["usable_ports"] == 100
    assert ev["percent_used"] == 50.0 and ev["percent_blocking"] == 50.0
    assert ev["closed_per_s"] == round(40 / 60, 1) and ev["max_new_per_s"] == round(100 / 60, 1)
    assert ev["states"] == {"ESTABLISHED": 10, "TIME_WAIT": 40}
    assert_myths_stated(f.remedy)


def test_port_usage_at_crit():
    [f] = kinds(diagnose(snap(client_tw(80)), change(sysctls=SMALL), T), "time_wait_pileup")
    assert f.severity is Severity.CRITICAL


def test_reserved_ports_shrink_the_usable_range():
    sysctls = replace(SMALL, reserved_ports=frozenset(range(40050, 40100)))
    # 25 of the 50 usable ports
    [f] = kinds(diagnose(snap(client_tw(25)), change(sysctls=sysctls), T),
                "time_wait_pileup")
    assert f.evidence["usable_ports"] == 50 and f.evidence["percent_used"] == 50.0


def test_tw_reuse_makes_time_wait_reusable_for_loopback_only():
    sysctls = replace(SMALL, tcp_tw_reuse=2)
    loop_dest = client_tw(90, dest=("127.0.0.1", 8080), local_ip="127.0.0.1")
    assert not diagnose(snap(loop_dest), change(sysctls=sysctls), T)
    remote_dest = client_tw(90)
    [f] = kinds(diagnose(snap(remote_dest), change(sysctls=sysctls), T), "time_wait_pileup")
    assert f.severity is Severity.CRITICAL and f.evidence["tw_reuse_applies"] is False


def timed_tw(ages_s, dest=("10.0.0.5", 5432), first_port=40000):
    """TIME_WAIT sockets that closed `age` seconds ago: the kernel reports the 60 s
    TIME_WAIT timer's remaining time."""
    return [sock(TcpState.TIME_WAIT, local=("10.0.0.1", first_port + i), remote=dest,
                 process=None, timer=Timer.TIMEWAIT, timer_ms=int((60 - age) * 1000))
            for i, age in enumerate(ages_s)]


def test_close_rate_counts_the_connections_closed_in_the_last_10_s():
    # a burst: 30 closed 2-9 s ago, 50 more half a minute ago; count / 60 said 1.3/s
    socks = timed_tw([2 + i * 7 / 30 for i in range(30)] + [35.0] * 50)
    [f] = kinds(diagnose(snap(socks), change(sysctls=SMALL), T), "time_wait_pileup")
    ev = f.evidence
    assert (ev["closed_per_s"], ev["rate_window_s"], ev["closed_in_window"]) == (3.0, 10, 30)
    assert ev["rate_measured"] is True
    assert "~3.0 connections closed/s over the last 10 s" in f.summary


def test_the_busier_window_is_reported_and_tw_reuse_promises_no_eaddrnotavail():
    # tcp_tw_reuse takes ports over after 1 s: only the last second is still all there
    reuse = replace(SMALL, tcp_tw_reuse=1)
    socks = timed_tw([0.5] * 40 + [5.0] * 30)
    kernel = change(sysctls=reuse, before={"TcpExt.TWRecycled": 100},
                    after={"TcpExt.TWRecycled": 150}, seconds=2.0)
    [f] = kinds(diagnose(snap(socks), kernel, replace(T, time_wait_warn=70)),
                "time_wait_pileup")
    ev = f.evidence
    assert ev["tw_recycled_per_s"] == 25.0 and "took over ~25.0 TIME_WAIT ports/s" in f.summary
    assert ev["tw_reuse_applies"] is True
    assert (ev["closed_per_s"], ev["rate_window_s"]) == (40.0, 1)
    assert ev["max_new_per_s"] is None
    assert "capped at" not in f.explanation
    assert "EADDRNOTAVAIL only when" in f.explanation


def test_without_timers_the_rate_is_count_over_60_s_and_says_so():
    [f] = kinds(diagnose(snap(client_tw(60)), change(sysctls=SMALL), T), "time_wait_pileup")
    assert f.evidence["rate_measured"] is False and f.evidence["rate_window_s"] == 60
    assert "at least ~1.0 connections closed/s" in f.summary


def test_server_close_rate_comes_from_timers_too():
    listener = sock(TcpState.LISTEN, local=("0.0.0.0", 8080), remote=("0.0.0.0", 0),
                    process=proc(pid=7, name="nginx"), send_q=511)
    tw = [sock(TcpState.TIME_WAIT, local=("10.0.0.1", 8080), remote=("10.1.0.1", 50000 + i),
               process=None, timer=Timer.TIMEWAIT, timer_ms=58_000 if i < 20 else 10_000)
          for i in range(30)]
    [f] = kinds(diagnose(snap([listener, *tw]), change(), replace(T, time_wait_warn=30)),
                "time_wait_pileup")
    assert f.evidence["closed_per_s"] == 2.0 and f.evidence["rate_window_s"] == 10
    assert "2.0 closed connections/s over the last 10 s" in f.explanation


def test_time_wait_count_threshold_with_lowered_threshold():
    t = replace(T, time_wait_warn=20)
    socks = client_tw(20, dest=("127.0.0.1", 8080), local_ip="127.0.0.1", first_port=50000)
    [f] = kinds(diagnose(snap(socks), change(), t), "time_wait_pileup")
    assert f.severity is Severity.WARNING and f.evidence["time_wait"] == 20
    assert not diagnose(snap(socks[:19]), change(), t)


def test_server_side_time_wait_attributed_to_listener():
    listener = sock(TcpState.LISTEN, local=("0.0.0.0", 8080), remote=("0.0.0.0", 0),
                    process=proc(pid=7, name="nginx"), send_q=511)
    tw = [sock(TcpState.TIME_WAIT, local=("10.0.0.1", 8080), remote=(f"10.1.0.{i % 9}",
                                                                      50000 + i),
               process=None) for i in range(30)]
    t = replace(T, time_wait_warn=30)
    [f] = kinds(diagnose(snap([listener, *tw]), change(), t), "time_wait_pileup")
    assert f.subject == "nginx/7 :8080"
    assert f.evidence["local_port"] == 8080 and f.evidence["pid"] == 7
    assert f.evidence["time_wait"] == 30 and f.evidence["listening"] is True
    assert "clients close first" in f.remedy.lower() or "Let clients close" in f.remedy
    assert not kinds(diagnose(snap([listener, *tw[:29]]), change(), t), "time_wait_pileup")


def test_ephemeral_ports_per_local_address():
    # 60 destinations x 1 connection: no destination is full, the address is
    socks = [sock(TcpState.ESTABLISHED, local=("10.0.0.1", 40000 + i),
                  remote=(f"10.9.0.{i}", 443)) for i in range(60)]
    [f] = diagnose(snap(socks), change(sysctls=SMALL), T)
    assert f.kind == "ephemeral_ports" and f.subject == "10.0.0.1"
    assert f.evidence["ports_in_use"] == 60 and f.evidence["percent_used"] == 60.0


def test_ephemeral_ports_count_each_blocking_port_once_in_table_order():
    """Per address, each port counts once (its first socket in the table is the one
    named), TIME_WAIT ports that tcp_tw_reuse lets new connections take over do not
    count, and an address with fewer client sockets than the share is not a finding."""
    reuse = replace(SMALL, tcp_tw_reuse=1)
    # 50 ports, each held by two sockets (two destinations): 50% of 100
    first = [sock(TcpState.ESTABLISHED, local=("10.0.0.1", 40000 + i),
                  remote=(f"10.9.0.{i}", 443)) for i in range(50)]
    second = [sock(TcpState.ESTABLISHED, local=("10.0.0.1", 40000 + i),
                   remote=(f"10.9.1.{i}", 443)) for i in range(50)]
    # 30 more ports in TIME_WAIT: taken over by new connections under tcp_tw_reuse=1
    tw = [sock(TcpState.TIME_WAIT, local=("10.0.0.1", 40050 + i), remote=("10.9.2.1", 443),
               process=None) for i in range(30)]
    table = [s for pair in zip(first, second, strict=True) for s in pair] + tw
    [f] = kinds(diagnose(snap(table), change(sysctls=reuse), T), "ephemeral_ports")
    assert f.evidence["ports_in_use"] == 50 and f.evidence["destinations"] == 50
    assert f.sockets == tuple(first)
    [f] = kinds(diagnose(snap(table), change(sysctls=SMALL), T), "ephemeral_ports")
    assert f.evidence["ports_in_use"] == 80
    # 49 client sockets on the address: below 50% whatever their ports
    assert not kinds(diagnose(snap(first[:49]), change(sysctls=SMALL), T), "ephemeral_ports")


def test_time_wait_buckets_host_finding():
    sysctls = replace(SMALL, tcp_max_tw_buckets=1000)
    [f] = diagnose(snap([]), change(sysctls=sysctls, sockstat={"TCP.tw": 500}), T)
    assert f.kind == "time_wait_buckets" and f.scope is Scope.HOST
    assert f.severity is Severity.WARNING and f.evidence["percent_used"] == 50.0
    assert not diagnose(snap([]), change(sysctls=sysctls, sockstat={"TCP.tw": 499}), T)
    [f] = diagnose(snap([]), change(sysctls=sysctls, sockstat={"TCP.tw": 900}), T)
    assert f.severity is Severity.CRITICAL
    # the limit being hit right now, whatever the share
    k = change(sysctls=sysctls, sockstat={"TCP.tw": 10},
               before={"TcpExt.TCPTimeWaitOverflow": 3},
               after={"TcpExt.TCPTimeWaitOverflow": 8})
    [f] = diagnose(snap([]), k, T)
    assert f.severity is Severity.CRITICAL and f.evidence["overflow_delta"] == 5
    assert not diagnose(snap([]), k, T, host=False)


# -- accept queue ------------------------------------------------------------------------

def listener(queued, backlog, port=8080, source_pid=9):
    return sock(TcpState.LISTEN, local=("127.0.0.1", port), remote=("0.0.0.0", 0),
                recv_q=queued, send_q=backlog, process=proc(pid=source_pid, name="srv"))


def test_accept_queue_levels():
    assert not diagnose(snap([listener(7, 10)]), change(), T)
    [f] = diagnose(snap([listener(8, 10)]), change(), T)
    assert f.kind == "accept_queue" and f.severity is Severity.WARNING
    assert f.evidence["percent"] == 80.0 and f.evidence["full"] is False
    # the kernel's queue holds backlog + 1 before it is full
    [f] = diagnose(snap([listener(10, 10)]), change(), T)
    assert f.severity is Severity.WARNING
    [f] = diagnose(snap([listener(11, 10)]), change(), T)
    assert f.severity is Severity.CRITICAL and f.evidence["full"] is True
    assert f.subject == "srv/9 127.0.0.1:8080" and f.evidence["local_port"] == 8080


def test_accept_queue_shows_counter_deltas_and_somaxconn_cap():
    k = change(sysctls=Sysctls(somaxconn=10),
               before={"TcpExt.ListenOverflows": 100, "TcpExt.ListenDrops": 100},
               after={"TcpExt.ListenOverflows": 130, "TcpExt.ListenDrops": 131})
    [f] = diagnose(snap([listener(11, 10)]), k, T)
    assert f.evidence["listen_overflows_delta"] == 30
    assert f.evidence["listen_drops_delta"] == 31
    assert f.evidence["backlog_is_somaxconn"] is True and "somaxconn" in f.remedy
    assert "ListenOverflows +30" in f.summary


def test_accept_queue_backlog_unknown_from_proc():
    # /proc/net/tcp shows 0 as a listener's Send-Q: no backlog, no judgement
    assert not diagnose(snap([listener(5, 0)], source="proc"), change(), T)
    # netlink's 0 is real: listen(fd, 0) queues one connection
    [f] = diagnose(snap([listener(1, 0)]), change(), T)
    assert f.severity is Severity.CRITICAL


def test_listen_overflows_without_a_full_queue_is_a_host_finding():
    k = change(before={"TcpExt.ListenOverflows": 1}, after={"TcpExt.ListenOverflows": 4})
    [f] = diagnose(snap([listener(0, 128)]), k, T)
    assert f.kind == "listen_overflows" and f.scope is Scope.HOST
    assert f.evidence["listen_overflows_delta"] == 3
    assert not diagnose(snap([listener(0, 128)]), k, T, host=False)
    # one sample: totals since boot say nothing about now
    one = change(after={"TcpExt.ListenOverflows": 4})
    assert not diagnose(snap([listener(0, 128)]), one, T)


# -- SYN_RECV / SYN_SENT ---------------------------------------------------------------

def test_syn_recv_per_listener():
    lst = listener(0, 128, port=443)
    half = [sock(state, local=("127.0.0.1", 443), remote=(f"10.{i % 250}.0.1", 1000 + i),
                 process=None)
            for i, state in zip(range(T.syn_recv_warn), [TcpState.NEW_SYN_RECV,
                                                         TcpState.SYN_RECV] * 1000,
                                strict=False)]
    assert not diagnose(snap([lst, *half[:-1]]), change(), T)
    [f] = diagnose(snap([lst, *half]), change(), T)
    assert f.kind == "syn_flood" and f.severity is Severity.WARNING
    assert f.subject == "srv/9 127.0.0.1:443"
    assert f.evidence["syn_recv"] == T.syn_recv_warn and f.evidence["tcp_syncookies"] == 1
    assert f.evidence["distinct_sources"] == 100
    crit = half * (T.syn_recv_crit // T.syn_recv_warn)
    [f] = diagnose(snap([lst, *crit]), change(), T)
    assert f.severity is Severity.CRITICAL


def test_syn_sent_per_destination():
    socks = [sock(TcpState.SYN_SENT, remote=("192.0.2.1", 80), retransmits=2)
             for _ in range(T.syn_sent_warn)]
    k = change(before={"TcpExt.TCPSynRetrans": 0}, after={"TcpExt.TCPSynRetrans": 40})
    [f] = diagnose(snap(socks), k, T)
    assert f.kind == "syn_sent" and f.subject == "192.0.2.1:80"
    assert f.severity is Severity.WARNING and f.evidence["max_syn_retransmits"] == 2
    assert f.evidence["TCPSynRetrans_delta"] == 40 and "app/100" in f.summary
    assert not diagnose(snap(socks[1:]), k, T)


# -- orphans and FIN_WAIT2 ------------------------------------------------------------

def test_orphans_against_tcp_max_orphans():
    assert not diagnose(snap([]), change(sockstat={"TCP.orphan": 499}), T)
    [f] = diagnose(snap([]), change(sockstat={"TCP.orphan": 500}), T)
    assert f.kind == "orphans" and f.severity is Severity.WARNING and f.subject == "host"
    [f] = diagnose(snap([]), change(sockstat={"TCP.orphan": 800}), T)
    assert f.severity is Severity.CRITICAL
    assert not diagnose(snap([]), change(sockstat={"TCP.orphan": 800}), T, host=False)


def test_fin_wait2_orphaned_and_owned():
    dest = ("10.0.0.8", 9000)
    orphaned = [sock(TcpState.FIN_WAIT2, remote=dest, process=None, inode=0,
                     timer=Timer.TIMEWAIT) for _ in range(60)]
    owned = [sock(TcpState.FIN_WAIT2, remote=dest) for _ in range(40)]
    [f] = diagnose(snap(orphaned + owned), change(), T)
    assert f.kind == "fin_wait2" and f.subject == "10.0.0.8:9000"
    assert f.evidence["orphaned"] == 60 and f.evidence["owned"] == 40
    assert f.evidence["tcp_fin_timeout"] == 60
    assert not diagnose(snap(orphaned + owned[1:]), change(), T)


# -- stalls ------------------------------------------------------------------------------

def test_zero_window_send_stall_levels():
    def stuck(age_ms):
        return sock(TcpState.ESTABLISHED, remote=("127.0.0.1", 9999), send_q=4096,
                    timer=Timer.PROBE, tcp_info=info(snd_wnd=0, last_data_sent_ms=age_ms))
    assert not diagnose(snap([stuck(int(T.stall_min_age * 1000) - 1)]), None, T)
    [f] = diagnose(snap([stuck(int(T.stall_min_age * 1000))]), None, T)
    assert f.kind == "send_stalled" and f.severity is Severity.WARNING
    assert f.evidence["reason"] == "zero_window" and f.evidence["send_q_bytes"] == 4096
    assert f.subject == "app/100 -> 127.0.0.1:9999"
    [f] = diagnose(snap([stuck(int(T.stall_crit_age * 1000))]), None, T)
    assert f.severity is Severity.CRITICAL


def test_send_stall_without_tcp_info_from_timers():
    probe = sock(TcpState.ESTABLISHED, send_q=10, timer=Timer.PROBE)
    retrans = sock(TcpState.ESTABLISHED, send_q=10, timer=Timer.ON,
                   retransmits=T.stall_retrans, remote=("10.0.0.9", 80))
    few = sock(TcpState.ESTABLISHED, send_q=10, timer=Timer.ON,
               retransmits=T.stall_retrans - 1)
    found = diagnose(snap([probe, retrans, few]), None, T)
    assert sorted(f.evidence["reason"] for f in found) == ["retransmitting", "zero_window"]
    assert few.key not in flagged_keys(found)


def test_recv_stall():
    def unread(age_ms, recv_q=1000):
        return sock(TcpState.ESTABLISHED, recv_q=recv_q,
                    tcp_info=info(last_data_recv_ms=age_ms, rcv_wnd=0))
    assert not diagnose(snap([unread(int(T.stall_min_age * 1000) - 1)]), None, T)
    [f] = diagnose(snap([unread(int(T.stall_min_age * 1000))]), None, T)
    assert f.kind == "recv_stalled" and f.subject == "app/100"
    assert f.evidence["recv_q_bytes"] == 1000 and f.evidence["our_window_zero"] == 1
    # data still arriving is a slow reader, not a stalled one; no data is no stall
    assert not diagnose(snap([unread(0)]), None, T)
    assert not diagnose(snap([unread(60_000, recv_q=0)]), None, T)


def test_recv_stall_without_tcp_info_needs_a_full_buffer():
    small = sock(TcpState.ESTABLISHED, recv_q=T.stall_recv_bytes - 1)
    big = sock(TcpState.ESTABLISHED, recv_q=T.stall_recv_bytes)
    [f] = diagnose(snap([small, big]), None, T)
    assert f.socket_keys == {big.key}


def test_listen_and_udp_queues_are_not_stalls():
    lst = listener(5, 128)
    udp = replace(sock(TcpState.ESTABLISHED, recv_q=5 << 20), proto=Proto.UDP)
    assert not kinds(diagnose(snap([lst, udp]), None, T), "recv_stalled")


# -- the engine -------------------------------------------------------------------------

def test_findings_sorted_most_severe_first_and_exit_status():
    warn_cw = close_waits(10)
    crit_queue = [listener(11, 10)]
    found = diagnose(snap(warn_cw + crit_queue), change(), T)
    assert [f.severity for f in found] == [Severity.CRITICAL, Severity.WARNING]
    assert exit_status(found) is CheckStatus.CRITICAL
    assert exit_status(found[1:]) is CheckStatus.WARNING
    assert exit_status([]) is CheckStatus.OK
    assert flagged_keys(found) == {s.key for s in warn_cw + crit_queue}
    assert quick_findings(snap(warn_cw)) and not quick_findings(snap([]))


def test_healthy_table_has_no_findings():
    lst = listener(0, 128)
    est = [sock(TcpState.ESTABLISHED, tcp_info=info(last_data_recv_ms=50_000))
           for _ in range(50)]
    tw = client_tw(10)
    assert diagnose(snap([lst, *est, *tw]), change(sockstat={"TCP.tw": 10,
                                                             "TCP.orphan": 0}), T) == []


def test_as_change_accepts_samples():
    a, b = KernelSample(taken_at=1.0), KernelSample(taken_at=3.0)
    assert as_change(None) is None and as_change([]) is None
    assert as_change(b).before is None
    assert as_change((a, b)).seconds == 2.0
    k = KernelChange(after=b)
    assert as_change(k) is k
    assert "TcpExt.ListenOverflows" in relevant_counters()


def test_thresholds_validation():
    assert Thresholds().validate() == Thresholds()
    with pytest.raises(UsageError, match="--close-wait-warn .* is above --close-wait-crit"):
        replace(T, close_wait_warn=200).validate()
    with pytest.raises(UsageError, match="--queue-warn is a percentage"):
        replace(T, queue_warn=120).validate()
    with pytest.raises(UsageError, match="--stall-min-age must not be negative"):
        replace(T, stall_min_age=-1).validate()


def test_report_document_is_stable_json():
    found = diagnose(snap(close_waits(12) + [listener(11, 10)]), change(), T)
    doc = rep.report_dict(found, sockets=13, source="netlink", kernel=change(),
                          thresholds=T, host=True, socket_limit=5)
    doc = json.loads(json.dumps(doc))
    assert doc["verdict"] == "critical" and doc["exit_status"] == 2
    assert doc["summary"].startswith("CRITICAL: 2 problems (1 critical, 1 warning) in 13")
    f = doc["findings"][1]
    assert set(f) >= {"kind", "severity", "subject", "summary", "evidence", "explanation",
                      "remedy", "sockets"}
    assert len(f["sockets"]) == 5 and f["sockets_total"] == 12
    assert f["sockets"][0]["state"] == "CLOSE_WAIT"
    assert doc["kernel"]["sysctls"]["usable_ephemeral_ports"] == 28232
    assert rep.verdict_line([], 7) == "OK: no problems found in 7 sockets"
    block = rep.plain_block(found[0])
    assert block[0] == "[CRITICAL] accept_queue: srv/9 127.0.0.1:8080"
    assert "queued=11" in block[2] and block[3].startswith("  why: ")


def test_every_kind_reported_is_declared():
    from sockstat.diagnose import finding_kinds

    sysctls = replace(SMALL, tcp_max_tw_buckets=100, tcp_max_orphans=100)
    k = change(sysctls=sysctls, sockstat={"TCP.tw": 100, "TCP.orphan": 100},
               before={"TcpExt.ListenOverflows": 0}, after={"TcpExt.ListenOverflows": 9})
    t = replace(T, syn_sent_warn=1, syn_recv_warn=1, fin_wait2_warn=1, stall_min_age=0)
    socks = [*close_waits(10), *client_tw(80), listener(0, 5, port=81),
             sock(TcpState.SYN_SENT), sock(TcpState.NEW_SYN_RECV, local=("10.0.0.1", 81)),
             sock(TcpState.FIN_WAIT2), sock(TcpState.ESTABLISHED, send_q=5, timer=Timer.PROBE),
             sock(TcpState.ESTABLISHED, recv_q=5, tcp_info=info(last_data_recv_ms=5))]
    found = diagnose(snap(socks), k, t)
    assert {f.kind for f in found} <= set(finding_kinds())
    assert len({f.kind for f in found}) >= 9


def test_state_texts_are_quoted_from_explain_not_copied():
    from sockstat import explain

    [f] = diagnose(snap(close_waits(10)), None, T)
    e = explain.text("close-wait")
    assert f.explanation.startswith(e.title)
    assert e.how_long in f.explanation
    assert "`sockstat explain close-wait`" in f.explanation
    listener_full = diagnose(snap([listener(11, 10)]), change(), T)[0]
    [somaxconn_myth] = [m for m in explain.text("backlog").myths if "somaxconn" in m]
    assert somaxconn_myth in listener_full.remedy


def test_the_detectors_share_one_index_of_the_table_in_table_order():
    """diagnose() indexes the table once for every detector; each list keeps the
    table's order (findings come out as from a walk of the whole table), and a
    changed table, or a detector run on its own, gets a fresh index."""
    from sockstat.diagnose.index import index, indexed

    table = [sock(TcpState.CLOSE_WAIT), sock(TcpState.FIN_WAIT2), sock(TcpState.LISTEN),
             sock(TcpState.CLOSE_WAIT, recv_q=5), sock(TcpState.ESTABLISHED)]
    s = snap(table)
    with indexed(s) as shared:
        assert index(s) is shared
        assert shared.state(TcpState.CLOSE_WAIT) == [table[0], table[3]]
        assert shared.states((TcpState.CLOSE_WAIT, TcpState.FIN_WAIT2)) == table[:2] + [table[3]]
        assert shared.states({TcpState.SYN_SENT}) == []
        assert shared.queued == [table[3]]
        s.sockets.append(sock(TcpState.CLOSE_WAIT))
        assert index(s) is not shared and len(index(s).state(TcpState.CLOSE_WAIT)) == 3
    assert index(s) is not shared
