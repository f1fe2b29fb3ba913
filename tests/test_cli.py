"""The command line as a user meets it: output formats, filters, errors and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, kernel_rows, my_comm, run_as_nobody, run_sockstat, wait_for

JSON_KEYS = {"proto", "family", "state", "local_address", "local_port", "remote_address",
             "remote_port", "recv_q", "send_q", "uid", "inode", "cookie", "timer", "timer_ms",
             "retransmits", "process", "tcp_info", "processes", "peer_process", "netns",
             "container"}


@pytest.fixture
def server(loop):
    srv = loop.listener(backlog=4)
    port = srv.getsockname()[1]
    pairs = [loop.connect(srv) for _ in range(3)]
    c, s = loop.connect(srv)
    c.shutdown(socket.SHUT_WR)  # the server side sits in CLOSE_WAIT
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
    (["-p", "\uff18\uff10"], "is not a number"),  # fullwidth "80": int() would take it
    (["-p", "8_0"], "is not a number"),
    (["-p", "+80"], "is not a number"),
    (["-p", "80-\u0668\u0660"], "is not a number"),
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


def test_piped_help_is_plain_and_unwrapped():
    r = run_sockstat("export", "--help")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert not any(ch in r.stdout for ch in "│╭╰─")  # no panel boxes
    assert all(line == line.rstrip() for line in lines)  # no padding to a width
    # an example stays on one line, however long
    assert any(line.split() == ["sockstat", "export", "--systemd-unit", ">",
                                "sockstat-exporter.service", "a", "hardened", "service"]
               for line in lines)
    assert "Options:" in lines


def test_no_help_text_loses_an_angle_bracketed_word():
    """Help is Markdown: `<pid>` would be read as an HTML tag and vanish."""
    import re

    import typer

    from sockstat.cli import COMMANDS, build_app

    group = typer.main.get_command(build_app())
    for name in ("", *COMMANDS):
        command = group.commands[name] if name else group
        texts = [command.help or "", command.epilog or ""]
        texts += [getattr(p, "help", None) or "" for p in command.params]
        words = {w for t in texts for w in re.findall(r"<[^<>`\s]+>", t)}
        shown = run_sockstat(*([name] if name else []), "--help").stdout
        assert all(w in shown for w in words), (name, words)
    assert "/proc//" not in run_sockstat("--help").stdout


def test_broken_pipe_exits_quietly(server):
    import subprocess
    import sys

    port, _ = server
    p = subprocess.run(f"{sys.executable} -m sockstat -p {port} | head -1", shell=True,
                       capture_output=True, text=True)
    assert p.stdout.startswith("9 sockets")
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


@pytest.mark.parametrize("args", [(), ("--json",), ("--csv",), ("summary",),
                                  ("check", "--interval", "0"), ("--version",)])
def test_a_full_disk_is_one_line_not_a_traceback(server, args):
    """stdout that cannot be written (a full disk: /dev/full) is a runtime failure said
    in one line, like any other I/O error, never a traceback or an "Exception ignored"."""
    import subprocess
    import sys

    port, _ = server
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "sockstat", *args,
                            *(("-p", str(port)) if not args or args[0].startswith("--j")
                              or args[0] == "--csv" else ())],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    errors = [line for line in p.stderr.splitlines() if not line.startswith("sockstat: note:")]
    assert errors == ["sockstat: error: cannot write the output: No space left on device"], \
        p.stderr
    assert p.returncode == (3 if args[:1] == ("check",) else 1)


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
    # queued at the receiver and acknowledged to the sender (a delayed ACK can lag)
    wait_for(lambda: any(r["recv_q"] == 10 for r in kernel_rows({port}))
             and not any(r["send_q"] for r in kernel_rows({port}) if r["state"] != "LISTEN"))
    r = run_sockstat("-p", str(port), "-i", "-s", "established")
    assert r.returncode == 0, r.stderr
    assert "RTT" in r.stdout and "Cwnd" in r.stdout and "ms" in r.stdout
    rows = json.loads(run_sockstat("-p", str(port), "-i", "--json").stdout)
    est = [row for row in rows if row["state"] == "ESTABLISHED"]
    assert est and all(row["tcp_info"]["mss"] > 0 for row in est)
    # the full struct of this kernel, and the congestion control's name
    congestion = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    assert all(row["tcp_info"]["congestion"] == congestion for row in est)
    # the sender (an end that sent nothing may count its SYN: bytes_acked 1)
    sent = max((row["tcp_info"] for row in est), key=lambda info: info["bytes_acked"])
    assert sent["bytes_acked"] >= 10 and sent["min_rtt_ms"] > 0
    assert "delivery_rate" in sent and "rwnd_limited_ms" in sent
    assert "CC" in r.stdout and congestion in r.stdout


@pytest.mark.root
def test_without_root_other_users_sockets_are_listed_with_a_hint(server):
    port, _ = server
    r = run_as_nobody("-p", str(port))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("9 sockets")
    assert f"/{os.getpid()}" not in r.stdout  # root's process is not readable
    assert "shown without a process" in r.stderr and "run as root" in r.stderr
    from sockstat.errors import OTHER_USERS_HINT

    assert OTHER_USERS_HINT in r.stderr  # the one hint, naming the capabilities
    assert "Traceback" not in r.stderr


@pytest.mark.root
def test_without_root_summary_says_top_processes_are_hidden_and_why(server):
    port, _ = server
    r = run_as_nobody("summary", "-p", str(port))
    assert r.returncode == 0, r.stderr
    assert "Top processes" not in r.stdout  # nothing this user could name
    assert "sockstat: note: Top processes is hidden: its 9 socket(s)" in r.stderr
    assert "CAP_SYS_PTRACE" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.root
def test_without_root_check_names_the_unknown_owner_with_the_root_hint(server):
    port, _ = server
    r = run_as_nobody("check", "-p", str(port), "--interval", "0", "--close-wait-warn", "1",
                   "--close-wait-min-age", "0")
    assert r.returncode == 1, r.stderr
    assert "unknown process (uid 0)" in r.stdout
    assert "uid 0, whose processes this user may not read" in r.stderr
    assert "run as root" in r.stderr


@pytest.mark.root
def test_without_root_pid_1_says_its_fds_are_unreadable_not_just_no_sockets():
    r = run_as_nobody("--pid", "1", "-t")
    assert r.returncode == 0, r.stderr
    assert "pid 1's file descriptors are not readable by this user" in r.stderr
    assert "run as root" in r.stderr


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
    wait_for(lambda: any(r["state"] == "LISTEN" and r["recv_q"] >= 2
                         for r in kernel_rows({port})), what="a full accept queue")
    for extra in ("", " --json"):
        cmd = (f"{sys.executable} -m sockstat check -p {port} --interval 0{extra} | true;"
               " exit ${PIPESTATUS[0]}")
        r = subprocess.run(cmd, shell=True, executable="/bin/bash", capture_output=True,
                           text=True, timeout=60, cwd=REPO)
        assert (r.returncode, r.stderr) == (2, ""), (extra, r.returncode, r.stderr)
    for extra in ("", " --json", " --csv"):
        r = subprocess.run(f"{sys.executable} -m sockstat -p {port}{extra} | true;"
                           " exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert (r.returncode, r.stderr) == (0, ""), (extra, r.returncode, r.stderr)


def test_ci_runs_readmes_test_command_in_a_users_environment(tmp_path):
    """.ci/run runs README's test command without the CI image's PYTHON* settings
    (PYTHONUNBUFFERED=1 hid a broken-pipe bug), and kills no process it did not start."""
    import shutil
    import subprocess

    script = (REPO / ".ci" / "run").read_text()
    assert "pkill" not in script and "killall" not in script
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    (repo / ".ci" / "run").write_text(script)
    probe = ("python3 -c 'import os; print(sorted(k for k in os.environ "
             "if k.startswith(\"PYTHON\")))'  # stands in for pytest")
    (repo / "README.md").write_text(f"<!-- test-command -->\n```sh\n{probe}\n```\n")
    # a PATH without apt-get: only what the script itself needs
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "awk", "grep", "dirname", "python3"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]"


LONG_LABEL = "a" * 64 + ".example"


@pytest.mark.parametrize("argv", [
    ("--user", "²"),
    ("--user", "9" * 5000),
    ("--user", "4294967296"),
    ("watch", "--interval", "nan", "--count", "1", "--jsonl"),
    ("watch", "--interval", "inf", "--count", "1", "--jsonl"),
    ("export", "--listen", "a..b:0"),
    ("export", "--listen", f"{LONG_LABEL}:0"),
    ("export", "--textfile", "/nonexistent/x.prom", "--interval", "inf"),
    ("export", "--textfile", "/nonexistent/x.prom", "--interval", "nan"),
    ("export", "--cache", "nan"),
    ("demo", "established", "--hold", "nan"),
    ("demo", "established", "--hold", "-inf"),
])
def test_values_found_by_fuzzing_are_one_line_and_exit_2(argv):
    r = run_sockstat(*argv, timeout=30)
    assert r.returncode == 2, r
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    assert line.startswith("sockstat: error: "), line


@pytest.mark.parametrize("argv", [
    ("--interval", "nan"),
    ("--close-wait-min-age", "nan"),
    ("--stall-min-age", "nan"),
    ("--port-usage-crit", "nan"),
    ("--queue-warn", "inf"),
    ("--close-wait-min-age", "inf"),
])
def test_non_finite_numbers_in_check_are_unknown_3(argv):
    r = run_sockstat("check", "--port", "1", *argv)
    assert r.returncode == 3, r
    [line] = r.stderr.splitlines()
    assert line.startswith("sockstat: error: "), line


def test_a_library_caller_cannot_turn_a_detector_off_with_nan():
    from dataclasses import replace

    from sockstat.diagnose.thresholds import Thresholds
    from sockstat.errors import UsageError

    with pytest.raises(UsageError, match="finite"):
        replace(Thresholds(), close_wait_min_age=float("nan")).validate()


def _commands():
    """(command path, click command) for the main listing and every subcommand."""
    import typer

    from sockstat.cli import app

    group = typer.main.get_command(app)
    return [("sockstat", group)] + [(f"sockstat {name}", cmd)
                                     for name, cmd in group.commands.items()]


def test_each_short_flag_has_one_meaning_everywhere():
    """-i is tcp_info (as `ss -i`) wherever it exists; no command gives a short flag
    another meaning."""
    meaning: dict[str, set[str]] = {}
    for _, cmd in _commands():
        for param in cmd.params:
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts if not o.startswith("--")):
                meaning.setdefault(short, set()).add(longs[0] if longs else short)
    assert {k: v for k, v in meaning.items() if len(v) > 1} == {}
    assert meaning["-i"] == {"--info"}


def test_every_listing_command_takes_every_filter():
    from sockstat.cli.options import FILTER_OPTIONS

    wanted = set(FILTER_OPTIONS)
    for path, cmd in _commands():
        if path.split()[-1] in ("sockstat", "summary", "check", "watch"):
            names = {p.name for p in cmd.params}
            assert wanted <= names, (path, wanted - names)


def test_summary_takes_the_filters_the_readme_promises(server):
    port, _ = server
    r = run_sockstat("summary", "--sport", str(port), "-U", "0", "-t", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["total"] == 5  # the listener and four accepted connections
    r = run_sockstat("summary", "--dport", str(port), "--json")
    assert json.loads(r.stdout)["total"] == 4  # the client ends
    r = run_sockstat("summary", "-l", "-p", str(port), "--json")
    assert json.loads(r.stdout)["by_state"] == {"LISTEN": {"tcp4": 1, "tcp6": 0, "udp4": 0,
                                                           "udp6": 0, "unix": 0,
                                                           "total": 1}}


def test_check_of_udp_alone_judges_udp_sockets(loop):
    """-u narrows check to UDP sockets (their drops): they are read, TCP is not."""
    port = loop.udp().getsockname()[1]
    r = run_sockstat("check", "--udp", "--sport", str(port), "--json", "--interval", "0")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["checked"]["sockets"] == 1 and doc["findings"] == []


def test_piped_summary_is_plain_one_record_a_line_never_wrapped(server):
    port, _ = server
    r = run_sockstat("summary", "-p", str(port), env={"COLUMNS": "40"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "\x1b[" not in r.stdout
    assert lines[0] == "9 sockets by state"
    assert lines[1].split() == ["State", "TCP4", "TCP6", "UDP4", "UDP6", "Total"]
    assert next(ln for ln in lines if ln.startswith("ESTABLISHED")).split() == \
        ["ESTABLISHED", "6", "-", "-", "-", "6"]
    # the kernel's TCP totals: one line, however narrow the (absent) terminal
    [tcp] = [ln for ln in lines if ln.startswith("TCP ")]
    assert "inuse" in tcp and "pages (" in tcp and tcp.rstrip().endswith(")")
    assert max(map(len, lines)) > 40  # not cut to COLUMNS either


def test_every_float_option_of_every_command_refuses_nan_and_inf(capsys):
    """The one finite-number check is on every option that reads a float, so an option
    added later cannot forget it: NaN and ±inf are usage errors (3 in check)."""
    from sockstat.cli import app
    from sockstat.cli.errors import run_app

    checked = []
    for path, cmd in _commands():
        words = path.split()[1:]
        for param in cmd.params:
            if "float" not in type(param.type).__name__.lower():
                continue
            flag = max(param.opts, key=len)
            for value in ("nan", "inf", "-inf"):
                status = run_app(app, [*words, flag, value])
                err = capsys.readouterr().err
                assert status == (3 if words == ["check"] else 2), (path, flag, value, err)
                assert err.startswith("sockstat: error: "), err
            checked.append(f"{path} {flag}")
    assert "sockstat check --close-wait-min-age" in checked
    assert "sockstat watch --interval" in checked and "sockstat demo --hold" in checked


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    import subprocess
    import sys

    probe = code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)), file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    return set(done.stderr.split())


def test_start_up_imports_only_the_commands_own_path():
    """`sockstat --version` is answered before typer is imported; `import sockstat`
    imports nothing else; a listing imports neither typer (its fast path), typing, rich,
    json, psutil nor the other commands."""
    bare = _modules_after("import sockstat")
    assert not {m for m in bare if m.startswith("sockstat.")}
    version = _modules_after("from sockstat.cli import main\ntry: main(['--version'])\n"
                             "except SystemExit: pass")
    assert "typer" not in version and "sockstat.collect" not in version
    listing = _modules_after("from sockstat.cli import main\n"
                             "try: main(['--port', '1', '--json', '--no-processes'])\n"
                             "except SystemExit: pass")
    assert "sockstat.collect" in listing
    assert not listing & {"typer", "typing", "rich", "psutil", "prometheus_client",
                          "sockstat.cli.check", "sockstat.cli.demo", "sockstat.diagnose"}


# Runs the command's own entry (sockstat.__main__.run, as bin/sockstat does) with
# sys.argv[1:] = {argv!r}; at exit, prints its modules, then a line with what stands in
# sys.modules for inspect and copy, how many objects are frozen and whether the collector
# runs. (An atexit callback: run() then ends through the usual exit.)
_AS_THE_COMMAND = """
import atexit, gc, sys
def said():
    print("\\n".join(sorted(sys.modules)), file=sys.stderr)
    print([type(sys.modules.get(n)).__name__ for n in ("inspect", "copy")],
          gc.get_freeze_count() > 0, gc.isenabled(), file=sys.stderr)
