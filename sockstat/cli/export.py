"""`sockstat export`: serve Prometheus metrics, or write them for node_exporter.

flags -> Scraper (sockstat.exporter) -> HTTP server on /metrics, or an atomic textfile.
The library does the work; this module parses flags, says where it listens (stderr)
and turns SIGTERM into a clean exit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from sockstat.cli import options as opt
from sockstat.status import ExitStatus

EPILOG = opt.examples(
    ("sockstat export", "serve http://127.0.0.1:9977/metrics"),
    ("sockstat export --listen 0.0.0.0:9977", "expose it to other hosts (explicitly)"),
    ("sockstat export --listen '[::1]:9977'", "IPv6 loopback"),
    ("sockstat export --textfile /srv/sockstat.prom", "for node_exporter's textfile"),
    ("sockstat export --textfile x.prom --interval 15", "rewrite every 15 s"),
    ("sockstat export --rules > sockstat-alerts.yml", "example alerting rules"),
    ("sockstat export --dashboard > sockstat.json", "Grafana dashboard to import"),
    ("sockstat export --systemd-unit > sockstat-exporter.service", "a hardened service"),
)

PANEL_HTTP = "HTTP server"
PANEL_TEXTFILE = "Textfile (node_exporter)"
PANEL_SHIPPED = "Print a shipped file"


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(export)


def export(
    listen: Annotated[str | None, typer.Option(
        "--listen", metavar="HOST:PORT",
        help="Address to serve /metrics on (default 127.0.0.1:9977, loopback only). "
             "Use 0.0.0.0:PORT or :PORT to expose it; port 0 picks a free port.",
        rich_help_panel=PANEL_HTTP, show_default=False)] = None,
    textfile: Annotated[Path | None, typer.Option(
        "--textfile", metavar="PATH", dir_okay=False,
        help="Write the metrics to PATH (atomically) for node_exporter's textfile "
             "collector instead of serving them; the name should end in .prom.",
        rich_help_panel=PANEL_TEXTFILE, show_default=False)] = None,
    interval: Annotated[float | None, typer.Option(
        "--interval", min=0.1, metavar="SECONDS", callback=opt.finite,
        help="With --textfile: rewrite the file every SECONDS until stopped "
             "(default: write once, e.g. from cron or a systemd timer).",
        rich_help_panel=PANEL_TEXTFILE, show_default=False)] = None,
    top: Annotated[int, typer.Option(
        "--top", min=1,
        help="Series kept per process, destination and listener label; the rest are "
             "summed into one 'other' series (bounds cardinality).")] = 10,
    cache: Annotated[float, typer.Option(
        "--cache", min=0.0, metavar="SECONDS", callback=opt.finite,
        help="Reuse a collection for this long, so concurrent scrapes share one.")] = 1.0,
    no_processes: Annotated[bool, typer.Option(
        "--no-processes",
        help="Skip naming processes (CLOSE_WAIT per process becomes 'unknown'; faster "
             "on huge tables).")] = False,
    rules: Annotated[bool, typer.Option(
        "--rules", help="Print the example Prometheus alerting rules and exit.",
        rich_help_panel=PANEL_SHIPPED)] = False,
    dashboard: Annotated[bool, typer.Option(
        "--dashboard", help="Print the Grafana dashboard (JSON, for Dashboards > Import) "
                            "and exit; it goes with the rules of the same version.",
        rich_help_panel=PANEL_SHIPPED)] = False,
    systemd_unit: Annotated[bool, typer.Option(
        "--systemd-unit", help="Print a hardened systemd unit that runs this exporter "
                               "(DynamicUser, read-only system, two capabilities) and exit.",
        rich_help_panel=PANEL_SHIPPED)] = False,
    source: opt.SourceOpt = opt.Source.AUTO,
    netns: opt.Netns = None,
) -> int:
    """Prometheus metrics: serve /metrics, or write a textfile for node_exporter.

    Sockets by state, accept queues, CLOSE_WAIT per process, destinations and ephemeral
    ports, findings, kernel counters and sysctls. Collection happens at scrape time.
    Serves on loopback unless --listen names another address.
    """
    from sockstat.errors import UsageError

    if rules or dashboard or systemd_unit:
        return _print_shipped(rules=rules, dashboard=dashboard, systemd_unit=systemd_unit)
    if textfile is not None and listen is not None:
        raise UsageError("--listen and --textfile cannot be combined (serve, or write a "
                         "file)")
    if interval is not None and textfile is None:
        raise UsageError("--interval needs --textfile (the HTTP server collects at scrape "
                         "time)")
    from sockstat.exporter import Scraper, check_textfile, make_registry

    if textfile is not None:  # before a collection's cost, as the write checks again
        check_textfile(str(textfile))
    if netns is not None:  # a bad value fails now, not at the first scrape
        from sockstat.collect.netns import select

        select(netns)
    scraper = Scraper(top=top, cache_seconds=cache, source=source.value, netns=netns,
                      processes=not no_processes, log=_warn)
    registry = make_registry(scraper)
    if textfile is not None:
        return _textfile(str(textfile), registry, scraper, interval)
    return _serve(listen, registry)


def _print_shipped(*, rules: bool, dashboard: bool, systemd_unit: bool) -> int:
    from sockstat import shipped
    from sockstat.errors import UsageError

    if rules + dashboard + systemd_unit > 1:
        raise UsageError("--rules, --dashboard and --systemd-unit print one file each: "
                         "give one of them")
    if rules:
        sys.stdout.write(shipped.read(shipped.RULES))
    elif dashboard:
        sys.stdout.write(shipped.read(shipped.DASHBOARD))
    else:
        executable = _running_executable()
        hidden = shipped.hidden_from_unit(executable) if executable is not None else None
        if hidden is not None:
            path, setting = hidden
            _warn(f"note: this unit cannot start: it runs {executable}, which needs {path}, "
                  f"and the unit's {setting} hides it; install sockstat system-wide (e.g. "
                  "/usr/local/bin) before enabling it")
        sys.stdout.write(shipped.unit(executable))
    return ExitStatus.OK


def _running_executable() -> str | None:
    """The `sockstat` script running now (its path goes into the unit's ExecStart), or
    None under `python -m sockstat`."""
    import os

    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) != "sockstat":
        return None
    return os.path.abspath(argv0)


def _serve(listen: str | None, registry) -> int:
    from sockstat.exporter import DEFAULT_LISTEN, make_server, parse_listen

    address = parse_listen(DEFAULT_LISTEN if listen is None else listen)  # "" is bad
    server = make_server(address, registry)
    port = server.server_address[1]
    shown = f"[{address.host}]:{port}" if ":" in address.host else f"{address.host}:{port}"
    if not address.is_loopback:
        _warn(f"note: serving on {shown}, reachable from other hosts (loopback is "
              "127.0.0.1)")
    print(f"sockstat: serving metrics on http://{shown}/metrics (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    with _sigterm_stops():
        try:
            server.serve_forever()
        except _Stopped:
            return ExitStatus.OK
        finally:
            server.server_close()
    return ExitStatus.OK


def _textfile(path: str, registry, scraper, interval: float | None) -> int:
    from sockstat.exporter import write_textfile

    if not path.endswith(".prom"):
        _warn("note: node_exporter's textfile collector only reads files ending in .prom")
    if interval is None:
        write_textfile(path, registry)
        return ExitStatus.ERROR if scraper.last_errors else ExitStatus.OK
    import threading

    from sockstat.numbers import wait_timeout

    stop = threading.Event()
    with _sigterm_stops():
        try:
            while True:
                write_textfile(path, registry)
                stop.wait(wait_timeout(interval))  # 1e10 s: written once, until stopped
        except _Stopped:
            return ExitStatus.OK


class _Stopped(Exception):
    """SIGTERM: the service manager asks us to stop; that is a normal exit."""


class _sigterm_stops:
    """Within the block, SIGTERM raises _Stopped (in the main thread) instead of killing
    the process without clean-up."""

    def __enter__(self):
        import signal

        from sockstat.signals import Handlers

        def handler(signum, frame):
            raise _Stopped()

        self._handlers = Handlers({signal.SIGTERM: handler}).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._handlers.__exit__(*exc)


def _warn(message: str) -> None:
    from sockstat.cli.errors import say_note

    if message.startswith("note: "):
        say_note(message.removeprefix("note: "))
    else:
        print(f"sockstat: warning: {message}", file=sys.stderr, flush=True)
