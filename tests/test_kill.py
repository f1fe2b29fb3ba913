"""`sockstat kill`: preview, reset, refusals, and the SOCK_DESTROY wire format.

Real sockets on loopback; what the kernel still has is read with `ss` itself, not
through sockstat. Resetting needs CAP_NET_ADMIN: those tests run as root (CI does) and
skip otherwise; the unprivileged refusal is checked by running as nobody via setpriv.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys

import pytest
from conftest import make_socket, run_as_nobody, run_sockstat, wait_for

from sockstat import kill as kill_lib
from sockstat.collect import netlink
from sockstat.errors import ParseError, UsageError
from sockstat.model import Family, ProcessRef, TcpState
from sockstat.query import Query

needs_ss = pytest.mark.skipif(not shutil.which("ss"), reason="iproute2 ss missing")


def ss_states(port: int) -> list[str]:
    """States of the TCP sockets on `port` (either end), as ss sees them."""
    out = subprocess.run(["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def close_wait(loop):
    """(port, server-side socket in CLOSE_WAIT): the client closed, this side did not."""
    server = loop.listener()
    client, conn = loop.connect(server)
    client.close()  # FIN: conn goes to CLOSE_WAIT and stays there until closed
    port = server.getsockname()[1]
    wait_for(lambda: "CLOSE-WAIT" in ss_states(port), what="CLOSE_WAIT")
    return port, conn


@needs_ss
def test_without_yes_close_wait_is_listed_with_its_fd_and_stays(close_wait):
    port, conn = close_wait
    r = run_sockstat("kill", "-s", "close-wait", "--port", str(port))
    assert r.returncode == 0, r.stderr
    assert "would reset" in r.stdout and "CLOSE_WAIT" in r.stdout
    assert f"/{os.getpid()} fd {conn.fileno()}" in r.stdout
    assert f"still holds fd {conn.fileno()} until it closes it" in r.stdout
    assert "restart the program" in r.stdout
    assert "nothing changed" in r.stderr and "--yes" in r.stderr
    assert "CLOSE-WAIT" in ss_states(port)


@needs_ss
@pytest.mark.root
def test_with_yes_close_wait_is_gone_from_ss_but_the_fd_stays(close_wait):
    port, conn = close_wait
    r = run_sockstat("kill", "-s", "close-wait", "--port", str(port), "--yes")
    assert r.returncode == 0, r.stderr
    assert "destroyed" in r.stdout and "1 socket: 1 destroyed" in r.stdout
    assert "CLOSE-WAIT" not in ss_states(port)
    assert conn.fileno() != -1  # the fd is ours until we close it, as the output says


@needs_ss
@pytest.mark.root
def test_json_result_and_already_gone_on_a_second_reset(close_wait):
    port, _ = close_wait
    plan = kill_lib.plan(Query.build(states=["close-wait"], ports=[port]))
    assert [t.socket.state for t in plan.targets] == [TcpState.CLOSE_WAIT]
    kill_lib.apply(plan)
    assert plan.targets[0].outcome is kill_lib.Outcome.DESTROYED
    kill_lib.apply(plan)  # same cookie again: the kernel no longer has it
    assert plan.targets[0].outcome is kill_lib.Outcome.ALREADY_GONE and plan.all_ok
    r = run_sockstat("kill", "-s", "close-wait", "--port", str(port), "--yes", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["applied"] is True and doc["matched"] == 0


@needs_ss
def test_json_preview_shape(close_wait):
    port, conn = close_wait
    r = run_sockstat("kill", "-s", "close-wait", "--port", str(port), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["applied"] is False and doc["matched"] == 1
    assert doc["counts"]["would_reset"] == 1
    row = doc["sockets"][0]
    assert row["result"] == "would_reset" and row["error"] is None
    assert row["socket"]["state"] == "CLOSE_WAIT" and row["socket"]["local_port"] == port
    assert f"fd {conn.fileno()}" in row["does_not_free"]
    assert "CLOSE-WAIT" in ss_states(port)


@needs_ss
@pytest.mark.root
def test_listeners_are_left_alone_unless_listening_is_given(loop):
    server = loop.listener()
    port = server.getsockname()[1]
    r = run_sockstat("kill", "--port", str(port), "--yes")
    assert r.returncode == 0, r.stderr
    # one clear line, not "left alone" plus a contradictory "no socket matches"
    assert r.stderr == ("sockstat: note: nothing to reset: 1 listening socket matched and "
                        "was left alone (add --listening to reset it)\n")
    assert ss_states(port) == ["LISTEN"]
    r = run_sockstat("kill", "--listening", "--port", str(port), "--yes")
    assert r.returncode == 0, r.stderr
    assert "destroyed" in r.stdout and "new connections are refused" in r.stdout
    assert ss_states(port) == []


def test_an_empty_filter_is_refused_in_one_line():
    # --listening alone would reset every listener on the host (sshd's too)
    for args in ((), ("-t",), ("-4", "--udp"), ("-l",), ("--listening", "-u")):
        r = run_sockstat("kill", *args, "--yes")
        assert r.returncode == 2
        assert r.stderr.startswith("sockstat: error: kill needs a filter")
        assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    with pytest.raises(UsageError):
        kill_lib.plan(Query())
    with pytest.raises(UsageError):
        kill_lib.plan(Query.build(listening=True))


@needs_ss
@pytest.mark.root
def test_an_unconnected_udp_socket_is_described_as_udp_and_its_port_is_freed():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        r = run_sockstat("kill", "-u", "--port", str(port), "--yes")
        assert r.returncode == 0 and "listening socket matched" in r.stderr
        r = run_sockstat("kill", "-u", "-l", "--port", str(port), "--yes")
        assert r.returncode == 0, r.stderr
        assert "destroyed" in r.stdout and "datagrams sent to it" in r.stdout
        assert "new connections" not in r.stdout and "accept()" not in r.stdout
        again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            again.bind(("127.0.0.1", port))  # the reset freed the binding, as it says
        finally:
            again.close()
        sock.setblocking(False)
        with pytest.raises(ConnectionAbortedError):  # "its next call on it fails once"
            sock.recv(1)
    finally:
        sock.close()


@needs_ss
@pytest.mark.root
def test_unprivileged_it_refuses_with_one_line_naming_the_capability(close_wait):
    port, _ = close_wait
    r = run_as_nobody("kill", "-s", "close-wait", "--port", str(port), "--yes")
    assert r.returncode == 1
    errors = [line for line in r.stderr.strip().splitlines()
              if line.startswith("sockstat: error:")]
    assert len(errors) == 1 and "CAP_NET_ADMIN" in errors[0]
    assert "nothing was changed" in errors[0] and "Traceback" not in r.stderr
    assert "CLOSE-WAIT" in ss_states(port)


def test_check_remedy_names_the_exact_kill_command(close_wait):
    port, _ = close_wait
    r = run_sockstat("check", "--port", str(port), "--close-wait-warn", "1",
                     "--close-wait-min-age", "0", "--interval", "0", "--json")
    doc = json.loads(r.stdout)
    [finding] = [f for f in doc["findings"] if f["kind"] == "close_wait_leak"]
    command = f"sockstat kill -s close-wait --pid {os.getpid()} --remote 127.0.0.1"
    assert f"`{command}" in finding["remedy"]
    # and that command selects exactly the socket the finding is about
    cmd = finding["remedy"].split("`")[1].split()[1:]
    preview = json.loads(run_sockstat(*cmd, "--json").stdout)
    assert [row["socket"]["local_port"] for row in preview["sockets"]] == [port]


# -- the wire format, on bytes ----------------------------------------------------------

def _socket(family=Family.INET, local="127.0.0.1", remote="127.0.0.1", **fields):
    base = dict(cookie=(7 << 32) | 9, interface=3, inode=1,
                process=ProcessRef(pid=42, name="leaky", fd=7))
    base.update(fields)
    return make_socket(TcpState.CLOSE_WAIT, (local, 8080), (remote, 51000), family=family,
                       **base)


def test_destroy_request_names_one_socket_by_tuple_and_cookie():
    data = netlink.build_destroy_request(_socket(), seq=5)
    length, msg_type, flags, seq, _ = netlink.NLMSGHDR.unpack_from(data)
    assert (length, msg_type, seq) == (len(data), netlink.SOCK_DESTROY, 5)
    assert flags == netlink.NLM_F_REQUEST | netlink.NLM_F_ACK
    (family, proto, _, _, states, sport, dport, src, dst, ifindex, cookie0,
     cookie1) = netlink.INET_DIAG_REQ_V2.unpack_from(data, 16)
    assert (family, proto) == (socket.AF_INET, socket.IPPROTO_TCP)
    assert states == 1 << TcpState.CLOSE_WAIT
    assert (socket.ntohs(sport), socket.ntohs(dport)) == (8080, 51000)
    assert src == socket.inet_aton("127.0.0.1") + b"\0" * 12
    assert (ifindex, cookie0, cookie1) == (3, 9, 7)


def test_destroy_request_maps_v4_peers_of_v6_sockets_back():
    data = netlink.build_destroy_request(_socket(Family.INET6, "::1", "10.0.0.5"))
    fields = netlink.INET_DIAG_REQ_V2.unpack_from(data, 16)
    assert fields[7] == socket.inet_pton(socket.AF_INET6, "::1")
    assert fields[8] == b"\0" * 10 + b"\xff\xff" + socket.inet_aton("10.0.0.5")
    with pytest.raises(ValueError):
        netlink.build_destroy_request(_socket(cookie=None))


def _ack(code: int, seq: int) -> bytes:
    # NLMSG_ERROR: nlmsghdr, then the negative errno and the request's header
    body = struct.pack("=i", -code) + netlink.NLMSGHDR.pack(72, 21, 5, seq, 0)
    return netlink.NLMSGHDR.pack(16 + len(body), netlink.NLMSG_ERROR, 0, seq, 1) + body


def test_acknowledgements_parse_to_errno_and_bad_replies_raise():
    assert netlink.parse_ack(_ack(0, 3), 3) == 0
    assert netlink.parse_ack(_ack(errno.ENOENT, 3), 3) == errno.ENOENT
    assert netlink.parse_ack(_ack(errno.ENOENT, 2) + _ack(errno.EPERM, 3), 3) == errno.EPERM
    for bad in (b"", _ack(0, 3)[:10], _ack(0, 3)[:18], _ack(0, 4)):
        with pytest.raises(ParseError):
            netlink.parse_ack(bad, 3)
    claims_too_much = bytearray(_ack(0, 3))
    claims_too_much[0] = 200
    with pytest.raises(ParseError):
        netlink.parse_ack(bytes(claims_too_much), 3)


def test_outcomes_and_what_each_kind_of_socket_frees():
    assert kill_lib._outcome(0)[0] is kill_lib.Outcome.DESTROYED
    assert kill_lib._outcome(errno.ESTALE)[0] is kill_lib.Outcome.ALREADY_GONE
    assert kill_lib._outcome(errno.EPERM)[0] is kill_lib.Outcome.NOT_PERMITTED
    assert kill_lib._outcome(errno.EIO)[0] is kill_lib.Outcome.FAILED
    target = kill_lib.describe(_socket())
    assert target.keeps.startswith("leaky/42 still holds fd 7 until it closes it")
    forked = _socket(others=(ProcessRef(pid=43, name="leaky", fd=7),))
    assert kill_lib.describe(forked).keeps.startswith(
        "leaky/42 (and 1 more process: leaky/43) still holds fd 7")
    unknown = kill_lib.describe(_socket(process=None)).keeps
    assert "?" not in unknown and unknown.startswith("the owning process (unknown")
    assert "CAP_SYS_PTRACE" in unknown and "keeps fd" not in unknown
    tw = make_socket(TcpState.TIME_WAIT, cookie=1)
    assert kill_lib.describe(tw).keeps == "" and "four-tuple" in kill_lib.describe(tw).frees
    assert kill_lib.narrows(Query.build(states=["established"]))
    assert not kill_lib.narrows(Query.build(tcp=True, ipv6=True))


@needs_ss
@pytest.mark.root
@pytest.mark.skipif(not shutil.which("script"), reason="util-linux script missing")
def test_on_a_terminal_it_asks_and_no_changes_nothing(close_wait):
    port, _ = close_wait
    cmd = f"{sys.executable} -m sockstat kill -s close-wait --port {port}"
    env = dict(os.environ, COLUMNS="200", TERM="xterm", NO_COLOR="1")
    no = subprocess.run(["script", "-qec", cmd, "/dev/null"], input="n\n",
                        capture_output=True, text=True, env=env, timeout=60)
    assert "would reset" in no.stdout and "Reset 1 socket? [y/N]" in no.stdout
    assert "nothing changed" in no.stdout
    assert "CLOSE-WAIT" in ss_states(port)
    yes = subprocess.run(["script", "-qec", cmd, "/dev/null"], input="y\n",
                         capture_output=True, text=True, env=env, timeout=60)
    assert "1 socket: 1 destroyed" in yes.stdout
    assert "CLOSE-WAIT" not in ss_states(port)


@needs_ss
@pytest.mark.root
@pytest.mark.parametrize("listen_on,connect_to", [("::1", "::1"), ("::", "127.0.0.1")])
def test_ipv6_and_v4_mapped_sockets_are_named_exactly(loop, listen_on, connect_to):
    """An IPv6 socket's v4-mapped peer is printed as IPv4: the request maps it back."""
    server = loop.listener(listen_on, family=socket.AF_INET6, v6only=False)
    client, conn = loop.connect(server, host=connect_to)
    client.close()
    port = server.getsockname()[1]
    wait_for(lambda: "CLOSE-WAIT" in ss_states(port), what="CLOSE_WAIT")
    r = run_sockstat("kill", "-s", "close-wait", "--port", str(port), "--yes", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["counts"]["destroyed"] == 1, doc
    assert doc["sockets"][0]["socket"]["family"] == "ipv6"
    assert doc["sockets"][0]["socket"]["remote_address"] == connect_to
    assert "CLOSE-WAIT" not in ss_states(port)


@needs_ss
@pytest.mark.root
def test_time_wait_is_freed_at_once(loop):
    server = loop.listener()
    client, conn = loop.connect(server)
    port = server.getsockname()[1]
    client.close()  # the client closes first: it ends in TIME_WAIT once the server closes
    conn.close()
    wait_for(lambda: "TIME-WAIT" in ss_states(port), what="TIME_WAIT")
    r = run_sockstat("kill", "-s", "time-wait", "--port", str(port), "--yes")
    assert r.returncode == 0, r.stderr
    assert "destroyed" in r.stdout and "four-tuple, at once" in r.stdout
    assert "TIME-WAIT" not in ss_states(port)


@needs_ss
@pytest.mark.root
def test_a_reset_connection_fails_both_programs_as_documented(loop):
    """What docs/kill.md promises: the peer gets an RST, the owner keeps its fd and its
    next call fails with ECONNABORTED."""
    server = loop.listener()
    client, conn = loop.connect(server)
    port = server.getsockname()[1]
    r = run_sockstat("kill", "-s", "established", "--sport", str(port), "--yes")
    assert r.returncode == 0 and "1 socket: 1 destroyed" in r.stdout, r.stderr
    assert "its next read or write fails (ECONNABORTED)" in r.stdout
    with pytest.raises(ConnectionAbortedError):
        conn.recv(1)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    assert conn.fileno() != -1


def test_the_kill_command_a_finding_offers_narrows_to_its_sockets():
    from sockstat.diagnose.common import kill_command

    leaky = ProcessRef(pid=42, name="leaky", fd=7)
    one_peer = [make_socket(TcpState.CLOSE_WAIT, ("10.0.0.1", 8080), ("10.0.0.5", p),
                            process=leaky) for p in (50000, 50001)]
    assert kill_command(one_peer) == \
        "sockstat kill -s close-wait --pid 42 --remote 10.0.0.5 --sport 8080"
    unknown = [make_socket(TcpState.FIN_WAIT2, ("10.0.0.1", p), ("10.0.0.9", 443), uid=33,
                           inode=p) for p in (40000, 40001)]
    assert kill_command(unknown) == "sockstat kill -s fin-wait2 --user 33 --remote 10.0.0.9 " \
        "--dport 443"
    # a listener's guess is not an owner, and a mini-socket has no uid of its own
    guessed = [make_socket(TcpState.TIME_WAIT, ("10.0.0.1", 80), (f"10.0.0.{i}", 5000 + i),
                           process=ProcessRef(1, "nginx", 3, via_listener=True))
               for i in (1, 2)]
    assert kill_command(guessed) == "sockstat kill -s time-wait --sport 80"
