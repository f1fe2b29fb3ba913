"""`sockstat check`: what is wrong, where, how sure, and what to do; Nagios-style exit.

flags -> Query + Thresholds -> kernel sample, wait --interval, collect (with processes
and tcp_info), second kernel sample -> diagnose() -> panels / plain text / JSON -> exit
status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad input or nothing to read from).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sockstat.cli import options as opt

THRESHOLDS = "Thresholds"

EPILOG = """\
Exit status: 0 no problems, 1 warnings, 2 critical, 3 could not check (bad option,
no socket source): usable from cron, CI and Nagios-style monitoring.\n\n
Examples:\n
  sockstat check                          every detector, 1 s of kernel counters\n
  sockstat check --json --interval 5      findings as JSON, rates over 5 s\n
  sockstat check --port 8080              only sockets on port 8080 (no host checks)\n
  sockstat check --close-wait-warn 1 --close-wait-min-age 0\n
"""


def register(app: typer.Typer) -> None:
    app.command("check", epilog=EPILOG)(check)


def _threshold(flag: str, help_text: str, minimum: float = 0, maximum: float | None = None):
    return typer.Option(flag, help=help_text, min=minimum, max=maximum,
                        rich_help_panel=THRESHOLDS)


def check(
    port: opt.Port = None,
    sport: opt.Sport = None,
    dport: opt.Dport = None,
    state: opt.State = None,
    pid: opt.Pid = None,
    process: opt.ProcessName = None,
    user: opt.User = None,
    local: opt.Local = None,
    remote: opt.Remote = None,
    ipv4: opt.IPv4 = False,
    ipv6: opt.IPv6 = False,
    json: opt.Json = False,
    interval: Annotated[float, typer.Option(
        "--interval", "-i", min=0, max=3600,
        help="Seconds between the two kernel counter samples that rates come from; "
             "0 = one sample, no rates.")] = 1.0,
    host_checks: Annotated[bool | None, typer.Option(
        "--host-checks/--no-host-checks",
        help="Include host-wide findings (TIME_WAIT buckets, orphans, counter-only "
             "overflows). Default: on without filters, off with filters.",
        show_default=False)] = None,
    close_wait_warn: Annotated[int, _threshold(
        "--close-wait-warn", "CLOSE_WAIT sockets per process for a warning.")] = 10,
    close_wait_crit: Annotated[int, _threshold(
        "--close-wait-crit", "CLOSE_WAIT sockets per process for critical.")] = 100,
    close_wait_min_age: Annotated[float, _threshold(
        "--close-wait-min-age", "Seconds idle before a CLOSE_WAIT socket counts.")] = 10.0,
    time_wait_warn: Annotated[int, _threshold(
        "--time-wait-warn", "TIME_WAIT per destination or per service for a warning.")
    ] = 5000,
    port_usage_warn: Annotated[float, _threshold(
        "--port-usage-warn", "% of usable ephemeral ports per destination: warning.",
        maximum=100)] = 50.0,
    port_usage_crit: Annotated[float, _threshold(
        "--port-usage-crit", "% of usable ephemeral ports per destination: critical.",
        maximum=100)] = 80.0,
    queue_warn: Annotated[float, _threshold(
        "--queue-warn", "Accept queue % of backlog for a warning (full = critical).",
        maximum=100)] = 80.0,
    syn_recv_warn: Annotated[int, _threshold(
        "--syn-recv-warn", "Half-open (SYN_RECV) connections per listener: warning.")] = 100,
    syn_sent_warn: Annotated[int, _threshold(
        "--syn-sent-warn", "Unanswered SYN_SENT per destination: warning.")] = 20,
    stall_min_age: Annotated[float, _threshold(
        "--stall-min-age", "Seconds data must be stuck before a connection is stalled.")
    ] = 10.0,
    source: opt.SourceOpt = opt.Source.auto,
) -> int:
    """Diagnose the socket table: CLOSE_WAIT leaks, TIME_WAIT pile-ups and port
    exhaustion, accept queue overflows, SYN floods, orphans, stalled connections.

    One panel per finding, most severe first, then a one-line verdict. With filters
    (--port, --pid ...) only the matching sockets are judged.
    """
    from dataclasses import replace

    from sockstat.diagnose.thresholds import Thresholds

    query = opt.query_from(port=port, sport=sport, dport=dport, state=state, pid=pid,
                           process=process, user=user, local=local, remote=remote,
                           ipv4=ipv4, ipv6=ipv6, tcp=True)
    thresholds = replace(
        Thresholds(), close_wait_warn=close_wait_warn, close_wait_crit=close_wait_crit,
        close_wait_min_age=close_wait_min_age, time_wait_warn=time_wait_warn,
        port_usage_warn=port_usage_warn, port_usage_crit=port_usage_crit,
        queue_warn=queue_warn, syn_recv_warn=syn_recv_warn,
        syn_recv_crit=max(syn_recv_warn, Thresholds().syn_recv_crit),
        syn_sent_warn=syn_sent_warn, syn_sent_crit=max(syn_sent_warn,
                                                       Thresholds().syn_sent_crit),
        stall_min_age=stall_min_age,
        stall_crit_age=max(stall_min_age, Thresholds().stall_crit_age),
    ).validate()
    filtered = any((port, sport, dport, state, pid, process, user, local, remote, ipv4, ipv6))
    host = not filtered if host_checks is None else host_checks
    snap, change = _gather(query, source.value, interval)

    from sockstat.diagnose import diagnose, exit_status
    from sockstat.diagnose import report as rep

    findings = diagnose(snap, change, thresholds, host=host)
    sockets = len(snap.sockets)
    if json:
        import json as json_mod

        doc = rep.report_dict(findings, sockets=sockets, source=snap.source, kernel=change,
                              thresholds=thresholds, host=host)
        sys.stdout.write(json_mod.dumps(doc, indent=2) + "\n")
    else:
        _print_findings(findings)
        print(rep.verdict_line(findings, sockets))
    return exit_status(findings)


def _gather(query, source: str, interval: float):
    """Kernel sample, wait, sockets, kernel sample: rates cover the moment of the
    snapshot. Kernel counters missing (not Linux) only lose their checks."""
    import time

    from sockstat.collect import collect
    from sockstat.collect.kernel import KernelChange, read_sample
    from sockstat.diagnose import wanted_pids
    from sockstat.errors import SourceUnavailable

    before = None
    try:
        if interval > 0:
            before = read_sample()
            time.sleep(interval)
    except SourceUnavailable as exc:
        _note(f"kernel counters unavailable ({exc}); checking the socket table only")
        interval = -1
    snap = collect(query, source=source, processes=True, tcp_info=True)
    change = None
    if interval >= 0:
        try:
            change = KernelChange(after=read_sample(pids=wanted_pids(snap)), before=before)
        except SourceUnavailable as exc:
            _note(f"kernel counters unavailable ({exc}); checking the socket table only")
    return snap, change


def _note(text: str) -> None:
    print(f"sockstat: note: {text}", file=sys.stderr)


def _print_findings(findings) -> None:
    from sockstat.render.style import use_colour

    if not findings:
        return
    if sys.stdout.isatty():
        _print_panels(findings, colour=use_colour())
        return
    from sockstat.diagnose.report import plain_block

    for finding in findings:
        print("\n".join(plain_block(finding)))
        print()


STYLE = {"critical": "bold red", "warning": "yellow", "ok": "green"}


def _print_panels(findings, colour: bool) -> None:
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from sockstat.diagnose.report import LABEL, evidence_text

    # NO_COLOR / not a terminal: no ANSI styling at all, not even bold
    console = Console(color_system="auto" if colour else None, highlight=False)
    for f in findings:
        style = STYLE[f.severity.value]
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        grid.add_row("evidence", Text(evidence_text(f.evidence)))
        grid.add_row("why", Text(f.explanation))
        grid.add_row("fix", Text(f.remedy))
        body = Group(Text(f.summary, style="bold"), Text(""), grid)
        title = Text.assemble((f" {LABEL[f.severity]} ", style), f" {f.kind}: {f.subject} ")
        console.print(Panel(body, title=title, title_align="left", border_style=style))
