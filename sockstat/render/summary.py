"""`sockstat summary` for people: rich tables on a terminal, plain aligned text piped.

Both renderers draw the same `sections()`: a title, column headers and rows. Piped
output is data for grep and awk, so it is plain text, one record a line, never wrapped
or cut at any width (rich would wrap a table at 80 columns when it cannot measure a
terminal: "(664.0⏎KiB)").
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.humanize import printable, size
from sockstat.model import TcpState
from sockstat.render.style import STATE_STYLE, use_colour
from sockstat.summarize import COLUMNS, Summary


@dataclass
class Section:
    """One block of the summary: a title, column headers and rows of cells."""

    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    right: tuple[bool, ...]  # which columns are right-aligned (numbers)
    styles: list[str | None] | None = None  # a rich style for each row's first cell


def sections(summary: Summary, page: int) -> list[Section]:
    """What summary shows, in order; empty top lists are left out."""
    # the UNIX column only when UNIX sockets were counted (JSON always has the key)
    columns = [c for c in COLUMNS if c != "unix"
               or any(counts.get("unix") for counts in summary.by_state.values())]
    labels = (*(c.upper() for c in columns), "Total")
    states = Section(f"{summary.total:,} sockets by state", ("State", *labels), [],
                     (False,) + (True,) * len(labels), [])
    for label, counts in summary.by_state.items():
        state = TcpState.CLOSE if label == "UNCONN" else TcpState[label]
        states.rows.append((label, *(f"{counts[c]:,}" if counts[c] else "-" for c in columns),
                            f"{counts['total']:,}"))
        states.styles.append(STATE_STYLE[state])
    out = [states]
    tops = [("Top local ports (connections)", "Port", summary.top_local_ports),
            ("Top remote hosts", "Host", summary.top_remote_hosts)]
    if summary.processes_scanned:
        tops.append(("Top processes", "Process", summary.top_processes))
    tops.append(("Top containers and namespaces", "Container", summary.top_containers))
    for title, what, rows in tops:
        if rows:
            out.append(Section(title, (what, "Sockets"),
                               [(printable(str(name)), f"{count:,}") for name, count in rows],
                               (False, True)))
    if summary.kernel:
        out.append(Section(
            "Kernel totals (/proc/net/sockstat)", ("Table", "Counters"),
            [(name, "  ".join(_counter(k, v, page) for k, v in values.items()))
             for name, values in summary.kernel.items()], (False, False)))
    return out


def render(summary: Summary) -> None:
    from sockstat.collect.kernel import page_size

    parts = sections(summary, page_size())
    if not sys.stdout.isatty():
        write = sys.stdout.write
        for line in plain_lines(parts):
            write(line + "\n")
        return
    _render_rich(parts)


def plain_lines(parts: list[Section]) -> Iterator[str]:
    """Each section as a title line, a header line and one aligned line per row, with a
    blank line between sections; columns are as wide as their widest cell."""
    for number, section in enumerate(parts):
        if number:
            yield ""
        yield section.title
        table = [section.headers, *section.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(section.headers))]
        for row in table:
            cells = [cell.rjust(width) if right else cell.ljust(width)
                     for cell, width, right in zip(row, widths, section.right, strict=True)]
            yield "  ".join(cells).rstrip()


def _render_rich(parts: list[Section]) -> None:
    from rich.console import Console
    from rich.table import Table

    # NO_COLOR: no ANSI at all (no_color=True would still send bold and italic)
    console = Console(color_system="auto" if use_colour() else None, highlight=False)
    for number, section in enumerate(parts):
        table = Table(title=section.title, title_justify="left", box=None,
                      header_style="bold")
        for header, right in zip(section.headers, section.right, strict=True):
            table.add_column(header, justify="right" if right else "left")
        for i, row in enumerate(section.rows):
            style = section.styles[i] if section.styles else None
            first = f"[{style}]{row[0]}[/]" if style else row[0]
            table.add_row(first, *row[1:])
        if number:
            console.print()
        console.print(table)


def _counter(key: str, value: int, page: int) -> str:
    # /proc/net/sockstat counts socket memory in pages ("mem"); "memory" (FRAG) in bytes
    if key == "mem":
        return f"mem {value:,} pages ({size(value * page)})"
    if key == "memory":
        return f"memory {size(value)}"
    return f"{key} {value:,}"