atexit.register(said)
sys.argv[1:] = {argv!r}
from sockstat.__main__ import run
run()
"""


def _the_command_ends_with(argv: list[str]) -> tuple[set[str], str]:
    """The modules the command (its own entry) has imported at its end, and its last
    line (_AS_THE_COMMAND)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _AS_THE_COMMAND.format(argv=argv)],
                          capture_output=True, text=True, timeout=60)
    *modules, last = done.stderr.splitlines()
    return set(modules), last


def test_a_listing_or_summary_loads_neither_inspect_nor_socket_py():
    """What the listing's and summary's paths import but never call stays unloaded:
    inspect (which dataclasses imports; sockstat._deferred: every dataclass on these
    paths has a docstring) with its ast, dis and tokenize, and socket.py's enums and
    selectors (netlink uses _socket)."""
    listing, _ = _the_command_ends_with(["--port", "1", "--no-processes"])
    assert "sockstat.collect.netlink" in listing and "inspect" in listing  # bound only
    assert not listing & {"ast", "dis", "tokenize", "socket", "selectors", "weakref"}
    summary, _ = _the_command_ends_with(["summary", "--no-processes", "--port", "1"])
    assert "sockstat.summarize" in summary
    assert not summary & {"ast", "dis", "tokenize", "socket", "selectors", "typer"}
    # the model's classes a TCP/UDP listing never makes are created only when named
    assert not listing & {"sockstat.tcpinfo", "sockstat.unixinfo", "sockstat.placement",
                          "sockstat.kernelmodel"}


