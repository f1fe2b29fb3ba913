"""Network namespaces made by the test itself (`ip netns add`, `unshare --net`), with
loopback up, a listener and a CLOSE_WAIT inside; always deleted afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import ProcessGroup, run_sockstat

from sockstat.collect import collect, netns
from sockstat.query import Query

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None,
    reason="needs root, ip and unshare to make network namespaces")

# Inside the namespace: a listener on 127.0.0.1:8080 (the same port in every namespace),
# `n` connections to it whose client side sent FIN: n CLOSE_WAIT on the server side.
INSIDE = r"""
import socket, sys
n = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", 8080))
srv.listen(64)
clients = [socket.create_connection(("127.0.0.1", 8080)) for _ in range(n)]
conns = [srv.accept()[0] for _ in range(n)]
for c in clients:
    c.shutdown(socket.SHUT_WR)
print("ready", flush=True)
sys.stdin.read()
"""


def _wait_ready(group: ProcessGroup) -> None:
    line = group.readline()
    assert line.strip() == "ready", line


@pytest.fixture
def named_netns():
    """start(n) -> name: an `ip netns` namespace holding a listener and n CLOSE_WAIT."""
    made: list[tuple[str, ProcessGroup | None]] = []

    def start(n: int = 3) -> str:
        name = f"sockstat-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append((name, None))
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        group = ProcessGroup(["ip", "netns", "exec", name, sys.executable, "-c", INSIDE,
                              str(n)])
        made[-1] = (name, group)
        _wait_ready(group)
        return name

    try:
        yield start
    finally:
        for name, group in made:
            if group is not None:
                group.stop()
            subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def unshared():
    """start(n) -> pid: a process in an unnamed namespace (`unshare --net`)."""
    groups: list[ProcessGroup] = []

    def start(n: int = 2) -> int:
        code = "import subprocess; subprocess.run(['ip', 'link', 'set', 'lo', 'up'], " \
               "check=True)\n" + INSIDE
        group = ProcessGroup(["unshare", "--net", sys.executable, "-c", code, str(n)])
        groups.append(group)
        _wait_ready(group)
        return group.proc.pid

    try:
        yield start
    finally:
        for group in groups:
            group.stop()


def test_a_listener_in_a_named_namespace_is_invisible_without_netns(named_netns):
    name = named_netns(3)
    plain = collect(Query.build(ports=[8080], states=["close-wait"]))
    assert all(s.netns is None for s in plain.sockets)
    inside = collect(Query.build(ports=[8080]), netns=name, processes=True)
    states = sorted(s.state.name for s in inside.sockets if s.local.port == 8080)
    assert states.count("CLOSE_WAIT") == 3 and "LISTEN" in states
    assert {s.netns.name for s in inside.sockets} == {name}
    assert all(s.process is not None for s in inside.sockets if s.inode)


def test_netns_all_finds_named_and_unshared_namespaces_once_each(named_netns, unshared):
    name = named_netns(3)
    pid = unshared(2)
    found = netns.discover()
    inodes = [t.inode for t in found.targets]
    assert len(inodes) == len(set(inodes))  # deduplicated by inode
    mine = os.stat(f"/proc/{pid}/ns/net").st_ino
    assert mine in inodes
    snap = collect(Query.build(ports=[8080], states=["close-wait"]), netns="all",
                   processes=True)
    by_ns = {}
    for s in snap.sockets:
        by_ns.setdefault(s.netns.inode, []).append(s)
    named = [ns for ns in snap.namespaces if ns.name == name]
    assert len(named) == 1
    assert len(by_ns[named[0].inode]) == 3
    assert len(by_ns[mine]) == 2
    assert snap.hidden_namespaces == 0
    # pid and path selectors
    assert len(collect(Query.build(ports=[8080], states=["close-wait"]),
                       netns=str(pid)).sockets) == 2
    assert len(collect(Query.build(ports=[8080], states=["close-wait"]),
                       netns=f"/proc/{pid}/ns/net").sockets) == 2


def test_cli_netns_column_json_and_check(named_netns, unshared):
    name = named_netns(12)
    unshared(1)
    r = run_sockstat("--netns", "all", "--port", "8080", "-s", "close-wait")
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if "Local Address" in line)
    assert "Netns" in header  # more than one namespace shown
    assert name in r.stdout
    r = run_sockstat("--netns", name, "--port", "8080", "--json")
    rows = json.loads(r.stdout)
    assert rows and all(row["netns"]["name"] == name for row in rows)
    r = run_sockstat("check", "--netns", name, "--port", "8080", "--close-wait-min-age",
                     "0", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    [finding] = [f for f in json.loads(r.stdout)["findings"] if f["kind"] == "close_wait_leak"]
    assert finding["evidence"]["close_wait"] == 12
    assert finding["subject"].endswith(f" in net ns {name}")  # which namespace leaks


def test_bad_netns_values_are_one_line_errors():
    for value in ("nosuch-namespace", "/nonexistent/ns", "999999999", ""):
        r = run_sockstat("--netns", value)
        assert r.returncode == 2, (value, r.stdout, r.stderr)
        assert r.stderr.startswith("sockstat: error: ") and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = run_sockstat("check", "--netns", "nosuch-namespace")
    assert r.returncode == 3


@pytest.mark.parametrize("kind", ["pid", "user", "mnt", "uts", "ipc", "cgroup"])
def test_a_namespace_file_of_another_kind_is_no_network_namespace(kind):
    """Regression: /proc/self/ns/pid (or any namespace file that is not a network
    namespace's) passed for one, so it was "could not be entered" (a root hint, exit 0)
    instead of a usage error."""
    path = f"/proc/self/ns/{kind}"
    if not os.path.exists(path):
        pytest.skip(f"this kernel has no {kind} namespaces")
    for command in ([], ["check"]):
        r = run_sockstat(*command, "--netns", path)
        assert r.returncode == (3 if command else 2), (command, r.stderr)
        assert r.stderr == f"sockstat: error: {path} is not a network namespace\n"
    r = run_sockstat("--netns", f"self,{path}")
    assert r.returncode == 2 and "is not a network namespace" in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "9" * 30, "9" * 5000,
                                   "all,bogus", "bogus,all", "self,bogus", "all,\u00b2"])
def test_non_ascii_digits_huge_pids_and_bad_items_next_to_all_are_errors(value, tmp_path):
    textfile = str(tmp_path / "sockstat.prom")
    for command in ([], ["summary"], ["check"], ["export", "--textfile", textfile],
                    ["why"], ["watch"], ["kill", "--state", "close-wait"]):
        r = run_sockstat(*command, "--netns", value)
        assert r.returncode == (3 if command == ["check"] else 2), (command, r.stderr)
        assert r.stderr.startswith("sockstat: error: ") and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_self_names_this_namespace_in_a_list(named_netns, loop):
    name = named_netns(2)
    port = loop.listener().getsockname()[1]
    r = run_sockstat("--netns", f"{name},self", "-t", "-l", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert any(row["local_port"] == port for row in rows)  # this namespace
    assert any(row["local_port"] == 8080 and row["netns"] for row in rows)  # and NAME
    r = run_sockstat("--netns", name, "-t", "-l", "--json")  # NAME alone: only NAME's
    assert r.returncode == 0, r.stderr
    assert all(row["local_port"] != port for row in json.loads(r.stdout))


def test_without_root_netns_all_shows_this_namespace_and_a_hint(named_netns):
    named_netns(1)
    if not shutil.which("setpriv"):
        pytest.skip("setpriv missing")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           sys.executable, "-m", "sockstat", "--netns", "all", "-s", "listen"]
    from conftest import REPO

    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    if "No module named" in r.stderr:
        pytest.skip("the package is not readable by an unprivileged user here")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    notes = [line for line in r.stderr.splitlines() if "namespace" in line]
    assert len(notes) == 1 and "root" in notes[0]



def test_exporter_labels_close_wait_of_another_namespace(named_netns):
    from sockstat.exporter import Scraper

    name = named_netns(4)
    fams = {f.name: f for f in Scraper(netns=name).families()}
    fam = fams["sockstat_close_wait_sockets"]
    where = fam.labels.index("container")
    [value] = [v for labels, v in fam.samples if labels[where] == name]
    assert value == 4


def test_summary_counts_sockets_per_namespace(named_netns):
    name = named_netns(2)
    r = run_sockstat("summary", "--netns", "all", "--json")
    assert r.returncode == 0, r.stderr
    top = {row["container"]: row["sockets"] for row in json.loads(r.stdout)["top_containers"]}
    assert top[name] == 5  # the listener and both ends of two connections
    r = run_sockstat("summary", "--netns", name)
    assert "Top containers and namespaces" in r.stdout and name in r.stdout


def test_kill_resets_close_wait_inside_a_named_namespace(named_netns):
    """sock_diag acts on the namespace of its socket: kill --netns resets through a
    socket made inside, and only there (the same port in this namespace is untouched)."""
    name = named_netns(2)
    args = ("kill", "--netns", name, "-s", "close-wait", "-p", "8080")
    preview = json.loads(run_sockstat(*args, "--json").stdout)
    assert preview["matched"] == 2 and preview["applied"] is False
    assert {row["socket"]["netns"]["name"] for row in preview["sockets"]} == {name}
    r = run_sockstat(*args, "--yes")
    assert r.returncode == 0, r.stderr
    assert "2 sockets: 2 destroyed" in r.stdout and f"[{name}]" in r.stdout
    left = subprocess.run(["ip", "netns", "exec", name, "ss", "-tanH", "state", "close-wait"],
                          capture_output=True, text=True, check=True).stdout
    assert left.strip() == ""


# Inside the namespace: a UDP socket with a tiny receive buffer that never reads.
RECEIVER = r"""
import socket, sys
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
rx.bind(("127.0.0.1", 0))
print(rx.getsockname()[1], flush=True)
sys.stdin.read()
"""
# Inside the namespace too: bounded bursts to it over that namespace's lo, a burst every
# 0.1 s for at most 6 s (1200 datagrams), so some land in check's interval however late
# it starts; the full buffer drops each one.
FLOODER = r"""
import socket, sys, time
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
for _ in range(60):
    for _ in range(20):
        tx.sendto(b"x" * 512, ("127.0.0.1", int(sys.argv[1])))
    time.sleep(0.1)
"""


def test_check_counts_udp_drops_of_a_socket_inside_the_namespace(named_netns):
    name = named_netns(0)
    groups: list[ProcessGroup] = []
    try:
        groups.append(ProcessGroup(["ip", "netns", "exec", name, sys.executable, "-c",
                                    RECEIVER]))
        port = int(groups[-1].readline())
        groups.append(ProcessGroup(["ip", "netns", "exec", name, sys.executable, "-c",
                                    FLOODER, str(port)]))
        _wait_ready(groups[-1])
        r = run_sockstat("check", "--netns", name, "-u", "--interval", "1", "--json")
        assert r.returncode in (0, 1, 2) and "Traceback" not in r.stderr, r.stderr
        drops = [f for f in json.loads(r.stdout)["findings"] if f["kind"] == "socket_drops"]
        assert any(f["evidence"].get("drops", 0) > 0 and str(port) in f["subject"]
                   for f in drops), (drops, r.stderr)
    finally:
        for group in groups:
            group.stop()


def test_netns_help_and_docs_say_the_listed_namespaces_replace_this_one():
    """`--netns rvtest` shows rvtest's sockets only (test_self_names_this_namespace_in_a_
    list): the help and the reference must not promise this namespace's "too"."""
    from pathlib import Path

    r = run_sockstat("--help", env={"COLUMNS": "400"})
    [line] = [x for x in r.stdout.splitlines() if "--netns" in x]
    assert "instead of this one" in line and "self (this one)" in line
    assert "too" not in line
    listing = (Path(__file__).parent.parent / "docs" / "listing.md").read_text()
    assert "reads other network namespaces too" not in listing
    assert "`self` is the\n  namespace sockstat runs in" in listing


