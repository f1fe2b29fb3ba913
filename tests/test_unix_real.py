"""UNIX sockets and socket memory on real sockets: what `sockstat -x`, `--memory` and
`check` report for sockets this test makes (a temporary directory, loopback UDP), all
closed at teardown even when a test fails."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import pytest
from conftest import my_comm, run_sockstat


class UnixLab:
    """AF_UNIX sockets in a private directory; closes them and removes it at the end."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sockstat-test-")
        self.sockets: list[socket.socket] = []

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def track(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock

    def listener(self, name: str, backlog: int) -> socket.socket:
        sock = self.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        sock.bind(self.path(name))
        sock.listen(backlog)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def ulab():
    lab = UnixLab()
    try:
        yield lab
    finally:
        lab.close()


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def rows(*args: str) -> list[dict]:
    r = run_sockstat(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def fill_accept_queue(ulab: UnixLab, name: str, backlog: int, clients: int) -> str:
    """A listener that never accepts, and `clients` non-blocking connects to it."""
    ulab.listener(name, backlog)
    path = ulab.path(name)
    refused = 0
    for _ in range(clients):
        client = ulab.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        client.setblocking(False)
        try:
            client.connect(path)
        except BlockingIOError:  # EAGAIN: the accept queue is full
            refused += 1
    assert refused > 0, "the queue never filled"
    return path


def test_a_full_unix_accept_queue_is_a_critical_finding_naming_path_and_pid(ulab):
    path = fill_accept_queue(ulab, "php-fpm.sock", backlog=2, clients=6)
    listed = [r for r in rows("-x", "--path", path) if r["state"] == "LISTEN"]
    assert len(listed) == 1 and listed[0]["recv_q"] >= 2 and listed[0]["send_q"] == 2
    r = run_sockstat("check", "--json", "--interval", "0", "--path", path)
    assert r.returncode == 2, r.stdout + r.stderr  # CRITICAL
    (finding,) = [f for f in json.loads(r.stdout)["findings"] if f["kind"] == "accept_queue"]
    assert finding["severity"] == "critical"
    assert finding["evidence"]["path"] == path
    assert finding["evidence"]["pid"] == os.getpid()
    assert finding["evidence"]["queued"] >= 2 and finding["evidence"]["backlog"] == 2
    assert path in finding["summary"] and f"{my_comm()}/{os.getpid()}" in finding["summary"]
    assert "backlog" in finding["remedy"] and "workers" in finding["remedy"]
    # the plain check names it too, and the listing shows queued/backlog
    text = run_sockstat("check", "--interval", "0", "--path", path).stdout
    assert f"accept queue of {path} is full" in text
    listing = run_sockstat("-x", "--path", path).stdout
    assert path in listing and f"{listed[0]['recv_q']}/2" in listing


def test_a_stream_pair_and_a_datagram_socket_are_listed_with_peer_and_process(ulab):
    left, right = (ulab.track(s) for s in socket.socketpair())
    server = ulab.track(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    server.bind(ulab.path("log.sock"))
    client = ulab.track(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    client.connect(ulab.path("log.sock"))
    got = {r["inode"]: r for r in rows("-x", "--pid", str(os.getpid()))}
    me = os.getpid()
    for a, b in ((left, right), (right, left)):
        row = got[inode(a)]
        assert row["proto"] == "unix" and row["unix_type"] == "stream"
        assert row["state"] == "ESTABLISHED" and row["path"] is None
        assert row["peer_inode"] == inode(b)
        assert row["process"]["pid"] == me and row["peer_process"]["pid"] == me
    assert got[inode(server)]["unix_type"] == "dgram"
    assert got[inode(server)]["path"] == ulab.path("log.sock")
    dgram = got[inode(client)]
    assert dgram["peer_inode"] == inode(server)
    assert dgram["peer_path"] == ulab.path("log.sock")
    assert dgram["process"]["pid"] == me
    # the text listing: type, names, peer with its holder
    text = run_sockstat("-x", "--pid", str(me)).stdout
    assert "u_str" in text and "u_dgr" in text
    assert f"(unnamed) {inode(right)} {my_comm()}/{me}" in text
    # CSV carries the same columns
    csv_text = run_sockstat("-x", "--pid", str(me), "--csv").stdout
    header = csv_text.splitlines()[0].split(",")
    assert {"path", "unix_type", "peer_inode"} <= set(header)


def test_path_globs_abstract_names_and_the_proc_fallback(ulab):
    ulab.listener("a.sock", 4)
    abstract = ulab.track(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    name = f"sockstat-test-{os.getpid()}"
    abstract.bind("\0" + name)
    abstract.listen(1)
    globbed = rows("--path", os.path.join(ulab.dir, "*.sock"))
    assert [r["path"] for r in globbed] == [ulab.path("a.sock")]
    (row,) = rows("--path", f"@{name}")
    assert row["unix_type"] == "seqpacket" and row["state"] == "LISTEN"
    # /proc/net/unix: the same socket, without queues
    (proc_row,) = rows("--source", "proc", "--path", ulab.path("a.sock"))
    assert proc_row["state"] == "LISTEN" and proc_row["inode"] == globbed[0]["inode"]
    # -x -l: listeners; a TCP port filter selects no UNIX socket
    assert {r["path"] for r in rows("-xl", "--path", os.path.join(ulab.dir, "*"))} == \
        {ulab.path("a.sock")}
    assert rows("-x", "--port", "1") == []


def test_empty_path_is_a_usage_error():
    r = run_sockstat("--path", "")
    assert r.returncode == 2 and r.stderr.startswith("sockstat: error: --path is empty")


def test_summary_counts_unix_sockets(ulab):
    fill_accept_queue(ulab, "s.sock", backlog=1, clients=3)
    r = run_sockstat("summary", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["by_state"]["LISTEN"]["unix"] >= 1
    tcp_only = json.loads(run_sockstat("summary", "-t", "--json").stdout)
    assert all(counts["unix"] == 0 for counts in tcp_only["by_state"].values())


# -- socket memory and drops ---------------------------------------------------------

FLOOD_BURST = 200
FLOOD_MAX_BURSTS = 500  # at most 100k small datagrams to loopback, in any test


def udp_receiver(loop) -> socket.socket:
    """A UDP socket with a 4 KiB receive buffer that never reads (closed by `loop`)."""
    receiver = loop.udp()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return receiver


def flood(port: int, bursts: int, stop: threading.Event | None = None) -> int:
    """Up to `bursts` bursts of datagrams to 127.0.0.1:port; returns how many were sent."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(min(bursts, FLOOD_MAX_BURSTS)):
            if stop is not None and stop.is_set():
                break
            for _ in range(FLOOD_BURST):
                sender.sendto(b"x" * 64, ("127.0.0.1", port))
                sent += 1
            if stop is not None:
                stop.wait(0.02)
    return sent


def test_memory_json_shows_the_drops_of_a_udp_receiver_that_never_reads(loop):
    port = udp_receiver(loop).getsockname()[1]
    flood(port, bursts=5)
    (row,) = rows("-u", "--memory", "--sport", str(port))
    mem = row["memory"]
    assert mem["drops"] > 0 and mem["rcvbuf"] >= 4096
    assert 0 < mem["rmem_alloc"] <= 2 * mem["rcvbuf"]
    assert row["process"]["pid"] == os.getpid()
    # without --memory, nothing is asked and no key appears
    (plain,) = rows("-u", "--sport", str(port))
    assert "memory" not in plain
    text = run_sockstat("-u", "-m", "--sport", str(port)).stdout
    assert "Drops" in text and f"/{mem['rcvbuf']}" in text


def test_check_reports_the_drops_over_its_interval_with_the_pid(loop):
    port = udp_receiver(loop).getsockname()[1]
    stop = threading.Event()
    check = subprocess.Popen(
        [sys.executable, "-m", "sockstat", "check", "--json", "--interval", "1",
         "--sport", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # bursts until the check is done (bounded in count): some land inside its interval
    flooder = threading.Thread(target=flood, args=(port, FLOOD_MAX_BURSTS, stop))
    flooder.start()
    try:
        out, err = check.communicate(timeout=60)
    finally:
        stop.set()
        flooder.join()
        if check.poll() is None:
            check.kill()
            check.wait()
    doc = json.loads(out)
    found = [f for f in doc["findings"] if f["kind"] == "socket_drops"]
    assert len(found) == 1, (out, err)
    (f,) = found
    ev = f["evidence"]
    assert ev["pid"] == os.getpid() and ev["local_port"] == port and ev["proto"] == "udp"
    assert ev["drops"] > 0 and ev["rcvbuf"] >= 4096 and ev["interval_s"] > 0
    assert "rmem_max" in ev and "rate_per_s" in ev
    assert f"/{os.getpid()}" in f["summary"] and "dropped" in f["summary"]
    assert "SO_RCVBUF" in f["remedy"] and "SO_REUSEPORT" in f["remedy"]
    assert check.returncode in (1, 2)


def test_watch_lists_unix_sockets(ulab):
    path = fill_accept_queue(ulab, "w.sock", backlog=1, clients=3)
    r = run_sockstat("watch", "--path", path, "--count", "1", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    frame = json.loads(r.stdout.splitlines()[-1])
    assert frame["total"] == 1 and frame["counts"]["LISTEN"] == 1


def test_watch_judges_the_drops_between_two_refreshes(loop):
    from sockstat.query import Query
    from sockstat.watch.session import Watcher

    port = udp_receiver(loop).getsockname()[1]
    # findings_budget 1.0: the detectors run on every refresh of this short watch
    watcher = Watcher(Query.build(udp=True, sports=[str(port)]), findings_budget=1.0)
    first = watcher.refresh()
    assert not [f for f in first.findings if f.kind == "socket_drops"]
    flood(port, bursts=5)
    second = watcher.refresh()
    (found,) = [f for f in second.findings if f.kind == "socket_drops"]
    assert found.evidence["local_port"] == port and found.evidence["drops"] > 0
    assert found.evidence["pid"] == os.getpid()


def test_kill_refuses_unix_sockets_in_one_line(ulab):
    path = fill_accept_queue(ulab, "k.sock", backlog=1, clients=3)
    for args in (("--path", path, "--yes"), ("-x", "--pid", str(os.getpid()), "--yes")):
        r = run_sockstat("kill", *args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("sockstat: error: kill resets TCP and UDP sockets")
        assert "Traceback" not in r.stderr


EVIL_NAME = "\x00review\x1b[31mRED\nFAKE tcp 1.2.3.4:22"
EVIL_COMM = "ev\x1b[7mil"


@pytest.fixture
def evil_holder():
    """A child process named (prctl PR_SET_NAME) with an escape sequence, holding an
    abstract UNIX socket whose name holds an escape sequence and a newline; killed and
    reaped at teardown."""
    code = (
        "import ctypes, socket, sys\n"
        f"s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind({EVIL_NAME!r})\n"
        "s.listen(1)\n"
        f"ctypes.CDLL(None).prctl(15, ctypes.c_char_p({EVIL_COMM.encode()!r}), 0, 0, 0)\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)


def test_control_characters_in_names_are_escaped_one_socket_a_line(evil_holder):
    shown = "@review\\x1b[31mRED\\nFAKE tcp 1.2.3.4:22"
    listing = run_sockstat("-x", "--path", "@review*")
    assert listing.returncode == 0, listing.stderr
    assert "\x1b" not in listing.stdout
    lines = [line for line in listing.stdout.splitlines() if "review" in line]
    assert len(lines) == 1 and shown in lines[0]
    assert "ev\\x1b[7mil/" in lines[0]
    assert not any(line.lstrip().startswith("FAKE") for line in listing.stdout.splitlines())
    # JSON keeps the real characters (JSON escapes them itself)
    [row] = rows("-x", "--path", "@review*")
    assert row["path"] == "@" + EVIL_NAME[1:]
    assert row["process"]["name"] == EVIL_COMM


def test_proc_and_netlink_agree_on_a_listener_with_an_unaccepted_connection(ulab):
    listener = ulab.listener("queue.sock", backlog=4)
    client = ulab.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    client.connect(ulab.path("queue.sock"))
    mine = {inode(listener), inode(client)}

    def states(source: str) -> dict[int, str]:
        found = {r["inode"]: r["state"] for r in rows("-x", "--source", source)}
        return {i: s for i, s in found.items() if i in mine}

    netlink = states("netlink")
    assert netlink == {inode(listener): "LISTEN", inode(client): "ESTABLISHED"}
    assert states("proc") == netlink
    # nothing invented under the listener's path (it was SYN_SENT, "(listener)")
    assert [r["state"] for r in rows("-x", "--source", "proc", "--path",
                                     ulab.path("queue.sock"))] == ["LISTEN"]