# Calls cli.main(argv[1:]) as a library user's program would, then prints what stands
# in sys.modules for inspect and copy, how many objects are frozen and whether the
# collector runs (the line _AS_THE_COMMAND ends with).
_A_PROGRAM_CALLS_MAIN = """
import gc, sys
from sockstat.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print([type(sys.modules.get(n)).__name__ for n in ("inspect", "copy")],
      gc.get_freeze_count() > 0, gc.isenabled(), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--port", "1", "--no-processes"],
                                  ["summary", "--no-processes", "--port", "1"],
                                  ["check", "--port", "1", "--interval", "0", "--json"]],
                         ids=["listing", "summary", "check"])
def test_a_program_calling_main_keeps_its_modules_and_collector_as_they_were(argv):
    """cli.main() called from a library user's program runs the command, but leaves the
    interpreter's own state alone: no deferred module stands in for inspect or copy in
    sys.modules (dataclasses imported both as usual), nothing is frozen, the collector
    runs. The command's own entry (sockstat.__main__.run) still binds both deferred
    (check then loads them) and freezes its look."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _A_PROGRAM_CALLS_MAIN, *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.stderr.splitlines()[-1] == "['module', 'module'] False True"
    _, last = _the_command_ends_with(argv)
    deferred = "'module'" if argv[0] == "check" else "'_Deferred'"  # check loads both
    assert last == f"[{deferred}, {deferred}] True True"


