"""`sockstat export`: the scrape cache, the listen address, the textfile and the HTTP
server, on real sockets. Assertions are scoped to this test's own pid and ports."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, kernel_rows, run_sockstat, wait_for

from sockstat.errors import SockstatError, UsageError
from sockstat.exporter import (
    ListenAddress,
    Scraper,
    make_registry,
    parse_listen,
    write_textfile,
)
from sockstat.render.metrics import Collection


def parse_exposition(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} via prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(parsed: dict, name: str, **labels) -> float | None:
    """The value of the one series of `name` whose labels include these."""
    want = frozenset(labels.items())
    found = [v for (n, got), v in parsed.items() if n == name and want <= got]
    assert len(found) <= 1, f"{len(found)} series of {name} match {labels}"
    return found[0] if found else None


@contextmanager
def running_exporter(*args: str, tmp_path: Path):
    """`sockstat export --listen 127.0.0.1:0 ARGS` in a subprocess; yields (proc, port).

    stderr goes to a file (a pipe nobody reads could fill up and stall the server); the
    first line says which port the kernel gave us. The process is always stopped.
    """
    err_path = tmp_path / f"exporter-{len(list(tmp_path.iterdir()))}.err"
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)
    with open(err_path, "w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "sockstat", "export", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, env=env)
    try:
        def port():
            if proc.poll() is not None:
                raise AssertionError(f"exporter exited: {err_path.read_text()}")
            for line in err_path.read_text().splitlines():
                if "serving metrics on http://127.0.0.1:" in line:
                    return int(line.split("127.0.0.1:")[1].split("/")[0])
            return None

        yield proc, wait_for(port, timeout=30, what="the exporter to listen")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def http_get(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


# -- the listen address ------------------------------------------------------------------

@pytest.mark.parametrize("text,host,port", [
    ("127.0.0.1:9977", "127.0.0.1", 9977),
    ("[::1]:9977", "::1", 9977),
    (":9100", "0.0.0.0", 9100),
    ("9977", "127.0.0.1", 9977),
    ("localhost:0", "localhost", 0),
])
def test_listen_addresses(text, host, port):
    assert parse_listen(text) == ListenAddress(host, port)


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000",
                                  "::1:9977", "[::1]9977", "host:",
                                  # a port is ASCII digits only, as --port's (int() reads
                                  # these as 9977 or 99)
                                  "127.0.0.1:9_977", "127.0.0.1:+99", "[::1]: 99",
                                  "\uff19\uff19\uff17\uff17", "127.0.0.1:\uff19\uff19",
                                  "127.0.0.1:" + "9" * 5000])
def test_bad_listen_addresses_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_listen(text)


def test_loopback_is_recognised():
    assert ListenAddress("127.0.0.1", 1).is_loopback
    assert ListenAddress("::1", 1).is_loopback
    assert not ListenAddress("0.0.0.0", 1).is_loopback


# -- the scrape cache --------------------------------------------------------------------

class CountingSource:
    """A collection source that counts its calls and can hold a collection open until
    the test lets it finish (to make scrapes overlap for certain)."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self) -> Collection:
        self.calls += 1
        self.started.set()
        self.release.wait(timeout=30)
        from sockstat.model import Snapshot

        return Collection(snapshot=Snapshot(sockets=[], taken_at=0.0, source="netlink"))


def test_concurrent_scrapes_share_one_collection():
    source = CountingSource()
    scraper = Scraper(collect_now=source, cache_seconds=1.0)
    results = []
    threads = [threading.Thread(target=lambda: results.append(scraper.families()))
               for _ in range(8)]
    threads[0].start()
    source.started.wait(timeout=30)  # the first scrape is collecting now...
    for t in threads[1:]:
        t.start()  # ...and seven more arrive while it does
    source.release.set()
    for t in threads:
        t.join(timeout=30)
    assert source.calls == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_cache_expires_after_its_ttl():
    now = [100.0]
    source = CountingSource()
    source.release.set()
    scraper = Scraper(collect_now=source, cache_seconds=1.0, clock=lambda: now[0])
    scraper.families()
    now[0] += 0.5
    scraper.families()
    assert source.calls == 1
    now[0] += 0.6
    scraper.families()
    assert source.calls == 2
    no_cache = Scraper(collect_now=source, cache_seconds=0, clock=lambda: now[0])
    no_cache.families()
    no_cache.families()
    assert source.calls == 4


