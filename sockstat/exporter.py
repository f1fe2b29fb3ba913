"""The Prometheus exporter: collect at scrape time, serve /metrics, or write a textfile.

Three pieces, each usable from Python:

  Scraper        one collection = sockets (with tcp_info, and the processes of the sockets
                 the labels and the detectors read) + a kernel sample + findings, turned
                 into metric families (sockstat.render.metrics). Results
                 are cached for `cache_seconds` behind a lock, so concurrent scrapes (two
                 Prometheus servers, a human with curl) share one collection instead of
                 stacking them on a busy host.
  serve()        a small threaded HTTP server: /metrics (prometheus-client's WSGI app on a
                 private registry: no default process/python collectors), a landing page
                 on /, 404 elsewhere.
  write_textfile()  the same exposition written atomically for node_exporter's textfile
                 collector (temp file in the same directory, fsync, chmod 0644, rename).

Nothing here prints: problems of a scrape are returned in Collection.errors and passed
to a `log` callable the CLI provides. Fatal setup problems raise SockstatError.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sockstat.errors import SockstatError, UsageError
from sockstat.render import metrics

DEFAULT_LISTEN = "127.0.0.1:9977"
DEFAULT_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        import ipaddress

        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """'127.0.0.1:9977', '[::1]:9977', ':9977' (every address), '9977' (loopback).

    Port 0 asks the kernel for a free port (the CLI reports the one it got).
    """
    text = text.strip()
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise UsageError(f"bad listen address {text!r} (expected [IPV6]:PORT)")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise UsageError(f"bad listen address {text!r} (expected HOST:PORT, e.g. "
                             f"{DEFAULT_LISTEN})")
        if ":" in host:
            raise UsageError(f"bad listen address {text!r} (write IPv6 addresses in "
                             "brackets: [::1]:9977)")
        host = host or "0.0.0.0"
    from sockstat.query import port_digits

    if not port_digits(port_text) or len(port_text) > 5:  # int() refuses ~4,300 digits
        raise UsageError(f"bad port in listen address {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} in listen address {text!r} is out of range "
                         "(0-65535)")
    if not host:
        raise UsageError(f"bad listen address {text!r} (no host)")
    _check_host_name(host, text)
    return ListenAddress(host, port)


def _check_host_name(host: str, text: str) -> None:
    """A name getaddrinfo() can be asked about: its IDNA encoding (which getaddrinfo does
    first) fails on empty labels (a..b) and labels of 64+ characters with UnicodeError,
    and a NUL byte is a ValueError; both are bad input, not crashes."""
    try:
        host.encode("idna")
        if "\0" in host:
            raise ValueError("NUL in host name")
    except (UnicodeError, ValueError):
        raise UsageError(f"bad host in listen address {text!r} (empty label, a label of "
                         "more than 63 characters, or a character a host name cannot "
                         "have)") from None


def finding_kinds() -> tuple[str, ...]:
    """Every finding kind the detectors can report, to zero-fill sockstat_findings;
    kinds seen in findings are added anyway."""
    from sockstat.diagnose import finding_kinds as kinds

    return tuple(kinds())


class Scraper:
    """Collects at most once per `cache_seconds`; thread-safe.

    `collect_now` is the I/O of one collection (a parameter so that library callers can
    plug in their own source); by default it reads the live kernel.
    """

    def __init__(self, *, top: int = metrics.DEFAULT_TOP,
                 cache_seconds: float = DEFAULT_CACHE_SECONDS, source: str = "auto",
                 procfs: str = "/proc", processes: bool = True,
                 collect_now: Callable[[], metrics.Collection] | None = None,
                 log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 netns: str | None = None) -> None:
        self.top = top
        self.netns = netns  # --netns: every scrape reads these namespaces instead
        self.cache_seconds = cache_seconds
        self.source = source
        self.procfs = procfs
        self.processes = processes
        self._collect_now = collect_now or self.collect_live
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: list[metrics.MetricFamily] | None = None
        self._cached_at = 0.0
        from sockstat.observe import Judge

        self._judge = Judge(procfs=procfs)  # keeps the last sample: counter deltas
        self.collections = 0  # how many real collections ran (for tests and logs)
        self.last_errors: dict[str, str] = {}  # the parts the last collection missed
        from sockstat.collect.kernel import page_size

        self._page_size = page_size()

    def families(self) -> list[metrics.MetricFamily]:
        """The metric families of a collection at most cache_seconds old."""
        with self._lock:  # a scrape arriving during a collection waits and shares it
            if self._cached is not None and \
                    self._clock() - self._cached_at < self.cache_seconds:
                return self._cached
            from sockstat import __version__

            collection = self._collect_now()
            self.collections += 1
            self.last_errors = dict(collection.errors)
            if collection.errors and self._log is not None:
                for part, message in sorted(collection.errors.items()):
                    self._log(f"{part}: {message}")
            self._cached = metrics.build(collection, top=self.top, version=__version__,
                                         page_size=self._page_size)
            self._cached_at = self._clock()
            return self._cached

    def collect_live(self) -> metrics.Collection:
        """Sockets, kernel sample and findings, now. A failing part is recorded in
        `errors` and left out; the other parts are still exported."""
        started = time.monotonic()
        errors: dict[str, str] = {}
        snapshot = None
        try:
            from sockstat.collect import DROPS, OwnerRequest, collect
            from sockstat.diagnose import COMPARED_TCP_INFO_STATES, owners_read
            from sockstat.model import Proto
            from sockstat.query import Query

            # tcp_info gives CLOSE_WAIT ages, stall data and slow connections to the
            # detectors, asked in the dump of the connections (not in the listeners'
            # one: none reads theirs); UNIX for their listeners' queues; memory (drops)
            # for UDP sockets and TCP listeners, judged since the previous scrape
            query = Query(protos=frozenset({Proto.TCP, Proto.UDP, Proto.UNIX}))
            # owners only as deep as the labels and the detectors' verdicts need: the
            # owners_read() sockets hold every labelled one (CLOSE_WAIT, UDP, listeners);
            # findings are exported as counts, so the sockets they name stay unnamed
            processes = OwnerRequest(owners_read()) if self.processes else False
            snapshot = collect(query, source=self.source, processes=processes,
                               tcp_info=COMPARED_TCP_INFO_STATES, procfs=self.procfs,
                               services=self.processes,
                               netns=self.netns, memory=DROPS)
        except (SockstatError, OSError) as exc:
            errors["sockets"] = str(exc)
        kernel = None
        findings = None
        sides = None  # the detectors' split of the table, for the per-destination families
        if snapshot is not None:
            # the previous scrape's sample turns counters into deltas (e.g. "5
            # ListenOverflows since the last scrape")
            try:
                verdict = self._judge.judge(snapshot)
            except Exception as exc:  # noqa: BLE001
                # A detector bug must not take the sockets metrics down with it: the
                # scrape goes on, collector_success says which part failed and the log
                # line names the exception.
                errors["findings"] = f"{type(exc).__name__}: {exc}"
                kernel = self._judge.previous
            else:
                findings, sides = verdict.findings, verdict.sides
                kernel = verdict.kernel.after if verdict.kernel is not None else None
                if verdict.kernel_error is not None:
                    errors["kernel"] = verdict.kernel_error
        else:
            from sockstat.observe import sample_kernel

            kernel, error = sample_kernel(self.procfs)
            if error is not None:
                errors["kernel"] = error
            errors["findings"] = "no sockets to diagnose"
        return metrics.Collection(
            snapshot=snapshot, findings=findings, kernel=kernel, errors=errors,
            duration_seconds=time.monotonic() - started, finding_kinds=finding_kinds(),
            sides=sides)


def make_registry(scraper: Scraper):
    """A private CollectorRegistry holding only sockstat's collector."""
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PrometheusCollector(scraper))
    return registry


