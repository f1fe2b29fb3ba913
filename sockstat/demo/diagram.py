"""How `demo --packets` looks: the sequence diagram of a demo's segments, and a segment's
header field by field (the layout `sockstat explain header` teaches).

Takes a rich Console like sockstat.demo.render; on a terminal long notes wrap inside
their column, piped output keeps one segment a line (the console is unbounded there).
"""

from __future__ import annotations

from sockstat.demo.render import state_cell, wrap_ratio
from sockstat.demo.sequence import Row, Story
from sockstat.packets import FIN, RST, SYN, Segment

RUN_KEPT = 2  # a run of plain data/ACK segments keeps its first RUN_KEPT and its last
RUN_MIN = 5  # runs shorter than this are shown whole
FLAG_STYLE = {"SYN": "bold yellow", "FIN": "bold magenta", "RST": "bold red"}


def _plain(row: Row) -> bool:
    """A segment with nothing to say: data or an ACK, no note."""
    return not row.notes and not row.segment.flags & (SYN | FIN | RST)


def collapse(rows: list[Row]) -> list[Row | int]:
    """Long runs of plain segments -> the first few, a count of the hidden, the last."""
    out: list[Row | int] = []
    run: list[Row] = []

    def flush() -> None:
        if len(run) >= RUN_MIN:
            out.extend([*run[:RUN_KEPT], len(run) - RUN_KEPT - 1, run[-1]])
        else:
            out.extend(run)
        run.clear()

    for row in rows:
        if _plain(row):
            run.append(row)
            continue
        flush()
        out.append(row)
    flush()
    return out


def _ends(row: Row) -> tuple[str, str]:
    """(client side, server side) roles of the row's connection."""
    if row.client_to_server:
        return row.src_role, row.dst_role
    return row.dst_role, row.src_role


def _states(row: Row):
    from rich.text import Text

    if row.states is None:
        return Text("")
    left, right = row.states if row.client_to_server else row.states[::-1]
    text = state_cell(left)
    text.append(" · ", style="dim")
    text.append_text(state_cell(right))
    return text


def _cells(item: Row, absolute: bool, utf8: bool) -> list[str]:
    seg = item.segment
    left, right = _ends(item)
    if utf8:
        arrow = "──▶" if item.client_to_server else "◀──"
    else:
        arrow = "-->" if item.client_to_server else "<--"
    seq = seg.seq if absolute else item.seq
    ack = "" if item.ack is None else seg.ack if absolute else item.ack
    return [f"{item.time:.3f}", left, arrow, right, seg.flag_names, str(seq), str(ack),
            str(seg.length), f"{item.window:,}"]


COLUMNS = ("time", "client", "", "server", "flags", "seq", "ack", "len", "win")
RIGHT = {0, 1, 5, 6, 7, 8}  # right-aligned columns


def sequence_diagram(console, story: Story, *, absolute: bool = False,
                     title: str = "The segments") -> None:
    """One line per segment: time, client ──▶ server (or ◀──), flags, seq, ack, len,
    window, the state of each end after it; then what it shows (SYN options, the notes'
    lessons): under the line on a terminal, at its end when piped (one record a line)."""
    from rich.padding import Padding
    from rich.text import Text

    console.print()
    console.print(Text.assemble(
        (title, "bold underline"),
        ("  captured on lo; seq/ack " + ("absolute" if absolute else
                                          "relative to each side's ISN") +
         "; window scaled; states as the kernel reported them after the segment "
         "(blank: another segment followed too soon to tell)", "dim")))
    if not story.rows:
        console.print("  (none captured)")
        return
    utf8 = _utf8(console)
    items = collapse(story.rows)
    rows = [_cells(item, absolute, utf8) for item in items if not isinstance(item, int)]
    widths = [max(len(c) for c in column) for column in zip(COLUMNS, *rows, strict=False)]
    unbounded = getattr(console, "unbounded", False)

    def line(cells: list[str], styles: list[str]) -> Text:
        text = Text()
        for i, (cell, width) in enumerate(zip(cells, widths, strict=False)):
            if i:
                text.append("  ")
            text.append(cell.rjust(width) if i in RIGHT else cell.ljust(width),
                        style=styles[i])
        return text

    header = line(list(COLUMNS), ["dim"] * len(COLUMNS))
    header.append("  client · server after", style="dim")
    console.print(header)
    cells = iter(rows)
    for item in items:
        if isinstance(item, int):
            console.print(Text(" " * (widths[0] + widths[1] + 4) +
                               ("⋮" if utf8 else ":") + f"  {item} more data/ACK segments",
                               style="dim"))
            continue
        seg = item.segment
        flag = next((style for name, style in FLAG_STYLE.items()
                     if name in seg.flag_names.split(",")), "")
        text = line(next(cells), ["", "", "bold", "", flag, "", "", "", ""])
        if item.states is not None:
            text.append("  ")
            text.append_text(_states(item))
        shows = _shows(item)
        if unbounded:
            if shows.plain:
                text.append("  ")
                text.append_text(shows)
            console.print(text, soft_wrap=True)
            continue
        console.print(text, overflow="fold")
        if shows.plain:
            console.print(Padding(shows, (0, 0, 0, widths[0] + 4)))
    for note in story.notes:
        console.print(Text("• " + note))


