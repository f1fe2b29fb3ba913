"""`sockstat [OPTIONS]`: the main listing, grouped by state.

flags -> Query -> collect() -> (cheap detectors) -> plain/rich/JSON/CSV renderer.
"""

from __future__ import annotations

import dataclasses
import sys

from sockstat.cli import options as opt
from sockstat.cli.oneshot import no_collection
from sockstat.model import TcpState
from sockstat.query import Query
from sockstat.status import ExitStatus

# typing.TYPE_CHECKING without importing typing; typer is imported only when a Typer
# app is built (with_filters resolves the annotation then)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import typer

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
    ("sockstat completions bash --install", "Tab completion (or zsh, fish)"),
)

DEFAULT_ROWS = 25
DETECTOR_INFO_STATES = frozenset({TcpState.CLOSE_WAIT})


# the main listing's own options (after the filters, in help order): declared here once,
# for typer and for the fast path (sockstat.cli.fastpath) alike
OPTIONS: dict[str, opt.Opt] = {
    "json": opt.JSON,
    "csv": opt.Opt(bool, False, "--csv", help="CSV with a header row (every row).",
                   rich_help_panel=opt.OUTPUT),
    "all_rows": opt.Opt(bool, False,
                        "--all", "-a", help="On a terminal, show every row (default: at most "
                                            "--rows per state).", rich_help_panel=opt.OUTPUT),
    "rows": opt.Opt(int, DEFAULT_ROWS,
                    "--rows", "-n", min=1, help="Rows per state on a terminal.",
                    rich_help_panel=opt.OUTPUT),
    "info": opt.Opt(bool, False,
                    "--info", "-i", help="Add tcp_info columns: RTT, cwnd, unacked, "
                                         "retransmissions, time since last send/receive, "
                                         "peer window, delivery rate, what limited the "
                                         "sender, congestion control (netlink). --json/--csv "
                                         "then carry the full tcp_info.",
                    rich_help_panel=opt.OUTPUT),
    "memory": opt.Opt(bool, False,
                      "--memory", "-m", help="Add socket memory columns: receive/send buffer "
                                             "use and size, and packets dropped (netlink; as "
                                             "ss -m).", rich_help_panel=opt.OUTPUT),
    "no_processes": opt.Opt(bool, False,
                            "--no-processes", help="Skip naming processes (faster on huge "
                                                   "tables).", rich_help_panel=opt.OUTPUT),
    "source": opt.SOURCE,
    "netns": opt.NETNS,
    "peer": opt.Opt(bool, False,
                    "--peer", help="Add a Peer column: the process holding the other end of "
                                   "a connection between two sockets of this host.",
                    rich_help_panel=opt.OUTPUT),
    "version": opt.Opt(bool, False,
                       "--version", "-V", help="Show the version and exit.", is_eager=True,
                       callback=opt.version_callback),
}


def register(app) -> None:
    command = opt.with_filters(options=OPTIONS)(main_listing)
    app.callback(invoke_without_command=True, epilog=EPILOG)(command)


def main_listing(ctx: typer.Context, query: Query, **options) -> int:
    """List sockets grouped by TCP state, with the process behind each one.

    On LISTEN sockets (TCP and UNIX) Recv-Q shows the accept queue as queued/backlog. A `!` marks
    sockets that belong to a problem `sockstat check` would report.
    """
    if ctx.invoked_subcommand is not None:
        _refuse_options_before(ctx)
        return ExitStatus.OK
    return listing(query, **options)


@no_collection()  # one look, then the process ends
def listing(query: Query, *, json: bool, csv: bool, all_rows: bool, rows: int, info: bool,
            memory: bool, no_processes: bool, source: opt.Source, netns: str | None,
            peer: bool, version: bool) -> int:
    """The listing itself, for the sockets `query` matches. The other arguments are
    `OPTIONS`, every one given (their defaults live there); `version` was answered
    before this runs."""
    if json and csv:
        from sockstat.errors import UsageError

        raise UsageError("--json and --csv cannot be combined")
    if json and not (info or memory or peer or netns is not None):
        # rows straight from the kernel's records, when nothing asked needs a Socket
        from sockstat.collect.rows import listing_rows
        from sockstat.render import jsonout

        # most rows are written while the owner scan runs, only their owners after it
        writer = jsonout.RecordsWriter()
        table = listing_rows(query, source=source.value, processes=not no_processes,
                             meanwhile=writer.prepare)
        if table is not None:
            writer.write(sys.stdout, table.parts, table.owners)
            _attribution_note(table.snapshot, no_processes)
            return ExitStatus.OK
    from sockstat.collect import collect

    # Listings on a terminal mark the sockets of problems, and the CLOSE_WAIT detector
    # judges by tcp_info ages, as `sockstat check` does: fetch it for those sockets only
    # (as `watch` does; stalls are judged by queues and timers here, check has more).
    # Piped output is data for other programs: no marks, so no detectors to pay for.
    for_people = not (json or csv) and sys.stdout.isatty()
    wanted_info = True if info else (DETECTOR_INFO_STATES if for_people else False)
    snap = collect(query, source=source.value, processes=not no_processes or peer,
                   tcp_info=wanted_info, netns=netns,
                   services=netns is not None and not no_processes, memory=memory)
    if peer:  # pairing costs a dict of every socket: only when asked
        from sockstat.peers import pair

        pair(snap.sockets, _peer_candidates(query, source.value, netns))
    extra = _extra_columns(snap, peer, memory)
    out = sys.stdout
    if json:
        from sockstat.render import jsonout

        jsonout.write_sockets(out, snap.sockets)
    elif csv:
        from sockstat.render import csvout

        csvout.write_sockets(out, snap.sockets, memory=memory)
    else:
        _print_listing(snap, rows=None if all_rows else rows, info=info, extra=extra)
    limit = None if (json or csv or all_rows or not sys.stdout.isatty()) else rows
    _attribution_note(snap, no_processes, info, limit)
    return ExitStatus.OK