# Inside the namespace: the INSIDE table on IPv4 port 8090, plus an IPv6 listener and
# connection.
DUAL_STACK = INSIDE.replace("8080", "8090").replace('print("ready", flush=True)', '''
srv6 = socket.socket(socket.AF_INET6)
srv6.bind(("::1", 8090))
srv6.listen(8)
c6 = socket.create_connection(("::1", 8090))
a6 = srv6.accept()[0]
print("ready", flush=True)''')


@pytest.fixture
def dumps_asked(monkeypatch):
    """start() -> a list that gets (family, proto) of every sock_diag dump made after it
    (the real dump runs: this only counts the requests)."""
    from sockstat.collect import netlink

    def start() -> list:
        asked: list = []
        real_dump = netlink.dump

        def counting_dump(family, proto, *args, **kwargs):
            asked.append((family, proto))
            return real_dump(family, proto, *args, **kwargs)

        monkeypatch.setattr(netlink, "dump", counting_dump)
        return asked

    return start


def test_both_tcp_families_of_a_namespace_come_in_one_dump_and_the_same_rows(named_netns,
                                                                             dumps_asked,
                                                                             monkeypatch):
    """One TCPDIAG_GETSOCK request per namespace instead of two (each walks the kernel's
    whole TCP hash): the rows are those two per-family dumps give, IPv4 first."""
    from sockstat.collect import netlink
    from sockstat.model import ALL_STATES, Family, Proto

    name = named_netns(0)
    group = ProcessGroup(["ip", "netns", "exec", name, sys.executable, "-c", DUAL_STACK,
                          "2"])
    try:
        _wait_ready(group)
        asked = dumps_asked()
        snap = collect(Query.build(tcp=True), netns=name)
        monkeypatch.undo()
        assert asked == [(None, Proto.TCP)]
        [(nl, _)] = netns.netlink_sockets([f"/run/netns/{name}"])
        try:
            apart = [s for family in (Family.INET, Family.INET6)
                     for s in netlink.dump(family, Proto.TCP, ALL_STATES, nl=nl)]
        finally:
            nl.close()

        def key(s):
            return (s.family, s.state, s.local, s.remote, s.inode)

        assert [key(s) for s in snap.sockets] == [key(s) for s in apart]
        families = [s.family for s in snap.sockets]
        assert Family.INET6 in families and families == sorted(families, key=list(Family).index)
        # the drop detector's read (listeners with their memory, then the rest): the
        # same rows and memory as per-family dumps give
        import sockstat.collect as collect_mod

        drops = collect(Query.build(tcp=True), netns=name, memory=collect_mod.DROPS)
        monkeypatch.setattr(collect_mod, "_tcp_together", lambda query, may_have: False)
        per_family = collect(Query.build(tcp=True), netns=name, memory=collect_mod.DROPS)

        def with_memory(s):
            return key(s) + (s.memory is not None,)

        assert [with_memory(s) for s in drops.sockets] == \
            [with_memory(s) for s in per_family.sockets]
        assert any(s.memory is not None and s.family is Family.INET6 for s in drops.sockets)
    finally:
        group.stop()


