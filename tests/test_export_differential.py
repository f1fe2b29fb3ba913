"""The exporter's cheap scrape against the full-row computation it replaced.

A scrape names the owners of only the sockets its labels and the detectors' verdicts
read, decodes tcp_info only where it is read, screens idle connections before the
slow-connection detector judges them, and splits clients from servers once. The
reference here does none of that: every owner named, every tcp_info decoded, every
connection judged, each split computed afresh. Both expositions must be equal.

Real sockets in a network namespace of the test's own (`unshare --net`: the host's
table changes under other work): listeners, ESTABLISHED pairs, TIME_WAIT, CLOSE_WAIT
held by a forked child process and by this one, a connection with unread data, a sender
stuck on its peer's window, UDP sockets. Everything dies with the namespace's process.

Even this table moves between two collections: tcp_info ages grow past thresholds (the
stuck sender's last send crossed stall_min_age between the scrape and the reference),
timers count down, the owner scan's own child opens a UNIX socket (glibc's nscd probe)
while the table is dumped. So both judge the same look: the scrape reads the live
kernel, its sock_diag replies, kernel counters and collection time are recorded as
they come (_Tape), and the reference decodes and judges those same bytes. Owners
(/proc), services and fd limits the reference reads live: nothing there moves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root, unshare and ip to make a network namespace")

# what differs between two computations from one look: the scrape's own duration
MOVING = ("sockstat_scrape_duration_seconds",)


def test_scrape_exposition_equals_the_full_row_computation():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c",
         f"ip link set lo up && exec {sys.executable} {__file__} --inside"],
        capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["sockets"] >= 60  # the table was built
    for round_, (cheap, full) in enumerate(result["rounds"]):
        assert cheap == full, f"round {round_}"
    text = result["rounds"][-1][0]
    # the labelled series are there, with the process that leaks
    assert 'sockstat_close_wait_sockets{container="",pid="' in text
    assert 'state="TIME_WAIT"} 8.0' in text
    for kind in ("slow_connection", "close_wait_leak", "recv_stalled", "send_stalled"):
        assert f'sockstat_findings{{kind="{kind}",severity="warning"}} 0.0' not in text, kind
    # the cheap scrape really named fewer owners (idle ESTABLISHED left unnamed)
    assert result["named"]["cheap"] < result["named"]["full"]


# -- inside the namespace ---------------------------------------------------------------

def _inside() -> None:
    import dataclasses
    import socket
    import threading
    import time
    from unittest import mock

    from sockstat import __version__, observe
    from sockstat.collect import DROPS, collect, netlink
    from sockstat.diagnose import COMPARED_TCP_INFO_STATES, slow
    from sockstat.diagnose.thresholds import Thresholds
    from sockstat.exporter import Scraper, exposition, finding_kinds, to_prometheus
    from sockstat.model import Proto
    from sockstat.observe import Judge
    from sockstat.query import Query
    from sockstat.render import metrics

    made: list[socket.socket] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    made.append(server)
    port = server.getsockname()[1]
    pairs = []
    for _ in range(24):  # ESTABLISHED both ends
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        made += [client, accepted]
        pairs.append((client, accepted))
    pairs[0][0].sendall(b"x" * 5000)  # unread data: Recv-Q on the accepted end
    # a sender its peer never reads: busy, held back by the peer's window (what the
    # slow-connection detector judges, where the idle screen lets it through)
    stuck = pairs[1][0]
    stuck.setblocking(False)
    try:
        while True:
            stuck.send(b"y" * 65536)
    except BlockingIOError:
        pass
    for client, _ in pairs[-6:]:  # the server end sits in CLOSE_WAIT, held here
        client.shutdown(socket.SHUT_WR)
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.listen(16)
    made.append(other)
    for _ in range(8):  # TIME_WAIT on the server side: it closes first
        client = socket.create_connection(other.getsockname())
        accepted, _ = other.accept()
        accepted.close()
        client.recv(1)
        client.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    made.append(udp)
    # a forked child holding CLOSE_WAIT sockets of its own (a process label to export)
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_r)
            os.close(stop_w)
            srv = socket.socket()
            srv.bind(("127.0.0.3", 0))
            srv.listen(16)
            held = [srv]
            for _ in range(4):
                c = socket.create_connection(srv.getsockname())
                a, _ = srv.accept()
                c.close()  # its peer, `a`, sits in CLOSE_WAIT in this process
                held.append(a)
            os.write(ready_w, b"1")
            os.read(stop_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(stop_r)
    try:
        os.read(ready_r, 1)
        time.sleep(0.2)  # the FINs above have been processed (loopback: at once)
        query = Query(protos=frozenset({Proto.TCP, Proto.UDP, Proto.UNIX}))
        # ages past the thresholds early (the defaults, 10 s, are never reached here):
        # leaks and stalls are found, so their verdicts are compared too
        thresholds = dataclasses.replace(Thresholds(), close_wait_warn=1,
                                         close_wait_min_age=0.05, stall_min_age=0.05)
        cheap = Scraper(cache_seconds=0.0)
        cheap._judge.thresholds = thresholds
        full_judge = Judge(thresholds)
        named = {}
        tape = _Tape()

        def full_exposition() -> str:
            """The full-row computation: every owner, every tcp_info decoded, every
            connection judged by Interval.of, no shared split; from the kernel's
            answers to the scrape just before (the tape)."""
            with mock.patch.object(netlink, "open_socket", tape.replayer), \
                    mock.patch.object(observe, "sample_kernel", tape.replay_sample):
                # tcp_info asked as the scrape asks it (not in the listeners' dump:
                # test_export checks that no family reads theirs)
                snap = collect(query, processes=True, tcp_info=COMPARED_TCP_INFO_STATES,
                               services=True, memory=DROPS)
                snap.taken_at = tape.taken_at  # the slow and drop detectors' intervals
                for sock in snap.sockets:
                    if sock.tcp_info is not None:
                        dataclasses.astuple(sock.tcp_info)
                named["full"] = sum(1 for s in snap.sockets if s.process is not None)
                with mock.patch.object(slow, "idle", lambda *a: False):
                    verdict = full_judge.judge(snap)
            collection = metrics.Collection(
                snapshot=snap, findings=verdict.findings, kernel=verdict.kernel.after,
                duration_seconds=0.0, finding_kinds=finding_kinds())
            return _text(exposition(_Registry(list(to_prometheus(metrics.build(
                collection, version=__version__))))))

        def cheap_exposition() -> str:
            collect_live = cheap.collect_live

            def counted():
                tape.clear()
                with mock.patch.object(netlink, "open_socket", tape.recorder), \
                        mock.patch.object(observe, "sample_kernel", tape.record_sample):
                    collection = collect_live()
                tape.taken_at = collection.snapshot.taken_at
                named["cheap"] = sum(1 for s in collection.snapshot.sockets
                                     if s.process is not None)
                return collection

            cheap._collect_now = counted
            return _text(exposition(_Registry(list(to_prometheus(cheap.families())))))

        rounds = []
        for _ in range(3):  # the first: no earlier sample; then the detectors compare
            rounds.append((cheap_exposition(), full_exposition()))
            time.sleep(0.3)  # an interval the stuck sender is busy through
        # with another thread alive (the HTTP server's), the owner scan runs in this
        # process instead of a forked child: the other way an OwnerRequest is served
        release = threading.Event()
        server_thread = threading.Thread(target=release.wait)
        server_thread.start()
        try:
            for _ in range(2):
                rounds.append((cheap_exposition(), full_exposition()))
                time.sleep(0.3)
        finally:
            release.set()
            server_thread.join()
        sockets = len(collect(query).sockets)
        print(json.dumps({"rounds": rounds, "sockets": sockets, "named": named}))
    finally:
        os.write(stop_w, b"1")
        os.waitpid(child, 0)
        for sock in made:
            sock.close()


def _text(data: bytes) -> str:
    return "\n".join(line for line in data.decode().splitlines()
                     if not line.startswith(MOVING))


class _Tape:
    """One look at the kernel, recorded as the scrape takes it and replayed to the
    reference: each sock_diag request with its replies, byte for byte, the kernel
    sample (counters, totals, sysctls) and the collection's time. A request the scrape
    did not make is an error, never a live read."""

    def __init__(self) -> None:
        from sockstat import observe
        from sockstat.collect import netlink

        self._open, self._sample = netlink.open_socket, observe.sample_kernel  # the real
        self.clear()

    def clear(self) -> None:
        self.replies: dict[bytes, list[list[tuple[bytes, int]]]] = {}
        self.sample = None
        self.taken_at = None

    def recorder(self):
        return _Recording(self._open(), self)

    def replayer(self):
        return _Replaying({request: list(answers) for request, answers
                           in self.replies.items()})

    def record_sample(self, procfs="/proc", pids=()):
        self.sample = self._sample(procfs, pids)
        return self.sample

    def replay_sample(self, procfs="/proc", pids=()):
        """The recorded counters with the reference's own processes' fd limits (the
        reference names more owners: their limits are read, as a full scrape would)."""
        import dataclasses

        recorded, error = self.sample
        live, _ = self._sample(procfs, pids)
        if recorded is None or live is None:
            return recorded, error
        return dataclasses.replace(recorded, limits=live.limits), error


class _Recording:
    """A sock_diag socket that keeps what the kernel answers to each request."""

    def __init__(self, sock, tape: _Tape) -> None:
        self._sock, self._tape, self._answer = sock, tape, None

    def send(self, data) -> int:
        self._answer = []
        self._tape.replies.setdefault(bytes(data), []).append(self._answer)
        return self._sock.send(data)

    def recvmsg_into(self, buffers):
        got = self._sock.recvmsg_into(buffers)
        self._answer.append((bytes(memoryview(buffers[0])[:got[0]]), got[2]))
        return got

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self._answer.append((data, 0))
        return data

    def close(self) -> None:
        self._sock.close()


class _Replaying:
    """Answers each request as the kernel answered it during the recording."""

    def __init__(self, replies: dict) -> None:
        self._replies, self._answer = replies, iter(())

    def send(self, data) -> int:
        answers = self._replies.get(bytes(data))
        assert answers, f"a request the scrape did not make: {bytes(data).hex()}"
        self._answer = iter(answers.pop(0))
        return len(data)

    def recvmsg_into(self, buffers):
        data, flags = next(self._answer)
        memoryview(buffers[0])[:len(data)] = data
        return len(data), [], flags, None

    def recv(self, size: int) -> bytes:
        return next(self._answer)[0]

    def close(self) -> None:
        pass


class _Registry:
    """Just enough of a registry for generate_latest(): these families."""

    def __init__(self, families) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


if __name__ == "__main__" and sys.argv[1:] == ["--inside"]:
    _inside()