def test_the_model_names_the_classes_defined_beside_it():
    from sockstat import kernelmodel, model, placement, tcpinfo, unixinfo
    from sockstat.model import Container  # a from-import reaches them too

    assert Container is placement.Container
    assert model.NetNamespace is placement.NetNamespace
    assert model.Service is placement.Service
    assert model.UnixInfo is unixinfo.UnixInfo and model.TcpInfo is tcpinfo.TcpInfo
    assert model.DropBaseline is kernelmodel.DropBaseline
    with pytest.raises(AttributeError):
        model.NoSuchClass  # noqa: B018


def test_commands_for_a_command_line():
    from sockstat.cli import COMMANDS, commands_for

    assert commands_for([]) == ()
    assert commands_for(["--port", "8080"]) == ()
    assert commands_for(["-s", "time-wait", "check", "--interval", "0"]) == ("check",)
    assert commands_for(["summary", "--help"]) == COMMANDS
    assert commands_for(["--", "check"]) == ()
    assert commands_for(["explain", "TIME_WAIT"]) == ("demo",)


def test_every_command_is_built_when_named():
    """An app built for a command line has that command, for every command there is."""
    import typer

    from sockstat.cli import app, build_app, commands_for

    names = list(typer.main.get_command(app).commands)
    assert "explain" in names and "completions" in names
    for name in names:
        built = typer.main.get_command(build_app(commands_for([name])))
        assert name in built.commands, name


