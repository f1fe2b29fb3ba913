"""`python -m sockstat` and the `sockstat` command (bin/sockstat calls `run`).

Every import of start-up happens under a Ctrl-C handler: an interrupt at any moment
ends the command quietly with 130, as an interrupted command ends. Importing this
module imports nothing; only `run()` (the command) changes any process state.
"""

import sys


def run() -> None:
    try:
        from sockstat.cli import main, start_up

        start_up()
        main()
    except KeyboardInterrupt:  # before main's own handler is set up, or after it ended
        end(130)  # ExitStatus.INTERRUPTED (sockstat.status imports enum)
    except SystemExit as ending:
        end(ending.code)
    end(0)


def end(code) -> None:
    """Exit with `code`, skipping the interpreter's teardown (freeing every module and
    object one at a time: ~5M instructions of a small listing) when it has nothing else
    to do: no atexit callback registered, no thread but this one. Otherwise, and when
    output cannot be flushed, exit as usual."""
    import atexit

    threading = sys.modules.get("threading")
    others = threading is not None and threading.active_count() > 1
    callbacks = getattr(atexit, "_ncallbacks", None)  # CPython's; unknown elsewhere
    if (code is None or isinstance(code, int)) and not others and callbacks is not None \
            and callbacks() == 0:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - the usual exit reports it as usual
            pass
        else:
            import os

            os._exit(code or 0)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
