"""`sockstat watch` as a user runs it, without a terminal: the JSONL stream (schema, and
deltas that match the sockets the test makes while it runs) and bad input."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

import pytest
from conftest import REPO, run_sockstat

STATES = ["LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
          "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT", "UNCONN", "BOUND_INACTIVE"]


class Stream:
    """A running `sockstat watch --jsonl`, read line by line with a deadline."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env.pop("FORCE_COLOR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockstat", "watch", "--jsonl", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        self.lines: list[dict] = []

    def next(self, timeout: float = 20.0) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no JSON line within {timeout}s"
        line = self.proc.stdout.readline()
        assert line, f"watch ended early: {self.proc.stderr.read()}"
        self.lines.append(json.loads(line))
        return self.lines[-1]

    def until(self, predicate, what: str, limit: int = 60) -> dict:
        for _ in range(limit):
            line = self.next()
            if predicate(line):
                return line
        raise AssertionError(f"no refresh showed {what} in {limit} refreshes")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def stream():
    streams: list[Stream] = []

    def start(*args: str) -> Stream:
        streams.append(Stream(*args))
        return streams[-1]

    yield start
    for s in streams:
        s.close()


def test_jsonl_schema_and_count():
    result = run_sockstat("watch", "--jsonl", "--interval", "0.2", "--count", "3",
                          "--port", "1")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["refresh"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert list(line["counts"]) == STATES
        assert list(line["delta"]) == STATES and list(line["since_start"]) == STATES
        assert line["interval"] == 0.2 and line["source"] == "netlink"
        assert set(line["top"]) == {"processes", "local_ports", "remote_hosts"}
        assert isinstance(line["findings"], list) and isinstance(line["timestamp"], float)
    assert lines[0]["elapsed"] is None and lines[0]["opened_per_s"] is None
    assert lines[1]["elapsed"] > 0 and lines[2]["timestamp"] > lines[1]["timestamp"]


def test_not_a_terminal_means_jsonl():
    result = run_sockstat("watch", "--interval", "0.1", "--count", "1", "--port", "1")
    assert result.returncode == 0
    assert json.loads(result.stdout)["refresh"] == 1


def test_deltas_match_the_sockets_the_test_makes(loop, stream):
    server = loop.listener()
    port = server.getsockname()[1]
    watch = stream("--interval", "0.3", "--port", str(port))
    baseline = watch.next()
    assert {k: v for k, v in baseline["counts"].items() if v} == {"LISTEN": 1}

    pairs = [loop.connect(server) for _ in range(3)]
    line = watch.until(lambda d: d["since_start"]["ESTABLISHED"] == 6, "6 ESTABLISHED")
    assert line["counts"]["ESTABLISHED"] == 6
    assert line["opened_total"] == 6 and line["closed_total"] == 0
    # the watch is another process: it names this one (listener + 3 + 3 sockets), at
    # the latest one scan later (scans keep to a CPU budget)
    watch.until(lambda d: {p["pid"]: p["sockets"] for p in d["top"]["processes"]}
                .get(os.getpid()) == 7, "this process owning 7 sockets")

    # two clients close first (-> TIME_WAIT); their servers then close (-> gone); the
    # third pair is reset
    for client, _ in pairs[:2]:
        client.close()
    for _, conn in pairs[:2]:
        _eof(conn)
        conn.close()
    line = watch.until(lambda d: d["counts"]["TIME_WAIT"] == 2
                       and d["counts"]["ESTABLISHED"] == 2, "2 TIME_WAIT, 2 ESTABLISHED")
    assert line["closed_total"] == 4  # 2 into TIME_WAIT + 2 server sockets gone
    loop.close_all()
    line = watch.until(lambda d: d["counts"]["ESTABLISHED"] == 0
                       and d["counts"]["LISTEN"] == 0, "everything closed")
    assert line["closed_total"] == 6 and line["opened_total"] == 6
    assert line["counts"]["TIME_WAIT"] == 2
    # every delta adds up to the change since the start
    for state in STATES:
        assert sum(d["delta"][state] for d in watch.lines) == line["since_start"][state]
    assert sum(d["opened"] for d in watch.lines) == 6
    assert sum(d["closed"] for d in watch.lines) == 6


def test_time_wait_owner_and_close_wait_age_in_the_stream(loop, stream):
    """The watch is another process here, so it names the test process: the owner of a
    client TIME_WAIT it saw alive, and the holder of a CLOSE_WAIT whose age it counts."""
    server = loop.listener()
    port = server.getsockname()[1]
    leaky_client, leaky_conn = loop.connect(server)
    closer, closer_conn = loop.connect(server)
    watch = stream("--interval", "0.3", "--port", str(port))
    watch.next()
    leaky_client.close()  # the server side never closes: CLOSE_WAIT
    closer.close()  # the client closes first ...
    _eof(closer_conn)
    closer_conn.close()  # ... so the TIME_WAIT is the client's
    line = watch.until(lambda d: d["counts"]["TIME_WAIT"] == 1
                       and d["counts"]["CLOSE_WAIT"] == 1, "TIME_WAIT and CLOSE_WAIT")
    [owner] = line["time_wait_owners"]
    assert owner["pid"] == os.getpid() and owner["via_listener"] is False
    [aged] = line["oldest_close_wait"]
    assert aged["pid"] == os.getpid() and aged["at_least"] is False
    assert aged["local"] == f"127.0.0.1:{port}"
    later = watch.next()
    assert later["oldest_close_wait"][0]["age_s"] > aged["age_s"]


def _eof(conn) -> None:
    """Wait (bounded) until the peer's FIN has arrived."""
    conn.settimeout(10)
    assert conn.recv(1) == b""


def test_bad_input_is_one_line_and_exit_2():
    for args in (["--state", "bogus"], ["--interval", "0"], ["--count", "0"],
                 ["--port", "70000"]):
        result = run_sockstat("watch", "--jsonl", *args)
        assert result.returncode == 2, args
        assert result.stderr.startswith("sockstat: error: ")
        assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout


@pytest.mark.parametrize("interval", ["1e10", "1e300"])
def test_an_interval_longer_than_a_sleep_can_last_waits_until_stopped(stream, interval):
    """Regression: a finite --interval past what one sleep takes (~292 years) ended the
    stream with OverflowError's traceback right after its first refresh; it is waited
    out (in pieces) until Ctrl-C, which ends the watch as at any other interval."""
    import signal

    watch = stream("--interval", interval, "--count", "2", "--port", "1")
    assert watch.next()["refresh"] == 1
    watch.proc.send_signal(signal.SIGINT)
    assert watch.proc.wait(timeout=30) == 130
    assert "Traceback" not in watch.proc.stderr.read()


def test_broken_pipe_is_quiet():
    proc = subprocess.run(
        f"{sys.executable} -m sockstat watch --interval 0.1 --port 1 | head -c 10",
        shell=True, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""


def test_time_wait_seen_only_dead_is_named_through_its_listener(loop, stream):
    """Filtered to TIME_WAIT, the watch never sees the connection alive: the server-side
    TIME_WAIT is named by the listener on its port (which the filter leaves out)."""
    server = loop.listener()
    port = server.getsockname()[1]
    client, conn = loop.connect(server)
    watch = stream("--interval", "0.3", "--port", str(port), "--state", "time-wait")
    assert watch.next()["total"] == 0
    conn.close()  # the server closes first: the TIME_WAIT is on the listener's port
    _eof(client)
    client.close()
    line = watch.until(lambda d: d["counts"]["TIME_WAIT"] == 1, "the server TIME_WAIT")
    [owner] = line["time_wait_owners"]
    assert owner["pid"] == os.getpid() and owner["via_listener"] is True
    assert line["opened_total"] == 1 and line["closed_total"] == 1
