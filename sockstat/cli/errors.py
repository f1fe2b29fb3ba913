"""The single funnel: exception -> one line on stderr -> exit code.

Every command runs inside `run_app`; nothing else in the CLI prints errors or picks exit
codes for failures. A traceback reaching the user is a bug.
"""

from __future__ import annotations

import os
import sys
import types

from sockstat.errors import SockstatError
from sockstat.status import CheckStatus, ExitStatus


class _ClosedStdout:
    """sys.stdout of a process started with its stdout closed (`>&-`): every write fails
    as a write to a closed descriptor does, so the funnel says once that the output
    cannot be written (Python leaves sys.stdout None there, and each command died on an
    AttributeError). `fd` is /dev/null, holding descriptor 1 so that no file or socket
    opened later takes it."""

    encoding, errors = "utf-8", "strict"

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, text: str) -> int:
        import errno

        raise OSError(errno.EBADF, "stdout is closed")

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd


def stand_in_for_closed_streams() -> None:
    """Descriptors 0-2 that the process was started without get /dev/null (so a file or
    socket opened later never becomes one of them): stdin reads nothing, stderr's notes
    and errors are dropped (print(file=None) would put them in stdout, into the data),
    and stdout is a _ClosedStdout."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        held = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
        if held != fd:
            os.dup2(held, fd)
            os.close(held)
        if fd == 1:
            sys.stdout = _ClosedStdout(fd)
        else:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115 - the stream lives as long as the process


def say_error(message: str, hint: str | None = None) -> None:
    line = f"sockstat: error: {message}"
    if hint:
        line += f" (hint: {hint})"
    print(line, file=sys.stderr)


def say_note(message: str) -> None:
    """Talk that is not an error (a fallback, a hint): stderr, one line, stdout stays data."""
    print(f"sockstat: note: {message}", file=sys.stderr, flush=True)


def subcommand(app, argv: list[str]) -> str | None:
    """The subcommand `argv` invokes (None for the main listing), found the way click
    itself finds it, but without running anything or failing on bad values."""
    import typer

    group = typer.main.get_command(app)
    try:
        ctx = group.make_context("sockstat", list(argv), resilient_parsing=True)
        # click 8.2+ keeps the subcommand in _protected_args (protected_args is deprecated)
        protected = getattr(ctx, "_protected_args", None)
        if protected is None:
            protected = getattr(ctx, "protected_args", None) or []
        args = [*protected, *ctx.args]
        if args:
            name, _, _ = group.resolve_command(ctx, args)
            if name is not None:
                return name
    except Exception:  # noqa: BLE001 - unparseable: fall back to reading the words
        pass
    return _command_word(group, argv)


def _command_word(group, argv: list[str]) -> str | None:
    """The first word of `argv` that names a command, skipping the values of the main
    listing's options: `sockstat --interval 5 check` (an option of check given before
    it) fails to parse, yet it is a check run and its usage error must say UNKNOWN."""
    takes_value = {name for param in group.params
                   if getattr(param, "opts", None) and not getattr(param, "is_flag", True)
                   for name in param.opts}
    words = iter(argv)
    for word in words:
        if word == "--":
            return None
        if word.startswith("-"):
            if word in takes_value:
                next(words, None)
            continue
        if word in group.commands:
            return word
    return None


def failure_codes(command: str | None) -> tuple[int, int]:
    """(usage error code, runtime failure code) of `command` (None: the main listing).
    In `sockstat check` 2 means CRITICAL and 1 WARNING: there, a typo or a missing
    source is 3, Nagios' UNKNOWN, so it never reads as a finding."""
    if command == "check":
        return CheckStatus.UNKNOWN, CheckStatus.UNKNOWN
    return ExitStatus.USAGE, ExitStatus.ERROR


def _failure_codes(app, argv: list[str]) -> tuple[int, int]:
    """failure_codes() of the command `argv` runs."""
    return failure_codes(subcommand(app, argv))


_PIPE_STATUS = [ExitStatus.OK]


def status_if_pipe_breaks(status: int) -> None:
    """The exit status to report if stdout's reader leaves while we print: a command
    whose status carries a result (check's verdict) sets it before printing."""
    _PIPE_STATUS[0] = status


def _broken_pipe(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, BrokenPipeError):
            return True
        exc = exc.__context__
    return False


def run_app(app, argv: list[str] | None = None) -> int:
    """Run a Typer app on `argv` through the funnel."""
    argv = sys.argv[1:] if argv is None else argv
    return _funnel(lambda: app(args=argv, prog_name="sockstat", standalone_mode=False),
                   lambda: _failure_codes(app, argv), _click_exceptions())


def run_fast(command, options: dict, name: str | None = None) -> int:
    """Run `command` (show.listing, summary.report, check.run) on a command line the fast
    path read (sockstat.cli.fastpath): the filters become its Query, the other options
    its keyword arguments, in the same funnel with the exit codes of the command `name`
    (None: the main listing), without typer (no click error can arise)."""
    from sockstat.cli.options import pop_query

    def run() -> int:
        try:
            query = pop_query(options)  # what is left of `options`: the command's own
            return command(query, **options)
        except KeyboardInterrupt:  # as typer ends an interrupted command: 130, silently
            return ExitStatus.INTERRUPTED

    return _funnel(run, lambda: failure_codes(name), _NO_CLICK)


