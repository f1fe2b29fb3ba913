"""A uid's user name, as every view shows it (the owner scan, the plain listing).

One home for the look-up and its text: the passwd database's bytes are decoded as
UTF-8 with undecodable bytes replaced (U+FFFD), as a process's comm is, so that a name
with stray bytes never reaches `--json` or `--csv` as bytes that are not UTF-8 (the
`pwd` module hands them over as lone surrogates, which stdout would write raw).
"""

from __future__ import annotations

import os


def user_name(uid: int) -> str:
    """The name of `uid`, or the uid as text when it has none. Not cached: callers keep
    what they need for as long as it holds (a scan, a listing)."""
    import pwd  # only where a name is asked for

    try:
        name = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)
    return name if name.isascii() else os.fsencode(name).decode("utf-8", "replace")
