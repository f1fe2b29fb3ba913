"""When to use colour, and the colour of each state: one place for both.

Colour only on a terminal; NO_COLOR (https://no-color.org) always wins; FORCE_COLOR
forces it (for `watch` under tmux tests, and for people piping to `less -R`).
"""

from __future__ import annotations

import os
import sys

from sockstat.model import TcpState

# rich style names; the plain renderer maps them to ANSI codes below.
STATE_STYLE: dict[TcpState, str] = {state: state.colour for state in TcpState}

# a finding's severity (check's panels, watch's findings pane)
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "ok": "green"}

ANSI = {"cyan": "36", "green": "32", "yellow": "33", "magenta": "35", "blue": "34",
        "red": "31", "white": "37", "bold": "1", "dim": "2"}


def use_colour(stream=None) -> bool:
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):  # no-color.org: present and not empty
        return False
    if os.environ.get("FORCE_COLOR", "").lower() not in ("", "0", "false", "no"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, style: str, colour: bool) -> str:
    if not colour:
        return text
    codes = ";".join(ANSI[s] for s in style.split() if s in ANSI)
    return f"\x1b[{codes}m{text}\x1b[0m" if codes else text
