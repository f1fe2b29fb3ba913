"""Real-socket factories on loopback that always clean up, and an independent reader of
the kernel's socket table to check sockstat against.

Every socket a test makes goes through `loop` (a LoopbackLab), which closes them all
with SO_LINGER {1, 0} at teardown: an RST, so no FIN_WAIT/TIME_WAIT is left behind
(tests about TIME_WAIT make theirs on purpose). After each test we assert that none of
the test's own ports still has a non-TIME_WAIT socket. Assertions are scoped to the
test's own ports: other suites may run on the same machine at the same time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The kernel's own state numbers, written out again here on purpose: the tests check
# sockstat's table (sockstat.model.TcpState) against this independent one.
KERNEL_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV",
}


def _hex_to_ip(hex_addr: str) -> str:
    words = [bytes.fromhex(hex_addr[i:i + 8]) for i in range(0, len(hex_addr), 8)]
    raw = b"".join(w[::-1] if sys.byteorder == "little" else w for w in words)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if raw[:12] == b"\x00" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def kernel_rows(ports: set[int], tables=("tcp", "tcp6")) -> list[dict]:
    """Rows of /proc/net/tcp{,6} touching any of `ports`, read directly (not through
    sockstat): the ground truth the tests compare against."""
    rows = []
    for table in tables:
        try:
            text = Path(f"/proc/net/{table}").read_text()
        except FileNotFoundError:
            continue
        for line in text.splitlines()[1:]:
            f = line.split()
            (la, lp), (ra, rp) = (x.split(":") for x in f[1:3])
            lport, rport = int(lp, 16), int(rp, 16)
            if lport not in ports and rport not in ports:
                continue
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            rows.append({
                "table": table, "state": KERNEL_STATES[int(f[3], 16)],
                "local": (_hex_to_ip(la), lport), "remote": (_hex_to_ip(ra), rport),
                "recv_q": rx, "send_q": tx, "inode": int(f[9]),
            })
    return rows


# tests that make network namespaces of their own (a table nobody else's sockets reach)
NEEDS_NETNS = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root, ip and unshare to make a network namespace")


# For scripts run in a namespace of their own (a string, prepended to theirs): a
# listener kept in `held`, `n` connected pairs (the first `close_wait` of them half
# closed by the client with data queued: CLOSE_WAIT), `n` TIME_WAITs on the listener's
# port (the server closes first).
TABLE_MAKERS = r"""
held = []
def listener(host, family, v6only=None):
    srv = socket.socket(family)
    if v6only is not None:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    srv.bind((host, 0)); srv.listen(512); held.append(srv)
    return srv
def pairs(srv, host, family, n, close_wait=0):
    for i in range(n):
        c = socket.socket(family); c.connect((host, srv.getsockname()[1]))
        s, _ = srv.accept(); held.extend([c, s])
        if i < close_wait:
            c.sendall(b"x" * (i + 1)); c.shutdown(socket.SHUT_WR)
def time_wait(srv, host, family, n):
    for _ in range(n):
        c = socket.socket(family); c.connect((host, srv.getsockname()[1]))
        s, _ = srv.accept(); s.close(); c.recv(1); c.close()
