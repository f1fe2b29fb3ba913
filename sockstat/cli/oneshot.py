"""The garbage-collection policy of a command that looks once and exits.

Such a command keeps every object it builds until it ends (the table, its rows, its
findings), so the cyclic collector has nothing to free, yet each time it ran it walked
every object of the table again: 0.1 s at 100k sockets in `check`, 10–25% of a piped
`sockstat --all`. So it is off for the whole command, and what was built is frozen after,
so the interpreter's last collection at exit skips it too. Long-running commands (watch,
export) keep collecting: they free old snapshots.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_collection() -> Iterator[None]:
    """No cyclic GC for the block, what it built frozen after; `@no_collection()`
    applies the policy to a whole function (a command's body)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