def test_collect_and_diagnose_stay_callable_however_they_were_imported():
    """They are subpackages and the library's functions at once."""
    import sockstat
    import sockstat.collect.netlink  # binds the subpackage on the package
    from sockstat import Query, collect, diagnose

    assert collect is sockstat.collect
    snap = collect(Query.build(ports=[1]))
    assert snap.sockets == [] and diagnose(snap) == []


@pytest.mark.root
def test_without_root_demo_packets_says_why_in_a_note():
    r = run_as_nobody("demo", "handshake", "--packets", "--hold", "0")
    assert r.returncode == 0, r.stderr
    assert "sockstat: note: --packets needs root (CAP_NET_RAW)" in r.stderr


@pytest.mark.parametrize("flag, name", [("-P", "--process"), ("--process", "--process"),
                                        ("--user", "--user")])
def test_empty_process_or_user_is_a_usage_error_like_empty_path(flag, name):
    r = run_sockstat(flag, "")
    assert r.returncode == 2 and r.stderr.startswith(f"sockstat: error: {name} is empty")
    assert r.stdout == ""
    checked = run_sockstat("check", flag, " ", "--interval", "0")
    assert checked.returncode == 3 and f"{name} is empty" in checked.stderr


@pytest.mark.skipif(not __import__("shutil").which("script"), reason="util-linux script missing")
def test_summary_on_a_terminal_under_no_color_sends_no_ansi_at_all():
    import subprocess
    import sys

    env = dict(os.environ, COLUMNS="200", LINES="50", TERM="xterm", NO_COLOR="1")
    env.pop("FORCE_COLOR", None)
    out = subprocess.run(["script", "-qec", f"{sys.executable} -m sockstat summary",
                          "/dev/null"], capture_output=True, text=True, env=env,
                         timeout=60).stdout
    assert "sockets by state" in out and "\x1b[" not in out