class _PrometheusCollector:
    """Adapts Scraper to prometheus-client's Collector protocol (collect() yields
    metric families, built fresh from the cached plain ones)."""

    def __init__(self, scraper: Scraper) -> None:
        self.scraper = scraper

    def describe(self):
        # Nothing to declare up front: registering must not trigger a collection.
        return []

    def collect(self):
        yield from to_prometheus(self.scraper.families())


def to_prometheus(families: list[metrics.MetricFamily]):
    """Plain MetricFamily objects -> prometheus-client Gauge/CounterMetricFamily."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for fam in families:
        cls = CounterMetricFamily if fam.kind == metrics.COUNTER else GaugeMetricFamily
        out = cls(fam.name, fam.help, labels=list(fam.labels))
        for label_values, value in fam.samples:
            out.add_metric(list(label_values), value)
        yield out


def exposition(registry) -> bytes:
    """The text exposition format (what /metrics returns and the textfile holds)."""
    from prometheus_client import generate_latest

    return generate_latest(registry)


# -- the textfile ----------------------------------------------------------------------

_NOT_REGULAR = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))


def check_textfile(path: str) -> None:
    """UsageError unless `path` is a regular file or nothing yet: the atomic write
    renames a new file over it, which would replace a device node (`/dev/full`, as
    root), a FIFO or a socket with a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # not there (made by the write), or not reachable: the write says why
    if stat.S_ISDIR(mode):
        raise UsageError(f"--textfile {path} is a directory (give a file, e.g. "
                         "sockstat.prom)")
    for test, kind in _NOT_REGULAR:
        if test(mode):
            raise UsageError(f"--textfile {path} is a {kind}, not a regular file: it "
                             "would be replaced")