def _refuse_options_before(ctx) -> None:
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


def _peer_candidates(query: Query, source: str, netns: str | None) -> list:
    """The other ends the shown rows may pair with but the filters left out (a state,
    address or process filter): the same ports, every state, with their owners. Both
    ends of a connection carry both port numbers, so a port filter keeps them."""
    narrowed = dataclasses.replace(query, ports=frozenset(), local_ports=frozenset(),
                                   remote_ports=frozenset())
    if narrowed == Query(protos=query.protos, families=query.families):
        return []  # only port filters: the other ends are in the table already
    from sockstat.collect import collect

    wide = Query(ports=query.ports | query.local_ports | query.remote_ports,
                 protos=query.protos, families=query.families)
    return collect(wide, source=source, processes=True, netns=netns).sockets


def _extra_columns(snap, peer: bool, memory: bool = False) -> tuple[str, ...]:
    """Netns when more than one namespace is shown; Peer with --peer; the socket memory
    columns with --memory."""
    extra: tuple[str, ...] = ()
    if len({s.netns.inode for s in snap.sockets if s.netns is not None}) > 1:
        extra += ("Netns",)
    if peer:
        extra += ("Peer",)
    if memory:
        from sockstat.render.fmt import MEMORY_COLUMNS

        extra += MEMORY_COLUMNS
    return extra


def _print_listing(snap, rows: int | None, info: bool = False,
                   extra: tuple[str, ...] = ()) -> None:
    from sockstat.render.style import use_colour

    tty = sys.stdout.isatty()
    limit = rows if tty else None  # piped output carries every row, like ss
    marked, pointer = _findings(snap) if tty else (set(), None)
    colour = use_colour()
    rendered = False
    if tty:  # rich tables for a short listing (piped output never counts or imports them)
        from sockstat.render import table

        shown = sum(min(n, limit) if limit else n
                    for n in _state_sizes(snap.sockets).values())
        if shown <= table.RICH_ROW_LIMIT:
            from rich.console import Console

            console = Console(no_color=not colour, highlight=False)
            rendered = table.render(console, snap.sockets, limit_per_state=limit,
                                    marked=marked, info=info, extra=extra)
    if not rendered:
        from sockstat.render import plain

        write = sys.stdout.write
        lines: list[str] = []
        for line in plain.render(snap.sockets, limit_per_state=limit, colour=colour,
                                 marked=marked, info=info, extra=extra):
            lines.append(line)
            if len(lines) == 4096:  # one write per few thousand lines, not per line
                write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            write("\n".join(lines) + "\n")
    if pointer:
        print(pointer, file=sys.stderr)


def _state_sizes(sockets) -> dict:
    sizes: dict = {}
    for s in sockets:
        sizes[s.state] = sizes.get(s.state, 0) + 1
    return sizes


def _findings(snap) -> tuple[set, str | None]:
    """Marks from the cheap detectors, and the one-line pointer to `sockstat check`."""
    from sockstat.collect.services import fill_close_wait
    from sockstat.diagnose import flagged_keys
    from sockstat.observe import Judge

    fill_close_wait(snap)  # a forking server's leak is judged as one service
    # no counters (other OSes): socket-table findings only
    findings = Judge(quick=True).judge(snap).findings
    problems = [f for f in findings if f.severity.value != "ok"]
    if not problems:
        return set(), None
    n = len(problems)
    return flagged_keys(problems), f"{n} problem{'s' if n != 1 else ''} — run `sockstat check`"


def _attribution_note(snap, no_processes: bool, info: bool = False,
                      limit: int | None = None) -> None:
    from sockstat.cli.errors import say_note

    for note in snap.notes:
        say_note(note)
    if info and not snap.source.can.tcp_info:
        say_note(f"tcp_info (RTT, cwnd, retransmissions, idle times) comes only from "
                 f"netlink: the {snap.source} source has none, so --info columns are empty")
    a = snap.attribution
    if no_processes or not a.scanned or not a.unattributed:
        return
    note = unattributed_note(snap, limit)
    if note:
        say_note(note)


def unattributed_note(snap, limit: int | None = None) -> str | None:
    """Why shown rows have no process, each cause counted apart; None when every shown
    row has an owner (rows the terminal left out do not count)."""
    import os
    from collections import Counter

    from sockstat.collect.owners import DENIED, GONE, HIDDEN
    from sockstat.errors import OTHER_USERS_HINT
    from sockstat.render.plain import visible

    causes = snap.attribution.causes
    counts = Counter(causes.get(s.inode, HIDDEN) for s in visible(snap.sockets, limit)
                     if s.inode and s.process is None)
    if not counts:
        return None
    parts = []
    if counts[GONE]:
        parts.append(f"{counts[GONE]} closed (or their process exited) while sockstat "
                     "looked")
    if counts[DENIED]:
        fix = ("another user namespace keeps them from root here" if os.geteuid() == 0
               else OTHER_USERS_HINT)
        parts.append(f"{counts[DENIED]} belong to users whose processes are not readable "
                     f"({fix})")
    if counts[HIDDEN]:
        where = ("another PID namespace or a restricted /proc hides their process even "
                 "from root, none holds them (an in-kernel tunnel such as vxlan, a "
                 "socket passed between processes and not yet received), or it was "
                 "opened after sockstat read its process") \
            if os.geteuid() == 0 else \
            "no process visible to this user holds them (root may see more)"
        parts.append(f"{counts[HIDDEN]} are held by no visible process: {where}")
    total = sum(counts.values())
    return f"{total} socket(s) shown without a process: " + "; ".join(parts)