def _funnel(command, failure_codes, click) -> int:
    """Run `command()`; an exception becomes one line on stderr and its exit code
    (`failure_codes()`: the usage and runtime codes of the command being run)."""
    status_if_pipe_breaks(ExitStatus.OK)  # nothing carried over from an earlier run
    try:
        result = command()
        # Flush here, inside the funnel: with Python's default (block) buffering the
        # output is still in the buffer when the command returns, and a reader that
        # left (`sockstat check | true`) would otherwise surface at interpreter exit as
        # "Exception ignored ... BrokenPipeError" and exit status 120.
        if isinstance(result, int):
            status_if_pipe_breaks(result)  # the command has finished: its status stands
        sys.stdout.flush()
    except click.Exit as exc:
        return exc.exit_code if _flush_quietly() else failure_codes()[1]
    except SystemExit as exc:
        # typer and rich turn a broken pipe (`sockstat | head`) into exit(1) themselves:
        # the reader left, which is no failure; exit quietly like other Unix tools
        if _broken_pipe(exc):
            _silence_stdout()
            return _PIPE_STATUS[0]
        raise
    except click.Abort:
        return ExitStatus.INTERRUPTED
    except click.ClickException as exc:
        # click's own usage errors: unknown option, bad value, missing argument
        message = _one_line(exc, click)
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        say_error(message)
        usage, failure = failure_codes()
        return usage if isinstance(exc, click.UsageError) else failure
    except SockstatError as exc:
        from sockstat.errors import UsageError

        say_error(str(exc), exc.hint)
        usage, failure = failure_codes()
        return usage if isinstance(exc, UsageError) else failure
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # `sockstat | head`: the reader left; exit quietly like other Unix tools
        _silence_stdout()
        return _PIPE_STATUS[0]
    except PermissionError as exc:
        say_error(f"permission denied: {exc.filename or exc}",
                  "run as root to see other users' sockets and processes")
        return failure_codes()[1]
    except OSError as exc:  # a full disk under stdout, an I/O error reading a source
        say_os_error(exc)
        return failure_codes()[1]
    if isinstance(result, int):
        return result
    return ExitStatus.OK


def _one_line(exc, click) -> str:
    """click's message as one line: a missing argument with choices is spelled out as
    `missing SHELL: bash, zsh or fish` (click lists the choices on lines of their own)."""
    param = getattr(exc, "param", None)
    choices = [str(c) for c in getattr(getattr(param, "type", None), "choices", None) or ()]
    if isinstance(exc, click.MissingParameter) and param is not None and choices:
        name = param.metavar or param.human_readable_name
        listed = choices[0] if len(choices) == 1 else \
            f"{', '.join(choices[:-1])} or {choices[-1]}"
        return f"missing {name}: {listed}"
    return " ".join(exc.format_message().split())


def _click_exceptions():
    """typer (>= 0.26, pinned in pyproject.toml) vendors click as typer._click."""
    import typer
    from typer._click import exceptions as vendored

    return types.SimpleNamespace(
        Exit=typer.Exit, Abort=typer.Abort, ClickException=vendored.ClickException,
        UsageError=vendored.UsageError, MissingParameter=vendored.MissingParameter,
    )


class _NoClickError(Exception):
    """Stands for click's exceptions where no click runs: never raised."""


_NO_CLICK = types.SimpleNamespace(
    Exit=_NoClickError, Abort=_NoClickError, ClickException=_NoClickError,
    UsageError=_NoClickError, MissingParameter=_NoClickError,
)


def print_version() -> int:
    """`sockstat --version` (typer's eager option says the same, for other spellings)."""
    from sockstat import __version__

    try:
        print(f"sockstat {__version__}")
    except BrokenPipeError:
        _silence_stdout()
        return ExitStatus.OK
    except OSError as exc:
        say_os_error(exc)
        return ExitStatus.ERROR
    return ExitStatus.OK if _flush_quietly() else ExitStatus.ERROR


def _flush_quietly() -> bool:
    """Flush stdout (help, --version) and forget it if the reader has left; False when
    it cannot be written (said on stderr)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as exc:
        say_os_error(exc)
        return False
    return True


def say_os_error(exc: OSError) -> None:
    """An OSError as one line: output that cannot be written (ENOSPC under `> file`, EIO
    on a gone terminal) is said as such and forgotten, so that the exit's own flush does
    not report it again as "Exception ignored"; any other names its file."""
    import errno

    unwritable = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or \
        isinstance(sys.stdout, _ClosedStdout)
    try:
        sys.stdout.flush()  # anything still pending fails again if stdout is the trouble
    except BrokenPipeError:  # the reader left (`| head`): say the error itself
        _silence_stdout()
    except OSError:
        unwritable = True
    if unwritable:
        _silence_stdout()
        say_error(f"cannot write the output: {exc.strerror or exc}")
        return
    where = f": {exc.filename}" if exc.filename else ""
    say_error(f"{exc.strerror or exc}{where}")


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would print "Exception ignored ... BrokenPipe".
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
