"""Slow connections: the classification on hand-built tcp_info pairs (every limit, at and
around its thresholds), and on real loopback transfers judged by `sockstat why` and
`sockstat check`: a window-limited sender, a send-buffer-limited sender, an idle one.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading

import pytest
from conftest import REPO, make_snapshot, make_socket, run_sockstat

from sockstat.diagnose import slow
from sockstat.diagnose.thresholds import Thresholds
from sockstat.model import ProcessRef, TcpInfo, TcpState

MSS = 1448


def info(**kw) -> TcpInfo:
    """A sender's tcp_info at time zero, as a 6.x kernel reports it."""
    base = dict(rtt_ms=10.0, rttvar_ms=1.0, snd_cwnd=20, snd_mss=MSS, rcv_mss=MSS,
                retransmits=0, total_retrans=0, unacked=0, lost=0, last_data_sent_ms=0,
                last_data_recv_ms=0, last_ack_recv_ms=0, snd_wnd=1 << 20, rcv_wnd=65535,
                min_rtt_ms=9.0, busy_time_ms=0.0, rwnd_limited_ms=0.0, sndbuf_limited_ms=0.0,
                bytes_acked=0, bytes_sent=0, bytes_retrans=0, data_segs_out=0, total_rto=0,
                delivery_rate=0, delivery_rate_app_limited=False, snd_ssthresh=2147483647,
                notsent_bytes=0, congestion="cubic")
    base.update(kw)
    return TcpInfo(**base)


