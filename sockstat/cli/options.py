"""Option types shared by the commands (filters, source, output format).

Each is an `Annotated` alias so that every command that filters sockets spells its
filters the same way, and `query_from` turns them into a validated Query.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated

import typer

from sockstat.model import Source
from sockstat.query import Query

FILTERS = "Filters"
OUTPUT = "Output"


Port = Annotated[list[str] | None, typer.Option(
    "--port", "-p", help="Local or remote port (repeatable; 8000-8100 ranges, a,b lists).",
    rich_help_panel=FILTERS, show_default=False)]
Sport = Annotated[list[str] | None, typer.Option(
    "--sport", help="Local (source) port.", rich_help_panel=FILTERS, show_default=False)]
Dport = Annotated[list[str] | None, typer.Option(
    "--dport", help="Remote (destination) port.", rich_help_panel=FILTERS,
    show_default=False)]
State = Annotated[list[str] | None, typer.Option(
    "--state", "-s",
    help="TCP state, any case, - or _ (time-wait, ESTABLISHED) or a group: connected, "
         "synchronized, bucket, big. Repeatable.",
    rich_help_panel=FILTERS, show_default=False)]
Pid = Annotated[list[int] | None, typer.Option(
    "--pid", help="Owning process id (repeatable).", rich_help_panel=FILTERS,
    show_default=False)]
ProcessName = Annotated[str | None, typer.Option(
    "--process", "-P", help="Owning process name contains this (case-insensitive).",
    rich_help_panel=FILTERS, show_default=False)]
User = Annotated[str | None, typer.Option(
    "--user", "-U", help="Socket owner: user name or uid.", rich_help_panel=FILTERS,
    show_default=False)]
Local = Annotated[list[str] | None, typer.Option(
    "--local", help="Local address or CIDR (127.0.0.0/8, ::1).", rich_help_panel=FILTERS,
    show_default=False)]
Remote = Annotated[list[str] | None, typer.Option(
    "--remote", help="Remote address or CIDR.", rich_help_panel=FILTERS,
    show_default=False)]
Listening = Annotated[bool, typer.Option(
    "--listening", "-l", help="Only listening TCP and unconnected UDP sockets.",
    rich_help_panel=FILTERS)]
IPv4 = Annotated[bool, typer.Option("-4", "--ipv4", help="Only IPv4.", rich_help_panel=FILTERS)]
IPv6 = Annotated[bool, typer.Option("-6", "--ipv6", help="Only IPv6.", rich_help_panel=FILTERS)]
Tcp = Annotated[bool, typer.Option("--tcp", "-t", help="Only TCP.", rich_help_panel=FILTERS)]
Udp = Annotated[bool, typer.Option("--udp", "-u", help="Only UDP.", rich_help_panel=FILTERS)]
Unix = Annotated[bool, typer.Option(
    "--unix", "-x", help="UNIX (AF_UNIX) sockets: stream, seqpacket, datagram (only these "
                         "unless -t/-u are given too).", rich_help_panel=FILTERS)]
PathGlob = Annotated[list[str] | None, typer.Option(
    "--path", help="UNIX socket name matches this glob (`/run/php/*.sock`, `@*` for "
                   "abstract names); implies --unix. Repeatable.",
    rich_help_panel=FILTERS, show_default=False)]
SourceOpt = Annotated[Source, typer.Option(
    "--source", help="Where sockets come from: netlink (Linux default), /proc, or psutil "
                     "(portable).", case_sensitive=False)]
ContainerName = Annotated[str | None, typer.Option(
    "--container", help="Only sockets of this container or systemd unit: an id or its "
                        "prefix, runtime:id (docker:3f2a9c1b2d4e), a unit (nginx.service) "
                        "or an LXC name, as /proc/PID/cgroup names it.",
    rich_help_panel=FILTERS, show_default=False)]
Netns = Annotated[str | None, typer.Option(
    "--netns", help="Read these network namespaces instead of this one: all (every "
                    "one, this one included), self (this one), an `ip netns` name, a "
                    "pid (its namespace), a path (/proc/PID/ns/net), or a comma list "
                    "(rvtest,self). Needs root for namespaces other than this one.",
    rich_help_panel=FILTERS, show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="JSON for machines (every matching row).",
                                    rich_help_panel=OUTPUT)]


def finite(param: typer.CallbackParam, value):
    """The callback of every numeric option: NaN and ±inf are usage errors (exit 2, in
    check 3), the same check the library applies (sockstat.numbers.finite)."""
    from sockstat.numbers import finite as check

    if value is not None:
        check(value, max(param.opts, key=len))
    return value


def version_callback(value: bool) -> None:
    """--version: print and stop (eager, before anything else is parsed)."""
    if value:
        from sockstat.cli.errors import print_version

        print_version()
        raise typer.Exit()


def query_from(*, port=None, sport=None, dport=None, state=None, pid=None, process=None,
               user=None, local=None, remote=None, listening=False, ipv4=False, ipv6=False,
               tcp=False, udp=False, container=None, unix=False, path=None) -> Query:
    """The shared filter options -> a validated Query (UsageError on bad input)."""
    return Query.build(
        states=state or (), ports=port or (), sports=sport or (), dports=dport or (),
        local=local or (), remote=remote or (), tcp=tcp, udp=udp, unix=unix,
        paths=path or (), ipv4=ipv4, ipv6=ipv6,
        pids=pid or (), process=process, user=user, listening=listening,
        container=container,
    )


def examples(*rows: tuple[str, str], note: str = "") -> str:
    """A command's help epilog: an optional note, then aligned example lines.

    Help is rendered as Markdown: each line ends in two spaces, Markdown's line break,
    so the examples stay one per line and aligned."""
    width = max(len(command) for command, _ in rows)
    lines = [f"{command.ljust(width)}  {what}".rstrip() + "  " for command, what in rows]
    head = f"{note}\n\n" if note else ""
    return head + "Examples:\n\n" + "\n".join(lines)


# name -> (option type, default): every filter a command can take, in help order
FILTER_OPTIONS: dict[str, tuple[object, object]] = {
    "port": (Port, None), "sport": (Sport, None), "dport": (Dport, None),
    "state": (State, None), "pid": (Pid, None), "process": (ProcessName, None),
    "user": (User, None), "local": (Local, None), "remote": (Remote, None),
    "listening": (Listening, False), "ipv4": (IPv4, False), "ipv6": (IPv6, False),
    "tcp": (Tcp, False), "udp": (Udp, False), "container": (ContainerName, None),
    "unix": (Unix, False), "path": (PathGlob, None),
}
ALL_FILTERS = tuple(FILTER_OPTIONS)


def with_filters(*names: str) -> Callable:
    """Give a command the filter options `names` (default: all) and call it with one
    `query: Query` argument built from them, so each filter is declared once, here.

    The command is written as `def cmd(query: Query, other options...)`; Typer sees the
    filter options in its signature instead of `query`.
    """
    names = names or ALL_FILTERS

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "query"]
        filters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                     default=FILTER_OPTIONS[name][1],
                                     annotation=FILTER_OPTIONS[name][0]) for name in names]
        # positional-or-keyword parameters (ctx) first, then the filters, then the rest
        first = [p for p in own if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                 and p.default is inspect.Parameter.empty]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own
                if p not in first]

        @functools.wraps(command)
        def run(*args, **kwargs):
            chosen = {name: kwargs.pop(name) for name in names if name in kwargs}
            return command(*args, query=query_from(**chosen), **kwargs)

        run.__signature__ = signature.replace(parameters=first + filters + rest)
        run.__annotations__ = {}  # the signature above carries the evaluated types
        return run

    return decorate
