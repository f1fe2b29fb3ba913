"""Every holder of a socket and the services behind forked children: real forked
processes on loopback, real socat where installed, and the /proc parsers on captured
text."""

from __future__ import annotations

import json
import shutil
import socket
import sys

import pytest
from conftest import PREFORK, ProcessGroup, close_wait_count, run_sockstat, wait_for

from sockstat.collect import collect, services
from sockstat.diagnose import diagnose, exit_status
from sockstat.diagnose.thresholds import Thresholds
from sockstat.model import (
    Endpoint,
    Family,
    ProcessRef,
    Proto,
    Service,
    Snapshot,
    Socket,
    TcpState,
)
from sockstat.query import Query
from sockstat.render import fmt

NOW = Thresholds(close_wait_min_age=0)


@pytest.fixture
def prefork():
    """A listener held by 4 forked workers: yields (port, [pids], lowest pid first)."""
    group = ProcessGroup([sys.executable, "-c", PREFORK, "4"])
    try:
        port, *pids = (int(w) for w in group.readline().split())
        yield port, sorted(pids)
    finally:
        group.stop()


def test_a_listener_shared_by_four_workers_names_every_holder(prefork):
    port, pids = prefork
    snap = collect(Query.build(ports=[port], listening=True), processes=True)
    [listener] = snap.sockets
    assert [p.pid for p in listener.holders] == pids
    assert listener.process.pid == pids[0]  # the primary holder is the lowest pid
    name = listener.process.name
    assert fmt.process(listener) == f"{name}/{pids[0]},{pids[1]},+2"