def test_registering_does_not_collect():
    source = CountingSource()
    source.release.set()
    make_registry(Scraper(collect_now=source))
    assert source.calls == 0


def test_failed_parts_are_logged_and_exported_as_collector_success_0():
    logged = []

    def broken():
        return Collection(snapshot=None, errors={"sockets": "netlink said no"})

    registry = make_registry(Scraper(collect_now=broken, log=logged.append))
    from sockstat.exporter import exposition

    parsed = parse_exposition(exposition(registry).decode())
    assert sample(parsed, "sockstat_collector_success", collector="sockets") == 0
    assert logged == ["sockets: netlink said no"]


# -- real collections --------------------------------------------------------------------

@pytest.fixture
def close_wait(loop):
    """Three CLOSE_WAIT sockets held by this test process, plus a listener with two
    connections waiting in its accept queue."""
    srv = loop.listener(backlog=8)
    port = srv.getsockname()[1]
    for _ in range(3):
        client, _ = loop.connect(srv)
        client.shutdown(socket.SHUT_WR)  # our server side goes to CLOSE_WAIT
    for _ in range(2):
        loop.connect(srv, accept=False)  # these wait in the accept queue
    wait_for(lambda: sum(r["state"] == "CLOSE_WAIT" for r in kernel_rows({port})) == 3,
             what="3 CLOSE_WAIT sockets")
    return port


def test_live_scrape_counts_our_close_wait_and_accept_queue(close_wait):
    scraper = Scraper(top=100000)
    registry = make_registry(scraper)
    from sockstat.exporter import exposition

    parsed = parse_exposition(exposition(registry).decode())
    assert scraper.last_errors == {}
    pid = str(os.getpid())
    process = Path(f"/proc/{pid}/comm").read_text().strip()
    assert sample(parsed, "sockstat_close_wait_sockets", process=process, pid=pid) == 3
    port = str(close_wait)
    assert sample(parsed, "sockstat_listen_queue_length", address="127.0.0.1", port=port) == 2
    assert sample(parsed, "sockstat_listen_backlog", address="127.0.0.1", port=port) == 8
    dest = f"127.0.0.1:{close_wait}"
    # 3 FIN_WAIT2 (half-closed) + 2 ESTABLISHED clients; only ESTABLISHED is exported
    assert sample(parsed, "sockstat_destination_sockets", destination=dest,
                  state="ESTABLISHED") == 2
    assert sample(parsed, "sockstat_kernel_tcp_listen_overflows_total") is not None
    assert sample(parsed, "sockstat_collector_success", collector="findings") == 1


def test_a_live_scrape_splits_its_table_once(close_wait, monkeypatch):
    """The TIME_WAIT detector and the per-destination families read one client/server
    split of a scrape's table (the detector's, handed on with its verdict)."""
    from conftest import counting_splits

    made = counting_splits(monkeypatch)
    scraper = Scraper(top=100000, cache_seconds=0)
    families = scraper.families()
    assert scraper.last_errors == {}
    assert len(made) == 1
    assert any(f.name == "sockstat_destination_sockets" and f.samples for f in families)
    scraper.families()
    assert len(made) == 2  # a new scrape, a new table: its own one split


def test_a_scrape_asks_tcp_info_in_its_connections_dump_only(close_wait, monkeypatch):
    """A scrape dumps the TCP listeners (with their drop counters) and the rest of the
    table: tcp_info is asked in the second only, where the detectors read it, and is
    never fetched by a third dump."""
    from conftest import TcpDumpRequests

    from sockstat.model import TcpState

    requests = TcpDumpRequests(whole_tables=True)
    requests.recording(monkeypatch)
    collection = Scraper(top=100000).collect_live()
    assert "sockets" not in collection.errors
    listeners = requests.with_info(TcpState.LISTEN)  # a request per family on a kernel
    assert listeners and not any(listeners)         # without the both-families one
    assert requests.with_info(TcpState.ESTABLISHED) == [True] * len(listeners)
    assert requests.with_info(TcpState.CLOSE_WAIT) == [True] * len(listeners)
    assert len(requests) == 2 * len(listeners)


