"""`sockstat summary` for people: rich tables (short by nature)."""

from __future__ import annotations

from sockstat.model import TcpState
from sockstat.render.style import STATE_STYLE, use_colour
from sockstat.summarize import COLUMNS, Summary


def render(summary: Summary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(no_color=not use_colour(), highlight=False)
    states = Table(title=f"{summary.total:,} sockets by state", title_justify="left",
                   box=None, header_style="bold")
    states.add_column("State")
    for col in (*COLUMNS, "total"):
        states.add_column(col.upper() if col != "total" else "Total", justify="right")
    for label, counts in summary.by_state.items():
        state = TcpState.CLOSE if label == "UNCONN" else TcpState[label]
        states.add_row(f"[{STATE_STYLE[state]}]{label}[/]",
                       *(f"{counts[c]:,}" if counts[c] else "-" for c in COLUMNS),
                       f"{counts['total']:,}")
    console.print(states)
    _top(console, "Top local ports (connections)", "Port", summary.top_local_ports)
    _top(console, "Top remote hosts", "Host", summary.top_remote_hosts)
    if summary.processes_scanned:
        _top(console, "Top processes", "Process", summary.top_processes)
    if summary.kernel:
        kernel = Table(title="Kernel totals (/proc/net/sockstat)", title_justify="left",
                       box=None, header_style="bold")
        kernel.add_column("Table")
        kernel.add_column("Counters")
        from sockstat.collect.kernel import page_size

        page = page_size()
        for name, values in summary.kernel.items():
            kernel.add_row(name, "  ".join(_counter(k, v, page) for k, v in values.items()))
        console.print()
        console.print(kernel)


def _top(console, title: str, what: str, rows) -> None:
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    table.add_column(what)
    table.add_column("Sockets", justify="right")
    for name, count in rows:
        table.add_row(str(name), f"{count:,}")
    console.print()
    console.print(table)


def _counter(key: str, value: int, page: int) -> str:
    # /proc/net/sockstat counts socket memory in pages ("mem"); "memory" (FRAG) in bytes
    if key == "mem":
        return f"mem {value:,} pages ({_bytes(value * page)})"
    if key == "memory":
        return f"memory {_bytes(value)}"
    return f"{key} {value:,}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"