def test_entering_namespaces_leaves_this_thread_and_process_where_they_were(named_netns):
    """The sockets are made from a thread of its own that enters each namespace; the
    caller stays in its namespace, no thread is left, and a namespace that cannot be
    entered gets None while the others still get their socket."""
    import threading

    name = named_netns(1)
    here = os.stat("/proc/thread-self/ns/net").st_ino
    got = netns.netlink_sockets([f"/run/netns/{name}", "/nonexistent/ns/net"])
    try:
        assert got[1] is None and got[0] is not None
        nl, counts = got[0]
        assert counts["TCP.inuse"] >= 3  # that namespace's counters, not this one's
    finally:
        if got[0] is not None:
            got[0][0].close()
    assert os.stat("/proc/thread-self/ns/net").st_ino == here
    assert os.stat("/proc/self/ns/net").st_ino == here
    assert not [t for t in threading.enumerate() if t.name == "sockstat-setns"]


def test_a_bare_file_in_run_netns_is_no_namespace(tmp_path):
    """`ip netns add` mounts each namespace on a file it creates in /run/netns; the file
    alone (the mount made in another mount namespace, or the delete half done) is no
    namespace to enter or to count as hidden."""
    (tmp_path / "bare").write_text("")
    (tmp_path / "real").symlink_to("/proc/self/ns/net")
    assert netns.named(str(tmp_path)) == {"real": os.stat("/proc/self/ns/net").st_ino}


