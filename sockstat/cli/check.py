"""`sockstat check`: what is wrong, where, how sure, and what to do; Nagios-style exit.

flags -> Query + Thresholds -> kernel sample, wait --interval, collect (with processes
and tcp_info), second kernel sample -> diagnose() -> panels / plain text / JSON -> exit
status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad input or nothing to read from).
"""

from __future__ import annotations

import dataclasses
import sys

from sockstat.cli import options as opt
from sockstat.cli.oneshot import keep_until_exit, no_collection
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


def _threshold(name: str, kind: type, help_text: str, percent: bool = False) -> opt.Opt:
    """An optional override of Thresholds.<name>; its default is shown from there."""
    default = getattr(Thresholds(), name)
    return opt.Opt(kind | None, None, "--" + name.replace("_", "-"),
                   help=f"{help_text} (default: {default})", min=0,
                   max=100 if percent else None, show_default=False,
                   rich_help_panel=THRESHOLDS, callback=opt.finite)


# check's own options (after the filters, in help order): declared here once, for typer
# and for the fast path (sockstat.cli.fastpath) alike
OPTIONS: dict[str, opt.Opt] = {
    "json": opt.JSON,
    "interval": opt.Opt(
        float, DEFAULT_INTERVAL, "--interval", min=0, max=3600, callback=opt.finite,
        help="Seconds between the two kernel counter samples that rates come from; "
             "0 = one sample, no rates."),
    "host_checks": opt.Opt(
        bool | None, None, "--host-checks/--no-host-checks",
        help="Include host-wide findings (TIME_WAIT buckets, orphans, counter-only "
             "overflows). Default: on without filters, off with filters.",
        show_default=False),
    "close_wait_warn": _threshold(
        "close_wait_warn", int, "CLOSE_WAIT sockets per process for a warning."),
    "close_wait_crit": _threshold(
        "close_wait_crit", int, "CLOSE_WAIT sockets per process for critical."),
    "close_wait_min_age": _threshold(
        "close_wait_min_age", float, "Seconds idle before a CLOSE_WAIT socket counts."),
    "time_wait_warn": _threshold(
        "time_wait_warn", int, "TIME_WAIT per destination or per service for a warning."),
    "port_usage_warn": _threshold(
        "port_usage_warn", float, "% of usable ephemeral ports per destination: warning.",
        percent=True),
    "port_usage_crit": _threshold(
        "port_usage_crit", float, "% of usable ephemeral ports per destination: critical.",
        percent=True),
    "queue_warn": _threshold(
        "queue_warn", float, "Accept queue % of backlog for a warning (full = critical).",
        percent=True),
    "syn_recv_warn": _threshold(
        "syn_recv_warn", int, "Half-open (SYN_RECV) connections per listener: warning."),
    "syn_sent_warn": _threshold(
        "syn_sent_warn", int, "Unanswered SYN_SENT per destination: warning."),
    "stall_min_age": _threshold(
        "stall_min_age", float, "Seconds data must be stuck before a connection is stalled."),
    "source": opt.SOURCE,
    "netns": opt.NETNS,
}


def register(app) -> None:
    app.command("check", epilog=EPILOG)(opt.with_filters(options=OPTIONS)(check))


def check(query: Query, **options) -> int:
    """Diagnose the socket table: CLOSE_WAIT leaks, TIME_WAIT pile-ups and port
    exhaustion, accept queue overflows (TCP and UNIX listeners), SYN floods, orphans,
    stalled connections, slow connections (what limits each busy sender over
    --interval: `sockstat why` explains), packet drops (UDP sockets, TCP listeners).

    One panel per finding, most severe first, then a one-line verdict. With filters
    (--port, --pid ...) only the matching sockets are judged.
    """
    return run(query, **options)


def run(query: Query, *, json: bool, interval: float, host_checks: bool | None,
        source: opt.Source, netns: str | None, **thresholds: int | float | None) -> int:
    """The check itself, for the sockets `query` matches. The other arguments are
    `OPTIONS`, every one given (their defaults live there); `thresholds` are the
    overrides (None = not given)."""
    filtered = not query.is_everything
    # TCP for most detectors, UDP for drops, UNIX for the accept queues of UNIX
    # listeners: all three unless -t/-u/-x/--path chose
    if query.protos == INET_PROTOS:
        query = dataclasses.replace(query, protos=INET_PROTOS | {Proto.UNIX})
    limits = Thresholds().with_overrides(**thresholds)
    host = not filtered if host_checks is None else host_checks
    return _look_and_report(query, json, interval, limits, host, source, netns)


@no_collection()  # one look, then the process ends
def _look_and_report(query: Query, json: bool, interval: float, thresholds: Thresholds,
                     host: bool, source: opt.Source, netns: str | None) -> int:
    from sockstat.diagnose import exit_status
    from sockstat.diagnose import report as rep
    from sockstat.observe import observe

    seen = observe(query, source=source.value, interval=interval, thresholds=thresholds,
                   host=host, netns=netns)
    keep_until_exit(seen)  # the process ends after the report: nothing to free
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
