"""`sockstat [OPTIONS]`: the main listing, grouped by state.

flags -> Query -> collect() -> (cheap detectors) -> plain/rich/JSON/CSV renderer.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sockstat.cli import options as opt
from sockstat.model import TcpState
from sockstat.query import Query
from sockstat.status import ExitStatus

EPILOG = opt.examples(
    ("sockstat", "every TCP/UDP socket, grouped by state"),
    ("sockstat --port 8080", "both ends of port 8080, with the process"),
    ("sockstat -s close-wait --json", "CLOSE_WAIT sockets as JSON"),
    ("sockstat -l", "listeners, with accept queue / backlog"),
    ("sockstat -i -s established", "with RTT, cwnd, retransmissions (tcp_info)"),
    ("sockstat -xl", "UNIX listeners, with accept queue / backlog"),
    ("sockstat --path '/run/php/*'", "UNIX sockets by name, with peer and process"),
    ("sockstat -um", "UDP sockets with buffers and drops (socket memory)"),
    ("sockstat --remote 10.0.0.0/8 -t", "TCP peers in a network"),
    ("sockstat summary", "counts, top ports, hosts, processes"),
    ("sockstat check", "what is wrong, with evidence and a remedy"),
    ("sockstat demo close-wait", "make a CLOSE_WAIT on loopback and learn it"),
)

DEFAULT_ROWS = 25
DETECTOR_INFO_STATES = frozenset({TcpState.CLOSE_WAIT})


def register(app: typer.Typer) -> None:
    app.callback(invoke_without_command=True, epilog=EPILOG)(main_listing)


@opt.with_filters()
def main_listing(
    ctx: typer.Context,
    query: Query,
    json: opt.Json = False,
    csv: Annotated[bool, typer.Option("--csv", help="CSV with a header row (every row).",
                                      rich_help_panel=opt.OUTPUT)] = False,
    all_rows: Annotated[bool, typer.Option(
        "--all", "-a", help="On a terminal, show every row (default: at most --rows per "
                            "state).", rich_help_panel=opt.OUTPUT)] = False,
    rows: Annotated[int, typer.Option(
        "--rows", "-n", min=1, help="Rows per state on a terminal.",
        rich_help_panel=opt.OUTPUT)] = DEFAULT_ROWS,
    info: Annotated[bool, typer.Option(
        "--info", "-i", help="Add tcp_info columns: RTT, cwnd, unacked, retransmissions, "
                             "time since last send/receive, peer window (netlink).",
        rich_help_panel=opt.OUTPUT)] = False,
    memory: Annotated[bool, typer.Option(
        "--memory", "-m", help="Add socket memory columns: receive/send buffer use and "
                               "size, and packets dropped (netlink; as ss -m).",
        rich_help_panel=opt.OUTPUT)] = False,
    no_processes: Annotated[bool, typer.Option(
        "--no-processes", help="Skip naming processes (faster on huge tables).",
        rich_help_panel=opt.OUTPUT)] = False,
    source: opt.SourceOpt = opt.Source.AUTO,
    version: Annotated[bool, typer.Option(
        "--version", "-V", help="Show the version and exit.", is_eager=True,
        callback=opt.version_callback)] = False,
) -> int:
    """List sockets grouped by TCP state, with the process behind each one.

    On LISTEN sockets (TCP and UNIX) Recv-Q shows the accept queue as queued/backlog. A `!` marks
    sockets that belong to a problem `sockstat check` would report.
    """
    if ctx.invoked_subcommand is not None:
        _refuse_options_before(ctx)
        return ExitStatus.OK
    if json and csv:
        from sockstat.errors import UsageError

        raise UsageError("--json and --csv cannot be combined")
    from sockstat.collect import collect

    # Listings on a terminal mark the sockets of problems, and the CLOSE_WAIT detector
    # judges by tcp_info ages, as `sockstat check` does: fetch it for those sockets only
    # (as `watch` does; stalls are judged by queues and timers here, check has more).
    # Piped output is data for other programs: no marks, so no detectors to pay for.
    for_people = not (json or csv) and sys.stdout.isatty()
    wanted_info = True if info else (DETECTOR_INFO_STATES if for_people else False)
    snap = collect(query, source=source.value, processes=not no_processes,
                   tcp_info=wanted_info, memory=memory)
    out = sys.stdout
    if json:
        from sockstat.render import jsonout

        jsonout.write_sockets(out, snap.sockets)
    elif csv:
        from sockstat.render import csvout

        csvout.write_sockets(out, snap.sockets, memory=memory)
    else:
        _print_listing(snap, rows=None if all_rows else rows, info=info, memory=memory)
    _attribution_note(snap, no_processes, info)
    return ExitStatus.OK


def _refuse_options_before(ctx: typer.Context) -> None:
    """`sockstat --port 80 summary` would silently drop --port (it belongs to the main
    listing): say where it goes instead."""
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT") \
                and param.opts:
            given.append(max(param.opts, key=len))
    if given:
        from sockstat.errors import UsageError

        sub = ctx.invoked_subcommand
        raise UsageError(f"{', '.join(given)} given before '{sub}': options go after the "
                         f"command (sockstat {sub} {given[0]} ...)")


def _print_listing(snap, rows: int | None, info: bool = False, memory: bool = False) -> None:
    from sockstat.render.style import use_colour

    tty = sys.stdout.isatty()
    limit = rows if tty else None  # piped output carries every row, like ss
    marked, pointer = _findings(snap) if tty else (set(), None)
    colour = use_colour()
    shown = sum(min(n, limit) if limit else n for n in _state_sizes(snap.sockets).values())
    from sockstat.render.table import RICH_ROW_LIMIT

    rendered = False
    if tty and shown <= RICH_ROW_LIMIT:
        from rich.console import Console

        from sockstat.render import table

        console = Console(no_color=not colour, highlight=False)
        rendered = table.render(console, snap.sockets, limit_per_state=limit, marked=marked,
                                info=info, memory=memory)
    if not rendered:
        from sockstat.render import plain

        write = sys.stdout.write
        for line in plain.render(snap.sockets, limit_per_state=limit, colour=colour,
                                 marked=marked, info=info, memory=memory):
            write(line + "\n")
    if pointer:
        print(pointer, file=sys.stderr)


def _state_sizes(sockets) -> dict:
    sizes: dict = {}
    for s in sockets:
        sizes[s.state] = sizes.get(s.state, 0) + 1
    return sizes


def _findings(snap) -> tuple[set, str | None]:
    """Marks from the cheap detectors, and the one-line pointer to `sockstat check`."""
    from sockstat.diagnose import flagged_keys
    from sockstat.observe import Judge

    # no counters (other OSes): socket-table findings only
    findings = Judge(quick=True).judge(snap).findings
    problems = [f for f in findings if f.severity.value != "ok"]
    if not problems:
        return set(), None
    n = len(problems)
    return flagged_keys(problems), f"{n} problem{'s' if n != 1 else ''} — run `sockstat check`"


def _attribution_note(snap, no_processes: bool, info: bool = False) -> None:
    from sockstat.cli.errors import say_note

    for note in snap.notes:
        say_note(note)
    if info and not snap.source.can.tcp_info:
        say_note(f"tcp_info (RTT, cwnd, retransmissions, idle times) comes only from "
                 f"netlink: the {snap.source} source has none, so --info columns are empty")
    a = snap.attribution
    if no_processes or not a.scanned:
        return
    if not a.unattributed:
        return
    import os

    why = (f"{a.denied_processes} process(es) not readable" if a.denied_processes
           else "no visible process holds them")
    hint = ("another PID namespace or a restricted /proc hides them even from root"
            if os.geteuid() == 0 else "run as root to see other users' processes")
    say_note(f"{a.unattributed} socket(s) could not be attributed to a process ({why}); "
             f"{hint}")
