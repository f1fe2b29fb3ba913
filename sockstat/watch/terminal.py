"""The keyboard and signals of the full-screen view: `q` quits, a resize redraws.

Terminal() puts stdin in cbreak mode (keys arrive one at a time and are not echoed;
Ctrl-C still sends SIGINT) and waits for keys with select() between refreshes. SIGWINCH
wakes the wait through a self-pipe so a resized terminal is redrawn at once, not at
the next refresh. SIGTERM and SIGHUP (the ssh connection dropped) become a Terminated
exception, so that every `finally` runs and the terminal is restored whatever ends the
program. Unix only; without a terminal on stdin it just waits (Ctrl-C still quits).
"""

from __future__ import annotations

import os
import select
import signal
import sys

QUIT = "quit"
RESIZE = "resize"
TIMEOUT = "timeout"
QUIT_KEYS = (b"q", b"Q")


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived while the view was up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Terminal:
    def __init__(self, stdin=None) -> None:
        self.stdin = stdin if stdin is not None else sys.stdin
        self._fd: int | None = None  # where keys are read from (None once stdin closed)
        self._tty_fd: int | None = None  # the terminal whose mode is restored on exit
        self._saved = None
        self._wake: tuple[int, int] | None = None
        self._handlers = None  # sockstat.signals.Handlers while the view is up

    def __enter__(self) -> Terminal:
        try:
            if self.stdin.isatty():
                import termios
                import tty

                self._fd = self._tty_fd = self.stdin.fileno()
                self._saved = termios.tcgetattr(self._tty_fd)
                tty.setcbreak(self._tty_fd, termios.TCSANOW)
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            os.set_blocking(write_end, False)
            self._wake = (read_end, write_end)
            from sockstat.signals import Handlers

            self._handlers = Handlers({signal.SIGWINCH: self._on_resize,
                                       signal.SIGTERM: self._on_terminate,
                                       signal.SIGHUP: self._on_terminate}).__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        # a second SIGTERM/SIGHUP while we restore (tmux sends both) must not interrupt
        # the restoring: the first one is already on its way out
        self._terminating = True
        if self._handlers is not None:
            self._handlers.__exit__(None, None, None)
            self._handlers = None
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self._tty_fd, termios.TCSADRAIN, self._saved)
            except (OSError, termios.error):  # the terminal is gone (ssh hung up)
                pass
            self._saved = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _on_resize(self, signum, frame) -> None:
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"w")
            except BlockingIOError:  # already woken
                pass

    def _on_terminate(self, signum, frame) -> None:
        if getattr(self, "_terminating", False):
            return
        self._terminating = True
        raise Terminated(signum)

    def wait(self, timeout: float) -> str:
        """Wait up to `timeout` seconds: QUIT on q, RESIZE on a terminal resize, else
        TIMEOUT. Other keys are ignored."""
        import time

        from sockstat.numbers import LONGEST_WAIT

        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return TIMEOUT
            watched = [self._wake[0]] if self._wake is not None else []
            if self._fd is not None:
                watched.append(self._fd)
            try:
                ready, _, _ = select.select(watched, [], [], min(remaining, LONGEST_WAIT))
            except InterruptedError:  # a signal without a handler that raises: go on
                continue
            if self._wake is not None and self._wake[0] in ready:
                try:
                    while os.read(self._wake[0], 64):
                        pass
                except BlockingIOError:
                    pass
                return RESIZE
            if self._fd is not None and self._fd in ready:
                data = os.read(self._fd, 64)
                if not data:  # stdin closed: keys can no longer arrive
                    self._fd = None
                    continue
                if any(key in data for key in QUIT_KEYS):
                    return QUIT
