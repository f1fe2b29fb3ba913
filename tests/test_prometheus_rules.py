"""The shipped alerting rules: valid for `promtool check rules`, firing (and staying
quiet) as intended under `promtool test rules`, and using only metrics sockstat exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import REPO

from sockstat.render import metrics

RULES = REPO / "sockstat" / "rules" / "sockstat-alerts.yml"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian package: "
                                           "prometheus)")

# promtool unit tests: input series over time -> which alerts fire at which moment.
UNIT_TESTS = """\
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - name: a CLOSE_WAIT count that stays high fires after 15 minutes, per process
    interval: 1m
    input_series:
      - series: 'sockstat_close_wait_sockets{{instance="w1",process="db",pid="812",service="db"}}'
        values: '5 12x30'
      - series: 'sockstat_close_wait_sockets{{instance="w1",process="other",service="other"}}'
        values: '5x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: SockstatCloseWaitLeak
        exp_alerts: []
      - eval_time: 20m
        alertname: SockstatCloseWaitLeak
        exp_alerts:
          - exp_labels: {{severity: warning, instance: w1, process: db, pid: "812", service: db}}
            exp_annotations:
              summary: db (db/812) holds 12 CLOSE_WAIT sockets on w1
              description: >-
                The peers closed these connections but the process never called close().
                CLOSE_WAIT has no timeout, so the count only grows until the process runs
                out of file descriptors. Run `sockstat check` on the host for the peers
                and the file descriptors involved.
      - eval_time: 20m
        alertname: SockstatCloseWaitLeakCritical
        exp_alerts: []

  - name: a leak folded into "other" (the largest folded count) still fires
    interval: 1m
    input_series:
      - series: 'sockstat_close_wait_sockets{{instance="w1",process="other",service="other"}}'
        values: '12x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: SockstatCloseWaitLeak
        exp_alerts:
          - exp_labels: {{severity: warning, instance: w1, process: other, service: other}}
            exp_annotations:
              summary: other (other/) holds 12 CLOSE_WAIT sockets on w1
              description: >-
                The peers closed these connections but the process never called close().
                CLOSE_WAIT has no timeout, so the count only grows until the process runs
                out of file descriptors. Run `sockstat check` on the host for the peers
                and the file descriptors involved.

  - name: a large CLOSE_WAIT leak that keeps growing is critical
    interval: 1m
    input_series:
      - series: 'sockstat_close_wait_sockets{{instance="w1",process="db",pid="812",service="db"}}'
        values: '100+10x60'
    alert_rule_test:
      - eval_time: 50m
        alertname: SockstatCloseWaitLeakCritical
        exp_alerts:
          - exp_labels: {{severity: critical, instance: w1, process: db, pid: "812", service: db}}
            exp_annotations:
              summary: db (db/812) holds 600 CLOSE_WAIT sockets on w1 and they are not going away
              description: >-
                A CLOSE_WAIT leak that is still growing or flat. Restarting the process
                frees the sockets now; fixing the missing close() stops it for good.

  - name: ephemeral ports above half and 80 percent per destination
    interval: 1m
    input_series:
      - series: 'sockstat_ephemeral_ports_used_ratio{{instance="app1",destination="10.0.0.9:5432"}}'
        values: '0.9x20'
      - series: 'sockstat_ephemeral_ports_used_ratio{{instance="app1",destination="10.0.0.8:6379"}}'
        values: '0.1x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: SockstatEphemeralPortExhaustion
        exp_alerts:
          - exp_labels: {{severity: warning, instance: app1, destination: "10.0.0.9:5432"}}
            exp_annotations:
              summary: 90% of ephemeral ports in use towards 10.0.0.9:5432 on app1
              description: >-
                Outgoing connections to 10.0.0.9:5432 (open and in TIME_WAIT) use more
                than half of net.ipv4.ip_local_port_range. Reuse connections (keep-alive,
                pools), enable net.ipv4.tcp_tw_reuse, or add source addresses.
      - eval_time: 10m
        alertname: SockstatEphemeralPortExhaustionCritical
        exp_alerts:
          - exp_labels: {{severity: critical, instance: app1, destination: "10.0.0.9:5432"}}
            exp_annotations:
              summary: 90% of ephemeral ports in use towards 10.0.0.9:5432 on app1
              description: >-
                New connections to 10.0.0.9:5432 are about to fail with "Cannot assign
                requested address" (EADDRNOTAVAIL).

  - name: accept queue overflows fire; a steady counter does not
    interval: 1m
    input_series:
      - series: 'sockstat_kernel_tcp_listen_overflows_total{{instance="lb1"}}'
        values: '0 0 0 0 0 0 0 0 0 0 5 10 15 20 25 30 35 40'
      - series: 'sockstat_kernel_tcp_listen_overflows_total{{instance="lb2"}}'
        values: '7x17'
    alert_rule_test:
      - eval_time: 8m
        alertname: SockstatAcceptQueueOverflow
        exp_alerts: []
      - eval_time: 14m
        alertname: SockstatAcceptQueueOverflow
        exp_alerts:
          - exp_labels: {{severity: warning, instance: lb1}}
            exp_annotations:
              summary: 25 handshakes dropped by full accept queues in 5 minutes on lb1
              description: >-
                A listener does not accept() fast enough, or its listen() backlog (capped
                by net.core.somaxconn) is too small. sockstat_listen_queue_length shows
                which listener; `sockstat -l` on the host shows queued/backlog per
                listener.

  - name: a full accept queue per listener, listen(0) and the fullest of the folded rest
    interval: 1m
    input_series:
      - series: 'sockstat_listen_queue_length{{instance="lb1",address="0.0.0.0",port="80"}}'
        values: '128x10'
      - series: 'sockstat_listen_backlog{{instance="lb1",address="0.0.0.0",port="80"}}'
        values: '128x10'
      - series: 'sockstat_listen_queue_length{{instance="lb1",address="other",port="other"}}'
        values: '10x10'
      - series: 'sockstat_listen_backlog{{instance="lb1",address="other",port="other"}}'
        values: '10x10'
      - series: 'sockstat_listen_queue_length{{instance="lb1",address="::",port="8080"}}'
        values: '0x10'
      - series: 'sockstat_listen_backlog{{instance="lb1",address="::",port="8080"}}'
        values: '0x10'
      - series: 'sockstat_listen_queue_length{{instance="lb1",address="127.0.0.1",port="9000"}}'
        values: '1x10'
      - series: 'sockstat_listen_backlog{{instance="lb1",address="127.0.0.1",port="9000"}}'
        values: '0x10'
      - series: 'sockstat_listen_queue_length{{instance="lb1",address="127.0.0.1",port="9001"}}'
        values: '50x10'
      - series: 'sockstat_listen_backlog{{instance="lb1",address="127.0.0.1",port="9001"}}'
        values: '128x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: SockstatAcceptQueueFull
        exp_alerts:
          - exp_labels: {{severity: critical, instance: lb1, address: "0.0.0.0", port: "80"}}
            exp_annotations:
              summary: Accept queue of 0.0.0.0:80 is 100% full on lb1
              description: >-
                Connections wait for the application to accept() them; once the queue
                passes the backlog the kernel drops new handshakes (ListenOverflows).
                Address "other" is a listener beyond the exporter's --top: `sockstat -l`
                names it.
          - exp_labels: {{severity: critical, instance: lb1, address: "other", port: "other"}}
            exp_annotations:
              summary: Accept queue of other:other is 100% full on lb1
              description: >-
                Connections wait for the application to accept() them; once the queue
                passes the backlog the kernel drops new handshakes (ListenOverflows).
                Address "other" is a listener beyond the exporter's --top: `sockstat -l`
                names it.
          - exp_labels: {{severity: critical, instance: lb1, address: "127.0.0.1", port: "9000"}}
            exp_annotations:
              summary: Accept queue of 127.0.0.1:9000 is 100% full on lb1
              description: >-
                Connections wait for the application to accept() them; once the queue
                passes the backlog the kernel drops new handshakes (ListenOverflows).
                Address "other" is a listener beyond the exporter's --top: `sockstat -l`
                names it.

  - name: a UNIX listener's full accept queue, the folded other series too
    interval: 1m
    input_series:
      - series: 'sockstat_unix_listen_queue_length{{instance="web1",path="/run/php/php-fpm.sock"}}'
        values: '3x10'
      - series: 'sockstat_unix_listen_backlog{{instance="web1",path="/run/php/php-fpm.sock"}}'
        values: '2x10'
      - series: 'sockstat_unix_listen_queue_length{{instance="web1",path="other"}}'
        values: '9x10'
      - series: 'sockstat_unix_listen_backlog{{instance="web1",path="other"}}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 1m
        alertname: SockstatUnixAcceptQueueFull
        exp_alerts: []
      - eval_time: 5m
        alertname: SockstatUnixAcceptQueueFull
        exp_alerts:
          - exp_labels: {{severity: critical, instance: web1, path: /run/php/php-fpm.sock}}
            exp_annotations:
              summary: Accept queue of /run/php/php-fpm.sock is 150% full on web1
              description: &unix_full >-
                Clients wait for the program behind this UNIX socket to accept() them;
                once the queue passes the backlog their connect() fails (EAGAIN). Add
                workers or raise its listen backlog. Path "other" is a listener beyond
                the exporter's --top: `sockstat -xl` names it.
          - exp_labels: {{severity: critical, instance: web1, path: other}}
            exp_annotations:
              summary: Accept queue of other is 900% full on web1
              description: *unix_full

  - name: a socket that keeps dropping fires; one that stopped, and other, do not
    interval: 1m
    input_series:
      - series: >-
          sockstat_socket_drops_total{{instance="dns1",proto="udp",local="127.0.0.1:53",
          process="dns",pid="7"}}
        values: '0+600x20'
      - series: >-
          sockstat_socket_drops_total{{instance="dns1",proto="udp",local="0.0.0.0:514",
          process="syslog",pid="9"}}
        values: '5000x20'
      - series: >-
          sockstat_socket_drops_total{{instance="dns1",proto="other",local="other",
          process="other",pid=""}}
        values: '0+100x20'
    alert_rule_test:
      - eval_time: 3m
        alertname: SockstatSocketDrops
        exp_alerts: []
      - eval_time: 15m
        alertname: SockstatSocketDrops
        exp_alerts:
          - exp_labels: {{severity: warning, instance: dns1, proto: udp, local: "127.0.0.1:53",
                          process: dns, pid: "7"}}
            exp_annotations:
              summary: udp 127.0.0.1:53 (dns/7) dropped 3k packets in 5 minutes on dns1
              description: >-
                The kernel drops packets for this socket, for a UDP socket because its
                receive buffer is full: the program reads too slowly. Read faster (more
                readers with SO_REUSEPORT) or give it a bigger SO_RCVBUF (capped by
                net.core.rmem_max). `sockstat check` on the host shows the buffer and the
                rate.

  - name: TIME_WAIT bucket overflows, critical findings and failing collectors
    interval: 1m
    input_series:
      - series: 'sockstat_kernel_tcp_time_wait_overflows_total{{instance="app1"}}'
        values: '0 0 0 40 80 120'
      - series: 'sockstat_findings{{instance="app1",kind="accept_queue",severity="critical"}}'
        values: '0 0 1x20'
      - series: 'sockstat_findings{{instance="app1",kind="accept_queue",severity="warning"}}'
        values: '3x22'
      - series: 'sockstat_collector_success{{instance="app1",collector="kernel"}}'
        values: '0x22'
      - series: 'sockstat_collector_success{{instance="app1",collector="sockets"}}'
        values: '1x22'
    alert_rule_test:
      - eval_time: 5m
        alertname: SockstatTimeWaitBucketsOverflow
        exp_alerts:
          - exp_labels: {{severity: warning, instance: app1}}
            exp_annotations:
              summary: 120 connections skipped TIME_WAIT (tcp_max_tw_buckets reached) on app1
              description: >-
                Something closes connections faster than TIME_WAIT can retire them. Find
                it with sockstat_destination_sockets{{state="TIME_WAIT"}} or `sockstat
                summary -s time-wait` on the host.
      - eval_time: 15m
        alertname: SockstatCriticalFinding
        exp_alerts:
          - exp_labels: {{severity: critical, instance: app1, kind: accept_queue}}
            exp_annotations:
              summary: sockstat check reports 1 critical accept_queue finding(s) on app1
              description: Run `sockstat check` on the host for the evidence and the remedy.
      - eval_time: 15m
        alertname: SockstatExporterCollectorFailing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: app1, collector: kernel}}
            exp_annotations:
              summary: sockstat cannot collect kernel on app1
              description: The exporter's stderr says why (often a missing permission).
