"""`sockstat why FILTERS`: why is this connection slow? What limits each busy sender.

flags -> Query -> tcp_info sample, wait --interval, second sample (with processes) ->
diagnose.slow.verdicts() -> one block per busy connection (limited_by, the numbers, why,
what to do) or JSON. Idle connections are counted, not judged. Exit status 0 (it
explains; `sockstat check` is the one that alarms), 2 bad input.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from sockstat.cli import options as opt
from sockstat.query import Query
from sockstat.status import ExitStatus

DEFAULT_INTERVAL = 1.0

EPILOG = opt.examples(
    ("sockstat why --port 5432", "what limits each busy connection on port 5432"),
    ("sockstat why --dport 443 --interval 5", "judged over 5 s"),
    ("sockstat why --pid 1234 --json", "verdicts and numbers as JSON"),
    note="limited_by is one of receiver_window, send_buffer, network, congestion, "
         "application. Needs netlink tcp_info (Linux 4.10+ for the busy/limited clocks).",
)


def register(app: typer.Typer) -> None:
    app.command("why", epilog=EPILOG)(why)


@opt.with_filters("port", "sport", "dport", "state", "pid", "process", "user", "local",
                  "remote", "ipv4", "ipv6")
def why(
    query: Query,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.05, max=3600, callback=opt.finite,
        help="Seconds between the two tcp_info samples the verdicts come from.")
    ] = DEFAULT_INTERVAL,
    json: opt.Json = False,
    netns: opt.Netns = None,
) -> int:
    """Why is this connection slow? Classify each busy connection by what limits it:
    the peer's receive window, the send buffer, the network, congestion control, or the
    application itself, with the numbers and what to do.
    """
    import dataclasses

    from sockstat.collect import collect
    from sockstat.diagnose.slow import SENDING_STATES, verdicts
    from sockstat.errors import SourceUnavailable
    from sockstat.model import Proto
    from sockstat.observe import first_sample

    states = query.states & SENDING_STATES
    if not states:
        from sockstat.errors import UsageError

        raise UsageError("why judges sending connections: ESTABLISHED or CLOSE_WAIT")
    query = dataclasses.replace(query, states=states, protos=frozenset({Proto.TCP}))
    earlier = first_sample(query, "netlink", netns=netns)
    if earlier is None:
        raise SourceUnavailable("why needs tcp_info from netlink sock_diag")
    time.sleep(interval)
    snap = collect(query, source="netlink", processes=True, tcp_info=True, netns=netns)
    snap.previous = earlier
    judged = verdicts(snap)
    idle = len(snap.sockets) - len(judged)
    if json:
        from sockstat.render.jsonout import dumps

        print(dumps({
            "interval_s": round(snap.taken_at - earlier.taken_at, 3),
            "connections": len(snap.sockets), "idle": idle,
            "verdicts": [{"limited_by": v.limited_by, "problem": v.problem,
                          "evidence": v.evidence, "explanation": v.explanation,
                          "remedy": v.remedy, "socket": s.to_dict()} for s, v in judged],
        }))
        return ExitStatus.OK
    _print(judged, idle)
    return ExitStatus.OK


def _print(judged, idle: int) -> None:
    from sockstat.diagnose.report import evidence_text
    from sockstat.render import fmt

    out = sys.stdout
    for sock, verdict in judged:
        owner = fmt.process(sock) or "unknown process"
        out.write(f"{sock.local} -> {sock.remote}  {owner}  limited by "
                  f"{verdict.limited_by}\n")
        numbers = {k: v for k, v in verdict.evidence.items() if k != "limited_by"}
        out.write(f"  evidence: {evidence_text(numbers)}\n")
        out.write(f"  why: {verdict.explanation}\n")
        out.write(f"  fix: {verdict.remedy}\n\n")
    busy = len(judged)
    out.write(f"{busy} busy connection{'s' if busy != 1 else ''} judged, {idle} idle "
              f"(nothing sent in the interval)\n")
