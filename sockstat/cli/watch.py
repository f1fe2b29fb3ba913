"""`sockstat watch`: the live view, refreshed every --interval seconds.

flags -> Query -> Watcher (sockstat.watch: collect, owners, tracker, detectors) ->
a full-screen rich Live frame on a terminal, or one JSON object per refresh (JSONL)
when stdout is not a terminal or with --jsonl.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from sockstat.cli import options as opt
from sockstat.query import Query
from sockstat.status import ExitStatus

EPILOG = opt.examples(
    ("sockstat watch", "everything, every 2 s (q quits)"),
    ("sockstat watch -p 8080 --interval 1", "one service, every second"),
    ("sockstat watch -s close-wait", "watch a CLOSE_WAIT leak grow"),
    ("sockstat watch --jsonl --count 30 > w.jsonl", "a minute of JSON lines"),
)


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(watch)


@opt.with_filters()
def watch(
    query: Query,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.1, callback=opt.finite,
        help="Seconds between refreshes.")] = 2.0,
    count: Annotated[int | None, typer.Option(
        "--count", "-c", min=1, help="Stop after this many refreshes (default: never).",
        show_default=False)] = None,
    jsonl: Annotated[bool, typer.Option(
        "--jsonl", help="One JSON object per refresh (the default when stdout is not a "
                        "terminal).", rich_help_panel=opt.OUTPUT)] = False,
    top: Annotated[int, typer.Option(
        "--top", min=1, help="Rows in each top list.", rich_help_panel=opt.OUTPUT)] = 10,
    no_processes: Annotated[bool, typer.Option(
        "--no-processes", help="Skip naming processes (no top processes, no TIME_WAIT "
                               "owners).", rich_help_panel=opt.OUTPUT)] = False,
    source: opt.SourceOpt = opt.Source.AUTO,
    netns: opt.Netns = None,
) -> int:
    """Live view: sockets per state, their change and history, churn, top lists, findings.

    Counts per state with the change since the last refresh and since the start and a
    sparkline of each; connections opened and closed per second; top processes, local
    ports and remote hosts; the current findings of the detectors (`sockstat check`).

    Each socket is followed across refreshes (by netlink cookie, else by address and
    ports): CLOSE_WAIT sockets get their real age, TIME_WAIT sockets the process that
    owned them while they were alive.

    q or Ctrl-C quits. When stdout is not a terminal, or with --jsonl: one JSON object
    per refresh.
    """
    from sockstat.watch.session import Watcher

    with Watcher(query, source=source.value, processes=not no_processes,
                 interval=interval, top=top, netns=netns) as watcher:
        if jsonl or not sys.stdout.isatty():
            return _stream(watcher, interval, count)
        return _live(watcher, interval, count)


def _stream(watcher, interval: float, count: int | None) -> int:
    import json

    from sockstat.numbers import LONGEST_WAIT
    from sockstat.watch.session import next_deadline

    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    out = sys.stdout
    start = time.monotonic()
    done = 0
    while True:
        refresh = watcher.refresh()
        done += 1
        out.write(encode(refresh.to_dict()) + "\n")
        out.flush()  # a reader (tail -f, a pipe) sees each refresh as it happens
        if count is not None and done >= count:
            return ExitStatus.OK
        deadline = next_deadline(start, interval, time.monotonic())
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, LONGEST_WAIT))


def _live(watcher, interval: float, count: int | None) -> int:
    from rich.console import Console
    from rich.live import Live

    from sockstat.render.live import LiveFrame, describe
    from sockstat.render.style import use_colour
    from sockstat.watch.session import next_deadline
    from sockstat.watch.terminal import QUIT, RESIZE, Terminal, Terminated

    console = Console(no_color=not use_colour(), highlight=False)
    frame = LiveFrame(None, title=describe(watcher.query), interval=interval,
                      findings_available=watcher.findings_available,
                      keys=sys.stdin.isatty())
    try:
        # Terminal outside Live: the screen is restored first, then the keyboard mode
        with Terminal() as terminal, Live(frame, console=console, screen=True,
                                          auto_refresh=False, redirect_stdout=False,
                                          redirect_stderr=False) as live:
            start = time.monotonic()
            done = 0
            while True:
                frame.refresh = watcher.refresh()
                done += 1
                live.refresh()
                if count is not None and done >= count:
                    return ExitStatus.OK
                deadline = next_deadline(start, interval, time.monotonic())
                while True:
                    event = terminal.wait(deadline - time.monotonic())
                    if event == QUIT:
                        return ExitStatus.OK
                    if event == RESIZE:  # rich measures the terminal again on render
                        live.refresh()
                        continue
                    break
    except KeyboardInterrupt:  # Ctrl-C is the other normal way out of a live view
        return ExitStatus.OK
    except Terminated as exc:  # SIGTERM / SIGHUP: terminal restored, exit as shells expect
        from sockstat.status import for_signal

        return for_signal(exc.signum)
