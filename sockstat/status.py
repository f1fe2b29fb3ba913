"""Every exit code sockstat uses, in one place (documented in README "Exit codes")."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    # `sockstat check` found warnings; other commands: a runtime failure (no source, I/O)
    WARNING = 1
    ERROR = 1
    # bad input: unknown state, port out of range, bad CIDR, missing pid ...
    USAGE = 2
    # `sockstat check` found something critical (Nagios CRITICAL)
    CRITICAL = 2
    # `sockstat check` could not run: bad input or no source (Nagios UNKNOWN), so that a
    # monitoring system never mistakes a typo for a critical finding
    UNKNOWN = 3
    # Ctrl-C, as shells report SIGINT
    INTERRUPTED = 130
    # SIGTERM (128 + 15), as shells report it; SIGHUP would be 129 (see for_signal)
    TERMINATED = 143


def for_signal(signum: int) -> int:
    """The exit code a shell reports for a process ended by `signum`: 128 + signum."""
    return 128 + int(signum)
