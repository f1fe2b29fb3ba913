"""The fast path reads a command line exactly as typer does, or not at all.

sockstat.cli.fastpath reads `sockstat --port 8080`, `sockstat summary --json` and
`sockstat check --interval 0` without importing typer. These tests hold it to typer
itself: for every command line it accepts, the listing (or summary, or check) must get
the same Query and the same options typer's parse gives, and every line typer refuses
(or that means something else: another command, --help, --version, an option before
`summary`, a number that is not finite) it must leave to typer.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import pytest
import typer
from conftest import run_sockstat

from sockstat import cli
from sockstat.cli import check, fastpath, show, summary
from sockstat.cli import options as opt
from sockstat.errors import SockstatError

LISTING = {**opt.FILTER_OPTIONS, **show.OPTIONS}
SUMMARY = {**opt.FILTER_OPTIONS, **summary.OPTIONS}
CHECK = {**opt.FILTER_OPTIONS, **check.OPTIONS}


def _typer_app():
    """The main listing's own typer declarations (with_filters + show.OPTIONS) around a
    callback that records what the listing would be called with."""
    seen: list = []

    def record(ctx: typer.Context, query, **options) -> int:
        seen.append((query, options))
        return 0

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback(invoke_without_command=True)(opt.with_filters(options=show.OPTIONS)(record))
    return app, seen


def _command_typer_app(name: str, options: dict):
    """A command's own typer declarations (with_filters + its OPTIONS) as a command of
    a group, around a function that records what the command would be called with."""
    seen: list = []

    def record(query, **options) -> int:
        seen.append((query, options))
        return 0

    def group() -> None:
        """A group, so that `name` is a command's name, as in sockstat's app."""

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(group)
    app.command(name)(opt.with_filters(options=options)(record))
    return app, seen


APP, SEEN = _typer_app()
SUMMARY_APP, SUMMARY_SEEN = _command_typer_app("summary", summary.OPTIONS)
CHECK_APP, CHECK_SEEN = _command_typer_app("check", check.OPTIONS)


def via_typer(argv: list[str], app=APP, seen=SEEN):
    """(query, options) as typer parses `argv`, or the name of the error it raises."""
    seen.clear()
    try:
        app(args=list(argv), prog_name="sockstat", standalone_mode=False)
    except (typer.Exit, Exception) as exc:  # noqa: BLE001 - the error is the answer
        return type(exc).__name__
    return seen[0] if seen else "no listing"


def via_fast_path(argv: list[str]):
    """(query, options) as the fast path reads `argv`; None when it leaves the line to
    typer."""
    return _as_called(fastpath.parse(list(argv), LISTING))


def _as_called(parsed: dict | None):
    if parsed is None:
        return None
    filters = {name: parsed.pop(name) for name in opt.FILTER_OPTIONS}
    try:
        return opt.query_from(**filters), parsed
    except SockstatError as exc:
        return type(exc).__name__


ACCEPTED = [
    [], ["--port", "8080"], ["-p", "8080"], ["-p8080"], ["--port=8080"],
    ["-s", "time-wait", "--json"], ["--state", "ESTABLISHED", "-s", "close_wait"],
    ["-xl"], ["-tlp", "22"], ["-tlp22"], ["-tun5"], ["-4", "-6"], ["--ipv4", "-t"],
    ["--pid", "1", "--pid", "22"], ["--source", "PROC"], ["--source=netlink"],
    ["--rows", "3", "-n", "7"], ["--rows=25", "--all"], ["--process", "nginx", "-U", "0"],
    ["--local", "127.0.0.0/8", "--remote", "::1"], ["--path", "/run/*.sock"],
    ["--container", "docker:3f2a"], ["--netns", "self"], ["--json", "--no-processes"],
    ["--csv", "--memory", "-i"], ["--peer", "--sport", "80", "--dport", "443,8000-8100"],
    ["-p", "abc"],  # the Query refuses it: the same UsageError either way
]
DECLINED = [
    ["--help"], ["-h"], ["--version"], ["-p", "80", "-V"], ["summary"], ["--port", "80", "why"],
    ["--"], ["-"], ["--port"], ["-p"], ["--json=1"], ["--rows", "0"], ["--rows", "+5"],
    ["--rows", " 5"], ["--rows", "1_0"], ["--rows", "x"], ["--pid", "-1"], ["-p", "-1"],
    ["--source", "bogus"], ["--bogus"], ["-Z"], ["-xZ"], ["--path", ""], ["-p=80"],
    ["--port", "--json"],
]


@pytest.mark.parametrize("argv", ACCEPTED, ids=" ".join)
def test_a_plain_listing_line_is_read_as_typer_reads_it(argv):
    fast = via_fast_path(argv)
    assert fast is not None, "left to typer"
    assert fast == via_typer(argv)


@pytest.mark.parametrize("argv", DECLINED, ids=" ".join)
def test_anything_else_is_left_to_typer(argv):
    assert fastpath.parse(list(argv), LISTING) is None


def _random_lines(count: int, seed: int = 15, options: dict = LISTING, extra=()):
    """Command lines mixing every option's spellings (of `options`, each name of an
    `--on/--off` flag) with values of every kind, good and bad, and the `extra` ones."""
    rng = random.Random(seed)
    values = ["8080", "80,443", "8000-8100", "0", "1", "25", "-1", "+5", " 5", "1_0", "x",
              "", "time-wait", "LISTEN", "PROC", "auto", "Psutil", "--json", "-", "--",
              "summary", "127.0.0.1", "::1", "@*", "é", "\u0663", "5", "999999", *extra]
    names = [name for spec in options.values() for names in spec.names
             for name in names.split("/")]
    shorts = [n for n in names if len(n) == 2]
    for _ in range(count):
        line: list[str] = []
        for _ in range(rng.randint(0, 4)):
            form = rng.random()
            name = rng.choice(names)
            if form < 0.45:
                line += [name, rng.choice(values)]
            elif form < 0.6:
                line.append(f"{name}={rng.choice(values)}")
            elif form < 0.75:
                line.append(name)
            elif form < 0.9:
                run = "".join(rng.choice(shorts)[1] for _ in range(rng.randint(2, 3)))
                line.append(f"-{run}{rng.choice(['', '5', '80'])}")
            else:
                line.append(rng.choice(values))
        yield line


def test_random_command_lines_read_the_same_or_go_to_typer():
    accepted = 0
    for argv in _random_lines(1500):
        fast = via_fast_path(argv)
        if fast is None:
            continue
        accepted += 1
        assert fast == via_typer(argv), argv
    assert accepted > 300  # the corpus does exercise the fast path


# `sockstat summary ...`: main() reads these without typer when `summary` is the first
# word and the rest is only summary's plain options
SUMMARY_ACCEPTED = [
    ["summary"], ["summary", "--json"], ["summary", "--no-processes"],
    ["summary", "--top", "5"], ["summary", "--top=1"], ["summary", "-p", "443", "--top", "5"],
    ["summary", "-t"], ["summary", "-tl"], ["summary", "-tlp22"], ["summary", "-xu"],
    ["summary", "--json", "--no-processes", "--source", "PROC"],
    ["summary", "--source=netlink", "--netns", "self"], ["summary", "-s", "time-wait"],
    ["summary", "--state", "big", "-4", "--pid", "1", "--pid", "2"],
    ["summary", "--process", "nginx", "-U", "0", "--container", "docker:3f2a"],
    ["summary", "--local", "127.0.0.0/8", "--remote", "::1", "--path", "@*"],
    ["summary", "--top", "3", "--top", "7"], ["summary", "-p", "abc"],
]
SUMMARY_DECLINED = [
    ["summary", "--help"], ["summary", "-h"], ["summary", "--version"], ["summary", "-V"],
    ["-t", "summary"], ["--json", "summary"], ["--port", "80", "summary"],
    ["summary", "--"], ["summary", "-"], ["summary", "x"], ["summary", "summary"],
    ["summary", "--top"], ["summary", "--top", "0"], ["summary", "--top", "+5"],
    ["summary", "--top", "x"], ["summary", "--json=1"], ["summary", "--source", "bogus"],
    ["summary", "--bogus"], ["summary", "--csv"], ["summary", "--rows", "5"],
    ["summary", "-i"], ["summary", "-Z"], ["summary", "--port", "--json"],
    ["why", "80"], ["explain", "TIME_WAIT"], ["watch"], ["demo"],
]


def via_main(argv: list[str]):
    """(query, options) as main() reads `argv` without typer, and the function it would
    run; None when main() leaves the line to typer."""
    fast = cli._fast_path(list(argv), cli.commands_for(list(argv)))
    if fast is None:
        return None
    command, parsed, _ = fast
    return command, _as_called(parsed)


def test_a_main_listing_line_still_takes_the_listing():
    command, called = via_main(["--port", "8080", "-t"])
    assert command is show.listing and called == via_typer(["--port", "8080", "-t"])


def _kernel_masked(text: str) -> str:
    """`text` with the numbers of the kernel's totals (/proc/net/sockstat: memory pages
    and counters of the whole host move between two runs) replaced by N."""
    for start, end in (('"kernel": {', '"top_containers"'), ("Kernel totals", None)):
        at = text.find(start)
        if at >= 0:
            stop = len(text) if end is None else text.index(end, at)
            return text[:at] + re.sub(r"\d+", "N", text[at:stop]) + text[stop:]
    return text


@pytest.mark.parametrize("output", [("--json",), (), ("--no-processes",)],
                         ids=["json", "plain", "no-processes"])
def test_a_summary_prints_the_same_whichever_path_read_it(server_port, output):
    """`--` at the end changes nothing for click but sends the line to typer."""
    port = str(server_port)
    fast = run_sockstat("summary", "--port", port, "-t", *output)
    slow = run_sockstat("summary", "--port", port, "-t", *output, "--")
    assert fast.returncode == slow.returncode == 0, (fast.stderr, slow.stderr)
    assert _kernel_masked(fast.stdout) == _kernel_masked(slow.stdout)
    assert fast.stderr == slow.stderr
    if output == ("--json",):
        assert json.loads(fast.stdout)["total"] == 3  # the listener and both ends


def test_a_refused_summary_value_is_the_same_one_line_either_way():
    bad = [run_sockstat("summary", "--port", "abc", *tail) for tail in ((), ("--",))]
    assert bad[0].returncode == bad[1].returncode == 2
    assert bad[0].stderr == bad[1].stderr == \
        "sockstat: error: port 'abc' is not a number (expected 1-65535)\n"


def _modules_after(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter has imported once main(argv) has run."""
    probe = ("import sys\nfrom sockstat.cli import main\n"
             f"try: main({argv!r})\n"
             "except SystemExit: pass\n"
             "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    return set(done.stderr.split())


def test_a_summary_imports_no_typer():
    modules = _modules_after(["summary", "--port", "1", "--json", "--no-processes"])
    assert "sockstat.summarize" in modules
    assert not modules & {"typer", "typing", "rich", "sockstat.cli.check"}


@pytest.mark.parametrize("output", [("--json",), ("--csv",), ()], ids=["json", "csv", "plain"])
def test_a_listing_prints_the_same_whichever_path_read_it(server_port, output):
    """`--` at the end changes nothing for click but sends the line to typer."""
    port = str(server_port)
    fast = run_sockstat("--port", port, "-t", *output)
    slow = run_sockstat("--port", port, "-t", *output, "--")
    assert fast.returncode == slow.returncode == 0, (fast.stderr, slow.stderr)
    assert fast.stdout == slow.stdout and port in fast.stdout
    assert fast.stderr == slow.stderr
    if output == ("--json",):
        assert len(json.loads(fast.stdout)) == 3  # the listener and both ends


def test_a_refused_value_is_the_same_one_line_either_way():
    bad = [run_sockstat("--port", "abc", *tail) for tail in ((), ("--",))]
    assert bad[0].returncode == bad[1].returncode == 2
    assert bad[0].stderr == bad[1].stderr == \
        "sockstat: error: port 'abc' is not a number (expected 1-65535)\n"
    both = [run_sockstat("--json", "--csv", *tail) for tail in ((), ("--",))]
    assert both[0].returncode == both[1].returncode == 2
    assert both[0].stderr == both[1].stderr == \
        "sockstat: error: --json and --csv cannot be combined\n"


# `sockstat check ...`: read without typer when `check` is the first word and the rest
# is only check's plain options; NaN, inf and huge numbers go to typer, whose callback
# (options.finite) refuses them with exit 3
CHECK_ACCEPTED = [
    ["check"], ["check", "--interval", "0"], ["check", "--interval=0.5"],
    ["check", "--interval", "3600"], ["check", "--interval", "1."], ["check", "--interval", ".5"],
    ["check", "--interval", "007"], ["check", "--json", "--interval", "0", "-p", "8080"],
    ["check", "--host-checks"], ["check", "--no-host-checks"],
    ["check", "--host-checks", "--no-host-checks"], ["check", "-tl", "--host-checks"],
    ["check", "--close-wait-warn", "3", "--close-wait-crit", "30"],
    ["check", "--close-wait-min-age", "0"], ["check", "--close-wait-min-age=2.5"],
    ["check", "--time-wait-warn", "250", "--port", "37017,38369"],
    ["check", "--port-usage-warn", "10", "--port-usage-crit", "100"],
    ["check", "--port-usage-crit", "100.0"], ["check", "--queue-warn", "0.0"],
    ["check", "--syn-recv-warn", "5", "--syn-sent-warn", "0", "--stall-min-age", "1.5"],
    ["check", "--time-wait-warn", "9" * 400],  # an int may be huge: the same int
    ["check", "--close-wait-warn", "50"],  # lifts crit along: not an error
    ["check", "--close-wait-warn", "5", "--close-wait-crit", "2"],  # the same UsageError
    ["check", "--source", "PROC", "--netns", "self", "-s", "close-wait"],
    ["check", "--path", "/run/php/*.sock", "-xl"], ["check", "-p", "abc"],
    ["check", "--interval", "2", "--interval", "0"],
]
CHECK_DECLINED = [
    ["check", "--help"], ["check", "-h"], ["check", "--version"], ["check", "-V"],
    ["--interval", "5", "check"], ["-t", "check"], ["check", "check"], ["check", "x"],
    ["check", "--"], ["check", "-"], ["check", "--interval"], ["check", "--interval", "nan"],
    ["check", "--interval", "NaN"], ["check", "--interval", "inf"],
    ["check", "--interval", "-1"], ["check", "--interval", "3601"],
    ["check", "--interval", "1e3"], ["check", "--interval", "+1"],
    ["check", "--interval", " 1"], ["check", "--interval", "1_0"],
    ["check", "--interval", "."], ["check", "--interval", "1.2.3"],
    ["check", "--interval", "1" + "0" * 400],  # float() makes it inf
    ["check", "--close-wait-min-age", "nan"], ["check", "--close-wait-min-age", "inf"],
    ["check", "--close-wait-min-age", "1" + "0" * 400],
    ["check", "--stall-min-age", "-inf"], ["check", "--queue-warn", "150"],
    ["check", "--queue-warn", "100.5"], ["check", "--close-wait-warn", "1.5"],
    ["check", "--close-wait-warn", "-5"], ["check", "--time-wait-warn", "9" * 5000],
    ["check", "--host-checks=1"], ["check", "--no-host-checks=yes"],
    ["check", "--json=1"], ["check", "--csv"], ["check", "-i"], ["check", "--top", "5"],
    ["check", "--source", "bogus"], ["check", "--bogus"], ["check", "--port", "--json"],
]
CHECK_VALUES = ["0.5", "1.", ".5", ".", "3600", "3601", "100", "100.5", "nan", "inf",
                "-inf", "1e3", "2.5", "1" + "0" * 400, "0.0", "10"]
CHECK_SOME_FILTERS = {name: opt.FILTER_OPTIONS[name] for name in ("port", "tcp", "listening")}


# each command's reader: the function main() runs, and typer's own reading of the line
READERS = {"summary": (summary.report, SUMMARY_APP, SUMMARY_SEEN),
           "check": (check.run, CHECK_APP, CHECK_SEEN)}


@pytest.mark.parametrize("argv", SUMMARY_ACCEPTED + CHECK_ACCEPTED,
                         ids=lambda a: " ".join(a)[:60])
def test_a_plain_command_line_is_read_as_typer_reads_it(argv):
    fast = via_main(argv)
    assert fast is not None, "left to typer"
    command, called = fast
    function, app, seen = READERS[argv[0]]
    assert command is function
    assert called == via_typer(argv, app, seen)


@pytest.mark.parametrize("argv", SUMMARY_DECLINED + CHECK_DECLINED,
                         ids=lambda a: " ".join(a)[:60])
def test_any_other_command_line_is_left_to_typer(argv):
    assert via_main(argv) is None


@pytest.mark.parametrize("command", ["summary", "check"])
def test_random_command_lines_after_a_command_read_the_same_or_go_to_typer(command):
    # check's own options, and a few filters, drawn often: its numbers and flags
    options, seed, extra = {
        "summary": (SUMMARY, 16, ()),
        "check": ({**check.OPTIONS, **CHECK_SOME_FILTERS}, 17, CHECK_VALUES * 2),
    }[command]
    function, app, seen = READERS[command]
    own = {"summary": summary.OPTIONS, "check": check.OPTIONS}[command]
    accepted = with_own = 0
    for argv in _random_lines(2000, seed=seed, options=options, extra=extra):
        argv = [command, *argv]
        fast = via_main(argv)
        if fast is None:
            continue
        accepted += 1
        assert fast[1] == via_typer(argv, app, seen), argv
        if isinstance(fast[1], tuple):
            with_own += any(value != own[name].default for name, value in fast[1][1].items())
    # the corpus does exercise the fast path, and the command's own options in it
    assert accepted > 300 and with_own > 20


def test_the_thresholds_reach_the_check_as_typer_passes_them():
    """check.run is given every OPTIONS key; the thresholds as the overrides."""
    _, called = via_main(["check", "--close-wait-min-age", "0", "--queue-warn", "90"])
    _, options = called
    assert options["close_wait_min_age"] == 0.0 and type(options["close_wait_min_age"]) is float
    assert options["queue_warn"] == 90.0 and options["interval"] == check.DEFAULT_INTERVAL
    assert options.keys() == check.OPTIONS.keys()


@pytest.mark.parametrize("bad, message", [
    (("--port", "abc"), "port 'abc' is not a number (expected 1-65535)"),
    (("--close-wait-warn", "5", "--close-wait-crit", "2"),
     "--close-wait-warn (5) is above --close-wait-crit (2)"),
    (("--interval", "nan"), "--interval must be a finite number (got nan)"),
    (("--close-wait-min-age", "inf"), "--close-wait-min-age must be a finite number (got inf)"),
    (("--stall-min-age", "1" + "0" * 400),
     "--stall-min-age must be a finite number (got inf)"),
], ids=["port", "warn-above-crit", "nan", "inf", "huge"])
def test_a_refused_check_value_is_the_same_one_line_and_unknown_either_way(bad, message):
    runs = [run_sockstat("check", "--interval", "0", *bad, *tail) for tail in ((), ("--",))]
    assert runs[0].returncode == runs[1].returncode == 3
    assert runs[0].stdout == runs[1].stdout == ""
    assert runs[0].stderr == runs[1].stderr == f"sockstat: error: {message}\n"


@pytest.fixture
def full_queue_port(loop):
    """A listener with a full accept queue (a critical finding) and one connection
    waiting in it."""
    from conftest import wait_for

    from sockstat.collect import collect
    from sockstat.query import Query

    server = loop.listener(backlog=0)
    port = server.getsockname()[1]
    loop.connect(server, accept=False)
    wait_for(lambda: any(s.recv_q == 1 for s in collect(Query.build(
        ports=[port], states=["listen"])).sockets), what="one queued connection")
    return port


@pytest.mark.parametrize("output", [("--json",), ()], ids=["json", "plain"])
def test_a_check_prints_the_same_whichever_path_read_it(full_queue_port, output):
    """`--` at the end changes nothing for click but sends the line to typer."""
    line = ("check", "--interval", "0", "--port", str(full_queue_port), "--queue-warn",
            "50", "--no-host-checks", *output)
    fast, slow = run_sockstat(*line), run_sockstat(*line, "--")
    assert fast.returncode == slow.returncode == 2, (fast.stderr, slow.stderr)
    assert fast.stderr == slow.stderr
    if output:  # the kernel's counters move between two runs; the rest may not
        docs = [json.loads(run.stdout) for run in (fast, slow)]
        for doc in docs:
            doc.pop("kernel")
        assert docs[0] == docs[1]
        assert [f["kind"] for f in docs[0]["findings"]] == ["accept_queue"]
    else:
        assert fast.stdout == slow.stdout and "[CRITICAL] accept_queue" in fast.stdout


def test_a_check_imports_no_typer():
    modules = _modules_after(["check", "--port", "1", "--interval", "0", "--json"])
    assert "sockstat.cli.check" in modules
    assert not modules & {"typer", "typing", "click", "rich"}


@pytest.fixture
def server_port(loop):
    srv = loop.listener()
    loop.connect(srv)
    return srv.getsockname()[1]
