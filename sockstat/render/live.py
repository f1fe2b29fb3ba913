"""The frames of `sockstat watch`: one screen built from a Refresh, for rich's Live.

LiveFrame lays itself out when rich renders it, for the terminal's size at that moment,
so a resize only needs a re-render: counts per state with their changes and history
(sparklines), connections opened and closed per second, the detectors' findings, then
as many rows of the top lists and of the oldest CLOSE_WAIT sockets as fit. Nothing
here collects or tracks; `sparkline` and `layout_rows` are pure and tested.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sockstat.humanize import printable
from sockstat.model import DISPLAY_STATES, ProcessRef, TcpState
from sockstat.render import fmt
from sockstat.render.style import SEVERITY_STYLE, STATE_STYLE
from sockstat.watch.tracker import Refresh

BARS = "▁▂▃▄▅▆▇█"
HISTORY_WIDTH = 120  # at most this many refreshes in a sparkline (the tracker keeps 120)


def sparkline(values, width: int) -> str:
    """The last `width` values as bars, scaled between their minimum and maximum so that
    a change shows even on a large count (the numbers are next to it). A flat line sits
    at the bottom when it is zero, in the middle otherwise. Left-padded to `width`.

    >>> sparkline([0, 1, 2, 3], 6)
    '  ▁▃▆█'
    """
    values = list(values)[-width:] if width > 0 else []
    if not values:
        return " " * max(width, 0)
    lo, hi = min(values), max(values)
    if hi == lo:
        bars = (BARS[0] if hi == 0 else BARS[3]) * len(values)
    else:
        top = len(BARS) - 1
        bars = "".join(BARS[round((v - lo) * top / (hi - lo))] for v in values)
    return bars.rjust(width)


def history_title(refresh, points: int) -> str:
    """'History (last 4s)': the time the sparkline's last `points` refreshes really
    cover (from their timestamps), not its capacity; plain 'History' on the first."""
    times = refresh.history_times[-points:]
    if len(times) < 2:
        return "History"
    return f"History (last {fmt.duration(int((times[-1] - times[0]) * 1000))})"


def describe(query) -> str:
    """What a Query selects, for the header: 'port 8080, state close-wait, tcp'."""
    from sockstat.model import ALL_STATES, Family

    parts = []
    if query.states != ALL_STATES:
        names = {s.slug for s in query.states}
        parts.append("state " + ",".join(sorted(names)))
    for name, ports in (("port", query.ports), ("sport", query.local_ports),
                        ("dport", query.remote_ports)):
        if ports:
            parts.append(f"{name} {_ranges(ports)}")
    for name, networks in (("local", query.local_networks),
                           ("remote", query.remote_networks)):
        if networks:
            parts.append(f"{name} {','.join(str(n) for n in networks)}")
    if query.pids:
        parts.append("pid " + ",".join(str(p) for p in sorted(query.pids)))
    if query.process_name:
        parts.append(f"process {query.process_name}")
    if query.uid is not None:
        parts.append(f"uid {query.uid}")
    if query.listening:
        parts.append("listening")
    if len(query.protos) == 1:
        parts.append(next(iter(query.protos)).value)
    if len(query.families) == 1:
        parts.append("ipv4" if Family.INET in query.families else "ipv6")
    return ", ".join(parts) or "all sockets"


def _ranges(ports) -> str:
    """{80, 8000, 8001, 8002} -> '80,8000-8002'."""
    out: list[str] = []
    ordered = sorted(ports)
    start = prev = ordered[0]
    for port in [*ordered[1:], None]:
        if port is not None and port == prev + 1:
            prev = port
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if port is not None:
            start = prev = port
    return ",".join(out)


def signed(n: int) -> str:
    return f"{n:+,}" if n else "·"


def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}/s"


def process_label(ref: ProcessRef | None, processes: int = 1) -> str:
    """'nginx/812', or 'socat/500 (31 processes)' for a service's entry."""
    if ref is None:
        return "unknown"
    label = printable(str(ref))
    return f"{label} ({processes} processes)" if processes > 1 else label


def shown_states(refresh: Refresh) -> list[TcpState]:
    """States with sockets now or anywhere in the visible history (so that a count that
    dropped to zero still shows), in the order of a connection's life."""
    return [s for s in DISPLAY_STATES if refresh.counts[s] or any(refresh.history[s])]


