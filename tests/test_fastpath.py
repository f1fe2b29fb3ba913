"""The fast path reads a command line exactly as typer does, or not at all.

sockstat.cli.fastpath reads `sockstat --port 8080` and `sockstat summary --json` without
importing typer. These tests hold it to typer itself: for every command line it accepts,
the listing (or summary) must get the same Query and the same options typer's parse
gives, and every line typer refuses (or that means something else: another command,
--help, --version, an option before `summary`) it must leave to typer.
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
from sockstat.cli import fastpath, show, summary
from sockstat.cli import options as opt
from sockstat.errors import SockstatError

LISTING = {**opt.FILTER_OPTIONS, **show.OPTIONS}
SUMMARY = {**opt.FILTER_OPTIONS, **summary.OPTIONS}


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


def _summary_typer_app():
    """summary's own typer declarations (with_filters + summary.OPTIONS) as a command of
    a group, around a function that records what the summary would be called with."""
    seen: list = []

    def record(query, **options) -> int:
        seen.append((query, options))
        return 0

    def group() -> None:
        """A group, so that `summary` is a command's name, as in sockstat's app."""

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(group)
    app.command("summary")(opt.with_filters(options=summary.OPTIONS)(record))
    return app, seen


APP, SEEN = _typer_app()
SUMMARY_APP, SUMMARY_SEEN = _summary_typer_app()


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


def _random_lines(count: int, seed: int = 15, options: dict = LISTING):
    """Command lines mixing every option's spellings (of `options`) with values of every
    kind, good and bad."""
    rng = random.Random(seed)
    values = ["8080", "80,443", "8000-8100", "0", "1", "25", "-1", "+5", " 5", "1_0", "x",
              "", "time-wait", "LISTEN", "PROC", "auto", "Psutil", "--json", "-", "--",
              "summary", "127.0.0.1", "::1", "@*", "é", "\u0663", "5", "999999"]
    names = [name for spec in options.values() for name in spec.names]
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
    ["check"], ["why", "80"], ["explain", "TIME_WAIT"],
]


def via_main(argv: list[str]):
    """(query, options) as main() reads `argv` without typer, and the function it would
    run; None when main() leaves the line to typer."""
    fast = cli._fast_path(list(argv), cli.commands_for(list(argv)))
    if fast is None:
        return None
    command, parsed = fast
    return command, _as_called(parsed)


@pytest.mark.parametrize("argv", SUMMARY_ACCEPTED, ids=" ".join)
def test_a_plain_summary_line_is_read_as_typer_reads_it(argv):
    fast = via_main(argv)
    assert fast is not None, "left to typer"
    command, called = fast
    assert command is summary.report
    assert called == via_typer(argv, SUMMARY_APP, SUMMARY_SEEN)


@pytest.mark.parametrize("argv", SUMMARY_DECLINED, ids=" ".join)
def test_any_other_summary_line_is_left_to_typer(argv):
    assert via_main(argv) is None


def test_a_main_listing_line_still_takes_the_listing():
    command, called = via_main(["--port", "8080", "-t"])
    assert command is show.listing and called == via_typer(["--port", "8080", "-t"])


def test_random_summary_lines_read_the_same_or_go_to_typer():
    accepted = 0
    for argv in _random_lines(1500, seed=16, options=SUMMARY):
        argv = ["summary", *argv]
        fast = via_main(argv)
        if fast is None:
            continue
        accepted += 1
        assert fast[1] == via_typer(argv, SUMMARY_APP, SUMMARY_SEEN), argv
    assert accepted > 300  # the corpus does exercise the fast path


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


def test_a_summary_imports_no_typer():
    probe = ("import sys\nfrom sockstat.cli import main\n"
             "try: main(['summary', '--port', '1', '--json', '--no-processes'])\n"
             "except SystemExit: pass\n"
             "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    modules = set(done.stderr.split())
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


@pytest.fixture
def server_port(loop):
    srv = loop.listener()
    loop.connect(srv)
    return srv.getsockname()[1]
