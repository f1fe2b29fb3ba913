"""The options shared by the commands (filters, source, output format), declared once.

Each option is an `Opt`: its type, default, names and the rest of what `typer.Option` is
told. Commands get them as `Annotated` parameters (`opt.Json`, or every filter at once
through `with_filters`, which also turns them into one validated Query); the main
listing's fast path (sockstat.cli.fastpath) parses a command line from the same
objects without importing typer, which is why nothing here imports it until a command
is built.
"""

from __future__ import annotations

from collections.abc import Callable

from sockstat.model import Source
from sockstat.query import Query

FILTERS = "Filters"
OUTPUT = "Output"


class Opt:
    """One option: the parameter's type and default, its names (`"--port", "-p"`) and
    typer.Option's other settings (help, rich_help_panel, min, ...), as given."""

    __slots__ = ("type", "default", "names", "settings")

    def __init__(self, type, default, *names: str, **settings) -> None:
        self.type, self.default, self.names, self.settings = type, default, names, settings

    def annotation(self):
        """`Annotated[type, typer.Option(...)]`, the parameter typer reads."""
        from typing import Annotated

        import typer

        return Annotated[self.type, typer.Option(*self.names, **self.settings)]


PORT = Opt(list[str] | None, None,
           "--port", "-p", help="Local or remote port (repeatable; 8000-8100 ranges, a,b lists).",
           rich_help_panel=FILTERS, show_default=False)
SPORT = Opt(list[str] | None, None,
            "--sport", help="Local (source) port.", rich_help_panel=FILTERS, show_default=False)
DPORT = Opt(list[str] | None, None,
            "--dport", help="Remote (destination) port.", rich_help_panel=FILTERS,
            show_default=False)
STATE = Opt(list[str] | None, None,
            "--state", "-s",
            help="TCP state, any case, - or _ (time-wait, ESTABLISHED) or a group: connected, "
                 "synchronized, bucket, big. Repeatable.",
            rich_help_panel=FILTERS, show_default=False)
PID = Opt(list[int] | None, None,
          "--pid", help="Owning process id (repeatable).", rich_help_panel=FILTERS,
          show_default=False)
PROCESS = Opt(str | None, None,
              "--process", "-P", help="Owning process name contains this (case-insensitive).",
              rich_help_panel=FILTERS, show_default=False)
USER = Opt(str | None, None,
           "--user", "-U", help="Socket owner: user name or uid.", rich_help_panel=FILTERS,
           show_default=False)
LOCAL = Opt(list[str] | None, None,
            "--local", help="Local address or CIDR (127.0.0.0/8, ::1).", rich_help_panel=FILTERS,
            show_default=False)
REMOTE = Opt(list[str] | None, None,
             "--remote", help="Remote address or CIDR.", rich_help_panel=FILTERS,
             show_default=False)
LISTENING = Opt(bool, False,
                "--listening", "-l", help="Only listening TCP and unconnected UDP sockets.",
                rich_help_panel=FILTERS)
IPV4 = Opt(bool, False, "-4", "--ipv4", help="Only IPv4.", rich_help_panel=FILTERS)
IPV6 = Opt(bool, False, "-6", "--ipv6", help="Only IPv6.", rich_help_panel=FILTERS)
TCP = Opt(bool, False, "--tcp", "-t", help="Only TCP.", rich_help_panel=FILTERS)
UDP = Opt(bool, False, "--udp", "-u", help="Only UDP.", rich_help_panel=FILTERS)
UNIX = Opt(bool, False,
           "--unix", "-x", help="UNIX (AF_UNIX) sockets: stream, seqpacket, datagram (only these "
                                "unless -t/-u are given too).", rich_help_panel=FILTERS)
PATH = Opt(list[str] | None, None,
           "--path", help="UNIX socket name matches this glob (`/run/php/*.sock`, `@*` for "
                          "abstract names); implies --unix. Repeatable.",
           rich_help_panel=FILTERS, show_default=False)
SOURCE = Opt(Source, Source.AUTO,
             "--source", help="Where sockets come from: netlink (Linux default), /proc, or "
                              "psutil (portable).", case_sensitive=False)
CONTAINER = Opt(str | None, None,
                "--container", help="Only sockets of this container or systemd unit: an id or "
                                    "its prefix, runtime:id (docker:3f2a9c1b2d4e), a unit "
                                    "(nginx.service) or an LXC name, as /proc/PID/cgroup "
                                    "names it.",
                rich_help_panel=FILTERS, show_default=False)
