"""Numbers from users: the one check every numeric option and threshold goes through.

Python's float() takes "nan", "inf" and "1e999"; none of them is a count, an age, a
percentage or an interval. NaN compares false with everything, so a NaN threshold
silently turns a detector off (`--close-wait-min-age nan` hid a real leak), a NaN
interval skipped the kernel sample and an infinite one crashed time.sleep(). Rejecting
them here, once, keeps every caller from re-learning that.
"""

from __future__ import annotations

import math

from sockstat.errors import UsageError

# the longest one sleep or select() is asked to wait: past ~292 years (an int64 of
# nanoseconds) both raise OverflowError, so a longer wait (--interval 1e10) is made of
# several this long, each ended early by a signal or a key as any other
LONGEST_WAIT = 86400.0


def wait_timeout(seconds: float) -> float | None:
    """`seconds` as a timeout that Event.wait() and friends accept: None ("until woken
    or signalled") beyond threading.TIMEOUT_MAX (~292 years), where they would raise
    OverflowError instead of waiting."""
    import threading

    return None if seconds >= threading.TIMEOUT_MAX else seconds


def finite(value: float, name: str) -> float:
    """`value` unchanged if it is a finite number; UsageError naming `name` otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number (got {value})")
    return value
