"""The process at the other end: both local ends of a connection paired, and check
telling one story per connection group. A real leaking server in a subprocess, real
clients in this process, on loopback."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
from conftest import LEAKER, ProcessGroup, close_wait_count, my_comm, run_sockstat, wait_for

from sockstat.collect import collect
from sockstat.diagnose import diagnose
from sockstat.diagnose.thresholds import Thresholds
from sockstat.peers import pair
from sockstat.query import Query

LEAKS = 12
@pytest.fixture
def loopback_leak(loop):
    """(server pid, port): LEAKS connections from this process to a server that never
    closes them; our side sent FIN (FIN_WAIT2, still held), its side is CLOSE_WAIT."""
    group = ProcessGroup([sys.executable, "-c", LEAKER, str(LEAKS)])
    try:
        port = int(group.readline())
        loop.ports.add(port)
        for _ in range(LEAKS):
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            loop.sockets.append(client)
            loop._remember(client)
        assert group.readline().strip() == "accepted"
        for client in loop.sockets:
            client.shutdown(socket.SHUT_WR)
        wait_for(lambda: close_wait_count(port) == LEAKS, what=f"{LEAKS} CLOSE_WAIT")
        yield group.proc.pid, port
    finally:
        group.stop()


def test_both_ends_are_paired_with_their_processes(loopback_leak):
    server, port = loopback_leak
    snap = collect(Query.build(ports=[port]), processes=True)
    assert pair(snap.sockets) == 2 * LEAKS
    for sock in snap.sockets:
        if sock.state.name == "CLOSE_WAIT":
            assert sock.peer_process.pid == os.getpid()
        elif sock.state.name == "FIN_WAIT2":
            assert sock.peer_process.pid == server


def test_check_tells_one_story_per_connection_group(loopback_leak):
    server, port = loopback_leak
    snap = collect(Query.build(ports=[port]), processes=True, tcp_info=True, services=True)
    findings = diagnose(snap, None, Thresholds(close_wait_min_age=0, fin_wait2_warn=5))
    kinds = [f.kind for f in findings]
    assert kinds.count("close_wait_leak") == 1
    assert "fin_wait2" not in kinds  # the client ends are the same story, not a warning
    [finding] = [f for f in findings if f.kind == "close_wait_leak"]
    me = f"{my_comm()}/{os.getpid()}"
    assert f"never closes connections from {me} ({LEAKS} CLOSE_WAIT; the client side's " \
           f"{LEAKS} FIN_WAIT2 are the same connections)" in finding.summary
    assert finding.evidence["client_fin_wait2"] == LEAKS
    assert len(finding.sockets) == LEAKS  # the CLOSE_WAIT ends; the evidence counts the others


def test_peer_column_and_json_field(loopback_leak):
    server, port = loopback_leak
    r = run_sockstat("--peer", "--port", str(port), "-s", "close-wait")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(line for line in lines if "Local Address" in line)
    assert header.rstrip().endswith("Peer")
    rows = [line for line in lines if f":{port} " in line]
    assert len(rows) == LEAKS
    assert all(line.rstrip().endswith(f"/{os.getpid()}") for line in rows)
    r = run_sockstat("--peer", "--port", str(port), "-s", "fin-wait2", "--json")
    rows = json.loads(r.stdout)
    assert len(rows) == LEAKS and all(row["peer_process"]["pid"] == server for row in rows)
    r = run_sockstat("--port", str(port), "-s", "fin-wait2", "--json")
    assert all(row["peer_process"] is None for row in json.loads(r.stdout))  # not asked