"""


def in_own_namespaces(script: str, timeout: float = 120) -> object:
    """What `script` (Python, run by this interpreter from the checkout) prints as JSON,
    run in a network and PID namespace of its own (its processes end with it); its
    exit status must be 0."""
    proc = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child",
                           "--mount-proc", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition"):
    """Poll until predicate() is truthy; never a fixed sleep."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def end_child(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """End a helper child that runs until its stdin closes: close it, wait, and kill it
    if it has not ended within `timeout` (a failed test must leave no process behind)."""
    proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def python_says(code: str) -> str:
    """What a fresh interpreter running `code` prints (it must exit cleanly)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def rst_close(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class LoopbackLab:
    """Makes listeners and connections on loopback and remembers them for clean-up."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.ports: set[int] = set()
        self.tuples: set[tuple] = set()  # ((address, port), (peer address, port))

    def _track(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock

    def _remember(self, sock: socket.socket) -> None:
        """Note the socket's 4-tuple: teardown checks exactly these, so other programs'
        sockets that happen to share a port number never count as ours."""
        host, port = sock.getsockname()[:2]
        self.ports.add(port)
        try:
            peer = sock.getpeername()[:2]
        except OSError:
            peer = ("::" if ":" in host else "0.0.0.0", 0)
        self.tuples.add(((host.removeprefix("::ffff:"), port),
                         (peer[0].removeprefix("::ffff:"), peer[1])))

    def listener(self, host: str = "127.0.0.1", backlog: int = 16,
                 family: int = socket.AF_INET, v6only: bool | None = None) -> socket.socket:
        sock = self._track(socket.socket(family, socket.SOCK_STREAM))
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, 0))
        sock.listen(backlog)
        self._remember(sock)
        return sock

    def connect(self, server: socket.socket, host: str | None = None,
                accept: bool = True) -> tuple[socket.socket, socket.socket | None]:
        """A connected (client, server-side) pair; server-side None when not accepted."""
        addr = server.getsockname()
        host = host or addr[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        client = self._track(socket.socket(family, socket.SOCK_STREAM))
        client.connect((host, addr[1]))
        self._remember(client)
        if not accept:
            return client, None
        conn, _ = server.accept()
        self._remember(conn)
        return client, self._track(conn)

    def udp(self, host: str = "127.0.0.1", connect_to: tuple | None = None) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self._track(socket.socket(family, socket.SOCK_DGRAM))
        sock.bind((host, 0))
        if connect_to:
            sock.connect(connect_to)
        self._remember(sock)
        return sock

    def close_all(self) -> None:
        for sock in self.sockets:
            if sock.fileno() != -1:
                rst_close(sock)
        self.sockets.clear()

    def leftovers(self) -> list[dict]:
        """Non-TIME_WAIT rows with a 4-tuple this lab made."""
        return [r for r in kernel_rows(self.ports, ("tcp", "tcp6", "udp", "udp6"))
                if r["state"] != "TIME_WAIT" and (r["local"], r["remote"]) in self.tuples]


@pytest.fixture
def loop():
    lab = LoopbackLab()
    try:
        yield lab
    finally:
        lab.close_all()
    # what RST-closed must be gone (TIME_WAIT made on purpose may stay)
    wait_for(lambda: not lab.leftovers(), timeout=5, what="test sockets to disappear")


class TcpDumpRequests(list):
    """The TCP dump requests sockstat sends to the kernel, as (states mask, idiag_ext),
    while `recording()` is active: each netlink socket it opens is the real one,
    wrapped to note what is sent (everything goes on to the kernel unchanged)."""

    INFO = 1 << 1  # 1 << (INET_DIAG_INFO - 1): the kernel's numbers, written out again

    def __init__(self, whole_tables: bool = False) -> None:
        super().__init__()
        # only dumps without a filter program: not the one-port dumps a cause check
        # sends to confirm that a socket without a process is there (netlink.exists)
        self.whole_tables = whole_tables

    def decode(self, data: bytes) -> tuple[int, int] | None:
        """(states, ext) of a TCP dump request, None for any other message."""
        length, msg_type, flags = struct.unpack_from("=IHH", data)
        if not flags & 0x300:  # NLM_F_DUMP
            return None
        if self.whole_tables and length > 16 + (60 if msg_type == 18 else 56):
            return None  # a filter program follows the request
        if msg_type == 18:  # TCPDIAG_GETSOCK: struct inet_diag_req, both families
            return struct.unpack_from("=I", data, 16 + 4 + 48)[0], data[16 + 3]
        if msg_type == 20 and data[16] in (socket.AF_INET, socket.AF_INET6) \
                and data[17] == socket.IPPROTO_TCP:  # SOCK_DIAG_BY_FAMILY, inet_diag_req_v2
            return struct.unpack_from("=I", data, 20)[0], data[18]
        return None

    def recording(self, monkeypatch) -> None:
        from sockstat.collect import netlink

        opened, requests = netlink.open_socket, self

        class Noted:
            def __init__(self, sock) -> None:
                self._sock = sock

            def send(self, data, *args):
                request = requests.decode(bytes(data))
                if request is not None:
                    requests.append(request)
                return self._sock.send(data, *args)

            def __getattr__(self, name):
                return getattr(self._sock, name)

        monkeypatch.setattr(netlink, "open_socket", lambda: Noted(opened()))

    def with_info(self, state: int) -> list[bool]:
        """Whether each request covering kernel state number `state` asks tcp_info."""
        return [bool(ext & self.INFO) for states, ext in self if states & (1 << state)]


def run_sockstat(*args: str, input: str | None = None, env: dict | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (what a user types), output captured; stdin is
    empty unless `input` is given, as under cron or CI."""
    full_env = dict(os.environ)
    full_env.pop("FORCE_COLOR", None)
    if env:
        full_env.update(env)
    stdin = None if input is not None else subprocess.DEVNULL
    return subprocess.run([sys.executable, "-m", "sockstat", *args], capture_output=True,
                          text=True, input=input, stdin=stdin, env=full_env,
                          timeout=timeout, cwd=REPO)


def run_as_nobody(*args: str) -> subprocess.CompletedProcess:
    """Run the real CLI as the unprivileged user nobody (root tests only): what a user
    without root or capabilities sees. Skips without setpriv or a readable checkout."""
    import shutil

    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to run a command as an unprivileged user")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           sys.executable, "-m", "sockstat", *args]
    probe = subprocess.run(cmd[:5] + ["-c", "import sockstat.cli"], capture_output=True,
                           cwd=REPO)
    if probe.returncode != 0:
        pytest.skip("the package is not readable by an unprivileged user here")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60,
                          stdin=subprocess.DEVNULL)