def test_no_metric_nor_finding_reads_a_listeners_tcp_info(close_wait):
    """Two looks at the same sockets (this test's listener with its accept queue and
    CLOSE_WAITs among the host's), judged and exported with every socket's tcp_info,
    then again without the listeners': every family is the same."""
    import dataclasses

    from sockstat.collect import DROPS, collect
    from sockstat.diagnose import diagnose
    from sockstat.exporter import finding_kinds
    from sockstat.model import Proto, TcpState
    from sockstat.observe import with_tcp_info
    from sockstat.query import Query
    from sockstat.render import metrics

    query = Query(protos=frozenset({Proto.TCP, Proto.UDP, Proto.UNIX}))

    def look():
        return collect(query, processes=True, tcp_info=True, services=True, memory=DROPS)

    earlier, later = look(), look()
    assert any(s.state is TcpState.LISTEN and s.tcp_info is not None
               and s.local.port == close_wait for s in later.sockets)

    def without_listeners(snap):
        return dataclasses.replace(snap, sockets=[
            dataclasses.replace(s, tcp_info=None) if s.state is TcpState.LISTEN else s
            for s in snap.sockets])

    def families(snap, before):
        snap.previous = with_tcp_info(before)
        collection = metrics.Collection(
            snapshot=snap, findings=diagnose(snap), duration_seconds=0.0,
            finding_kinds=finding_kinds())
        return [(f.name, f.labels, f.samples) for f in metrics.build(collection)]

    assert families(without_listeners(later), without_listeners(earlier)) \
        == families(later, earlier)


def test_textfile_is_written_atomically_and_world_readable(close_wait, tmp_path):
    path = tmp_path / "sockstat.prom"
    path.write_text("old contents\n")
    os.chmod(path, 0o600)
    registry = make_registry(Scraper(top=100000))
    write_textfile(str(path), registry)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter runs as another user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sockstat.prom"]  # no temp left
    parsed = parse_exposition(path.read_text())
    pid = str(os.getpid())
    assert any(name == "sockstat_close_wait_sockets" and ("pid", pid) in labels
               and value == 3 for (name, labels), value in parsed.items())


def test_textfile_in_a_missing_directory_is_one_clear_error(tmp_path):
    registry = make_registry(Scraper(collect_now=lambda: Collection(snapshot=None)))
    with pytest.raises(SockstatError, match="cannot write .*nowhere"):
        write_textfile(str(tmp_path / "nowhere" / "x.prom"), registry)


# -- the command line --------------------------------------------------------------------

def test_cli_textfile_once(close_wait, tmp_path):
    path = tmp_path / "sockstat.prom"
    r = run_sockstat("export", "--textfile", str(path), "--top", "100000")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    parsed = parse_exposition(path.read_text())
    pid = str(os.getpid())
    assert sum(v for (name, labels), v in parsed.items()
               if name == "sockstat_close_wait_sockets" and ("pid", pid) in labels) == 3


def test_cli_textfile_name_without_prom_gets_a_note(tmp_path):
    r = run_sockstat("export", "--textfile", str(tmp_path / "metrics.txt"))
    assert r.returncode == 0, r.stderr
    assert "only reads files ending in .prom" in r.stderr
    assert (tmp_path / "metrics.txt").exists()