@dataclass
class Rows:
    findings: int
    top: int
    close_wait: int


def layout_rows(height: int, *, states: int, findings: int, top: int, close_wait: int) -> Rows:
    """How many rows each list gets on a screen `height` lines tall, most important
    first: the state table always, then findings (up to half of what is left when lists
    follow, at least 3), then the top lists, then the oldest CLOSE_WAIT sockets."""
    # header, blank, table header + states + total, churn; blank + findings title
    free = height - (2 + 1 + states + 1 + 1) - 2
    share = free if not (top or close_wait) else max(3, free // 2)
    rows_findings = max(0, min(findings, share, free))
    free -= rows_findings
    if findings > rows_findings:
        free -= 1  # the "… and N more" line
    rows_top = max(0, min(top, free - 2))  # blank + the tables' titles
    if rows_top:
        free -= 2 + rows_top
    rows_cw = max(0, min(close_wait, free - 3))  # blank + title + header
    return Rows(rows_findings, rows_top, rows_cw)


class LiveFrame:
    """A rich renderable: the whole watch screen for one Refresh (None: not yet)."""

    def __init__(self, refresh: Refresh | None, *, title: str, interval: float,
                 findings_available: bool = True, keys: bool = True) -> None:
        self.refresh = refresh
        self.title = title
        self.interval = interval
        self.findings_available = findings_available
        self.keys = keys

    def __rich_console__(self, console, options):
        from rich.text import Text

        height = options.height or console.size.height
        width = options.max_width
        yield self._header(width)
        r = self.refresh
        if r is None:
            yield Text("\ncollecting…", style="dim")
            return
        states = shown_states(r)
        cw = r.counts[TcpState.CLOSE_WAIT] and len(r.oldest_close_wait)
        top = max(len(r.top_processes), len(r.top_local_ports), len(r.top_remote_hosts),
                  len(r.time_wait_owners))
        rows = layout_rows(height, states=max(len(states), 1), findings=len(r.findings),
                           top=top, close_wait=cw)
        yield Text("")
        yield self._states(r, states, width)
        yield self._churn(r)
        yield from self._findings(r, rows.findings)
        if rows.top:
            yield Text("")
            yield self._tops(r, rows.top)
        if rows.close_wait:
            yield Text("")
            yield self._close_wait(r, rows.close_wait)

    # -- sections ---------------------------------------------------------------------
    def _header(self, width: int):
        from rich.text import Text

        r = self.refresh
        left = Text("sockstat watch", style="bold")
        parts = [self.title] if self.title else []
        parts.append(f"every {self.interval:g}s")
        if r is not None:
            parts += [time.strftime("%H:%M:%S", time.localtime(r.timestamp)),
                      f"refresh {r.number}", r.source,
                      f"{fmt.thousands(r.total)} sockets"]
        left.append("  ·  " + "  ·  ".join(parts))
        hint = "q quits" if self.keys else "Ctrl-C quits"
        pad = width - left.cell_len - len(hint)
        if pad >= 2:
            left.append(" " * pad)
            left.append(hint, style="dim")
        left.no_wrap = True
        left.overflow = "ellipsis"
        return left

    def _states(self, r: Refresh, states: list[TcpState], width: int):
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False,
                      padding=(0, 2, 0, 0))
        table.add_column("State", no_wrap=True, min_width=12)
        table.add_column("Now", justify="right", no_wrap=True, min_width=7)
        table.add_column("Δ last", justify="right", no_wrap=True, min_width=7)
        table.add_column("Δ start", justify="right", no_wrap=True, min_width=7)
        spark_width = max(8, min(HISTORY_WIDTH, width - 52))
        table.add_column(history_title(r, spark_width), no_wrap=True)
        if not states:
            table.add_row(Text("no sockets match", style="dim"), "", "", "", "")
        for state in states:
            style = STATE_STYLE[state]
            table.add_row(
                Text(state.label, style=style),
                fmt.thousands(r.counts[state]),
                Text(signed(r.delta[state]), style="bold" if r.delta[state] else "dim"),
                Text(signed(r.since_start[state]),
                     style="bold" if r.since_start[state] else "dim"),
                Text(sparkline(r.history[state], spark_width), style=style),
            )
        total_delta = sum(r.delta.values())
        total_start = sum(r.since_start.values())
        table.add_row(Text("total", style="bold"), Text(fmt.thousands(r.total), style="bold"),
                      signed(total_delta), signed(total_start), "")
        return table

    def _churn(self, r: Refresh):
        from rich.text import Text

        text = Text("connections  ")
        text.append("new ", style="dim")
        text.append(rate(r.opened_per_s), style="bold")
        text.append("   closed ", style="dim")
        text.append(rate(r.closed_per_s), style="bold")
        text.append(f"   (since start: {r.opened_total:,} new, {r.closed_total:,} closed)",
                    style="dim")
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text

    def _findings(self, r: Refresh, rows: int):
        from rich.text import Text

        yield Text("")
        title = Text("Findings", style="bold")
        if r.findings_at is not None and r.findings_at != r.timestamp:
            when = time.strftime("%H:%M:%S", time.localtime(r.findings_at))
            title.append(f"  (as of {when}: the detectors run less often on big tables)",
                         style="dim")
        if not self.findings_available:
            title.append("  (detectors not available)", style="dim")
            yield title
            return
        if not r.findings:
            title.append("  none", style="green")
            yield title
            return
        yield title
        for finding in r.findings[:rows]:
            severity = str(finding.severity)
            line = Text(f"{severity.upper():<9}", style=SEVERITY_STYLE.get(severity, ""))
            line.append(finding.summary)
            line.no_wrap = True
            line.overflow = "ellipsis"
            yield line
        hidden = len(r.findings) - rows
        if hidden > 0 and rows:
            yield Text(f"… and {hidden} more (sockstat check)", style="dim")

    def _tops(self, r: Refresh, rows: int):
        from rich.table import Table

        grid = Table.grid(padding=(0, 4))
        lists = [
            ("Top processes", [(process_label(p, r.processes_of(p)), n)
                               for p, n in r.top_processes]),
            ("Top local ports", [(str(p), n) for p, n in r.top_local_ports]),
            ("Top remote hosts", [(h, n) for h, n in r.top_remote_hosts]),
            ("TIME_WAIT owner (while alive)",
             [(process_label(p, r.processes_of(p)), n) for p, n in r.time_wait_owners]),
        ]
        tables = [self._top_table(title, items[:rows]) for title, items in lists]
        for _ in tables:
            grid.add_column(no_wrap=True)
        grid.add_row(*tables)
        return grid

    @staticmethod
    def _top_table(title: str, items):
        from rich.table import Table
        from rich.text import Text

        # the title is the column header, so the column is never narrower than it
        table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1, 0, 0))
        table.add_column(title, no_wrap=True, overflow="ellipsis", max_width=32)
        table.add_column("", justify="right", no_wrap=True)
        if not items:
            table.add_row("–", "")
        for name, count in items:
            table.add_row(Text(printable(str(name))), fmt.thousands(count))
        return table

    def _close_wait(self, r: Refresh, rows: int):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        title = Text("Oldest CLOSE_WAIT", style=f"bold {STATE_STYLE[TcpState.CLOSE_WAIT]}")
        # two different ages, named apart: how long watch has seen the socket in
        # CLOSE_WAIT, and tcp_info's time since data last arrived, the "idle" age the
        # detectors (and Findings above) judge by
        title.append("  In state: seen by this watch (≥ already there at its start); "
                     "Idle: since data last arrived (tcp_info), as in Findings",
                     style="dim")
        title.no_wrap = True
        title.overflow = "ellipsis"
        table = Table(box=None, pad_edge=False, header_style="dim", padding=(0, 2, 0, 0))
        for name, justify in (("In state", "right"), ("Idle", "right"), ("Local", "left"),
                              ("Peer", "left"), ("Recv-Q", "right"), ("Process", "left")):
            table.add_column(name, justify=justify, no_wrap=True)
        for aged in r.oldest_close_wait[:rows]:
            age = fmt.duration(int(aged.age_s * 1000))
            info = aged.socket.tcp_info
            idle = "–" if info is None else fmt.duration(info.last_data_recv_ms)
            table.add_row(("≥" if aged.at_least else "") + age, idle,
                          str(aged.socket.local), str(aged.socket.remote),
                          str(aged.socket.recv_q),
                          process_label(aged.owner or aged.socket.process))
        return Group(title, table)