@pytest.mark.parametrize("command", [True, False], ids=["the-command", "a-program"])
def test_a_one_shot_look_is_kept_until_exit_and_nothing_else_is(monkeypatch, command):
    """check's look is never freed in the command's own process (it ends after the
    report: freeing a big table one object at a time only costs time); what it did not
    keep is freed as usual, and so is the look of a program that called cli.main()."""
    import gc
    import weakref

    from sockstat import cli
    from sockstat.cli.oneshot import keep_until_exit, no_collection

    monkeypatch.setattr(cli, "owns_the_process", command)  # as cli.start_up() says

    class Look:
        pass

    frozen_before = gc.get_freeze_count()
    try:
        with no_collection():
            kept, dropped = Look(), Look()
            kept_ref, dropped_ref = weakref.ref(kept), weakref.ref(dropped)
            keep_until_exit(kept)
            del kept, dropped
        gc.collect()
        assert (kept_ref() is not None, dropped_ref()) == (command, None)
    finally:
        if not frozen_before:  # no_collection() froze the whole test session: the other
            gc.unfreeze()  # tests (collect's own freeze handling) start from an unfrozen one


@pytest.mark.parametrize("args", [["-n"], ["watch", "--count", "1"]])
def test_ctrl_c_while_starting_up_exits_130_without_a_traceback(args):
    # the interrupt arrives while the command line is read (the fast path's parser, or
    # typer's app being built), before any command's own handler
    import subprocess
    import sys

    code = ("import os, signal, sys\n"
            "import sockstat.cli as cli, sockstat.cli.fastpath as fastpath\n"
            "def interrupted(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "fastpath.parse = cli.build_app = interrupted\n"
            f"cli.main({args!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert (done.returncode, done.stderr) == (130, "")


def test_a_source_error_after_the_reader_left_is_said_as_itself():
    """An error reading a source that comes when stdout's reader has already left (`|
    head`) is said as that error, not as output that cannot be written."""
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from sockstat.cli.errors import say_os_error\n"
        "r, w = os.pipe()\n"
        "os.close(r)\n"
        "os.dup2(w, 1)\n"
        "sys.stdout.write('pending')\n"
        "say_os_error(FileNotFoundError(2, 'No such file or directory', '/proc/1/x'))\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=30, cwd=REPO)
    assert p.stderr.splitlines() == ["sockstat: error: No such file or directory: /proc/1/x"]


def _stdout_closed(*args: str) -> subprocess.CompletedProcess:
    """The CLI started with its stdout closed (a shell's `>&-`)."""
    import shlex

    command = shlex.join([sys.executable, "-m", "sockstat", *args])
    return subprocess.run(["sh", "-c", f"{command} >&-"], capture_output=True, text=True,
                          timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args", [
    ["--port", "1"], ["--json", "--port", "1"], ["--csv", "--port", "1"],
    ["summary", "--port", "1"], ["check", "--interval", "0", "--port", "1"],
    ["--version"], ["--help"], ["explain", "time-wait"], ["demo", "--list"],
    ["export", "--rules"], ["completions", "bash"],
    ["watch", "--count", "1", "--port", "1"]])
def test_a_closed_stdout_is_one_line_not_a_traceback(args):
    """Regression: started with stdout closed (`>&-`, sys.stdout None) every command
    died with an AttributeError's traceback; it is output that cannot be written."""
    done = _stdout_closed(*args)
    assert done.stderr == "sockstat: error: cannot write the output: stdout is closed\n"
    assert done.returncode == (3 if args[0] == "check" else 1)


def test_a_closed_stdout_does_not_stop_a_command_that_writes_none(tmp_path):
    path = tmp_path / "sockstat.prom"
    done = _stdout_closed("export", "--textfile", str(path), "--no-processes")
    assert (done.returncode, done.stderr) == (0, "") and path.read_text()


def test_a_closed_stderr_keeps_notes_and_errors_out_of_stdout():
    """Regression: with stderr closed (`2>&-`) print(file=sys.stderr) wrote to stdout:
    a note in the middle of --json output, an error where data was expected."""
    r = subprocess.run(["sh", "-c", f"{sys.executable} -m sockstat --json -i --source proc "
                        "--port 1 2>&-"], capture_output=True, text=True, timeout=60,
                       cwd=REPO, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (0, "[]\n")
    r = subprocess.run(["sh", "-c", f"{sys.executable} -m sockstat --port 0 2>&-"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (r.returncode, r.stdout) == (2, "")
