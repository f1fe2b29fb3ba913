"""Every source reports exactly the sockets the test made, with the right state, queues
and owner, checked against /proc/net/tcp read directly and against ss."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
from conftest import kernel_rows, my_comm, wait_for

from sockstat import Query, TcpState, collect
from sockstat.model import Family, Proto

SOURCES = ["netlink", "proc", "psutil"]


def _ours(snap, ports):
    return [s for s in snap.sockets
            if s.local.port in ports or s.remote.port in ports]


def _states(sockets):
    out: dict[str, int] = {}
    for s in sockets:
        out[s.state.label] = out.get(s.state.label, 0) + 1
    return out


@pytest.fixture
def table(loop):
    """A listener with: 2 established pairs (one with 1000 unread bytes at the client),
    1 connection waiting in the accept queue, 1 CLOSE_WAIT/FIN_WAIT2 pair,
    and 1 server-side TIME_WAIT."""
    server = loop.listener(backlog=8)
    port = server.getsockname()[1]
    c1, s1 = loop.connect(server)
    c2, s2 = loop.connect(server)
    s1.sendall(b"x" * 1000)
    # half-close: client FIN_WAIT2, server CLOSE_WAIT (the server never closes)
    c3, s3 = loop.connect(server)
    c3.shutdown(socket.SHUT_WR)
    # server closes first -> the TIME_WAIT is on the server's (listener's) port
    c4, s4 = loop.connect(server)
    s4.close()
    wait_for(lambda: any(r["state"] == "CLOSE_WAIT" and r["local"][1] == c4.getsockname()[1]
                         for r in kernel_rows({port})), what="client CLOSE_WAIT")
    c4.close()
    # waiting in the accept queue, never accepted
    c5, _ = loop.connect(server, accept=False)
    expected = {"LISTEN": 1, "ESTABLISHED": 2 * 2 + 1 + 1, "FIN_WAIT2": 1,
                "CLOSE_WAIT": 1, "TIME_WAIT": 1}
    wait_for(lambda: _kernel_states(port) == expected, what=f"kernel states {expected}")
    return {"port": port, "expected": expected, "c1": c1, "c3": c3, "s3": s3, "c4port": 0}


def _kernel_states(port):
    out: dict[str, int] = {}
    for r in kernel_rows({port}):
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_reports_exactly_the_test_sockets(table, source):
    port = table["port"]
    snap = collect(Query.build(ports=[port]), source=source, processes=True)
    assert snap.source == source
    ours = _ours(snap, {port})
    expected = dict(table["expected"])
    assert _states(ours) == expected
    me, comm = os.getpid(), my_comm()
    for sock in ours:
        assert sock.process is not None, sock
        assert sock.process.pid == me and sock.process.name == comm


@pytest.mark.parametrize("source", ["netlink", "proc"])
def test_queues_and_inodes_match_the_kernel(table, source):
    port = table["port"]
    snap = collect(Query.build(ports=[port]), source=source)
    truth = {(r["local"], r["remote"]): r for r in kernel_rows({port})}
    ours = _ours(snap, {port})
    assert len(ours) == len(truth)
    for sock in ours:
        row = truth[((sock.local.address, sock.local.port),
                     (sock.remote.address, sock.remote.port))]
        assert sock.state.name == row["state"]
        assert sock.inode == row["inode"]
        assert sock.recv_q == row["recv_q"]
        if sock.state is not TcpState.LISTEN:
            assert sock.send_q == row["send_q"]
    c1 = table["c1"].getsockname()
    unread = [s for s in ours if (s.local.address, s.local.port) == c1]
    assert unread[0].recv_q == 1000
    listener = [s for s in ours if s.state is TcpState.LISTEN][0]
    assert listener.recv_q == 1  # one connection waiting to be accepted
    if source == "netlink":
        assert listener.send_q == 8  # the backlog: netlink only, /proc does not show it
        assert all(s.cookie for s in ours)


def test_time_wait_is_attributed_through_the_listener(table):
    port = table["port"]
    snap = collect(Query.build(ports=[port], states=["time-wait"]), processes=True)
    tw = _ours(snap, {port})
    assert len(tw) == 1 and tw[0].state is TcpState.TIME_WAIT
    assert tw[0].inode == 0
    assert tw[0].process is not None and tw[0].process.via_listener
    assert tw[0].process.pid == os.getpid()
    assert tw[0].timer_ms > 0


def test_state_filter_is_pushed_into_the_kernel(table):
    port = table["port"]
    snap = collect(Query.build(states=["close-wait", "FIN_WAIT2"], ports=[port]))
    assert _states(_ours(snap, {port})) == {"CLOSE_WAIT": 1, "FIN_WAIT2": 1}
    # state groups as ss names them
    snap = collect(Query.build(states=["connected"], ports=[port]))
    assert "LISTEN" not in _states(_ours(snap, {port}))
    snap = collect(Query.build(states=["bucket"], ports=[port]))
    assert _states(_ours(snap, {port})) == {"TIME_WAIT": 1}


def test_tcp_info_is_filled_on_request(table):
    port = table["port"]
    snap = collect(Query.build(ports=[port], states=["established"]), tcp_info=True)
    info = [s.tcp_info for s in _ours(snap, {port})]
    assert info and all(i is not None for i in info)
    assert all(i.snd_mss > 0 and i.snd_cwnd > 0 for i in info)


def test_tcp_info_for_a_set_of_states_is_asked_in_the_dumps_they_cover(table, monkeypatch):
    """tcp_info for a set of states: a dump whose states are all in the set asks for it
    itself (no second dump of the same states to merge by cookie); a dump only partly
    in it gets those states' tcp_info from one more, state-filtered dump; a dump with
    none of them asks for none (the listeners' dump of memory=DROPS)."""
    from conftest import TcpDumpRequests

    from sockstat.collect import DROPS

    port = table["port"]
    requests = TcpDumpRequests()
    requests.recording(monkeypatch)
    snap = collect(Query.build(ports=[port], states=["close-wait"]),
                   tcp_info=frozenset({TcpState.CLOSE_WAIT}))
    [closing] = _ours(snap, {port})
    assert closing.tcp_info is not None and closing.tcp_info.snd_mss > 0
    # one dump (a request per family where a kernel lacks the both-families one)
    dumps = len(requests)
    assert requests.with_info(TcpState.CLOSE_WAIT) == [True] * dumps
    requests.clear()
    snap = collect(Query.build(ports=[port], states=["close-wait", "established"]),
                   tcp_info=frozenset({TcpState.CLOSE_WAIT}))
    assert requests.with_info(TcpState.ESTABLISHED) == [False] * dumps  # then CLOSE_WAIT's:
    assert requests.with_info(TcpState.CLOSE_WAIT) == [False] * dumps + [True] * dumps
    assert [s.state for s in _ours(snap, {port}) if s.tcp_info is not None] \
        == [TcpState.CLOSE_WAIT]
    requests.clear()
    everything_but_listeners = frozenset(TcpState) - {TcpState.LISTEN}
    snap = collect(Query.build(ports=[port], tcp=True), tcp_info=everything_but_listeners,
                   memory=DROPS)
    assert requests.with_info(TcpState.LISTEN) == [False] * dumps  # its own dump (DROPS)
    assert requests.with_info(TcpState.ESTABLISHED) == [True] * dumps  # and no second
    ours = _ours(snap, {port})
    assert _states(ours) == table["expected"]
    assert all((s.tcp_info is None) == (s.state in (TcpState.LISTEN, TcpState.TIME_WAIT))
               for s in ours)


def test_a_snapshot_is_stamped_after_its_owner_scan_has_forked():
    """Snapshot.taken_at is when the table is read: after the owner scan's child is
    forked (and its module imported), not before. Rates between two snapshots (the
    slow-connection detector's, `why`'s interval_s) divide by the stamps' difference,
    and on a loaded machine the fork alone can take a good part of a second."""
    from conftest import python_says

    code = """
import sys, time
forks = []
sys.addaudithook(lambda event, args: event == "os.fork" and forks.append(time.time()))
from sockstat import Query, collect
snap = collect(Query.build(tcp=True), processes=True)  # broad: the scan forks
print(len(forks), snap.taken_at >= forks[0])
"""
    assert python_says(code) == "1 True"


def test_pid_and_process_filters(table):
    port = table["port"]
    mine = collect(Query.build(ports=[port], pids=[os.getpid()]))
    assert _states(_ours(mine, {port})).get("ESTABLISHED") == 6
    assert "TIME_WAIT" in _states(_ours(mine, {port}))  # via the listener
    named = collect(Query.build(ports=[port], process=my_comm().upper()[:4]))
    assert len(_ours(named, {port})) == len(_ours(mine, {port}))
    nobody = collect(Query.build(ports=[port], process="no-such-process-name"))
    assert nobody.sockets == []


def test_ipv6_and_a_dual_stack_listener(loop):
    v6 = loop.listener("::1", family=socket.AF_INET6)
    c, s = loop.connect(v6)
    # an AF_INET6 socket serving IPv4: bound to the v4-mapped loopback address
    dual = loop.listener("::ffff:127.0.0.1", family=socket.AF_INET6, v6only=False)
    dual_port = dual.getsockname()[1]
    c4 = loop._track(socket.create_connection(("127.0.0.1", dual_port)))
    loop._remember(c4)
    d, _ = dual.accept()
    loop._track(d)
    loop._remember(d)
    ports = {v6.getsockname()[1], dual_port}
    for source in SOURCES:
        snap = collect(Query.build(ports=sorted(ports)), source=source)
        ours = _ours(snap, ports)
        v6_rows = [x for x in ours if x.local.address == "::1"]
        assert len(v6_rows) == 3, (source, ours)  # listener + both ends
        assert all(x.family is Family.INET6 for x in v6_rows)
        mapped = [x for x in ours if x.local.port == dual_port or x.remote.port == dual_port]
        # v4-mapped addresses are shown as IPv4, whatever table they sit in
        assert {x.local.address for x in mapped} == {"127.0.0.1"}
        assert len(mapped) == 3
    only4 = collect(Query.build(ports=sorted(ports), ipv4=True))
    assert all(x.family is Family.INET for x in only4.sockets)


def test_udp_sockets(loop):
    a = loop.udp()
    b = loop.udp(connect_to=a.getsockname())
    ports = {a.getsockname()[1], b.getsockname()[1]}
    for source in SOURCES:
        snap = collect(Query.build(ports=sorted(ports), udp=True), source=source)
        ours = _ours(snap, ports)
        assert {(x.proto, x.state) for x in ours} == {(Proto.UDP, TcpState.CLOSE),
                                                       (Proto.UDP, TcpState.ESTABLISHED)}


def test_address_filters(table):
    port = table["port"]
    snap = collect(Query.build(ports=[port], remote=["127.0.0.0/8"]))
    assert snap.sockets and all(s.remote.address.startswith("127.") for s in snap.sockets)
    assert collect(Query.build(ports=[port], local=["10.0.0.0/8"])).sockets == []


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_per_state_counts_equal_ss(table):
    port = table["port"]
    out = subprocess.run(["ss", "-Htan", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    ss_counts: dict[str, int] = {}
    for line in out.splitlines():
        state = line.split()[0].replace("-", "_").replace("ESTAB", "ESTABLISHED")
        state = {"SYN_RECV": "SYN_RECV", "FIN_WAIT_1": "FIN_WAIT1",
                 "FIN_WAIT_2": "FIN_WAIT2"}.get(state, state)
        ss_counts[state] = ss_counts.get(state, 0) + 1
    snap = collect(Query.build(ports=[port], tcp=True))
    assert _states(snap.sockets) == ss_counts


def test_port_filters_run_inside_the_kernel(loop):
    """The sock_diag filter program alone (no user-space port check) returns exactly the
    sockets on the asked ports: either end, local only, remote only, and AND of both."""
    from sockstat.collect import kernel_port_program, netlink

    a = loop.listener()
    b = loop.listener()
    ca, sa = loop.connect(a)
    cb, sb = loop.connect(b)
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    mine = {pa, pb, ca.getsockname()[1], cb.getsockname()[1]}

    def kernel_only(**filters):
        program = kernel_port_program(Query.build(**filters))
        assert program is not None
        rows = netlink.dump(Family.INET, Proto.TCP, [TcpState.LISTEN, TcpState.ESTABLISHED],
                            bytecode=program)
        return {(s.local.port, s.remote.port) for s in rows}

    assert kernel_only(ports=[pa]) == {(pa, 0), (pa, ca.getsockname()[1]),
                                       (ca.getsockname()[1], pa)}
    assert kernel_only(sports=[pa, pb]) == {(pa, 0), (pb, 0), (pa, ca.getsockname()[1]),
                                            (pb, cb.getsockname()[1])}
    assert kernel_only(dports=[pb]) == {(cb.getsockname()[1], pb)}
    assert kernel_only(sports=[pa], dports=[ca.getsockname()[1]]) == \
        {(pa, ca.getsockname()[1])}
    assert all(lp in mine or rp in mine for lp, rp in kernel_only(ports=[pa, pb]))
    # ranges: one program test per port, up to a limit; beyond it, user space filters
    assert kernel_port_program(Query.build(ports=["1-65535"])) is None
    snap = collect(Query.build(ports=[f"{min(pa, pb)}-{max(pa, pb)}"]), source="netlink")
    assert {(pa, 0), (pb, 0)} <= {(s.local.port, s.remote.port) for s in snap.sockets}


def test_background_scan_names_the_caller_not_its_forked_child(table):
    """The full /proc scan that runs in a forked child alongside the table read gives
    the same owners as a plain scan, never the child (which holds copies of our fds)."""
    import threading

    from sockstat.collect import owners

    port = table["port"]
    mine = {s.inode for s in collect(Query.build(ports=[port])).sockets if s.inode}
    plain = owners.scan("/proc", mine)
    with owners.BackgroundScan() as background:
        forked = background.result(mine)
    for inode in mine:
        assert forked.by_inode[inode].pid == plain.by_inode[inode].pid == os.getpid()
    if threading.active_count() == 1:  # it really forked: and nothing is left behind
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)


def test_background_scan_left_early_kills_its_child():
    from sockstat.collect import owners

    with pytest.raises(RuntimeError), owners.BackgroundScan() as background:
        child = background._pid
        raise RuntimeError("the table read failed")
    if child is not None:
        with pytest.raises(ChildProcessError):
            os.waitpid(child, os.WNOHANG)


def test_a_broad_listing_attributes_every_socket_the_same_way(table):
    """collect() with no port filter takes the background-scan path; its owners equal
    the narrow path's for the test's sockets."""
    port = table["port"]
    broad = {(s.local, s.remote): s.process for s in collect(processes=True).sockets
             if s.local.port == port or s.remote.port == port}
    narrow = {(s.local, s.remote): s.process
              for s in collect(Query.build(ports=[port]), processes=True).sockets}
    assert broad == narrow and all(p is not None for p in narrow.values())


def test_counts_without_rows_equal_counts_of_the_rows(table):
    """summary --no-processes counts straight from the dump buffers (collect.count): the
    same numbers as counting the Sockets collect() builds, on a real table."""
    from sockstat.collect import count
    from sockstat.summarize import summarize, tally_sockets

    port = table["port"]
    for query in (Query.build(ports=[port]), Query.build(ports=[port], tcp=True),
                  Query.build(ports=[port], states=["established", "listen"])):
        snap = collect(query)
        tally = count(query)
        assert tally is not None
        rows = tally_sockets(snap.sockets)
        assert (tally.total, tally.by_state, tally.local_ports, tally.remote_hosts) == \
            (rows.total, rows.by_state, rows.local_ports, rows.remote_hosts)
        assert summarize(snap, tally=tally).to_dict() == summarize(snap).to_dict()
    # filters the kernel cannot apply need the rows
    assert count(Query.build(ports=[port], local=["127.0.0.0/8"])) is None


@pytest.mark.parametrize("lookups", [512, 0], ids=["looked-up", "dumped"])
def test_tcp_info_only_where_one_sample_of_diagnosis_reads_it(table, lookups, monkeypatch):
    """check --interval 0 asks tcp_info for CLOSE_WAIT and for sockets with data
    queued, not for the idle rest of the table: by exact look-ups when they are few,
    by state-filtered dumps when many (lookups=0 forces those); either way what it
    gets is what a full tcp_info dump gets for those sockets."""
    import sockstat.collect as collect_mod
    from sockstat.diagnose import tcp_info_reader

    monkeypatch.setattr(collect_mod, "TCP_INFO_LOOKUPS", lookups)
    port = table["port"]
    query = Query.build(ports=[port], tcp=True)
    some = collect(query, tcp_info=tcp_info_reader())
    every = {s.cookie: s for s in collect(query, tcp_info=True).sockets}
    queued = [s for s in some.sockets if s.recv_q > 0 and s.state is TcpState.ESTABLISHED]
    closing = [s for s in some.sockets if s.state is TcpState.CLOSE_WAIT]
    idle = [s for s in some.sockets if s.state is TcpState.ESTABLISHED and not s.recv_q
            and not s.send_q]
    assert queued and closing and idle
    for sock in queued + closing:
        assert sock.tcp_info is not None
        assert sock.tcp_info.snd_mss == every[sock.cookie].tcp_info.snd_mss
    assert all(s.tcp_info is None for s in idle)


def test_a_pause_inside_another_hands_over_as_its_own_then_says():
    """collect.gc_paused, the one pause: inside an outer one, collection stays off after
    the inner; an inner AGED leaves what it built young (only a pause that resumes
    collection hands over), an inner FROZEN freezes it at once; None leaves it as it is;
    AGED resuming collection hands what it built to the oldest generation."""
    import gc

    from sockstat.collect import AGED, FROZEN, gc_paused

    class Built:
        pass

    def young(obj) -> bool:
        return any(o is obj for o in gc.get_objects(generation=0))

    assert gc.isenabled() and not gc.get_freeze_count()
    try:
        with gc_paused(None):
            with gc_paused(AGED):
                aged = Built()
            assert not gc.isenabled() and young(aged)
            with gc_paused(FROZEN):
                frozen = Built()
            assert not gc.isenabled() and gc.get_freeze_count() and not young(frozen)
            gc.unfreeze()
            kept = Built()
        assert gc.isenabled() and young(kept)
        with gc_paused():
            built = Built()
        assert gc.isenabled() and not young(built) and not gc.get_freeze_count()
    finally:
        gc.unfreeze()
        gc.enable()