@pytest.mark.parametrize("args,message", [
    (["--listen", "nonsense"], "bad listen address"),
    (["--listen", "127.0.0.1:99999"], "out of range"),
    (["--listen", "127.0.0.1:9977", "--textfile", "x.prom"], "cannot be combined"),
    (["--interval", "5"], "--interval needs --textfile"),
    (["--top", "0"], "--top"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    r = run_sockstat("export", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockstat: error: "), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_cli_an_empty_listen_address_is_an_error_not_the_default():
    """Regression: `--listen ""` served on the default address, as if it were not given."""
    r = run_sockstat("export", "--listen", "", timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "sockstat: error: bad listen address '' (expected HOST:PORT, e.g. " \
                       "127.0.0.1:9977)\n"


def _special_files(tmp_path) -> dict:
    """Files that are not regular files, made in the test's own directory: a FIFO, a
    UNIX socket and (root) a character device like /dev/null."""
    import socket as socket_mod

    made = {"FIFO": tmp_path / "fifo.prom", "socket": tmp_path / "sock.prom"}
    os.mkfifo(made["FIFO"])
    server = socket_mod.socket(socket_mod.AF_UNIX)
    server.bind(str(made["socket"]))
    server.close()
    if os.geteuid() == 0:
        made["character device"] = tmp_path / "null.prom"
        os.mknod(made["character device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return made


def test_cli_textfile_never_replaces_a_device_fifo_or_socket(tmp_path):
    """Regression: the atomic write renamed its temp file over whatever PATH was, so as
    root `--textfile /dev/full` replaced the device node with a regular file. A PATH
    that is not a regular file is bad input, and is left as it was."""
    for kind, path in _special_files(tmp_path).items():
        before = path.lstat()
        r = run_sockstat("export", "--textfile", str(path), timeout=30)
        assert r.returncode == 2, (kind, r.stderr)
        assert r.stderr == f"sockstat: error: --textfile {path} is a {kind}, not a " \
                           "regular file: it would be replaced\n", r.stderr
        after = path.lstat()
        assert (after.st_mode, after.st_ino, after.st_rdev) == \
            (before.st_mode, before.st_ino, before.st_rdev), kind
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_write_textfile_refuses_what_is_not_a_regular_file(tmp_path):
    """The library's write checks too (a FIFO made between two rewrites)."""
    fifo = tmp_path / "metrics.prom"
    os.mkfifo(fifo)
    registry = make_registry(Scraper(collect_now=lambda: Collection(snapshot=None)))
    with pytest.raises(SockstatError, match="is a FIFO, not a regular file"):
        write_textfile(str(fifo), registry)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.parametrize("value", ["", ".", "/"])
def test_cli_textfile_that_names_a_directory_is_an_error(value):
    """Regression: `--textfile ""` (read as ".") tried to write over the working
    directory: "cannot write .: Device or resource busy", exit 1."""
    r = run_sockstat("export", "--textfile", value, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockstat: error: "), r.stderr
    assert "directory" in lines[0]


def test_cli_port_in_use_is_one_line_and_exit_1(loop):
    taken = loop.listener()
    port = taken.getsockname()[1]
    r = run_sockstat("export", "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stderr.strip() == (f"sockstat: error: cannot listen on 127.0.0.1:{port}: "
                                "Address already in use")


def test_cli_rules_prints_the_shipped_rules():
    r = run_sockstat("export", "--rules")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (REPO / "sockstat" / "rules" / "sockstat-alerts.yml").read_text()


def test_cli_help_has_examples():
    r = run_sockstat("export", "--help")
    assert r.returncode == 0
    assert "Examples" in r.stdout and "--textfile" in r.stdout and "--listen" in r.stdout


# -- the HTTP server ---------------------------------------------------------------------

def test_server_serves_metrics_a_landing_page_and_404(close_wait, tmp_path):
    with running_exporter("--top", "100000", tmp_path=tmp_path) as (proc, port):
        status, ctype, body = http_get(port)
        assert status == 200 and ctype.startswith("text/plain")
        parsed = parse_exposition(body)
        pid = str(os.getpid())
        assert sum(v for (name, labels), v in parsed.items()
                   if name == "sockstat_close_wait_sockets" and ("pid", pid) in labels) == 3
        assert ("sockstat_build_info", frozenset({("version", _version())})) in parsed
        # a private registry: none of prometheus-client's default process/python metrics
        assert not any(name.startswith(("process_", "python_")) for name, _ in parsed)
        status, ctype, body = http_get(port, "/")
        assert status == 200 and 'href="/metrics"' in body
        status, _, _ = http_get(port, "/nothing-here")
        assert status == 404


def test_server_answers_head_as_get_without_a_body(tmp_path):
    """Regression: HEAD /metrics (`curl -I`, health checkers) was 405 Method Not Allowed
    while GET worked; HTTP servers answer HEAD for what they GET, headers only. A HEAD
    collects nothing (review: it moved the window the next GET's findings are judged
    over, and cost a scrape); other methods still get 405."""
    import http.client

    from sockstat.exporter import Scraper, make_registry, make_server, parse_listen

    source = CountingSource()
    source.release.set()  # collections finish at once
    server = make_server(parse_listen("127.0.0.1:0"),
                         make_registry(Scraper(collect_now=source, cache_seconds=0)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert http_get(port)[0] == 200 and source.calls == 1
        for path, status in (("/metrics", 200), ("/", 200), ("/nothing-here", 404)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("HEAD", path)
                resp = conn.getresponse()
                assert (path, resp.status) == (path, status)
                assert resp.read() == b""
                if path == "/metrics":  # GET's type, no length (GET's is not known)
                    assert resp.getheader("Content-Type") == \
                        "text/plain; version=0.0.4; charset=utf-8"
                    assert resp.getheader("Content-Length") is None
                else:
                    assert int(resp.getheader("Content-Length")) > 0  # what GET sends
            finally:
                conn.close()
        assert source.calls == 1  # the HEADs collected nothing
        assert http_get(port)[0] == 200 and source.calls == 2
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/metrics", body=b"x")
            assert conn.getresponse().status == 405  # still no other method
        finally:
            conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_server_scrapes_within_the_cache_share_one_collection(tmp_path):
    # A long cache makes "within the cache" certain; identical bodies (the scrape
    # duration included) show that the second scrape reused the first collection.
    with running_exporter("--cache", "3600", tmp_path=tmp_path) as (proc, port):
        bodies = []
        threads = [threading.Thread(target=lambda: bodies.append(http_get(port)[2]))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        bodies.append(http_get(port)[2])
        assert len(bodies) == 5 and len(set(bodies)) == 1
        assert "sockstat_scrape_duration_seconds" in bodies[0]


def test_server_stops_cleanly_on_sigterm(tmp_path):
    with running_exporter(tmp_path=tmp_path) as (proc, port):
        assert http_get(port)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # nothing is left listening on its port
    wait_for(lambda: not [r for r in kernel_rows({port}) if r["state"] == "LISTEN"],
             what="the exporter's port to close")


def _version() -> str:
    from sockstat import __version__

    return __version__


def _listen_backlog(port: int) -> int:
    """The backlog of the listener on `port`, from ss (LISTEN's Send-Q is the backlog)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[2])


def test_server_listens_with_a_real_backlog_capped_by_somaxconn(tmp_path):
    from sockstat.exporter import LISTEN_BACKLOG, MIN_LISTEN_BACKLOG

    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with running_exporter(tmp_path=tmp_path) as (proc, port):
        backlog = _listen_backlog(port)
    assert backlog >= min(MIN_LISTEN_BACKLOG, somaxconn)
    assert backlog == min(LISTEN_BACKLOG, max(somaxconn, MIN_LISTEN_BACKLOG), somaxconn)


def test_a_silent_client_is_dropped_after_the_read_timeout(loop, capfd):
    """slowloris: a client that connects and sends half a request line must not hold a
    server thread forever; a scrape still works meanwhile."""
    from sockstat.exporter import Scraper, make_registry, make_server, parse_listen

    source = CountingSource()
    source.release.set()  # collections finish at once
    scraper = Scraper(collect_now=source)
    server = make_server(parse_listen("127.0.0.1:0"), make_registry(scraper),
                         read_timeout=0.2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        slow = socket.create_connection(("127.0.0.1", port))
        loop.sockets.append(slow)
        slow.sendall(b"GET /metr")
        slow.settimeout(30)  # a safety net only: the server closes first
        assert slow.recv(100) == b""  # the server gave up on it and closed
        assert http_get(port)[0] == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
    assert "Traceback" not in capfd.readouterr().err  # a timed-out client is no error


def test_textfile_interval_beyond_a_timer_writes_once_and_waits_for_sigterm(tmp_path):
    """--interval 1e10 is finite but more than Event.wait() can time (OverflowError):
    the file is written, then the exporter waits until it is stopped."""
    out = tmp_path / "sockstat.prom"
    proc = subprocess.Popen([sys.executable, "-m", "sockstat", "export", "--textfile",
                             str(out), "--interval", "1e10", "--no-processes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        wait_for(lambda: out.exists() or proc.poll() is not None, timeout=30,
                 what="the textfile")
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
