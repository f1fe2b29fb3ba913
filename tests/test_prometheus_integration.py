"""A real Prometheus server scrapes `sockstat export`, and we ask it through its HTTP
query API: the CLOSE_WAIT count of a leaking test server must equal the sockets the
test made.

Everything runs on loopback with ports the kernel picks. Prometheus is OUR process (temp
config, temp storage, random port), never a system service, and is stopped in a
finalizer. Needs the Debian package `prometheus` (prometheus + promtool); skipped with
that reason when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import LEAKER, REPO, end_child, kernel_rows, wait_for
from test_export import running_exporter
from test_shipped import targets

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="prometheus not installed (apt-get install prometheus)"),
]

LEAKS = 5

def free_port() -> int:
    # Prometheus cannot tell us a port it picked itself, so we pick one; a clash with
    # another process in the short window shows up as a failed start, not a wrong result.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def leaker(loop):
    """A subprocess holding LEAKS sockets in CLOSE_WAIT; yields (pid, port, name)."""
    proc = subprocess.Popen([sys.executable, "-c", LEAKER, str(LEAKS)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        loop.ports.add(port)
        for _ in range(LEAKS):
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            loop.sockets.append(client)  # RST-closed by the loop fixture at the end
            loop.ports.add(client.getsockname()[1])
        assert proc.stdout.readline().strip() == "accepted"
        for client in loop.sockets:
            client.shutdown(socket.SHUT_WR)  # FIN: the leaker's side goes to CLOSE_WAIT
        wait_for(lambda: sum(r["state"] == "CLOSE_WAIT" for r in kernel_rows({port}))
                 == LEAKS, timeout=30, what=f"{LEAKS} CLOSE_WAIT sockets")
        yield proc.pid, port, Path(f"/proc/{proc.pid}/comm").read_text().strip()
    finally:
        end_child(proc, timeout=30)


@pytest.fixture
def prometheus(tmp_path):
    """Yields start(target) -> base URL: our own Prometheus (1 s scrapes of `target`,
    the shipped rules loaded), stopped at teardown."""
    procs: list[subprocess.Popen] = []

    def start(target: str, rules_text: str | None = None) -> str:
        rules = REPO / "sockstat" / "rules" / "sockstat-alerts.yml"
        if rules_text is not None:
            rules = tmp_path / "rules.yml"
            rules.write_text(rules_text)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files:\n  - {json.dumps(str(rules))}\n"
            "scrape_configs:\n  - job_name: sockstat\n    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n")
        for _attempt in range(3):
            port = free_port()
            with open(tmp_path / f"prometheus-{port}.log", "w") as log:
                proc = subprocess.Popen(
                    ["prometheus", f"--config.file={config}",
                     f"--storage.tsdb.path={tmp_path / f'data-{port}'}",
                     f"--web.listen-address=127.0.0.1:{port}"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
            procs.append(proc)
            base = f"http://127.0.0.1:{port}"

            def ready(proc=proc, base=base):
                if proc.poll() is not None:
                    return "exited"
                try:
                    with urllib.request.urlopen(base + "/-/ready", timeout=5) as resp:
                        return "ready" if resp.status == 200 else None
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    return None

            if wait_for(ready, timeout=60, what="prometheus to be ready") == "ready":
                return base
        raise AssertionError("prometheus did not start: "
                             + (tmp_path / f"prometheus-{port}.log").read_text()[-2000:])

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_sees_the_close_wait_sockets_of_a_leaking_server(leaker, prometheus,
                                                                   tmp_path):
    pid, port, name = leaker
    with running_exporter("--top", "100000", tmp_path=tmp_path) as (_, exporter_port):
        base = prometheus(f"127.0.0.1:{exporter_port}")
        expr = f'sockstat_close_wait_sockets{{job="sockstat",pid="{pid}"}}'

        def leaked():
            result = query(base, expr)
            return result if result and result[0]["value"][1] == str(LEAKS) else None

        result = wait_for(leaked, timeout=60, what=f"prometheus to report {LEAKS} "
                                                   "CLOSE_WAIT sockets for the leaker")
        assert len(result) == 1
        assert result[0]["metric"]["process"] == name
        up = query(base, 'up{job="sockstat"}')
        assert up and up[0]["value"][1] == "1"
        # the listener of the leaking server is exported too
        listen = query(base, f'sockstat_listen_backlog{{address="127.0.0.1",port="{port}"}}')
        assert listen and listen[0]["value"][1] == "64"
        # and the shipped rules loaded into this real Prometheus
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as resp:
            groups = json.load(resp)["data"]["groups"]
        names = {rule["name"] for group in groups for rule in group["rules"]}
        assert {"SockstatCloseWaitLeak", "SockstatEphemeralPortExhaustion",
                "SockstatAcceptQueueOverflow"} <= names
        every_dashboard_query_answers(base, f"127.0.0.1:{exporter_port}", result[0]["metric"])


# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval);
# the test's Prometheus scrapes every second.
RATE_INTERVAL = "4s"


def grafana_expr(expr: str, instance: str) -> str:
    """A dashboard query as Grafana sends it with job=sockstat and host=instance."""
    for variable, value in (("$__rate_interval", RATE_INTERVAL), ("$job", "sockstat"),
                            ("$instance", instance)):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def every_dashboard_query_answers(base: str, instance: str, leak: dict) -> None:
    """Each query of each panel of the shipped dashboard returns data from this real
    Prometheus; the CLOSE_WAIT panels show the leak (`leak`: the labels of the leaker's
    sockstat_close_wait_sockets series)."""
    for title, target in targets():
        expr = grafana_expr(target["expr"], instance)
        # rates need two scrapes in their window: poll rather than guess a delay
        result = wait_for(lambda expr=expr: query(base, expr), timeout=60,
                          what=f"panel {title!r} to return data: {expr}")
        assert all(r["metric"].get("instance", instance) == instance for r in result), \
            (title, result)
        if title == "CLOSE_WAIT by process":
            mine = [r for r in result if (r["metric"].get("process"), r["metric"].get("pid"))
                    == (leak["process"], leak["pid"])]
            assert [r["value"][1] for r in mine] == [str(LEAKS)], (title, result)
        if title == "CLOSE_WAIT by service":
            # with or without the service label, the leak is inside one host's series
            assert sum(float(r["value"][1]) for r in result) >= LEAKS, (title, result)
        if title == "CLOSE_WAIT":
            assert float(result[0]["value"][1]) >= LEAKS, (title, result)


def test_promtool_check_metrics_passes_on_a_live_exposition(tmp_path, leaker):
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package: prometheus)")
    from test_export import http_get

    with running_exporter(tmp_path=tmp_path) as (_, exporter_port):
        status, _, body = http_get(exporter_port)
    assert status == 200
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (r.stdout + r.stderr).strip() == "", "promtool lint warnings"



def test_prometheus_fires_the_close_wait_rule_for_a_fork_per_connection_leak(
        forking_leaker, prometheus, tmp_path):
    """30 children with one CLOSE_WAIT each: per-process series of 1 (folded into
    "other", which the rules used to ignore) never alerted. Per service it is one series
    of 30, and the shipped rule fires (its `for:` shortened so the test need not wait
    15 minutes; the expression is the shipped one)."""
    import re

    master, port, children = forking_leaker(30)
    shipped = (REPO / "sockstat" / "rules" / "sockstat-alerts.yml").read_text()
    rules, n = re.subn(r"(- alert: SockstatCloseWaitLeak\n\s+expr: [^\n]+\n\s+for: )15m",
                       r"\g<1>0s", shipped)
    assert n == 1
    with running_exporter(tmp_path=tmp_path) as (_, exporter_port):  # the default --top
        base = prometheus(f"127.0.0.1:{exporter_port}", rules)

        def firing():
            alerts = query(base, 'ALERTS{alertname="SockstatCloseWaitLeak",'
                                 f'alertstate="firing",pid="{master}"}}')
            return alerts or None

        [alert] = wait_for(firing, timeout=90, what="the CLOSE_WAIT alert to fire")
        assert alert["metric"]["service"] == alert["metric"]["process"]
        value = query(base, f'sockstat_close_wait_sockets{{pid="{master}"}}')
        assert value[0]["value"][1] == "30"
        # the dashboard's service panel shows the 30 children as one service
        [by_service] = [t["expr"] for title, t in targets() if title == "CLOSE_WAIT by service"]
        series = query(base, grafana_expr(by_service, f"127.0.0.1:{exporter_port}"))
        mine = [s for s in series if s["metric"]["service"] == alert["metric"]["service"]]
        assert mine and float(mine[0]["value"][1]) >= 30, series


def test_prometheus_sees_the_drops_of_a_udp_receiver_that_never_reads(loop, prometheus,
                                                                     tmp_path):
    """A UDP socket with a 4 KiB buffer, flooded on loopback (bounded), never reading:
    its drops reach a real Prometheus as sockstat_socket_drops_total, with our pid."""
    receiver = loop.udp()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = receiver.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(2000):
            sender.sendto(b"x" * 64, ("127.0.0.1", port))
    with running_exporter("--top", "100000", tmp_path=tmp_path) as (_, exporter_port):
        base = prometheus(f"127.0.0.1:{exporter_port}")
        expr = f'sockstat_socket_drops_total{{job="sockstat",local="127.0.0.1:{port}"}}'

        def dropped():
            result = query(base, expr)
            return result if result and float(result[0]["value"][1]) > 0 else None

        (series,) = wait_for(dropped, timeout=60, what="prometheus to report the drops")
        assert series["metric"]["proto"] == "udp"
        assert series["metric"]["pid"] == str(os.getpid())
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as resp:
            groups = json.load(resp)["data"]["groups"]
        names = {rule["name"] for group in groups for rule in group["rules"]}
        assert {"SockstatSocketDrops", "SockstatUnixAcceptQueueFull"} <= names
