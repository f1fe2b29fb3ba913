"""`sockstat summary`: counts by state, top ports, hosts and processes, kernel totals."""

from __future__ import annotations

from sockstat.cli import options as opt
from sockstat.cli.oneshot import no_collection
from sockstat.query import Query
from sockstat.status import ExitStatus

# summary's own options (after the filters, in help order): declared here once, for
# typer and for the fast path (sockstat.cli.fastpath) alike
OPTIONS: dict[str, opt.Opt] = {
    "json": opt.JSON,
    "top": opt.Opt(int, 10, "--top", min=1, help="Rows in each top list."),
    "no_processes": opt.Opt(bool, False, "--no-processes",
                            help="Skip the top-processes list (faster on huge tables)."),
    "source": opt.SOURCE,
    "netns": opt.NETNS,
}


def register(app) -> None:
    app.command(epilog=opt.examples(
        ("sockstat summary", "counts, top ports, hosts, processes"),
        ("sockstat summary --json", "the same for machines"),
        ("sockstat summary -p 443 --top 5", "only port 443, five rows per list"),
        ("sockstat summary -t", "TCP only (no UDP, no UNIX sockets)"),
    ))(opt.with_filters(options=OPTIONS)(summary))


def summary(query: Query, **options) -> int:
    """Counts by state, top ports, hosts and processes, and the kernel's totals.

    States are counted for TCP and UDP over IPv4 and IPv6, and for UNIX sockets (unless
    -t/-u/-x choose); the kernel's totals come from /proc/net/sockstat (orphans,
    TIME_WAIT buckets, memory).
    """
    return report(query, **options)


@no_collection()  # one look, then the process ends
def report(query: Query, *, json: bool, top: int, no_processes: bool, source: opt.Source,
           netns: str | None) -> int:
    """The summary itself, for the sockets `query` matches. The other arguments are
    `OPTIONS`, every one given (their defaults live there)."""
    import dataclasses

    from sockstat.collect import collect, count
    from sockstat.model import INET_PROTOS, Proto
    from sockstat.summarize import summarize

    if query.protos == INET_PROTOS:  # no protocol chosen: count UNIX sockets too
        query = dataclasses.replace(query, protos=INET_PROTOS | {Proto.UNIX})

    # without processes nothing needs a row: count straight from the kernel's buffers
    notes: list[str] = []
    tally = count(query, source=source.value, notes=notes) \
        if no_processes and netns is None else None
    if tally is not None:
        import time

        from sockstat.model import Snapshot, Source

        snap = Snapshot(sockets=[], taken_at=time.time(), source=Source.NETLINK,
                        notes=notes)
    else:
        snap = collect(query, source=source.value, processes=not no_processes, netns=netns,
                       services=not no_processes)
    from sockstat.cli.errors import say_note

    for note in snap.notes:
        say_note(note)
    result = summarize(snap, top=top, kernel=_kernel_totals(), tally=tally)
    hidden = _hidden_processes(snap, result)
    if hidden:
        say_note(hidden)
    if json:
        from sockstat.render.jsonout import dumps

        print(dumps(result.to_dict()))
    else:
        from sockstat.render.summary import render

        render(result)
    return ExitStatus.OK


def _hidden_processes(snap, result) -> str | None:
    """What Top processes leaves out, when the scan could not read some processes."""
    from sockstat.errors import hidden_processes_hint

    a = snap.attribution
    if not (a.scanned and a.denied_processes and a.unattributed):
        return None
    what = ("is hidden: its" if not result.top_processes else "leaves out")
    return (f"Top processes {what} {a.unattributed} socket(s) of processes this user may "
            f"not read ({a.denied_processes} process(es)); {hidden_processes_hint()}")


def _kernel_totals() -> dict[str, dict[str, int]]:
    """/proc/net/sockstat{,6} as {"TCP": {"inuse": .., "orphan": .., "tw": ..}, ...};
    empty where /proc is not there (other OSes)."""
    from sockstat.collect.kernel import read_sockstat
    from sockstat.errors import SockstatError

    try:
        flat = read_sockstat()
    except (SockstatError, OSError):
        return {}
    nested: dict[str, dict[str, int]] = {}
    for key, value in flat.items():
        table, _, field = key.partition(".")
        nested.setdefault(table, {})[field] = value
    return nested