def later(before: TcpInfo, seconds: float = 1.0, busy: float = 1.0, sent: int = 10_000_000,
          segment: int = MSS, **kw) -> TcpInfo:
    """`before` a second later: busy `busy` of the time, `sent` bytes in full segments."""
    fields = dict(busy_time_ms=None if before.busy_time_ms is None
                  else before.busy_time_ms + busy * seconds * 1000,
                  bytes_sent=before.bytes_sent + sent, bytes_acked=before.bytes_acked + sent,
                  data_segs_out=before.data_segs_out + sent // segment)
    fields.update(kw)
    return dataclasses.replace(before, **fields)


def verdict(after: TcpInfo, before: TcpInfo | None = None, **kw):
    return slow.classify(before or info(), after, 1.0, **kw)


def test_idle_connection_has_no_verdict():
    assert verdict(info()) is None
    assert verdict(info(unacked=0, rtt_ms=50)) is None


def test_receiver_window_from_the_kernel_clock_at_its_threshold():
    v = verdict(later(info(), rwnd_limited_ms=500.0, snd_wnd=16384))
    assert v.limited_by == "receiver_window" and v.problem
    assert v.evidence["rwnd_limited_percent"] == 50.0 and v.evidence["snd_wnd"] == 16384
    assert "16,384 bytes" in v.explanation and "receive buffer" in v.remedy
    assert verdict(later(info(), rwnd_limited_ms=499.0)).limited_by != "receiver_window"


def test_receiver_window_on_kernels_without_the_clock_is_judged_by_the_window():
    old = dict(busy_time_ms=None, rwnd_limited_ms=None, sndbuf_limited_ms=None)
    before = info(**old)
    after = later(before, busy_time_ms=None, unacked=10, snd_wnd=10 * MSS)
    v = verdict(after, before)
    assert v.limited_by == "receiver_window" and v.reason == "receiver_window_full"
    assert v.evidence["busy_percent"] is None and "fills the peer's receive window" in \
        v.explanation


def test_send_buffer_from_the_kernel_clock():
    v = verdict(later(info(), sndbuf_limited_ms=600.0))
    assert v.limited_by == "send_buffer" and v.problem and v.reason == "send_buffer"
    assert "60.0%" in v.explanation and "SO_SNDBUF" in v.remedy


def test_send_buffer_inferred_full_segments_little_in_flight():
    # busy all the time, full segments, 2 segments in flight where cwnd allows 20
    v = verdict(later(info(unacked=2), unacked=2))
    assert v.limited_by == "send_buffer" and v.reason == "send_buffer_inferred"
    assert v.evidence["in_flight_bytes"] == 2 * MSS and v.evidence["avg_segment_bytes"] == MSS
    # the same but dribbling 100-byte segments: the program, not the buffer
    dribble = verdict(later(info(unacked=2), unacked=2, segment=100))
    assert dribble.limited_by == "application" and not dribble.problem


def test_network_on_retransmission_timeouts():
    v = verdict(later(info(), total_rto=2, retransmits=1, backoff=1))
    assert v.limited_by == "network" and v.problem and v.evidence["rtos"] == 2
    assert verdict(later(info(), retransmits=3)).limited_by == "network"


def test_network_when_busy_and_nothing_is_acknowledged():
    stuck = later(info(), sent=0, bytes_acked=0)
    v = verdict(stuck, send_q=3_000_000)
    assert v.limited_by == "network" and v.reason == "network_stuck" and v.problem
    assert "3,000,000 bytes queued" in v.explanation
    # the same with the peer's window full is the receiver's doing
    full = later(info(), sent=0, bytes_acked=0, rwnd_limited_ms=1000.0)
    assert verdict(full).limited_by == "receiver_window"


def test_congestion_on_loss_above_the_noise_threshold():
    lossy = later(info(unacked=20), unacked=20, bytes_retrans=200_000)  # 2% of 10 MB
    v = verdict(lossy)
    assert v.limited_by == "congestion" and v.problem and v.evidence["retrans_percent"] == 2.0
    assert "200,000 bytes retransmitted" in v.explanation
    probes = later(info(unacked=20), unacked=20, bytes_retrans=50_000)  # 0.5%: tail probes
    v = verdict(probes)
    assert v.limited_by == "congestion" and not v.problem  # cwnd-bound, RTT not inflated


def test_cwnd_bound_with_inflated_rtt_is_a_problem():
    v = verdict(later(info(unacked=20), unacked=20, rtt_ms=30.0))
    assert v.limited_by == "congestion" and v.problem


def test_application_when_mostly_idle_or_app_limited():
    v = verdict(later(info(), busy=0.2, sent=100_000))
    assert v.limited_by == "application" and not v.problem
    assert v.evidence["busy_percent"] == 20.0 and "nothing to send" in v.explanation
    # 12 of 20 segments in flight: neither cwnd-bound nor starved by a small buffer
    marked = verdict(later(info(unacked=12), unacked=12, delivery_rate_app_limited=True))
    assert marked.limited_by == "application" and marked.reason == "application_limited"


def test_thresholds_move_the_lines():
    after = later(info(), rwnd_limited_ms=300.0)
    assert verdict(after).limited_by != "receiver_window"
    lower = dataclasses.replace(Thresholds(), slow_limited_percent=30.0)
    assert verdict(after, thresholds=lower).limited_by == "receiver_window"


def _sock(tcp_info: TcpInfo, cookie: int = 1):
    return make_socket(TcpState.ESTABLISHED, ("10.0.0.1", 40000), ("10.0.0.2", 5432),
                       cookie=cookie, inode=5, tcp_info=tcp_info,
                       process=ProcessRef(7, "app", 3, "u"))


def test_detect_reports_problems_only_with_two_samples():
    before = info()
    window = later(before, rwnd_limited_ms=900.0)
    idle_app = later(before, busy=0.1, sent=1000)
    earlier = make_snapshot([_sock(before, 1), _sock(before, 2), _sock(before, 3)], 100.0)
    snap = make_snapshot([_sock(window, 1), _sock(idle_app, 2), _sock(before, 3),
                          _sock(window, 4)], 101.0)
    assert slow.detect(snap, None, Thresholds()) == []  # one sample: nothing to compare
    snap.previous = earlier
    [finding] = slow.detect(snap, None, Thresholds())
    assert finding.kind == "slow_connection" and finding.evidence["limited_by"] == \
        "receiver_window"
    assert finding.sockets[0].cookie == 1 and finding.evidence["pid"] == 7
    assert "10.0.0.2:5432" in finding.summary and "sockstat explain slow" in \
        finding.explanation
    judged = {s.cookie: v.limited_by for s, v in slow.verdicts(snap)}
    assert judged == {1: "receiver_window", 2: "application"}  # 3 idle, 4 new


# -- real transfers on loopback ---------------------------------------------------------

class Pump:
    """Threads that write to / read from sockets until stopped (always joined)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def run(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def write_forever(self, sock: socket.socket) -> None:
        sock.settimeout(0.1)
        chunk = b"x" * 65536
        while not self.stop.is_set():
            try:
                sock.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                return

    def read(self, sock: socket.socket, size: int, pause: float = 0.0) -> None:
        sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                if not sock.recv(size):
                    return
            except TimeoutError:
                continue
            except OSError:
                return
            if pause:
                self.stop.wait(pause)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def pump():
    p = Pump()
    try:
        yield p
    finally:
        p.close()


def _why(port: int) -> dict:
    r = run_sockstat("why", "--port", str(port), "--interval", "1", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _by_local_port(doc: dict) -> dict:
    return {v["socket"]["local_port"]: v for v in doc["verdicts"]}


def test_window_limited_sender_is_receiver_window(loop, pump):
    """A bulk sender to a receiver reading 4 KiB every 50 ms through an 8 KiB SO_RCVBUF."""
    server = loop.listener()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # accepted sockets inherit
    client, conn = loop.connect(server)
    pump.run(pump.write_forever, client)
    pump.run(pump.read, conn, 4096, 0.05)
    port = server.getsockname()[1]
    sender = client.getsockname()[1]
    verdicts = _by_local_port(_why(port))
    assert verdicts[sender]["limited_by"] == "receiver_window"
    assert verdicts[sender]["evidence"]["rwnd_limited_percent"] >= 50
    assert conn.getsockname()[1] not in verdicts  # the receiver only sends ACKs: idle
    r = run_sockstat("check", "--port", str(port), "--json")
    found = [f for f in json.loads(r.stdout)["findings"] if f["kind"] == "slow_connection"]
    assert [f["evidence"]["limited_by"] for f in found] == ["receiver_window"]
    assert found[0]["evidence"]["local"].endswith(f":{sender}")
    assert r.returncode == 1  # a warning


# The one bulk sender of the real tests, run in a process of its own (no GIL shared
# with a reader): connects to ADDRESS:PORT (PORT 0: to a listener it makes there), with
# SO_SNDBUF set when SNDBUF is not 0; prints "<port> <its own port>"; with "wait" it
# sends only after a line on stdin; then writes until killed.
BULK_SENDER = """
import socket, sys
address, port, sndbuf, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
keep = []
if port == 0:
    listener = socket.socket()
    listener.bind((address, 0))
    listener.listen()
    port = listener.getsockname()[1]
    keep.append(listener)
sender = socket.socket()
if sndbuf:
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
sender.connect((address, port))
if keep:
    keep.append(keep[0].accept()[0])
print(port, sender.getsockname()[1], flush=True)
if wait == "wait":
    sys.stdin.readline()
chunk = b"x" * 65536
try:
    while True:
        sender.sendall(chunk)
except OSError:
    pass
"""


def bulk_sender(*prefix: str, address: str = "127.0.0.1", port: int = 0, sndbuf: int = 0,
                wait: bool = False) -> tuple[subprocess.Popen, int, int]:
    """Start BULK_SENDER (under `prefix`, e.g. ip netns exec NS): (process, port, its
    own port). The caller stops it with _stop."""
    process = subprocess.Popen([*prefix, sys.executable, "-c", BULK_SENDER, address,
                                str(port), str(sndbuf), "wait" if wait else "go"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().split()
    if len(line) != 2:
        _stop(process)
        raise AssertionError("the sender did not start")
    return process, int(line[0]), int(line[1])


def _go(process: subprocess.Popen) -> None:
    process.stdin.write("go\n")
    process.stdin.flush()


def test_tiny_send_buffer_sender_is_send_buffer(loop, pump):
    """A sender with a tiny SO_SNDBUF, in its own process (no GIL shared with the
    reader), to a receiver that reads everything at once."""
    server = loop.listener()
    port = server.getsockname()[1]
    sender, _, sender_port = bulk_sender(port=port, sndbuf=4096)
    try:
        conn, _ = server.accept()
        loop.sockets.append(conn)
        pump.run(pump.read, conn, 1 << 20)
        loop.tuples.add((("127.0.0.1", sender_port), ("127.0.0.1", port)))
        verdicts = _by_local_port(_why(port))
        assert verdicts[sender_port]["limited_by"] == "send_buffer", verdicts[sender_port]
        assert verdicts[sender_port]["problem"] is True
        assert "SO_SNDBUF" in verdicts[sender_port]["remedy"]
    finally:
        _stop(sender)


def test_idle_connection_is_not_flagged(loop):
    server = loop.listener()
    client, conn = loop.connect(server)
    client.sendall(b"hello")
    conn.recv(5)
    port = server.getsockname()[1]
    doc = _why(port)
    assert doc["verdicts"] == [] and doc["idle"] == 2
    r = run_sockstat("check", "--port", str(port), "--json")
    assert not [f for f in json.loads(r.stdout)["findings"] if f["kind"] == "slow_connection"]


def test_judge_compares_each_snapshot_with_the_one_before():
    """The exporter and watch judge every scrape or refresh: the previous snapshot is the
    first sample, and is let go afterwards (no chain of every snapshot since start)."""
    from sockstat.observe import Judge

    before = info()
    first = make_snapshot([_sock(before, 1)], 100.0)
    second = make_snapshot([_sock(later(before, rwnd_limited_ms=900.0), 1)], 101.0)
    judge = Judge()
    assert not [f for f in judge.judge(first).findings if f.kind == "slow_connection"]
    found = [f for f in judge.judge(second).findings if f.kind == "slow_connection"]
    assert [f.evidence["limited_by"] for f in found] == ["receiver_window"]
    assert second.previous is None and first.previous is None


def test_judge_keeps_only_the_sockets_with_tcp_info_for_the_next_look():
    """Between two looks the judge keeps what the next one compares with: the sockets
    that carry tcp_info, not a big table's TIME_WAIT, UDP or tcp_info-less rest."""
    from sockstat.observe import Judge

    before = info()
    sending = _sock(before, 1)
    rest = [make_socket(TcpState.TIME_WAIT, remote=("127.0.0.1", 40000 + i), cookie=10 + i)
            for i in range(50)]
    judge = Judge()
    judge.judge(make_snapshot([sending, *rest], 100.0))
    assert judge.last_snapshot.sockets == [sending]
    assert judge.last_snapshot.taken_at == 100.0
    second = make_snapshot([_sock(later(before, rwnd_limited_ms=900.0), 1), *rest], 101.0)
    found = [f for f in judge.judge(second).findings if f.kind == "slow_connection"]
    assert [f.evidence["limited_by"] for f in found] == ["receiver_window"]




@pytest.fixture
def netns():
    """A network namespace of this test's own, with only lo, deleted afterwards."""
    import os
    import shutil

    if not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("needs iproute2 (ip, tc)")
    name = f"sockstat-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.root
def test_a_device_that_drops_everything_is_network(netns):
    """In a namespace of its own, a sender whose packets are all dropped before they
    leave (a pfifo of length 0 on lo): busy, nothing acknowledged, limited_by network."""
    in_ns = ["ip", "netns", "exec", netns]
    helper, port, sender_port = bulk_sender(*in_ns, wait=True)
    try:
        subprocess.run([*in_ns, "tc", "qdisc", "add", "dev", "lo", "root", "pfifo",
                        "limit", "0"], check=True)
        _go(helper)
        v = _by_local_port(_why_in(in_ns, port))[sender_port]
        assert v["limited_by"] == "network", json.dumps(v["evidence"])
        assert v["evidence"]["bytes_acked"] == 0 and v["problem"] is True
        assert "does not get through" in v["explanation"]
    finally:
        _stop(helper)


def _why_in(in_ns: list[str], port: int) -> dict:
    r = subprocess.run([*in_ns, sys.executable, "-m", "sockstat", "why", "--port", str(port),
                        "--interval", "1", "--json"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=10)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


RECEIVER = """
import socket, sys
listener = socket.socket()
listener.bind((sys.argv[1], 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
while conn.recv(1 << 20):
    pass
"""


@pytest.fixture
def two_hosts(netns):
    """Two namespaces joined by a veth pair: the sender's and the receiver's namespace,
    the receiver's address, the sender's and the receiver's device. Both namespaces are
    this test's, deleted afterwards (the veth pair goes with them)."""
    import os

    peer = netns + "-b"
    here, there = f"ss{os.getpid()}a", f"ss{os.getpid()}b"  # unique: made in the namespaces
    subprocess.run(["ip", "netns", "add", peer], check=True, capture_output=True)
    try:
        commands = [
            ["ip", "link", "add", here, "netns", netns, "type", "veth", "peer", "name",
             there, "netns", peer],
            ["ip", "-n", netns, "addr", "add", "10.213.0.1/24", "dev", here],
            ["ip", "-n", peer, "addr", "add", "10.213.0.2/24", "dev", there],
            ["ip", "-n", netns, "link", "set", here, "up"],
            ["ip", "-n", peer, "link", "set", there, "up"],
            ["ip", "-n", peer, "link", "set", "lo", "up"],
        ]
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        yield netns, peer, "10.213.0.2", here, there
    finally:
        subprocess.run(["ip", "netns", "del", peer], capture_output=True)


@pytest.mark.root
def test_a_path_that_loses_every_ack_is_network_with_timeouts(two_hosts):
    """The data arrives but every ACK is lost on the way back (a pfifo of length 0 on
    the receiver's side of a veth pair): the sender retransmits on timeouts."""
    ns, peer, address, _, peer_device = two_hosts
    in_ns, in_peer = ["ip", "netns", "exec", ns], ["ip", "netns", "exec", peer]
    receiver = subprocess.Popen([*in_peer, sys.executable, "-c", RECEIVER, address],
                                stdout=subprocess.PIPE, text=True)
    sender = None
    try:
        port = int(receiver.stdout.readline())
        sender, _, sender_port = bulk_sender(*in_ns, address=address, port=port, wait=True)
        subprocess.run([*in_peer, "tc", "qdisc", "add", "dev", peer_device, "root", "pfifo",
                        "limit", "0"], check=True)
        _go(sender)
        v = _by_local_port(_why_in(in_ns, port))[sender_port]
        assert v["limited_by"] == "network", json.dumps(v["evidence"])
        assert v["evidence"]["rtos"] >= 1 and v["problem"] is True
        assert "retransmission timeout" in v["explanation"]
    finally:
        for process in (sender, receiver):
            if process is not None:
                _stop(process)



@pytest.mark.root
def test_a_rate_limited_path_is_congestion(two_hosts):
    """A 20 Mbit/s bottleneck (tbf on the sender's side of a veth pair): the sender is
    held by its congestion window and the RTT grows far over min_rtt in the queue."""
    ns, peer, address, device, _ = two_hosts
    in_ns, in_peer = ["ip", "netns", "exec", ns], ["ip", "netns", "exec", peer]
    subprocess.run([*in_ns, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate",
                    "20mbit", "burst", "32kbit", "latency", "100ms"], check=True)
    receiver = subprocess.Popen([*in_peer, sys.executable, "-c", RECEIVER, address],
                                stdout=subprocess.PIPE, text=True)
    sender = None
    try:
        port = int(receiver.stdout.readline())
        sender, _, sender_port = bulk_sender(*in_ns, address=address, port=port)
        v = _by_local_port(_why_in(in_ns, port))[sender_port]
        assert v["limited_by"] == "congestion", json.dumps(v["evidence"])
        evidence = v["evidence"]
        assert evidence["rtt_ms"] >= 2 * evidence["min_rtt_ms"] and v["problem"] is True
        # No more through than the bottleneck lets by, timed by the kernel's own clock:
        # bytes are acknowledged only while the sender is busy (data unacknowledged or
        # queued), and busy_ms is that time between the two tcp_info reads. Not the
        # evidence's throughput, which divides by the snapshots' wall-clock stamps: a
        # process descheduled between a stamp and its dump moves one clock from the
        # other (the stamps came before the owner scan's fork and imports once: on a
        # loaded CPU 0.24-0.29 s over a 1 s interval); a late second read makes the
        # interval look shorter and the throughput higher than a 20% margin allows.
        assert evidence["busy_ms"] > 0
        assert evidence["bytes_acked"] <= 20_000_000 / 8 * evidence["busy_ms"] / 1000 * 1.2
    finally:
        for process in (sender, receiver):
            if process is not None:
                _stop(process)


def test_paced_senders_near_cwnd_are_cwnd_bound_and_loopback_jitter_is_no_inflation():
    paced = verdict(later(info(unacked=17), unacked=17, rtt_ms=30.0))  # 85% of cwnd
    assert paced.limited_by == "congestion" and paced.problem
    jitter = info(unacked=20, rtt_ms=0.5, min_rtt_ms=0.01)  # 50x, but half a millisecond
    v = verdict(later(jitter, unacked=20), jitter)
    assert v.limited_by == "congestion" and not v.problem
