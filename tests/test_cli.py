"""The command line as a user meets it: output formats, filters, errors and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import socket

import pytest
from conftest import my_comm, run_sockstat, wait_for

JSON_KEYS = {"proto", "family", "state", "local_address", "local_port", "remote_address",
             "remote_port", "recv_q", "send_q", "uid", "inode", "cookie", "timer", "timer_ms",
             "retransmits", "process", "tcp_info"}


@pytest.fixture
def server(loop):
    srv = loop.listener(backlog=4)
    port = srv.getsockname()[1]
    pairs = [loop.connect(srv) for _ in range(3)]
    c, s = loop.connect(srv)
    c.shutdown(socket.SHUT_WR)  # the server side sits in CLOSE_WAIT
    from conftest import kernel_rows

    wait_for(lambda: any(r["state"] == "CLOSE_WAIT" for r in kernel_rows({port})))
    return port, pairs


def test_port_lists_both_ends_with_the_process(server):
    port, _ = server
    r = run_sockstat("--port", str(port))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("9 sockets: LISTEN 1 · ESTABLISHED 6 · FIN_WAIT2 1 · CLOSE_WAIT 1")
    assert f"{my_comm()}/{os.getpid()}" in r.stdout
    assert "0/4" in r.stdout  # LISTEN: queued/backlog
    assert "\x1b[" not in r.stdout  # no colour when piped


def test_json_is_every_matching_row_with_the_documented_schema(server):
    port, _ = server
    r = run_sockstat("-p", str(port), "--state", "Close-Wait", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == JSON_KEYS
    assert row["state"] == "CLOSE_WAIT" and row["local_port"] == port
    assert row["process"]["pid"] == os.getpid()


def test_csv_has_a_header_and_every_row(server):
    port, _ = server
    r = run_sockstat("-p", str(port), "--csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 9
    assert {row["state"] for row in rows} == {"LISTEN", "ESTABLISHED", "FIN_WAIT2",
                                              "CLOSE_WAIT"}


def test_listening_and_protocol_filters(server):
    port, _ = server
    rows = json.loads(run_sockstat("-p", str(port), "-l", "--json").stdout)
    assert [r["state"] for r in rows] == ["LISTEN"]
    assert json.loads(run_sockstat("-p", str(port), "-u", "--json").stdout) == []
    rows = json.loads(run_sockstat("--sport", str(port), "--json").stdout)
    assert all(r["local_port"] == port for r in rows) and len(rows) == 5
    rows = json.loads(run_sockstat("--dport", str(port), "--json").stdout)
    assert all(r["remote_port"] == port for r in rows) and len(rows) == 4


def test_every_source_from_the_command_line(server):
    port, _ = server
    for source in ("netlink", "proc", "psutil"):
        rows = json.loads(run_sockstat("-p", str(port), "--source", source, "--json").stdout)
        assert len(rows) == 9, source


def test_summary(server):
    port, _ = server
    r = run_sockstat("summary", "-p", str(port), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["total"] == 9
    assert data["by_state"]["ESTABLISHED"]["tcp4"] == 6
    assert data["by_state"]["CLOSE_WAIT"]["total"] == 1
    assert data["top_processes"][0] == {"process": f"{my_comm()}/{os.getpid()}", "sockets": 9}
    assert {"port": port, "sockets": 4} in data["top_local_ports"]
    text = run_sockstat("summary", "-p", str(port))
    assert "ESTABLISHED" in text.stdout and text.returncode == 0


@pytest.mark.parametrize("args,message", [
    (["--state", "bogus"], "unknown state 'bogus'"),
    (["-p", "70000"], "port 70000 is out of range"),
    (["-p", "0"], "port 0 is out of range"),
    (["-p", "http"], "is not a number"),
    (["--remote", "10.0.0.0/33"], "is not an IP address or CIDR"),
    (["--pid", "999999999"], "no process with pid 999999999"),
    (["--user", "no-such-user-xyz"], "no user named"),
    (["--json", "--csv"], "cannot be combined"),
    (["--no-such-flag"], "No such option"),
    (["--source", "carrier-pigeon"], "carrier-pigeon"),
    (["summary", "--state", "nope"], "unknown state 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = run_sockstat(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockstat: error: "), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_version_and_help():
    r = run_sockstat("--version")
    assert r.returncode == 0 and r.stdout.startswith("sockstat ")
    r = run_sockstat("--help")
    assert r.returncode == 0 and "Examples" in r.stdout and "--state" in r.stdout


def test_broken_pipe_exits_quietly(server):
    import subprocess
    import sys

    port, _ = server
    p = subprocess.run(f"{sys.executable} -m sockstat -p {port} | head -1", shell=True,
                       capture_output=True, text=True)
    assert p.stdout.startswith("9 sockets")
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_no_color_and_force_color(server):
    port, _ = server
    forced = run_sockstat("-p", str(port), env={"FORCE_COLOR": "1"})
    assert "\x1b[" in forced.stdout
    both = run_sockstat("-p", str(port), env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "\x1b[" not in both.stdout


@pytest.mark.skipif(not __import__("shutil").which("script"), reason="util-linux script missing")
@pytest.mark.parametrize("rows_flag,rich_path", [("2", True), ("1", False)])
def test_on_a_terminal_rows_per_state_are_capped(server, rows_flag, rich_path):
    """Under a pseudo-terminal: at most --rows rows per state and an '… and N more' line;
    --all lifts the cap. (rich tables for short lists, plain text for long ones.)"""
    import subprocess
    import sys

    port, _ = server
    env = dict(os.environ, COLUMNS="200", LINES="50", TERM="xterm")
    env.pop("NO_COLOR", None)
    cmd = f"{sys.executable} -m sockstat -p {port} --rows {rows_flag}"
    out = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                         env=env, timeout=60).stdout
    assert f"and {6 - int(rows_flag)} more" in out  # 6 ESTABLISHED rows
    assert "\x1b[" in out  # colour on a terminal
    out_all = subprocess.run(["script", "-qec", cmd + " --all", "/dev/null"],
                             capture_output=True, text=True, env=env, timeout=60).stdout
    assert "more" not in out_all
    nocolor = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True,
                             text=True, env=dict(env, NO_COLOR="1"), timeout=60).stdout
    assert "\x1b[3" not in nocolor


def test_info_columns_and_tcp_info_in_json(server):
    port, pairs = server
    pairs[0][0].sendall(b"x" * 10)
    r = run_sockstat("-p", str(port), "-i", "-s", "established")
    assert r.returncode == 0, r.stderr
    assert "RTT" in r.stdout and "Cwnd" in r.stdout and "ms" in r.stdout
    rows = json.loads(run_sockstat("-p", str(port), "-i", "--json").stdout)
    est = [row for row in rows if row["state"] == "ESTABLISHED"]
    assert est and all(row["tcp_info"]["mss"] > 0 for row in est)


def _as_nobody(*args: str):
    import shutil
    import subprocess
    import sys

    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to run a command as an unprivileged user")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           sys.executable, "-m", "sockstat", *args]
    probe = subprocess.run(cmd[:5] + ["-c", "import sockstat.cli"], capture_output=True,
                           cwd=REPO_DIR)
    if probe.returncode != 0:
        pytest.skip("the package is not readable by an unprivileged user here")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_DIR, timeout=60)


REPO_DIR = __import__("conftest").REPO


@pytest.mark.root
def test_without_root_other_users_sockets_are_listed_with_a_hint(server):
    port, _ = server
    r = _as_nobody("-p", str(port))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("9 sockets")
    assert f"/{os.getpid()}" not in r.stdout  # root's process is not readable
    assert "could not be attributed" in r.stderr and "run as root" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not __import__("shutil").which("script"), reason="util-linux script missing")
def test_terminal_listing_marks_problem_sockets_and_points_to_check(loop):
    """A full accept queue is a finding: on a terminal its LISTEN row gets a `!` and a
    pointer to `sockstat check`; piped output stays plain data."""
    import subprocess
    import sys

    srv = loop.listener(backlog=1)
    port = srv.getsockname()[1]
    for _ in range(2):  # listen(1) lets backlog + 1 = 2 wait: the queue is then full
        loop.connect(srv, accept=False)
    from conftest import kernel_rows

    wait_for(lambda: any(r["state"] == "LISTEN" and r["recv_q"] >= 2
                         for r in kernel_rows({port})), what="a full accept queue")
    env = dict(os.environ, COLUMNS="200", LINES="50", TERM="xterm", NO_COLOR="1")
    out = subprocess.run(["script", "-qec", f"{sys.executable} -m sockstat -p {port} -l",
                          "/dev/null"], capture_output=True, text=True, env=env,
                         timeout=60).stdout
    assert "!" in out.split("LISTEN (1)")[1].splitlines()[2]  # the listener's row
    assert "run `sockstat check`" in out
    piped = run_sockstat("-p", str(port), "-l")
    assert "!" not in piped.stdout and "sockstat check" not in piped.stderr


def test_a_reader_that_leaves_early_keeps_checks_verdict(loop):
    """`sockstat check | true`: the pipe breaks before check prints, the exit status is
    still the verdict (2, a full accept queue), and nothing is said on stderr."""
    import subprocess
    import sys

    srv = loop.listener(backlog=1)
    port = srv.getsockname()[1]
    for _ in range(2):
        loop.connect(srv, accept=False)
    from conftest import kernel_rows

    wait_for(lambda: any(r["state"] == "LISTEN" and r["recv_q"] >= 2
                         for r in kernel_rows({port})), what="a full accept queue")
    for extra in ("", " --json"):
        cmd = (f"{sys.executable} -m sockstat check -p {port} --interval 0{extra} | true;"
               " exit ${PIPESTATUS[0]}")
        r = subprocess.run(cmd, shell=True, executable="/bin/bash", capture_output=True,
                           text=True, timeout=60, cwd=REPO_DIR)
        assert (r.returncode, r.stderr) == (2, ""), (extra, r.returncode, r.stderr)
    r = subprocess.run(f"{sys.executable} -m sockstat -p {port} | true; exit ${{PIPESTATUS[0]}}",
                       shell=True, executable="/bin/bash", capture_output=True, text=True,
                       timeout=60, cwd=REPO_DIR)
    assert (r.returncode, r.stderr) == (0, "")