def test_pid_of_any_worker_finds_the_shared_listener(prefork):
    port, pids = prefork
    for pid in pids:
        snap = collect(Query.build(ports=[port], pids=[pid]), processes=True)
        assert [s.local.port for s in snap.sockets] == [port], pid
    r = run_sockstat("--pid", str(pids[-1]), "--port", str(port), "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert [p["pid"] for p in row["processes"]] == pids
    assert row["process"]["pid"] == pids[0]
    assert {p["fd"] for p in row["processes"]} and all(p["fd"] is not None
                                                        for p in row["processes"])


def test_prefork_workers_are_one_service(prefork):
    port, pids = prefork
    snap = collect(Query.build(ports=[port]), services=True)
    found = {snap.services[pid].master_pid for pid in pids}
    assert found == {pids[0]}  # the master: the parent of the others


def test_forked_close_wait_leak_is_one_finding_with_every_pid(forking_leaker):
    master, port, children = forking_leaker(12)
    snap = collect(Query.build(ports=[port]), processes=True, tcp_info=True, services=True)
    findings = [f for f in diagnose(snap, None, NOW) if f.kind == "close_wait_leak"]
    assert len(findings) == 1  # not 12 per-process non-findings, nor 12 findings
    [finding] = findings
    assert finding.evidence["pids"] == sorted(children)
    assert finding.evidence["processes"] == 12
    assert finding.evidence["pid"] == master
    assert finding.evidence["close_wait"] == 12
    assert finding.summary.startswith(f"{finding.evidence['process']} (12 processes) on "
                                      f"127.0.0.1:{port}: 12 CLOSE_WAIT")
    assert exit_status([finding]) != 0


def test_a_services_fd_evidence_is_one_processes_own(forking_leaker):
    """The fd limit is per process: with 12 children holding one CLOSE_WAIT each, the
    share of the limit is the busiest child's 1 socket, not the service's 12."""
    from sockstat.collect.kernel import read_sample
    from sockstat.diagnose import wanted_pids
    from sockstat.kernelmodel import KernelChange

    _, port, children = forking_leaker(12)
    snap = collect(Query.build(ports=[port]), processes=True, tcp_info=True, services=True)
    kernel = KernelChange(after=read_sample(pids=wanted_pids(snap)))
    [finding] = [f for f in diagnose(snap, kernel, NOW) if f.kind == "close_wait_leak"]
    ev = finding.evidence
    assert ev["fd_pid"] in children and ev["fd_pid_close_wait"] == 1
    assert ev["fds_total"] == 1
    limit = ev["nofile_soft_limit"]
    assert ev["fd_limit_percent"] == round(100.0 / limit, 1)


def test_check_exits_non_zero_for_a_forked_leak(forking_leaker):
    _, port, _ = forking_leaker(10)
    r = run_sockstat("check", "--port", str(port), "--close-wait-min-age", "0", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    [finding] = json.loads(r.stdout)["findings"]
    assert finding["evidence"]["processes"] == 10


def test_a_single_process_below_the_threshold_is_still_judged_per_pid():
    proc = ProcessRef(10, "app")
    sockets = [Socket(Proto.TCP, Family.INET, TcpState.CLOSE_WAIT, Endpoint("127.0.0.1", 80),
                      Endpoint("127.0.0.1", 5000 + i),
                      process=proc, inode=100 + i) for i in range(9)]
    snap = Snapshot(sockets, 0.0, "netlink")
    snap.services[10] = Service((10, "/bin/app"), "app", 10)
    assert [f for f in diagnose(snap, None, NOW) if f.kind == "close_wait_leak"] == []
    sockets.append(Socket(Proto.TCP, Family.INET, TcpState.CLOSE_WAIT,
                          Endpoint("127.0.0.1", 80), Endpoint("127.0.0.1", 6000),
                          process=proc, inode=99))
    [finding] = [f for f in diagnose(snap, None, NOW) if f.kind == "close_wait_leak"]
    assert finding.subject == "app/10"  # one process: the per-pid finding, as before
    assert finding.evidence["service"] == "app"


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
def test_socat_fork_per_connection_leak_is_one_finding(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    group = ProcessGroup(["socat", "-t", "100000",
                          f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                          "EXEC:sleep 120"])
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return True
            except OSError:
                return False

        wait_for(listening, timeout=30, what="socat to listen")
        for _ in range(29):  # the probe above was the first of 30
            socket.create_connection(("127.0.0.1", port), timeout=30).close()
        wait_for(lambda: close_wait_count(port) == 30, timeout=30, what="30 CLOSE_WAIT")
        r = run_sockstat("check", "--port", str(port), "--close-wait-min-age", "0")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"socat (30 processes) on 127.0.0.1:{port}: 30 CLOSE_WAIT" in r.stdout
    finally:
        group.stop()


# -- parsers on captured text ------------------------------------------------------------

def test_stat_parser_handles_names_with_spaces_and_parentheses():
    assert services.parse_stat("812 (nginx: worker) S 811 811 811 0 -1 4194624") \
        == (811, "nginx: worker")
    assert services.parse_stat("9 (a) b)) R 1 9 9") == (1, "a) b)")
    for bad in ("", "812 nginx S 1", "812 (x)", "812 (x) S"):
        with pytest.raises(ValueError):
            services.parse_stat(bad)


def test_group_makes_the_parent_the_master_of_same_executable_children(tmp_path):
    # a procfs made of captured stat lines: 1 init, 100 bash, 200 master, 201-203 its
    # children, 300 a python started by the master (another executable)
    rows = {1: (0, "systemd", "/usr/lib/systemd/systemd"), 100: (1, "bash", "/bin/bash"),
            200: (100, "nginx", "/usr/sbin/nginx"), 201: (200, "nginx", "/usr/sbin/nginx"),
            202: (200, "nginx", "/usr/sbin/nginx"), 203: (200, "nginx", "/usr/sbin/nginx"),
            300: (200, "python3", "/usr/bin/python3")}
    for pid, (ppid, name, exe) in rows.items():
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1\n")
        (d / "exe").symlink_to(exe)
        (d / "cgroup").write_text("0::/system.slice/nginx.service\n" if name == "nginx"
                                  else "0::/user.slice/user-0.slice/session-1.scope\n")
    found = services.group([200, 201, 202, 203, 300, 999], services.ProcessInfo(str(tmp_path)))
    assert {found[p].master_pid for p in (200, 201, 202, 203)} == {200}
    assert found[300].master_pid == 300
    assert 999 not in found  # vanished
    assert found[201].label == "nginx (nginx.service)"
    assert found[300].container is None  # a login session is no service


def test_summary_counts_a_forking_servers_children_as_one_service(forking_leaker):
    master, port, children = forking_leaker(6)
    r = run_sockstat("summary", "--port", str(port), "--json")
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)["top_processes"]
    # the master (its listener) and its 6 children (one CLOSE_WAIT each): one line
    [line] = [t for t in top if t["process"].endswith("(7 processes)")]
    assert line["process"].split(" ")[0].endswith(f"/{master}")
    assert line["sockets"] == 7


def test_watch_judges_a_forked_leak_as_one_service(forking_leaker):
    from sockstat.watch.session import Watcher

    _, port, _ = forking_leaker(10)
    watcher = Watcher(Query.build(ports=[port]), thresholds=NOW)
    refresh = watcher.refresh()
    [finding] = [f for f in refresh.findings if f.kind == "close_wait_leak"]
    assert finding.evidence["processes"] == 10


def test_watch_top_processes_count_a_forking_server_as_one_service(forking_leaker):
    """watch's top list, like summary's: the master and its 8 children are one entry,
    'python/M (9 processes)', holding the listener and the 8 CLOSE_WAIT (the clients'
    FIN_WAIT2 ends are closed: no owner)."""
    from sockstat.render.live import process_label
    from sockstat.watch.session import Watcher

    master, port, children = forking_leaker(8)
    refresh = Watcher(Query.build(ports=[port]), findings=False).refresh()
    [(ref, n)] = refresh.top_processes
    assert ref.pid == master and n == 9
    assert refresh.processes_of(ref) == 9
    assert process_label(ref, refresh.processes_of(ref)).endswith(
        f"/{master} ({refresh.processes_of(ref)} processes)")
    entry = refresh.to_dict()["top"]["processes"][0]
    assert entry["pid"] == master and entry["processes"] == refresh.processes_of(ref)


def test_watch_time_wait_owners_are_grouped_by_service():
    """TIME_WAIT sockets whose owners (while alive) were three children of one master:
    one TIME_WAIT owner entry, the master, standing for 3 processes."""
    from conftest import make_snapshot, make_socket

    from sockstat.watch.tracker import Tracker

    kids = [ProcessRef(600 + i, "socat") for i in range(3)]
    tracker = Tracker()
    alive = [make_socket(TcpState.ESTABLISHED, ("127.0.0.1", 8080), ("127.0.0.1", 40000 + i),
                         cookie=i + 1, inode=100 + i, process=kid)
             for i, kid in enumerate(kids)]
    service = Service(key=(500, "/usr/bin/socat"), name="socat", master_pid=500)
    first = make_snapshot(alive, taken_at=1.0)
    first.services.update({kid.pid: service for kid in kids})
    tracker.update(first)
    closed = [make_socket(TcpState.TIME_WAIT, ("127.0.0.1", 8080), ("127.0.0.1", 40000 + i),
                          cookie=i + 1) for i in range(3)]
    later = make_snapshot(closed, taken_at=2.0)
    later.services.update({kid.pid: service for kid in kids})
    refresh = tracker.update(later)
    [(owner, n)] = refresh.time_wait_owners
    assert (owner.pid, owner.name, n) == (500, "socat", 3)
    assert refresh.processes_of(owner) == 3


def _stalled_socket(pid: int, port: int) -> Socket:
    from sockstat.model import TcpInfo

    info = TcpInfo(rtt_ms=1, rttvar_ms=1, snd_cwnd=10, snd_mss=1448, rcv_mss=1448,
                   retransmits=0, total_retrans=0, unacked=0, lost=0, last_data_sent_ms=0,
                   last_data_recv_ms=60_000, last_ack_recv_ms=0)
    return Socket(Proto.TCP, Family.INET, TcpState.ESTABLISHED, Endpoint("127.0.0.1", 80),
                  Endpoint("127.0.0.1", port), recv_q=5000, inode=port, tcp_info=info,
                  process=ProcessRef(pid, "worker"))


def test_stalls_of_a_services_processes_are_one_finding():
    from sockstat.model import Container

    service = Service((10, "/usr/bin/worker"), "worker", 10,
                      Container("docker", "3f2a9c1b2d4e" + "0" * 52))
    snap = Snapshot([_stalled_socket(11, 5001), _stalled_socket(12, 5002)], 0.0, "netlink")
    snap.services.update({11: service, 12: service})
    [finding] = [f for f in diagnose(snap, None, NOW) if f.kind == "recv_stalled"]
    assert finding.evidence["pids"] == [11, 12] and finding.evidence["processes"] == 2
    assert finding.subject == "worker (docker:3f2a9c1b2d4e) (2 processes)"
    # one process of a container: the finding says where it runs
    single = Snapshot([_stalled_socket(11, 5001)], 0.0, "netlink")
    single.services[11] = service
    [finding] = [f for f in diagnose(single, None, NOW) if f.kind == "recv_stalled"]
    assert finding.subject == "worker/11 in docker:3f2a9c1b2d4e"


def test_watch_names_every_holder_refresh_after_refresh(prefork):
    from sockstat.watch.session import Watcher

    port, pids = prefork
    watcher = Watcher(Query.build(ports=[port], listening=True), findings=False)
    for _ in range(2):  # the second refresh names from the cache
        watcher.refresh()
        [listener] = watcher.collector._by_cookie.values() or [None]  # noqa: SLF001
        assert listener is not None
        assert [p.pid for p in listener.holders] == pids


# -- watch's services, kept between refreshes ---------------------------------------------

def _stat_line(pid: int, name: str, ppid: int, started: int) -> str:
    """A /proc/<pid>/stat line as the kernel writes it, to the start time (22nd field)."""
    return f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194560 " + "0 " * 12 + f"{started} 0\n"


def _process(root, pid: int, name: str, ppid: int, started: int, exe: str,
             cgroup: str) -> None:
    d = root / str(pid)
    d.mkdir(exist_ok=True)
    (d / "stat").write_text(_stat_line(pid, name, ppid, started))
    if (d / "exe").is_symlink():
        (d / "exe").unlink()
    (d / "exe").symlink_to(exe)
    (d / "cgroup").write_text(cgroup)


def test_lasting_process_info_reads_again_all_but_a_live_processs_cgroup(tmp_path):
    """Each look reads every pid's stat and executable again (parent, name and program
    change while a process runs), so its services are a fresh look's; the cgroup is kept
    while the pid is the same process (same start time), read again for a reused pid,
    and forgotten once a look does not ask for the pid."""
    nginx, other = "0::/system.slice/nginx.service\n", "0::/system.slice/other.service\n"
    _process(tmp_path, 100, "bash", 1, 50, "/bin/bash", other)
    _process(tmp_path, 200, "nginx", 100, 60, "/usr/sbin/nginx", nginx)
    _process(tmp_path, 201, "nginx", 200, 61, "/usr/sbin/nginx", nginx)
    root = str(tmp_path)
    lasting = services.LastingProcessInfo(root)

    def look(pids=(200, 201)) -> dict:
        kept = services.group(pids, lasting.next_look())
        assert kept.keys() == services.group(pids, services.ProcessInfo(root)).keys()
        return kept

    first = look()
    assert {s.master_pid for s in first.values()} == {200}
    assert first[201].label == "nginx (nginx.service)"
    # the child reparented (its parent a bash now), the master renamed and moved to
    # another cgroup (not seen: it is the same process)
    _process(tmp_path, 201, "nginx", 100, 61, "/usr/sbin/nginx", nginx)
    _process(tmp_path, 200, "nginx-old", 100, 60, "/usr/sbin/nginx", other)
    assert look() == {
        200: Service((200, "/usr/sbin/nginx"), "nginx-old", 200, first[200].container),
        201: Service((201, "/usr/sbin/nginx"), "nginx", 201, first[201].container)}
    # the master's file replaced by an upgrade
    _process(tmp_path, 200, "nginx-old", 100, 60, "/usr/sbin/nginx (deleted)", other)
    assert look()[200].key == (200, "/usr/sbin/nginx (deleted)")
    # pid 200 reused by another process (another start time): its cgroup is read again
    _process(tmp_path, 200, "nginx", 100, 90, "/usr/sbin/nginx", other)
    assert look()[200].label == "nginx (other.service)"
    # a pid a look does not ask for is forgotten: once back, its cgroup is read again
    (tmp_path / "201" / "cgroup").write_text(other)
    look((200,))
    assert look()[201].label == "nginx (other.service)"
    # gone: left out
    shutil.rmtree(tmp_path / "201")
    assert look().keys() == {200}


# A master and two forked children holding its listener. On "exec" a child runs
# `sleep` (keeping the listener); on "exit" the master exits and the other child is
# reparented. Prints the port and the pids, then "done" after each command.
HELD_ACROSS_CHANGES = r"""
import os, socket, sys, time
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
os.set_inheritable(srv.fileno(), True)
r, w = os.pipe()
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        os.close(w)
        if os.read(r, 1) == b"x":  # the pipe's writer gone: the master exited
            os.execvp("sleep", ["sleep", "600"])
        time.sleep(600)
        os._exit(0)
    pids.append(pid)
os.close(r)
print(srv.getsockname()[1], os.getpid(), *pids, flush=True)
for line in sys.stdin:
    if line.strip() == "exit":
        print("done", flush=True)
        os._exit(0)
    os.write(w, b"x")  # one child takes it
    print("done", flush=True)
"""


def test_watch_services_are_a_fresh_looks_refresh_after_refresh():
    """watch keeps its process info between refreshes (the cgroup of a live process
    only): its services equal a fresh grouping of the same holders, through a child that
    runs another program, a master that exits (its other child reparented) and a child
    that exits."""
    import os
    import signal

    from sockstat.watch.session import Watcher

    group = ProcessGroup([sys.executable, "-c", HELD_ACROSS_CHANGES])
    try:
        port, master, *children = (int(w) for w in group.readline().split())
        watcher = Watcher(Query.build(ports=[port]), interval=1.0, findings=False)
        watcher.owners.scan_budget = None

        def fresh() -> dict:
            return services.group({master, *children}, services.ProcessInfo())

        def same_as_fresh() -> dict:
            watcher.refresh()
            found = watcher.snapshot.services
            assert found == services.group(set(watcher.tracker._totals.holders),
                                           services.ProcessInfo())
            return found

        def tell(command: str) -> None:
            group.proc.stdin.write(command + "\n")
            group.proc.stdin.flush()
            assert group.readline().strip() == "done"

        assert {s.master_pid for s in same_as_fresh().values()} == {master}
        tell("exec")
        wait_for(lambda: any(s.name == "sleep" for s in fresh().values()), what="the exec")
        ran = [p for p, s in same_as_fresh().items() if s.name == "sleep"]
        assert len(ran) == 1 and ran[0] in children
        tell("exit")
        group.proc.wait(timeout=30)  # reaped: gone from /proc
        [other] = set(children) - set(ran)
        assert same_as_fresh()[other].master_pid == other  # no parent of its kind now
        os.kill(other, signal.SIGKILL)
        wait_for(lambda: other not in fresh(), what="the other child to exit")
        assert same_as_fresh().keys() == set(ran)
    finally:
        group.stop()


# In a PID namespace of its own: a process's pid given to another (ns_last_pid is this
# namespace's), looked at by one LastingProcessInfo before and after. Prints both looks.
REUSED_PID = r"""
import json, os, time
from sockstat.collect.services import LastingProcessInfo, ProcessInfo, group

def start(*argv):
    pid = os.fork()
    if pid == 0:
        os.execvp(argv[0], list(argv))
    for _ in range(500):  # until it runs its program
        if os.path.realpath(f"/proc/{pid}/exe").endswith("/" + argv[0]):
            return pid
        time.sleep(0.01)
    raise SystemExit(f"{argv[0]} did not start")

info = LastingProcessInfo()
first = start("sleep", "600")
before = group({first}, info.next_look())[first]
held = len(info._files)
os.kill(first, 9)
os.waitpid(first, 0)
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(first - 1))
again = start("tail", "-f", "/dev/null")
after = group({again}, info.next_look())[again]
fresh = group({again}, ProcessInfo())[again]
os.kill(again, 9)
os.waitpid(again, 0)
print(json.dumps({"pids": [first, again], "held": held, "names": [before.name, after.name],
                  "as_fresh": after == fresh}))
"""


@pytest.mark.root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_a_reused_pid_is_read_as_the_new_process():
    """The stat file kept open for a process reads nothing once it is gone, even when
    its pid is another process's now: the new one is read, as a fresh look reads it."""
    import subprocess

    from conftest import REPO

    proc = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                           sys.executable, "-c", REUSED_PID], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["pids"][0] == got["pids"][1] and got["held"] == 1, got
    assert got["names"] == ["sleep", "tail"] and got["as_fresh"], got


def test_lasting_process_info_closes_the_files_it_keeps(prefork):
    """The stat files kept open between looks: one per process asked for, closed when
    a look no longer asks for it and by close()."""
    import os

    _, pids = prefork
    info = services.LastingProcessInfo()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    services.group(pids, info.next_look())
    kept = len(info._files)
    assert kept >= len(pids) and open_fds() == before + kept  # the parents' too
    services.group(pids[:1], info.next_look())
    services.group(pids[:1], info.next_look())
    assert open_fds() < before + kept
    info.close()
    assert open_fds() == before and info._files == {}
