"""Findings for people: rich panels on a terminal, plain blocks when piped.

The text of a finding (summary, evidence, why, fix) is built by sockstat.diagnose.report;
this module only lays it out.
"""

from __future__ import annotations

import sys

from sockstat.humanize import printable
from sockstat.render.style import SEVERITY_STYLE, use_colour


def print_findings(findings) -> None:
    if not findings:
        return
    if sys.stdout.isatty():
        _print_panels(findings, colour=use_colour())
        return
    from sockstat.diagnose.report import plain_block

    for finding in findings:
        print("\n".join(plain_block(finding)))
        print()


def _print_panels(findings, colour: bool) -> None:
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from sockstat.diagnose.report import LABEL, evidence_text

    # NO_COLOR / not a terminal: no ANSI styling at all, not even bold
    console = Console(color_system="auto" if colour else None, highlight=False)
    for f in findings:
        style = SEVERITY_STYLE[f.severity.value]
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        grid.add_row("evidence", Text(printable(evidence_text(f.evidence))))
        grid.add_row("why", Text(printable(f.explanation)))
        grid.add_row("fix", Text(printable(f.remedy)))
        body = Group(Text(printable(f.summary), style="bold"), Text(""), grid)
        title = Text.assemble((f" {LABEL[f.severity]} ", style),
                              f" {f.kind}: {printable(f.subject)} ")
        console.print(Panel(body, title=title, title_align="left", border_style=style))
