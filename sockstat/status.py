"""Every exit code sockstat uses, in one place (documented in README "Exit codes").

Two enums because two conventions meet: every command's codes (`ExitStatus`, as shells
and httpie's status.py use them), and `sockstat check`'s verdict (`CheckStatus`, the
Nagios plugin convention), where 1 and 2 mean WARNING and CRITICAL, not failure and
usage. Neither has aliases: `repr()` always names the meaning.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    # a runtime failure (no source, I/O)
    ERROR = 1
    # bad input: unknown state, port out of range, bad CIDR, missing pid ...
    USAGE = 2
    # Ctrl-C, as shells report SIGINT
    INTERRUPTED = 130
    # SIGTERM (128 + 15), as shells report it; SIGHUP would be 129 (see for_signal)
    TERMINATED = 143


class CheckStatus(enum.IntEnum):
    """`sockstat check`'s exit status: its verdict, as a Nagios plugin reports one."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    # could not run: bad input or no source, so that a monitoring system never mistakes
    # a typo for a critical finding
    UNKNOWN = 3


def for_signal(signum: int) -> int:
    """The exit code a shell reports for a process ended by `signum`: 128 + signum."""
    return 128 + int(signum)
