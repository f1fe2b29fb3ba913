"""`--help` for a pipe or a file: plain and unwrapped (`sockstat export --help | grep`).

typer's rich help draws panels with box characters and wraps at the console width (80
columns when stdout is no terminal), which splits example lines. typer has no setting
for either, so for a help run whose stdout is not a terminal we adjust its rich_utils
module before it renders: a wide console, panels drawn as a plain "Title:" line, tables
at their natural width and no trailing padding. On a terminal help stays as typer draws
it. Only help runs import this (and rich, which help needs anyway).
"""

from __future__ import annotations

import sys

# wide enough that no help line wraps; the padding rich adds up to it is stripped
WIDTH = 4000


class _RStrippedLines:
    """A file that writes each line without its trailing spaces (rich pads lines to the
    console width)."""

    def __init__(self, file) -> None:
        self._file = file
        self._pending = ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._file.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self._file.write(self._pending.rstrip())
        self._pending = ""
        self._file.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._file.fileno()


def install() -> None:
    """Make typer's rich help plain and unwrapped for this process."""
    from rich.console import Group
    from rich.table import Table
    from typer import rich_utils

    make_console = rich_utils._get_rich_console

    def console(stderr: bool = False):
        con = make_console(stderr=stderr)
        if not stderr:
            con.file = _RStrippedLines(sys.stdout)
        return con

    def table(*args, **kwargs):
        kwargs["expand"] = False  # natural width, not WIDTH columns of padding
        return Table(*args, **kwargs)

    def panel(renderable, *, title=None, **_):
        return Group(f"{title}:", renderable, "") if title else renderable

    rich_utils.MAX_WIDTH = WIDTH
    rich_utils._get_rich_console = console
    rich_utils.Table = table
    rich_utils.Panel = panel
