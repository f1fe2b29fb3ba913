"""The command line: a thin shell over the library.

Each command lives in its own module with a `register(app)` function; this module only
builds the Typer app, adds the commands and runs it through the error funnel.
Heavy modules (rich, json, psutil, prometheus-client) are imported inside commands.

Start-up is most of a small query's time, so a run builds only what its command line
needs: `--version` alone is answered before typer is imported, a main listing (or
`summary` or `check` as the first word) given only its plain options is read without typer
(sockstat.cli.fastpath), and an app gets the main listing plus the one command named
(all of them for --help or when in doubt).
`sockstat.cli.app` is the full app, for completions and tests.
"""

from __future__ import annotations

import _signal  # the C module signal wraps, loaded at start already (signal imports enum)
import gc
import os
import sys

# the command modules, in the order --help lists them; `show` is the main listing (the
# app's callback)
COMMANDS = ("summary", "check", "watch", "demo", "export", "kill", "why", "completions")
# command name -> the module that registers it, where they differ
HOMES = {"explain": "demo"}
HELP_FLAGS = ("-h", "--help")
VERSION_FLAGS = ("--version", "-V")


def build_app(commands: tuple[str, ...] = COMMANDS):
    """A Typer app with the main listing and the given commands."""
    import importlib

    import typer

    app = typer.Typer(
        name="sockstat",
        help="What are this machine's sockets doing, and which of them are a problem?",
        context_settings={"help_option_names": list(HELP_FLAGS)},
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="markdown",
    )
    for name in ("show", *(c for c in COMMANDS if c in commands)):
        importlib.import_module(f"sockstat.cli.{name}").register(app)
    return app


def commands_for(argv: list[str]) -> tuple[str, ...]:
    """The commands an app for `argv` needs: the one named, none for the main listing,
    every one for help. A command's name given as an option's value (`--process why`)
    only adds that command, which changes nothing about how the line parses."""
    if any(word in HELP_FLAGS for word in argv):
        return COMMANDS
    for word in argv:
        if word == "--":
            break
        if word in COMMANDS or word in HOMES:
            return (HOMES.get(word, word),)
    return ()


def __getattr__(name: str):
    if name == "app":  # the full app, built once
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module 'sockstat.cli' has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    try:
        _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # Ctrl-C before a command runs (each ends its own): 130,
        # silently, as an interrupted command ends
        sys.exit(INTERRUPTED)


INTERRUPTED = 130  # ExitStatus.INTERRUPTED, without importing enum (sockstat.status)
# whether this process is the command's own (start_up() says so): only then does a run
# change what is the whole interpreter's, the deferred standard-library modules in
# sys.modules (sockstat._deferred) and the one-shot commands' gc.freeze()
# (sockstat.cli.oneshot). A program that calls main() keeps its interpreter as it was.
owns_the_process = False


def start_up() -> None:
    """The command's start-up (sockstat.__main__.run), until the command itself runs:

    - Ctrl-C ends the process at once with 130. A KeyboardInterrupt would do the same in
      most places, but one raised inside code the interpreter calls on its own (the
      import system's weakref callbacks, a __del__) is printed as "Exception ignored"
      with a traceback, and start-up goes on. Nothing needs cleaning up before the
      command runs. A SIGINT the process was started ignoring (nohup, a background job)
      stays ignored.
    - No cyclic garbage collection: importing creates objects that live until the end,
      so the collector has nothing to free (its runs were ~1.5M instructions of a
      small listing). It is collect.gc_paused(then=None) opened here and closed when the
      command runs, written out: `--version` must not import collect, and a module of
      its own for gc_paused would cost every start-up ~0.7M instructions (1.4% of
      `--version`).
    - The process is the command's (owns_the_process)."""
    global owns_the_process
    owns_the_process = True
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _quit_at_once)
    if gc.isenabled():
        gc.disable()
        _STARTING.append(gc.enable)


_STARTING: list = []  # what ends start-up's policy (start_up)


def _quit_at_once(signum, frame) -> None:
    os._exit(INTERRUPTED)


def _the_command_runs() -> None:
    """From here Ctrl-C is a KeyboardInterrupt again (every command ends its own work),
    and the cyclic collector runs as the command chooses."""
    if _signal.getsignal(_signal.SIGINT) is _quit_at_once:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    while _STARTING:
        _STARTING.pop()()


def _main(argv: list[str]) -> None:
    if sys.stdout is None or sys.stderr is None or sys.stdin is None:  # started `>&-`
        from sockstat.cli.errors import stand_in_for_closed_streams

        stand_in_for_closed_streams()
    if len(argv) == 1 and argv[0] in VERSION_FLAGS:
        from sockstat.cli.errors import print_version

        sys.exit(print_version())
    if owns_the_process:
        # dataclasses imports inspect and copy, which the listing's path never calls
        # (sockstat._deferred)
        from sockstat._deferred import defer

        defer("inspect")
        defer("copy")
    if any(word in HELP_FLAGS for word in argv) and not sys.stdout.isatty():
        from sockstat.cli import plainhelp

        plainhelp.install()  # piped help: plain and unwrapped
    commands = commands_for(argv)
    fast = _fast_path(argv, commands)
    if fast is not None:
        from sockstat.cli.errors import run_fast

        _the_command_runs()
        sys.exit(run_fast(*fast))
    from sockstat.cli.errors import run_app

    app = build_app(commands)
    _the_command_runs()
    sys.exit(run_app(app, argv))


# the commands read without typer when they are the first word (sockstat.cli.fastpath):
# name -> the function the command line's options are given to, in its module
FAST_COMMANDS = {"summary": "report", "check": "run"}


def _fast_path(argv: list[str], commands: tuple[str, ...]) -> tuple | None:
    """(the command's function, its arguments, the command's name) for a main listing or
    a first-word `summary` or `check` given only their plain options, read without
    typer; None otherwise."""
    if commands and argv[0] not in FAST_COMMANDS:
        return None  # another command, or one named after an option (`-t summary`): typer's
    from sockstat.cli import fastpath
    from sockstat.cli.options import FILTER_OPTIONS

    if not commands:
        from sockstat.cli import show

        name, command, words, own = None, show.listing, argv, show.OPTIONS
    else:
        import importlib  # not for the listing: the package import costs ~1M instructions

        name, words = argv[0], argv[1:]
        module = importlib.import_module(f"sockstat.cli.{name}")
        command, own = getattr(module, FAST_COMMANDS[name]), module.OPTIONS
    options = fastpath.parse(words, {**FILTER_OPTIONS, **own})
    return None if options is None else (command, options, name)