def pytest_collection_modifyitems(config, items):
    """Tests marked `root` (pyproject.toml's markers) skip, saying why, when not root."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def make_socket(state, local=("127.0.0.1", 8080), remote=("127.0.0.1", 40000), *,
                proto=None, family=None, **fields):
    """A Socket built by hand, for the pure layers' tests: TCP over IPv4 unless told,
    any other Socket field by name. The one builder; test files wrap it with their own
    defaults."""
    from sockstat.model import Endpoint, Family, Proto, Socket

    return Socket(proto=proto or Proto.TCP, family=family or Family.INET, state=state,
                  local=Endpoint(*local), remote=Endpoint(*remote), **fields)


def make_snapshot(sockets, taken_at: float = 0.0, source: str = "netlink"):
    from sockstat.model import Snapshot

    return Snapshot(sockets=list(sockets), taken_at=taken_at, source=source)


def my_comm() -> str:
    return Path(f"/proc/{os.getpid()}/comm").read_text().strip()


# -- forking servers: real processes that share sockets ---------------------------------

# A server that accepts connections and never closes them: when the clients hang up,
# its sockets sit in CLOSE_WAIT. It exits (closing with RST) when its stdin closes.
LEAKER = r"""
import socket, struct, sys
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
conns = [srv.accept()[0] for _ in range(int(sys.argv[1]))]
print("accepted", flush=True)
sys.stdin.read()
for s in conns + [srv]:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""


# A prefork server: a listener, then `workers` forked children that all hold it. Prints
# the port and every pid, then waits for its stdin to close.
PREFORK = r"""
import os, socket, sys
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
pids = [os.getpid()]
for _ in range(int(sys.argv[1]) - 1):
    pid = os.fork()
    if pid == 0:
        sys.stdin.read()
        os._exit(0)
    pids.append(pid)
print(srv.getsockname()[1], *pids, flush=True)
sys.stdin.read()
"""

# A fork-per-connection server whose children read the client's EOF and never close:
# one CLOSE_WAIT per child. Prints the port, then "eof <pid>" for each child.
FORKING_LEAKER = r"""
import os, signal, socket, sys, time
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    if os.fork() == 0:
        srv.close()
        conn.recv(1)  # the client's FIN: read() returns EOF, and we never close()
        print("eof", os.getpid(), flush=True)
        time.sleep(600)
        os._exit(0)
    conn.close()
"""


class ProcessGroup:
    """A command started in its own session; stop() kills the whole group (the forked
    children too) and reaps the leader. Only what the test started is ever signalled."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)

    def readline(self) -> str:
        return self.proc.stdout.readline()

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc.stdin.close()
        self.proc.stdout.close()


def close_wait_count(port: int) -> int:
    return sum(r["state"] == "CLOSE_WAIT" for r in kernel_rows({port}))


@pytest.fixture
def forking_leaker():
    """start(clients) -> (master pid, port, child pids): a forking server holding one
    CLOSE_WAIT in each of `clients` children. Killed with its children afterwards."""
    groups: list[ProcessGroup] = []

    def start(clients: int) -> tuple[int, int, list[int]]:
        group = ProcessGroup([sys.executable, "-c", FORKING_LEAKER])
        groups.append(group)
        port = int(group.readline())
        children = []
        for _ in range(clients):
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            client.close()  # FIN: the child's end goes to CLOSE_WAIT
            words = group.readline().split()
            assert words[0] == "eof", words
            children.append(int(words[1]))
        wait_for(lambda: close_wait_count(port) == clients, timeout=30,
                 what=f"{clients} CLOSE_WAIT sockets")
        return group.proc.pid, port, children

    try:
        yield start
    finally:
        for group in groups:
            group.stop()


def counting_splits(monkeypatch) -> list:
    """Every split_sides() call from now on, each still made by the real one."""
    from sockstat import sides

    made: list = []
    real = sides.split_sides

    def counted(*args, **kwargs):
        made.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(sides, "split_sides", counted)
    return made