"""


@needs_promtool
def test_promtool_check_rules_passes():
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_rules_fire_as_intended(tmp_path):
    tests = tmp_path / "sockstat-alerts.test.yml"
    tests.write_text(UNIT_TESTS.format(rules=json.dumps(str(RULES))))
    r = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_shipped_rule_has_a_promtool_unit_test():
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS))
    assert alerts and alerts <= tested, alerts - tested


def test_rules_only_use_metrics_sockstat_exports():
    """Every sockstat_* name in an expression is one the exporter produces."""
    exported = {name for name, _, _ in metrics.KERNEL_COUNTERS}
    exported = {n + "_total" for n in exported}
    source = (REPO / "sockstat" / "render" / "metrics.py").read_text()
    exported |= set(re.findall(r'"(sockstat_[a-z_]+)"', source))
    exported |= {n + "_total" for n in exported}  # counter families, e.g. socket drops
    text = RULES.read_text()
    used = set()
    for line in text.splitlines():
        if line.strip().startswith("expr:"):
            used |= set(re.findall(r"\bsockstat_[a-z_]+", line))
    assert used, "no expressions found"
    assert used <= exported, used - exported


def test_the_three_issue_alerts_are_shipped():
    text = RULES.read_text()
    for name in ("SockstatCloseWaitLeak", "SockstatEphemeralPortExhaustion",
                 "SockstatAcceptQueueOverflow"):
        assert f"alert: {name}\n" in text
