"""Typed errors of the library. Each carries a message a user understands.

The CLI (sockstat/cli/errors.py) turns them into one line on stderr and an exit code;
library callers catch SockstatError. Nothing here prints.
"""

from __future__ import annotations

# What shows the processes behind other users' sockets: listing /proc/<pid>/fd of another
# user needs CAP_DAC_READ_SEARCH, reading its links CAP_SYS_PTRACE (ptrace read access).
OTHER_USERS_HINT = ("run as root (or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH) to see "
                    "other users' processes")
ROOT_DENIED_HINT = "another PID namespace or a restricted /proc hides them even from root"


def hidden_processes_hint() -> str:
    """What would show processes this run could not read: root, unless it is root."""
    import os

    return ROOT_DENIED_HINT if os.geteuid() == 0 else OTHER_USERS_HINT


class SockstatError(Exception):
    """Base class: something the user can act on, said in one line."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(SockstatError, ValueError):
    """Bad input: an unknown state, a port out of range, a bad CIDR, a missing pid."""


class SourceUnavailable(SockstatError):
    """A collector cannot run here (no netlink, no /proc, psutil missing)."""


class PermissionDenied(SockstatError):
    """The kernel refused; running as root usually helps."""

    hint = OTHER_USERS_HINT


class ParseError(SockstatError):
    """Input from the kernel (or a fixture) that does not have the expected shape."""
