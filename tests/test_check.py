"""`sockstat check` as a user runs it: a subprocess, on this test's own ports.

Each check is restricted to the test's ports (--port), which also turns off the
host-wide checks: other engineers' sockets and kernel counters on this machine must not
decide these tests. Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys

import pytest
from conftest import REPO, my_comm, run_sockstat, wait_for

from sockstat.collect import collect
from sockstat.model import TcpState
from sockstat.query import Query

ME = os.getpid()
FAST = ("--interval", "0")  # no counter rates needed: keep each run short


def close_wait_leak(loop, n: int = 3) -> int:
    """n connections whose peer hung up and that this process never closes."""
    server = loop.listener()
    port = server.getsockname()[1]
    for _ in range(n):
        client, _conn = loop.connect(server)
        client.close()

    def ready():
        snap = collect(Query.build(ports=[port], states=["close-wait"]))
        return len(snap.sockets) == n
    wait_for(ready, what=f"{n} CLOSE_WAIT sockets")
    return port


def healthy(loop) -> int:
    server = loop.listener()
    for _ in range(3):
        client, conn = loop.connect(server)
        client.sendall(b"hi")
        assert conn.recv(2) == b"hi"
    return server.getsockname()[1]


def test_healthy_ports_exit_0(loop):
    # "healthy table": this test's own healthy listener and connections only (--port)
    port = healthy(loop)
    result = run_sockstat("check", "--port", str(port), *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "OK: no problems found in 7 sockets\n"
    assert result.stderr == ""


def test_healthy_ports_json(loop):
    port = healthy(loop)
    result = run_sockstat("check", "--port", str(port), "--json", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "ok" and doc["exit_status"] == 0 and doc["findings"] == []
    assert doc["checked"]["sockets"] == 7 and doc["checked"]["host_checks"] is False
    assert doc["kernel"]["interval_s"] > 0  # two samples: deltas are present
    assert doc["kernel"]["counters"]["TcpExt.ListenOverflows"]["delta"] >= 0
    assert doc["kernel"]["sysctls"]["usable_ephemeral_ports"] > 0


def test_close_wait_leak_warning_plain_text(loop):
    port = close_wait_leak(loop)
    result = run_sockstat("check", "--port", str(port), "--close-wait-warn", "3",
                          "--close-wait-min-age", "0", *FAST)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"[WARNING] close_wait_leak: {my_comm()}/{ME}"
    assert lines[1].startswith(f"  3 sockets in CLOSE_WAIT held by {my_comm()}/{ME}")
    assert "fin_unread=3" in lines[2] and f"pid={ME}" in lines[2]
    assert lines[-1].startswith("WARNING: 1 problem (1 warning) in 7 sockets")
    assert "\x1b[" not in result.stdout  # piped: no colour


def test_close_wait_leak_critical_json(loop):
    port = close_wait_leak(loop)
    result = run_sockstat("check", "--port", str(port), "--close-wait-warn", "2",
                          "--close-wait-crit", "3", "--close-wait-min-age", "0", "--json",
                          *FAST)
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "critical" and doc["exit_status"] == 2
    [f] = doc["findings"]
    assert f["kind"] == "close_wait_leak" and f["severity"] == "critical"
    assert f["evidence"]["pid"] == ME and f["evidence"]["close_wait"] == 3
    assert len(f["sockets"]) == 3
    assert {s["local_port"] for s in f["sockets"]} == {port}
    assert {s["state"] for s in f["sockets"]} == {"CLOSE_WAIT"}


def test_young_close_wait_is_not_a_leak_by_default(loop):
    port = close_wait_leak(loop)
    result = run_sockstat("check", "--port", str(port), "--close-wait-warn", "3", *FAST)
    assert result.returncode == 0, result.stdout  # younger than --close-wait-min-age 10


def test_full_accept_queue_is_critical(loop):
    server = loop.listener(backlog=0)
    port = server.getsockname()[1]
    client, _ = loop.connect(server, accept=False)
    wait_for(lambda: any(s.recv_q == 1 for s in collect(Query.build(
        ports=[port], states=["listen"])).sockets), what="one queued connection")
    result = run_sockstat("check", "--port", str(port), "--json", *FAST)
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    [f] = [f for f in doc["findings"] if f["kind"] == "accept_queue"]
    assert f["evidence"]["local_port"] == port and f["evidence"]["full"] is True
    assert f["evidence"]["pid"] == ME


@pytest.mark.parametrize("args", [
    ("--port", "70000"),
    ("--state", "sleepy"),
    ("--bogus",),
    ("--close-wait-warn", "5", "--close-wait-crit", "2"),
    ("--queue-warn", "150"),
    ("--interval", "-1"),
])
def test_usage_errors_are_unknown_3(args):
    result = run_sockstat("check", *FAST, *args)
    assert result.returncode == 3, result
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("sockstat: error: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [
    ("--nosuch", "check"),
    ("--interval", "5", "check"),
    ("--close-wait-warn", "5", "check"),
    ("--port", "80", "check"),
    ("-P", "x", "--bogus", "check"),
])
def test_usage_errors_before_the_command_are_unknown_3_too(argv):
    """Options of check typed before it fail in the main listing's parser; it is still a
    check run, and cron or Nagios must read UNKNOWN, not CRITICAL."""
    result = run_sockstat(*argv)
    assert result.returncode == 3, result
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("sockstat: error: ")


def _run_in_terminal(args, env_extra):
    """Run sockstat with stdout on a pseudo-terminal; returns (output, exit status)."""
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)
    env.pop("NO_COLOR", None)
    env.update(env_extra, COLUMNS="120", TERM="xterm")
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sockstat", *args], stdout=sub,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)
    os.close(sub)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        code = proc.wait(timeout=30)
        proc.stderr.close()
    return b"".join(chunks).decode(), code


@pytest.mark.parametrize(("env", "coloured"), [({}, True), ({"NO_COLOR": "1"}, False)])
def test_terminal_gets_panels_and_no_color_is_honoured(loop, env, coloured):
    port = close_wait_leak(loop)
    out, code = _run_in_terminal(["check", "--port", str(port), "--close-wait-warn", "3",
                                  "--close-wait-min-age", "0", *FAST], env)
    assert code == 1
    assert "╭" in out and "close_wait_leak" in out and "why" in out  # a rich panel
    assert ("\x1b[" in out) is coloured
    assert "WARNING: 1 problem (1 warning) in 7 sockets" in out


def test_check_help_documents_exit_status():
    result = run_sockstat("check", "--help", env={"COLUMNS": "100"})
    assert result.returncode == 0
    assert "Exit status: 0 no problems, 1 warnings, 2 critical, 3 could not" in \
        " ".join(result.stdout.split()).replace("│", "").replace("  ", " ")


def test_states_from_check_match_the_kernel(loop):
    # the check's socket count comes from the same table the kernel reports
    port = close_wait_leak(loop, n=2)
    result = run_sockstat("check", "--port", str(port), "--json", *FAST)
    doc = json.loads(result.stdout)
    from conftest import kernel_rows
    rows = [r for r in kernel_rows({port}) if r["state"] != "TIME_WAIT"]
    assert doc["checked"]["sockets"] == len(rows)
    assert sum(1 for r in rows if r["state"] == TcpState.CLOSE_WAIT.name) == 2


def test_a_warn_flag_above_the_default_crit_lifts_crit_along():
    from sockstat.diagnose.thresholds import Thresholds

    t = Thresholds().with_overrides(close_wait_warn=200, syn_sent_warn=None)
    assert t.close_wait_warn == 200 and t.close_wait_crit == 200
    assert t.syn_sent_warn == 20  # flags not given keep Thresholds' defaults
    from sockstat.errors import UsageError

    with pytest.raises(UsageError, match="--close-wait-warn .* is above --close-wait-crit"):
        Thresholds().with_overrides(close_wait_warn=200, close_wait_crit=50)
