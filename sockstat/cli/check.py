"""`sockstat check`: what is wrong, where, how sure, and what to do; Nagios-style exit.

flags -> Query + Thresholds -> kernel sample, wait --interval, collect (with processes
and tcp_info), second kernel sample -> diagnose() -> panels / plain text / JSON -> exit
status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad input or nothing to read from).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated

import typer

from sockstat.cli import options as opt
from sockstat.cli.oneshot import no_collection
from sockstat.diagnose.thresholds import Thresholds
from sockstat.model import INET_PROTOS, Proto
from sockstat.query import Query

THRESHOLDS = "Thresholds"
DEFAULT_INTERVAL = 1.0  # seconds: long enough to see counters move, short for cron

EPILOG = opt.examples(
    ("sockstat check", "every detector, 1 s of kernel counters"),
    ("sockstat check --json --interval 5", "findings as JSON, rates over 5 s"),
    ("sockstat check --port 8080", "only sockets on port 8080 (no host checks)"),
    ("sockstat check --close-wait-min-age 0", "CLOSE_WAIT of any age counts"),
    note="Exit status: 0 no problems, 1 warnings, 2 critical, 3 could not check (bad "
         "option, no socket source): usable from cron, CI and Nagios-style monitoring.",
)


def register(app: typer.Typer) -> None:
    app.command("check", epilog=EPILOG)(check)


def _threshold(name: str, help_text: str, percent: bool = False):
    """An optional override of Thresholds.<name>; its default is shown from there."""
    default = getattr(Thresholds(), name)
    return typer.Option("--" + name.replace("_", "-"), help=f"{help_text} (default: {default})",
                        min=0, max=100 if percent else None, show_default=False,
                        rich_help_panel=THRESHOLDS, callback=opt.finite)


@opt.with_filters()
def check(
    query: Query,
    json: opt.Json = False,
    interval: Annotated[float, typer.Option(
        "--interval", min=0, max=3600, callback=opt.finite,
        help="Seconds between the two kernel counter samples that rates come from; "
             "0 = one sample, no rates.")] = DEFAULT_INTERVAL,
    host_checks: Annotated[bool | None, typer.Option(
        "--host-checks/--no-host-checks",
        help="Include host-wide findings (TIME_WAIT buckets, orphans, counter-only "
             "overflows). Default: on without filters, off with filters.",
        show_default=False)] = None,
    close_wait_warn: Annotated[int | None, _threshold(
        "close_wait_warn", "CLOSE_WAIT sockets per process for a warning.")] = None,
    close_wait_crit: Annotated[int | None, _threshold(
        "close_wait_crit", "CLOSE_WAIT sockets per process for critical.")] = None,
    close_wait_min_age: Annotated[float | None, _threshold(
        "close_wait_min_age", "Seconds idle before a CLOSE_WAIT socket counts.")] = None,
    time_wait_warn: Annotated[int | None, _threshold(
        "time_wait_warn", "TIME_WAIT per destination or per service for a warning.")] = None,
    port_usage_warn: Annotated[float | None, _threshold(
        "port_usage_warn", "% of usable ephemeral ports per destination: warning.",
        percent=True)] = None,
    port_usage_crit: Annotated[float | None, _threshold(
        "port_usage_crit", "% of usable ephemeral ports per destination: critical.",
        percent=True)] = None,
    queue_warn: Annotated[float | None, _threshold(
        "queue_warn", "Accept queue % of backlog for a warning (full = critical).",
        percent=True)] = None,
    syn_recv_warn: Annotated[int | None, _threshold(
        "syn_recv_warn", "Half-open (SYN_RECV) connections per listener: warning.")] = None,
    syn_sent_warn: Annotated[int | None, _threshold(
        "syn_sent_warn", "Unanswered SYN_SENT per destination: warning.")] = None,
    stall_min_age: Annotated[float | None, _threshold(
        "stall_min_age", "Seconds data must be stuck before a connection is stalled.")
    ] = None,
    source: opt.SourceOpt = opt.Source.AUTO,
    netns: opt.Netns = None,
) -> int:
    """Diagnose the socket table: CLOSE_WAIT leaks, TIME_WAIT pile-ups and port
    exhaustion, accept queue overflows (TCP and UNIX listeners), SYN floods, orphans,
    stalled connections, slow connections (what limits each busy sender over
    --interval: `sockstat why` explains), packet drops (UDP sockets, TCP listeners).

    One panel per finding, most severe first, then a one-line verdict. With filters
    (--port, --pid ...) only the matching sockets are judged.
    """
    filtered = not query.is_everything
    # TCP for most detectors, UDP for drops, UNIX for the accept queues of UNIX
    # listeners: all three unless -t/-u/-x/--path chose
    if query.protos == INET_PROTOS:
        query = dataclasses.replace(query, protos=INET_PROTOS | {Proto.UNIX})
    thresholds = Thresholds().with_overrides(
        close_wait_warn=close_wait_warn, close_wait_crit=close_wait_crit,
        close_wait_min_age=close_wait_min_age, time_wait_warn=time_wait_warn,
        port_usage_warn=port_usage_warn, port_usage_crit=port_usage_crit,
        queue_warn=queue_warn, syn_recv_warn=syn_recv_warn, syn_sent_warn=syn_sent_warn,
        stall_min_age=stall_min_age)
    host = not filtered if host_checks is None else host_checks
    return _look_and_report(query, json, interval, thresholds, host, source, netns)


@no_collection()  # one look, then the process ends
def _look_and_report(query: Query, json: bool, interval: float, thresholds: Thresholds,
                     host: bool, source: opt.Source, netns: str | None) -> int:
    from sockstat.diagnose import exit_status
    from sockstat.diagnose import report as rep
    from sockstat.observe import observe

    seen = observe(query, source=source.value, interval=interval, thresholds=thresholds,
                   host=host, netns=netns)
    for note in seen.notes:
        _note(note)
    snap, change, findings = seen.snapshot, seen.kernel, seen.findings
    _hint_unknown_owners(findings)
    sockets = len(snap.sockets)
    from sockstat.cli.errors import status_if_pipe_breaks

    # `sockstat check | head` must still exit with the verdict if the reader leaves
    status_if_pipe_breaks(exit_status(findings))
    if json:
        import json as json_mod

        doc = rep.report_dict(findings, sockets=sockets, source=snap.source, kernel=change,
                              thresholds=thresholds, host=host)
        sys.stdout.write(json_mod.dumps(doc, indent=2) + "\n")
    else:
        from sockstat.render.findings import print_findings

        print_findings(findings)
        print(rep.verdict_line(findings, sockets))
    return exit_status(findings)


def _hint_unknown_owners(findings) -> None:
    """A finding about "unknown process (uid 0)" from an ordinary user: the owner exists,
    this user just may not read its /proc/<pid>/fd."""
    import os

    from sockstat.errors import OTHER_USERS_HINT

    me = os.geteuid()
    if me == 0:
        return
    uids = sorted({s.uid for f in findings for s in f.sockets
                   if s.process is None and s.inode and s.uid is not None and s.uid != me})
    if uids:
        owners = ", ".join(str(u) for u in uids)
        _note(f"findings name an unknown process where the sockets belong to uid {owners}, "
              f"whose processes this user may not read; {OTHER_USERS_HINT}")


def _note(text: str) -> None:
    from sockstat.cli.errors import say_note

    say_note(text)
