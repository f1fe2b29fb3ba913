"""`sockstat kill FILTERS`: reset sockets, after showing which and what that frees.

flags -> Query -> kill.plan() (a preview; nothing changed) -> confirmation (--yes, or a
yes on a terminal) -> kill.apply() -> one line per socket, or JSON -> exit status 0 when
every socket was reset or already gone, 1 when any could not be.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sockstat.cli import options as opt
from sockstat.query import Query
from sockstat.status import ExitStatus

EPILOG = opt.examples(
    ("sockstat kill -s close-wait --pid 1234", "preview: what would be reset"),
    ("sockstat kill -s close-wait --pid 1234 --yes", "reset them"),
    ("sockstat kill --dport 5432 -s established --yes", "drop connections to a peer port"),
    ("sockstat kill -s time-wait --sport 8080 --yes", "free TIME_WAIT four-tuples now"),
    ("sockstat kill --listening --port 9000 --yes", "close a listener (refused otherwise)"),
    ("sockstat kill --netns blue -s close-wait --yes", "inside network namespace blue"),
    note="Without --yes nothing is changed (on a terminal you are asked). Needs "
         "CAP_NET_ADMIN and a kernel with CONFIG_INET_DIAG_DESTROY. Exit status: 0 every "
         "socket reset (or already gone), 1 some could not be, 2 bad input.",
)


def register(app: typer.Typer) -> None:
    app.command("kill", epilog=EPILOG)(kill)


@opt.with_filters()
def kill(
    query: Query,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Reset without asking (default: preview only, or ask on a "
                            "terminal).")] = False,
    json: opt.Json = False,
    netns: opt.Netns = None,
) -> int:
    """Reset (abort) the sockets the filters select, as `ss -K` does, but with a preview.

    Frees each connection's port, buffers and four-tuple at once; the peer gets an RST.
    It does not close the owning process's file descriptor: a program leaking CLOSE_WAIT
    sockets keeps its fds until it closes them. LISTEN and unconnected UDP sockets are
    only reset with --listening. An empty filter (or --listening alone) is refused.
    """
    from sockstat import kill as kill_lib

    plan = kill_lib.plan(query, netns=netns)
    _note(_skipped_note(plan))
    if not plan.targets:
        plan.applied = yes
        return _finish(plan, json)
    if not yes and not json and sys.stdin.isatty() and sys.stdout.isatty():
        _print(plan)
        yes = typer.confirm(f"Reset {_count(len(plan.targets))}?", default=False,
                            err=True)
        if not yes:
            _note("nothing changed")
            return ExitStatus.OK
        kill_lib.apply(plan)
        _print(plan)
        return _status(plan)
    if yes:
        kill_lib.apply(plan)
    elif not json:
        _note("preview only, nothing changed: add --yes to reset these sockets")
    return _finish(plan, json)


def _skipped_note(plan) -> str | None:
    """One line on what was left out: listeners alone, or that nothing matched at all."""
    n = len(plan.listening_skipped)
    if n and plan.targets:
        return (f"{n} listening socket{'s' if n != 1 else ''} left alone (add --listening "
                "to reset listeners)")
    if n:
        what = "1 listening socket matched and was" if n == 1 else \
            f"{n:,} listening sockets matched and were"
        return (f"nothing to reset: {what} left alone (add --listening to reset "
                f"{'it' if n == 1 else 'them'})")
    return None if plan.targets else "no socket matches: nothing to reset"


def _count(n: int) -> str:
    return f"{n:,} socket{'s' if n != 1 else ''}"


def _finish(plan, json: bool) -> int:
    if json:
        from sockstat.render.jsonout import dumps

        print(dumps(plan.to_dict()))
    else:
        _print(plan)
    return _status(plan)


def _status(plan) -> int:
    return ExitStatus.OK if plan.all_ok else ExitStatus.ERROR


def _print(plan) -> None:
    """One line per socket (result, state, endpoints, owner), then what it frees."""
    from sockstat.render import fmt

    if not plan.targets:
        return
    rows = []
    for target in plan.targets:
        s = target.socket
        owner = fmt.process(s)
        if s.process is not None and s.process.fd is not None and not s.process.via_listener:
            owner += f" fd {s.process.fd}"
        result = target.outcome.value.replace("_", " ")
        if target.error:
            result += f" ({target.error})"
        if s.netns is not None and not s.netns.current:
            owner += f" [{s.netns.label}]"
        rows.append((result, s.proto.value, s.state.shown.label, str(s.local), str(s.remote),
                     owner, target))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    counts = ", ".join(f"{n:,} {name.replace('_', ' ')}" for name, n in plan.counts().items()
                       if n)
    print(f"{_count(len(plan.targets))}: {counts}")
    for *cells, target in rows:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        line = f"    frees: {target.frees}"
        if target.keeps:
            line += f"; does not free: {target.keeps}"
        print(line)


def _note(text: str | None) -> None:
    from sockstat.cli.errors import say_note

    if text:
        say_note(text)
