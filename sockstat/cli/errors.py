"""The single funnel: exception -> one line on stderr -> exit code.

Every command runs inside `run_app`; nothing else in the CLI prints errors or picks exit
codes for failures. A traceback reaching the user is a bug.
"""

from __future__ import annotations

import os
import sys

from sockstat.errors import SockstatError
from sockstat.status import ExitStatus


def say_error(message: str, hint: str | None = None) -> None:
    line = f"sockstat: error: {message}"
    if hint:
        line += f" (hint: {hint})"
    print(line, file=sys.stderr)


def say_note(message: str) -> None:
    """Talk that is not an error (a fallback, a hint): stderr, one line, stdout stays data."""
    print(f"sockstat: note: {message}", file=sys.stderr, flush=True)


def _usage_code(argv: list[str]) -> int:
    # In `sockstat check` 2 means CRITICAL; a typo must never look like one.
    return ExitStatus.UNKNOWN if "check" in argv[:1] else ExitStatus.USAGE


def run_app(app, argv: list[str] | None = None) -> int:
    click = _click_exceptions()
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = app(args=argv, prog_name="sockstat", standalone_mode=False)
    except click.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return ExitStatus.INTERRUPTED
    except click.ClickException as exc:
        # click's own usage errors: unknown option, bad value, missing argument
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        say_error(message)
        return _usage_code(argv) if isinstance(exc, click.UsageError) else ExitStatus.ERROR
    except SockstatError as exc:
        from sockstat.errors import UsageError

        say_error(str(exc), exc.hint)
        if isinstance(exc, UsageError):
            return _usage_code(argv)
        return ExitStatus.UNKNOWN if "check" in argv[:1] else ExitStatus.ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # `sockstat | head`: the reader left; exit quietly like other Unix tools
        _silence_stdout()
        return ExitStatus.OK
    except PermissionError as exc:
        say_error(f"permission denied: {exc.filename or exc}",
                  "run as root to see other users' sockets and processes")
        return ExitStatus.ERROR
    if isinstance(result, int):
        return result
    return ExitStatus.OK


def _click_exceptions():
    """typer >= 0.20 vendors click as typer._click; older ones use click itself."""
    import types

    import typer

    try:
        from typer._click import exceptions as vendored
    except ImportError:  # pragma: no cover - typer with an external click
        import click as vendored
    return types.SimpleNamespace(
        Exit=typer.Exit, Abort=typer.Abort, ClickException=vendored.ClickException,
        UsageError=vendored.UsageError,
    )


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would print "Exception ignored ... BrokenPipe".
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
