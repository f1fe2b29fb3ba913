"""`python -m sockstat` and the `sockstat` command (bin/sockstat calls `run`).

Every import of start-up happens under a Ctrl-C handler: an interrupt at any moment
ends the command quietly with 130, as an interrupted command ends. Importing this
module imports nothing; only `run()` (the command) changes any process state.
"""


def run() -> None:
    try:
        from sockstat.cli import main, quit_at_once_until_the_command_runs

        quit_at_once_until_the_command_runs()
        main()
    except KeyboardInterrupt:  # before main's own handler is set up, or after it ended
        raise SystemExit(130) from None  # ExitStatus.INTERRUPTED (sockstat.status imports enum)


if __name__ == "__main__":
    run()