def test_a_namespace_without_the_asked_states_is_not_dumped(named_netns, dumps_asked):
    """Its counters (/proc/net/sockstat inside) say it has sockets in use but no
    TIME_WAIT: `-s time-wait` does not walk the kernel's TCP hash for it at all, and
    an in-use state still does."""

    name = named_netns(2)
    asked = dumps_asked()
    assert collect(Query.build(states=["time-wait"], tcp=True), netns=name).sockets == []
    assert asked == []
    snap = collect(Query.build(states=["close-wait"], tcp=True), netns=name)
    assert len(snap.sockets) == 2 and asked


# Inside an unshared namespace: this process and a forked child that stays after it.
KEEPER = r"""
import os, sys, time
if os.fork() == 0:
    time.sleep(120)
    os._exit(0)
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_namespace_that_ends_after_discovery_is_not_counted_as_hidden():
    """Its only process exits between finding it and entering it: gone, not "could not
    be entered" (the hint is for namespaces sockstat may not read)."""
    group = ProcessGroup(["unshare", "--net", sys.executable, "-c",
                          "import sys; print('ready', flush=True); sys.stdin.read()"])
    try:
        _wait_ready(group)
        found = netns.select(str(group.proc.pid))
    finally:
        group.stop()
    assert list(netns.open_all(found)) == []


def test_a_namespace_whose_first_process_exited_is_entered_through_another():
    import signal

    group = ProcessGroup(["unshare", "--net", sys.executable, "-c", KEEPER])
    try:
        _wait_ready(group)
        found = netns.select(str(group.proc.pid))
        [target] = found.targets
        assert len(target.pids) == 2 and target.path == f"/proc/{group.proc.pid}/ns/net"
        os.kill(group.proc.pid, signal.SIGKILL)  # the leader we started; its child stays
        group.proc.wait(timeout=30)
        [opened] = list(netns.open_all(found))
        try:
            assert opened.netlink is not None
        finally:
            opened.netlink.close()
    finally:
        group.stop()
