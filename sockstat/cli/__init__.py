"""The command line: a thin shell over the library.

Each command lives in its own module with a `register(app)` function; this module only
builds the Typer app, adds the commands and runs it through the error funnel.
Heavy modules (rich, json, psutil, prometheus-client) are imported inside commands.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="sockstat",
    help="What are this machine's sockets doing, and which of them are a problem?",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _register() -> None:
    from sockstat.cli import check, demo, export, kill, show, summary, watch, why

    for module in (show, summary, check, watch, demo, export, kill, why):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    from sockstat.cli.errors import run_app

    sys.exit(run_app(app, argv))
