"""rich tables for short listings on a terminal (a few hundred rows at most: rich costs
about 1 ms a row, so long listings go to render/plain.py)."""

from __future__ import annotations

from sockstat.model import Socket
from sockstat.render import fmt
from sockstat.render.plain import columns, group_by_state, right_aligned, row_cells
from sockstat.render.style import STATE_STYLE

RICH_ROW_LIMIT = 300


def render(console, sockets: list[Socket], *, limit_per_state: int | None,
           marked: set | None = None, info: bool = False,
           extra: tuple[str, ...] = ()) -> bool:
    """Print the grouped listing as rich tables. Returns False, printing nothing, when
    the rows are wider than the terminal: rich would crop cells, and the caller prints
    plain text instead (the terminal wraps it, nothing is lost)."""
    from rich.table import Table
    from rich.text import Text

    groups = group_by_state(sockets)
    names = columns(info, extra)
    shown = []
    widths = [len(n) for n in names]  # one width per column across all states: aligned
    for state, rows in groups:
        rows.sort(key=lambda s: (s.local.port, s.local.address, s.remote.address,
                                 s.remote.port))
        visible = rows if limit_per_state is None else rows[:limit_per_state]
        cells = [row_cells(sock, info, extra) for sock in visible]
        for row in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        shown.append((state, rows, visible, cells))
    # mark column + cells + two spaces between columns
    if 1 + sum(widths) + 2 * len(widths) > console.width:
        return False
    header = Text(f"{fmt.thousands(sum(len(r) for _, r in groups))} sockets: ")
    for i, (state, rows) in enumerate(groups):
        if i:
            header.append(" · ")
        header.append(state.label, style=STATE_STYLE[state])
        header.append(f" {fmt.thousands(len(rows))}")
    console.print(header if groups else Text("no sockets"))
    for state, rows, visible, cells in shown:
        table = Table(title=f"{state.label} ({fmt.thousands(len(rows))})",
                      title_style=f"bold {STATE_STYLE[state]}", title_justify="left",
                      box=None, pad_edge=False, header_style="dim")
        table.add_column("", width=1)
        right = right_aligned(names)
        for i, name in enumerate(names):
            table.add_column(name, justify="right" if i in right else "left",
                             no_wrap=True, min_width=widths[i])
        for sock, row in zip(visible, cells, strict=True):
            mark = Text("!", style="bold red") if marked and sock.key in marked else ""
            table.add_row(mark, *map(Text, row))  # Text: a name is not rich markup
        console.print()
        console.print(table)
        hidden = len(rows) - len(visible)
        if hidden:
            console.print(f"  … and {fmt.thousands(hidden)} more (--all shows every row)",
                          style="dim")
    return True