NETNS = Opt(str | None, None,
            "--netns", help="Read these network namespaces instead of this one: all (every "
                            "one, this one included), self (this one), an `ip netns` name, a "
                            "pid (its namespace), a path (/proc/PID/ns/net), or a comma list "
                            "(rvtest,self). Needs root for namespaces other than this one.",
            rich_help_panel=FILTERS, show_default=False)
JSON = Opt(bool, False, "--json", help="JSON for machines (every matching row).",
           rich_help_panel=OUTPUT)

# the Annotated parameters commands name in their signatures (`json: opt.Json = False`),
# made on first use: building one imports typer
_ANNOTATED = {"Json": JSON, "SourceOpt": SOURCE, "Netns": NETNS}


def __getattr__(name: str):
    spec = _ANNOTATED.get(name)
    if spec is None:
        raise AttributeError(f"module 'sockstat.cli.options' has no attribute {name!r}")
    value = spec.annotation()
    globals()[name] = value
    return value


def finite(ctx, param, value):
    """The callback of every numeric option: NaN and ±inf are usage errors (exit 2, in
    check 3), the same check the library applies (sockstat.numbers.finite). Written in
    click's (ctx, param, value) form, which typer accepts untyped: this module does not
    import typer."""
    from sockstat.numbers import finite as check

    if value is not None:
        check(value, max(param.opts, key=len))
    return value


def version_callback(value: bool) -> bool:
    """--version: print and stop (eager, before anything else is parsed)."""
    if value:
        import typer

        from sockstat.cli.errors import print_version

        print_version()
        raise typer.Exit()
    return value  # unchanged, as the fast path assumes of an option it leaves to typer


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


def pop_query(options: dict, names: tuple[str, ...] = ()) -> Query:
    """The validated Query of the filter options `names` (default: all) among
    `options`, which are taken out of it: what is left is the command's own."""
    return query_from(**{name: options.pop(name) for name in names or ALL_FILTERS
                         if name in options})


def examples(*rows: tuple[str, str], note: str = "") -> str:
    """A command's help epilog: an optional note, then aligned example lines.

    Help is rendered as Markdown: each line ends in two spaces, Markdown's line break,
    so the examples stay one per line and aligned."""
    width = max(len(command) for command, _ in rows)
    lines = [f"{command.ljust(width)}  {what}".rstrip() + "  " for command, what in rows]
    head = f"{note}\n\n" if note else ""
    return head + "Examples:\n\n" + "\n".join(lines)


# name -> option: every filter a command can take, in help order
FILTER_OPTIONS: dict[str, Opt] = {
    "port": PORT, "sport": SPORT, "dport": DPORT, "state": STATE, "pid": PID,
    "process": PROCESS, "user": USER, "local": LOCAL, "remote": REMOTE,
    "listening": LISTENING, "ipv4": IPV4, "ipv6": IPV6, "tcp": TCP, "udp": UDP,
    "container": CONTAINER, "unix": UNIX, "path": PATH,
}
ALL_FILTERS = tuple(FILTER_OPTIONS)


def with_filters(*names: str, options: dict[str, Opt] | None = None) -> Callable:
    """Give a command the filter options `names` (default: all) and call it with one
    `query: Query` argument built from them, so each filter is declared once, here.

    The command is written as `def cmd(query: Query, other options...)`; Typer sees the
    filter options in its signature instead of `query`. `options` (name -> Opt) are
    more keyword parameters, after the others, for a command that takes them as
    `**options` (the main listing: its fast path reads the same table). Annotations
    may name `typer` without the command's module importing it.
    """
    import functools
    import inspect

    import typer

    names = names or ALL_FILTERS

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True, locals={"typer": typer})
        own = [p for p in signature.parameters.values()
               if p.name != "query" and p.kind is not inspect.Parameter.VAR_KEYWORD]
        filters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                     default=FILTER_OPTIONS[name].default,
                                     annotation=FILTER_OPTIONS[name].annotation())
                   for name in names]
        declared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                      default=spec.default, annotation=spec.annotation())
                    for name, spec in (options or {}).items()]
        # positional-or-keyword parameters (ctx) first, then the filters, then the rest
        first = [p for p in own if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                 and p.default is inspect.Parameter.empty]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own
                if p not in first]

        @functools.wraps(command)
        def run(*args, **kwargs):
            query = pop_query(kwargs, names)
            return command(*args, query=query, **kwargs)

        run.__signature__ = signature.replace(parameters=first + filters + rest + declared)
        run.__annotations__ = {}  # the signature above carries the evaluated types
        return run

    return decorate