def write_textfile(path: str, registry) -> None:
    """Write the exposition to `path` atomically: readers see the old file or the new
    one, never half of one.

    The temp file lives in the same directory (rename is atomic only within one
    filesystem) and does not end in .prom, so node_exporter never reads it half written.
    Never over anything but a regular file (check_textfile).
    """
    import tempfile

    check_textfile(path)
    data = exposition(registry)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sockstat-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise SockstatError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600; node_exporter usually runs as another user
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise SockstatError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- the HTTP server -------------------------------------------------------------------

LANDING_PAGE = b"""<!doctype html>
<html><head><title>sockstat exporter</title></head>
<body><h1>sockstat exporter</h1>
<p>Sockets by state, accept queues, CLOSE_WAIT per process, destinations, findings and
kernel counters: <a href="/metrics">/metrics</a>.</p></body></html>
"""


# socketserver listens with a backlog of 5: at 200 concurrent scrapers ListenOverflows
# rose by thousands and p99 was 2.7 s (a finding `sockstat check` itself would report)
LISTEN_BACKLOG = 1024  # what is asked for; the kernel caps it at net.core.somaxconn
MIN_LISTEN_BACKLOG = 128
# a client that sends nothing (slowloris) holds a thread only this long (seconds)
READ_TIMEOUT_S = 10.0


def listen_backlog(procfs: str = "/proc") -> int:
    """The backlog the exporter listens with: LISTEN_BACKLOG, or somaxconn when that is
    lower (the kernel would cap it silently), but at least MIN_LISTEN_BACKLOG."""
    from sockstat.collect.kernel import read_sysctls

    try:
        somaxconn = read_sysctls(procfs).somaxconn
    except SockstatError:
        somaxconn = None
    if somaxconn is None:
        return LISTEN_BACKLOG
    return min(LISTEN_BACKLOG, max(somaxconn, MIN_LISTEN_BACKLOG))


def make_server(address: ListenAddress, registry, *,
                read_timeout: float = READ_TIMEOUT_S, backlog: int | None = None):
    """A bound (not yet serving) threaded WSGI server; raises SockstatError when the
    address cannot be used. `server.server_address[1]` is the real port (for port 0).

    It listens with a real backlog (`listen_backlog()`) and gives each connection
    `read_timeout` seconds per read, so slow or silent clients cannot pin threads."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def pages(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [LANDING_PAGE]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: metrics are on /metrics\n"]

    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") != "HEAD":
            return pages(environ, start_response)
        if (environ.get("PATH_INFO") or "/") == "/metrics":
            # HEAD (`curl -I`, health checks) collects nothing: a collection would
            # advance the "since the previous scrape" window Prometheus's next GET reads
            # (and cost a scrape). So no Content-Length, which only the body would give:
            # one empty chunk from an iterator with no len(), of which wsgiref makes
            # none (for a list, or no chunk at all, it says 0); the Content-Type GET
            # would send for the same Accept header
            from prometheus_client.exposition import choose_encoder

            start_response("200 OK", [("Content-Type",
                                       choose_encoder(environ.get("HTTP_ACCEPT", ""))[1])])
            return iter((b"",))
        # the static pages: GET without the body (prometheus-client's app allows GET
        # alone, and wsgiref would send any body it is given)
        started = []
        body = b"".join(pages(dict(environ, REQUEST_METHOD="GET"),
                              lambda status, headers, exc_info=None:
                              started.append((status, headers)) or (lambda data: None)))
        status, headers = started[0]
        start_response(status, [*(h for h in headers if h[0].lower() != "content-length"),
                                ("Content-Length", str(len(body)))])
        return []

    family = _address_family(address)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a stuck client must not keep the exporter from exiting
        address_family = family
        request_queue_size = backlog if backlog is not None else listen_backlog()

        def handle_error(self, request, client_address):
            import sys

            # a client that timed out or hung up is its own problem: no traceback
            if isinstance(sys.exc_info()[1], (TimeoutError, ConnectionError)):
                return
            super().handle_error(request, client_address)

    class QuietHandler(WSGIRequestHandler):
        timeout = read_timeout  # StreamRequestHandler sets it on the connection

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass  # one line per scrape on stderr is noise, not talk

    try:
        return make_server(address.host, address.port, app, Server, QuietHandler)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {address}: {exc.strerror}") from None
    except OSError as exc:
        raise SockstatError(f"cannot listen on {address}: {exc.strerror or exc}") from None


def _address_family(address: ListenAddress) -> int:
    import socket

    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {address}: {exc.strerror}") from None
    return infos[0][0]

