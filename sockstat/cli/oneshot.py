"""The garbage-collection policy of a command that looks once and exits.

Such a command keeps every object it builds until it ends (the table, its rows, its
findings), so the cyclic collector has nothing to free, yet each time it ran it walked
every object of the table again: 0.1 s at 100k sockets in `check`, 10–25% of a piped
`sockstat --all`. So it is off for the whole command, and what was built is frozen after,
so the interpreter's last collection at exit skips it too (only in the command's own
process: gc.freeze() is the whole interpreter's, which a program calling cli.main()
keeps as it was). Long-running commands (watch, export) keep collecting: they free old
snapshots.

Nor is the look freed when the command returns (keep_until_exit): freeing 100k Sockets
one object at a time took ~40 ms of `check`'s last moments, for memory the process
gives back to the system all at once a moment later.
"""

from __future__ import annotations

import functools

from sockstat import cli


class no_collection:
    """No cyclic GC for the block (collect.gc_paused), what it built frozen after when
    the process is the command's own (sockstat.cli.owns_the_process: a program that
    calls cli.main() keeps its collector's state, and its collector frees the look);
    `@no_collection()` applies the policy to a whole function (a command's body). A
    class rather than a contextlib.contextmanager: importing contextlib costs every
    listing's start-up ~3M instructions."""

    def __enter__(self) -> None:
        # imported at first use: at this module's import it cost a listing ~0.15M
        # instructions more, and `--help` (which builds every command) the whole of collect
        from sockstat.collect import FROZEN, gc_paused

        self.pause = gc_paused(FROZEN if cli.owns_the_process else None)
        self.pause.__enter__()

    def __exit__(self, *exc) -> None:
        self.pause.__exit__(*exc)

    def __call__(self, function):
        @functools.wraps(function)
        def under_the_policy(*args, **kwargs):
            with no_collection():  # one per call: a call inside a call keeps its own state
                return function(*args, **kwargs)

        return under_the_policy


def keep_until_exit(*objects) -> None:
    """Never free `objects`: a one-shot command's look (its table, findings), kept in a
    reference cycle that no_collection() freezes with the rest, so neither the return
    of the command nor the interpreter's collections at exit walk or free it. Only
    inside no_collection() in the command's own process: elsewhere the cyclic collector
    frees the cycle, and them."""
    keep: list = [*objects]
    keep.append(keep)
