"""Option types shared by the commands (filters, source, output format).

Each is an `Annotated` alias so that every command that filters sockets spells its
filters the same way, and `query_from` turns them into a validated Query.
"""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from sockstat.query import Query

FILTERS = "Filters"
OUTPUT = "Output"


class Source(enum.StrEnum):
    auto = "auto"
    netlink = "netlink"
    proc = "proc"
    psutil = "psutil"


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
         "synchronized, bucket, big, closing. Repeatable.",
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
SourceOpt = Annotated[Source, typer.Option(
    "--source", help="Where sockets come from: netlink (Linux default), /proc, or psutil "
                     "(portable).", case_sensitive=False)]
Json = Annotated[bool, typer.Option("--json", help="JSON for machines (every matching row).",
                                    rich_help_panel=OUTPUT)]


def query_from(*, port=None, sport=None, dport=None, state=None, pid=None, process=None,
               user=None, local=None, remote=None, listening=False, ipv4=False, ipv6=False,
               tcp=False, udp=False) -> Query:
    """The shared filter options -> a validated Query (UsageError on bad input)."""
    return Query.build(
        states=state or (), ports=port or (), sports=sport or (), dports=dport or (),
        local=local or (), remote=remote or (), tcp=tcp, udp=udp, ipv4=ipv4, ipv6=ipv6,
        pids=pid or (), process=process, user=user, listening=listening,
    )
