"""Signal handlers installed for a block and restored after it: the one helper every
long-running command uses.

The policy (README "Exit codes"): Ctrl-C is how a person leaves a live view, a held
demo or the exporter, so it ends them normally (0); while work is still being done it
interrupts it (130). SIGTERM and SIGHUP stop the live view with the code a shell reports
for a death by that signal (143, 129) after restoring the terminal; the exporter takes
SIGTERM as a service manager's normal stop (0); a demo treats them as it treats Ctrl-C.
Whatever the signal, clean-up runs to the end: a second signal cannot cut it short.

Handlers can only be set from the main thread: a library caller running a command in
another thread keeps its own handlers, untouched.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

Handler = Callable | int  # a function, signal.SIG_IGN or signal.SIG_DFL


class Handlers:
    """`with Handlers({signal.SIGTERM: on_term}):` installs, then restores on exit."""

    def __init__(self, handlers: dict[int, Handler]) -> None:
        self.handlers = handlers
        self._saved: dict[int, Handler] = {}

    def __enter__(self) -> Handlers:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self.handlers.items():
                with contextlib.suppress(ValueError, OSError):
                    self._saved[signum] = signal.signal(signum, handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()


def ignored(*signums: int) -> Handlers:
    """These signals ignored in the block: for clean-up that must finish."""
    return Handlers(dict.fromkeys(signums, signal.SIG_IGN))