def _shows(item: Row):
    """The SYN's options and the notes, for one segment."""
    from rich.text import Text

    seg = item.segment
    shows = Text()
    if seg.flags & SYN and not item.repeat and seg.options.describe():
        shows.append(seg.options.describe(), style="dim")
        if item.notes:
            shows.append("; ", style="dim")
    shows.append("; ".join(item.notes), style="italic")
    return shows


def _utf8(console) -> bool:
    encoding = (getattr(console.file, "encoding", None) or "").lower()
    return encoding.startswith("utf")


def header_values(seg: Segment) -> dict[str, str]:
    """The value of each header field of `seg`, by the catalogue's keys."""
    return {
        "src_port": str(seg.src_port), "dst_port": str(seg.dst_port),
        "seq": f"{seg.seq}" + (" (the ISN)" if seg.flags & SYN else ""),
        "ack": str(seg.ack), "header_length": f"{seg.header_length // 4} words = "
                                             f"{seg.header_length} bytes",
        "flags": seg.flag_names, "window": f"{seg.window:,}",
        "checksum": f"0x{seg.checksum:04x}", "urgent": str(seg.urgent),
        "options": seg.options.describe() or "none",
    }


def header_fields(console, exp, segment: Segment | None = None) -> None:
    """The header's fields as the catalogue lists them; with `segment`, its values too."""
    from rich.table import Table
    from rich.text import Text

    values = header_values(segment) if segment is not None else {}
    grid = Table(box=None, padding=(0, 2), pad_edge=False, header_style="dim")
    grid.add_column("field", style="bold", no_wrap=True)
    grid.add_column("size", no_wrap=True)
    if values:
        grid.add_column("value", max_width=None if wrap_ratio(console) is None else 36,
                        overflow="fold")
    grid.add_column("meaning", ratio=wrap_ratio(console))
    for key, name, size, meaning in exp.fields:
        cells = [name, size] + ([Text(values.get(key, ""), style="bold")] if values else [])
        grid.add_row(*cells, meaning)
    console.print(grid)


def show(console, story: Story, *, absolute: bool = False) -> None:
    """The diagram, then the first SYN decoded field by field."""
    from rich.text import Text

    from sockstat import explain

    sequence_diagram(console, story, absolute=absolute)
    syn = story.first("SYN")
    if syn is not None:
        console.print()
        console.print(Text.assemble(("The first SYN, field by field", "bold underline"),
                                    ("  (sockstat explain header)", "dim")))
        header_fields(console, explain.text("header"), syn.segment)


def show_later(console, story: Story, shown: int, *, absolute: bool = False) -> None:
    """The segments after the first `shown`: those of the hold and the clean-up."""
    later = Story(rows=story.rows[shown:])
    if later.rows:
        sequence_diagram(console, later, absolute=absolute,
                         title="Then, while held and at clean-up")
