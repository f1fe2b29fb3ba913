"""The demo lab, run as a user would run it: `sockstat demo <name> --json --hold N` in a
subprocess (as an unprivileged user when this machine allows it), checked against the
kernel's own table read here from /proc/net/tcp{,6}, never through sockstat's collector.

Every run is ended with SIGINT (Ctrl-C) while it holds its sockets, and then nothing of
it may remain: no socket but the TIME_WAIT a demo makes on purpose, no process.
Assertions are scoped to the demo's own four-tuples and pids: other suites run on this
machine at the same time.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, run_sockstat, wait_for

NOBODY = 65534
STATES = ["listen", "syn-sent", "syn-recv", "established", "fin-wait1", "fin-wait2",
          "close-wait", "closing", "last-ack", "time-wait"]
# what each state demo promises, by kernel spelling (the state of time-wait's main end)
TARGET = {name: name.upper().replace("-", "_") for name in STATES}

# ---- an independent reader of the kernel's table -------------------------------------

_KERNEL_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
                  5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK",
                  10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}


def _address(hex_addr: str) -> str:
    raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        raw = raw[12:]
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


@dataclass(frozen=True)
class KRow:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    send_q: int
    recv_q: int
    timer: int
    uid: int
    inode: int


def kernel_table(ports) -> list[KRow]:
    """The rows of /proc/net/tcp and tcp6 with a local or remote port in `ports`, parsed
    here (little-endian hosts, as this machine is). Other lines are skipped after a
    glance at their port fields: the machine may hold 100k sockets of other tests."""
    wanted = {f"{port:04X}" for port in ports}
    rows = []
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            f = line.split(None, 3)
            if f[1][-4:] not in wanted and f[2][-4:] not in wanted:
                continue
            f = line.split()
            (la, lp), (ra, rp) = (x.split(":") for x in f[1:3])
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            rows.append(KRow((_address(la), int(lp, 16)), (_address(ra), int(rp, 16)),
                             _KERNEL_STATES[int(f[3], 16)], tx, rx, int(f[5].split(":")[0], 16),
                             int(f[7]), int(f[9])))
    return rows


def fd_inodes(pid: int) -> set[int]:
    """Socket inodes held by a process, from /proc/<pid>/fd."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# ---- who runs the demos --------------------------------------------------------------

@dataclass
class Runner:
    argv: list[str]
    env: dict
    cwd: str
    uid: int
    why_privileged: str = ""  # set when the demos could not run unprivileged


def _copy_dependencies(target: Path) -> None:
    """What `python -m sockstat` imports from site-packages, copied where an unprivileged
    user can read it (the interpreter's own site-packages may be in root's home)."""
    import importlib.util

    for name in ("typer", "click", "rich", "shellingham", "annotated_doc",
                 "typing_extensions", "markdown_it", "mdurl"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, target / name)
        else:
            shutil.copy2(origin, target / origin.name)


def _unprivileged_runner(deps: Path) -> tuple[Runner | None, str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None, "setpriv is not installed"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{deps}:{REPO}",
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    reasons = []
    for python in dict.fromkeys([sys.executable, shutil.which("python3") or "",
                                 "/usr/bin/python3"]):
        if not python:
            continue
        argv = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                python, "-m", "sockstat"]
        probe = subprocess.run(argv[:-2] + ["-c", "import sys, sockstat.cli; "
                                                  "assert sys.version_info >= (3, 11)"],
                               capture_output=True, text=True, env=env, cwd="/", timeout=60)
        if probe.returncode == 0:
            return Runner(argv, env, "/", NOBODY), ""
        reasons.append(f"{python}: {probe.stderr.strip().splitlines()[-1:]}")
    return None, "no interpreter can import sockstat as nobody (" + "; ".join(reasons) + ")"


@pytest.fixture(scope="session")
def runner():
    plain = Runner([sys.executable, "-m", "sockstat"],
                   {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}, str(REPO),
                   os.geteuid())
    if os.geteuid() != 0:
        yield plain  # already unprivileged
        return
    deps = Path(tempfile.mkdtemp(prefix="sockstat-demo-deps-"))
    try:
        deps.chmod(0o755)
        _copy_dependencies(deps)
        for path in deps.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        found, why = _unprivileged_runner(deps)
        if found is None:
            plain.why_privileged = why
        yield found or plain
    finally:
        shutil.rmtree(deps, ignore_errors=True)


# ---- one demo run --------------------------------------------------------------------

@dataclass
class DemoRun:
    """`sockstat demo <args> --json --hold N` in the background; its JSON, read as soon as
    it is printed (the sockets are held from then on)."""

    runner: Runner
    args: tuple[str, ...]
    hold: str = "120"
    data: dict = field(default_factory=dict)
    stderr: str = ""
    returncode: int | None = None

    def __enter__(self) -> DemoRun:
        self.proc = subprocess.Popen(
            [*self.runner.argv, "demo", *self.args, "--json", "--hold", self.hold],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=self.runner.env, cwd=self.runner.cwd)
        readable, _, _ = select.select([self.proc.stdout], [], [], 60)  # a safety net only
        line = self.proc.stdout.readline() if readable else ""
        if not line:
            self.finish(signal.SIGKILL)
            pytest.fail(f"demo {self.args} printed no JSON: {self.stderr}")
        self.data = json.loads(line)
        return self

    def finish(self, sig: int | None = signal.SIGINT) -> int:
        """End the demo with `sig` (None: wait for it to end by itself)."""
        if self.returncode is None:
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            _, self.stderr = self.proc.communicate(timeout=60)
            self.returncode = self.proc.returncode
        return self.returncode

    def __exit__(self, *exc) -> None:
        if self.returncode is None:
            self.finish()

    # what the demo says it made
    @property
    def ends(self) -> dict[str, dict]:
        return {s["role"]: s for s in self.data["sockets"]}

    def tuple_of(self, role: str) -> tuple[tuple[str, int], tuple[str, int]]:
        s = self.ends[role]
        return (s["local_address"], s["local_port"]), (s["remote_address"], s["remote_port"])

    def table(self) -> list[KRow]:
        return kernel_table(self.data["ports"])

    def kernel(self, role: str, table: list[KRow] | None = None) -> KRow | None:
        """The kernel's row for one end (independent of sockstat), or None if absent."""
        local, remote = self.tuple_of(role)
        for row in table if table is not None else self.table():
            if row.local != local or row.remote != remote:
                continue
            if row.state == "LISTEN" and self.ends[role]["inode"] not in (0, row.inode):
                continue  # another listener on the same port (SO_REUSEPORT)
            return row
        return None

    def pids(self) -> list[int]:
        return [self.proc.pid] + [p["pid"] for p in self.data["processes"]]

    def leftovers(self) -> list[KRow]:
        """Rows of this demo's four-tuples that are not TIME_WAIT."""
        mine = {self.tuple_of(role) for role in self.ends}
        listeners = {local for local, remote in mine if remote[1] == 0}
        return [r for r in self.table() if r.state != "TIME_WAIT" and (
            (r.local, r.remote) in mine or (r.state == "LISTEN" and r.local in listeners)
            or (r.remote, r.local) in mine)]


def assert_cleaned_up(run: DemoRun) -> None:
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    wait_for(lambda: not run.leftovers(), what=f"{run.args} sockets to go")
    for pid in run.pids():
        wait_for(lambda pid=pid: not alive(pid), what=f"process {pid} to go")
    if not run.data.get("leaves_time_wait"):
        assert not [r for r in run.table() if (r.local, r.remote) in
                    {run.tuple_of(role) for role in run.ends}]


def final_states(run: DemoRun) -> dict[str, str]:
    return run.data["timeline"][-1]["states"]


def assert_kernel_matches_timeline(run: DemoRun) -> None:
    """Every end the last step lists is in the kernel, in the state the timeline says."""
    table = run.table()
    for role, state in final_states(run).items():
        if state == "CLOSED" or role not in run.ends:
            continue
        row = run.kernel(role, table)
        assert row is not None, f"{role} is not in /proc/net/tcp"
        assert row.state == state, f"{role}: kernel says {row.state}, timeline {state}"


# ---- the state demos -----------------------------------------------------------------

@pytest.mark.parametrize("name", STATES)
def test_state_demo_holds_the_state_in_the_kernel(runner, name):
    with DemoRun(runner, (name,)) as run:
        data = run.data
        assert data["target"] == TARGET[name] and data["reached"] is True
        targets = [role for role, s in run.ends.items() if s["highlight"]]
        assert targets, "no end is marked as the one in the state"
        for role in targets:
            row = run.kernel(role)
            assert row is not None and row.state == TARGET[name], (role, row)
        assert_kernel_matches_timeline(run)
        assert all(s["local_address"] == "127.0.0.1" for s in data["sockets"])
        if runner.uid == NOBODY:
            status = Path(f"/proc/{run.proc.pid}/status").read_text()
            assert f"Uid:\t{NOBODY}\t" in status
        run.finish(signal.SIGINT)
    assert_cleaned_up(run)
    assert run.data["leaves_time_wait"] == (name == "time-wait")


def test_state_demos_ran_unprivileged(runner):
    if runner.uid != NOBODY and runner.uid == 0:
        pytest.skip(f"could not drop privileges here: {runner.why_privileged}")
    assert runner.uid != 0


def test_state_demo_over_ipv6(runner):
    with DemoRun(runner, ("fin-wait2", "-6")) as run:
        assert run.data["host"] == "::1"
        row = run.kernel("client")
        assert row is not None and row.state == "FIN_WAIT2" and row.local[0] == "::1"
        assert run.kernel("server").state == "CLOSE_WAIT"
        run.finish()
    assert_cleaned_up(run)


def test_every_state_at_once(runner):
    with DemoRun(runner, ("all",)) as run:
        assert run.data["seen"] == {TARGET[name]: True for name in STATES}
        table = kernel_table({p for demo in run.data["demos"] for p in demo["ports"]})
        for demo in run.data["demos"]:
            ends = {s["role"]: s for s in demo["sockets"]}
            hits = [ends[role] for role in ends if ends[role]["highlight"]]
            for end in hits:
                local = (end["local_address"], end["local_port"])
                remote = (end["remote_address"], end["remote_port"])
                assert any(r.local == local and r.remote == remote and
                           r.state == demo["target"] for r in table), demo["demo"]
        run.finish()
    assert run.returncode == 0, run.stderr
    for demo in run.data["demos"]:
        mine = {((s["local_address"], s["local_port"]), (s["remote_address"], s["remote_port"]))
                for s in demo["sockets"]}
        wait_for(lambda mine=mine, ports=demo["ports"]: not [
            r for r in kernel_table(ports)
            if r.state != "TIME_WAIT" and (r.local, r.remote) in mine],
            what="every socket of demo all to go")


def test_hold_zero_shows_once_and_cleans_up(runner):
    with DemoRun(runner, ("close-wait",), hold="0") as run:
        assert run.data["reached"]
        assert run.finish(None) == 0  # exits by itself
    assert_cleaned_up(run)


def test_sigterm_cleans_up_too(runner):
    with DemoRun(runner, ("syn-recv",)) as run:
        assert run.kernel("server").state == "SYN_RECV"
        run.finish(signal.SIGTERM)
    assert_cleaned_up(run)


def _tuples_of_inodes(inodes: set[int]) -> set[tuple]:
    rows = []
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[9]) in inodes:
                rows.append(((_address(f[1].split(":")[0]), int(f[1].split(":")[1], 16)),
                             (_address(f[2].split(":")[0]), int(f[2].split(":")[1], 16))))
    return set(rows)


def test_ctrl_c_while_the_demo_is_being_built_still_cleans_up(runner):
    """backlog waits about a second for a SYN retransmission: interrupt it there."""
    proc = subprocess.Popen([*runner.argv, "demo", "backlog", "--json", "--hold", "60"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=runner.env, cwd=runner.cwd)
    try:
        def all_made() -> set[int] | None:
            # listener + 6 clients + the accepted connection: it waits for a retransmission
            inodes = fd_inodes(proc.pid)
            return inodes if len(inodes) >= 8 else None

        inodes = wait_for(all_made, what="the demo's sockets")
        tuples = _tuples_of_inodes(inodes)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and out == "", err  # interrupted before it was ready
    assert "Traceback" not in err
    ports = {port for pair in tuples for _, port in pair if port}
    mine = tuples | {(remote, local) for local, remote in tuples}
    wait_for(lambda: not [r for r in kernel_table(ports) if (r.local, r.remote) in mine],
             what="the interrupted demo's sockets to go")


# ---- the scenarios -------------------------------------------------------------------

def steps(run: DemoRun) -> list[dict]:
    return run.data["timeline"]


def step_with(run: DemoRun, **match) -> dict:
    for step in steps(run):
        if all(step["states"].get(k) == v if k != "result" else step["result"] == v
               for k, v in match.items()):
            return step
    raise AssertionError(f"no step with {match}: {[s['states'] for s in steps(run)]}")


def test_handshake(runner):
    with DemoRun(runner, ("handshake",)) as run:
        frozen = step_with(run, client="ESTABLISHED", server="SYN_RECV")
        accepted = step_with(run, result="the connection's socket")
        assert frozen["step"] < accepted["step"]
        assert steps(run)[-1]["result"] == "b'HELLO'"
        assert_kernel_matches_timeline(run)
        run.finish()
    assert_cleaned_up(run)


def test_teardown(runner):
    with DemoRun(runner, ("teardown",)) as run:
        half = step_with(run, client="FIN_WAIT2", server="CLOSE_WAIT")
        done = step_with(run, client="TIME_WAIT", server="CLOSED")
        assert half["step"] < done["step"]
        assert run.kernel("client").state == "TIME_WAIT"
        assert run.kernel("listener").state == "LISTEN"
        run.finish()
    assert_cleaned_up(run)
    assert run.data["leaves_time_wait"]


def test_time_wait_restart(runner):
    with DemoRun(runner, ("restart",)) as run:
        refused = step_with(run, result="EADDRINUSE")
        restarted = step_with(run, **{"listener new": "LISTEN", "server": "TIME_WAIT"})
        assert refused["step"] < restarted["step"]
        assert "SO_REUSEADDR" in restarted["call"]
        # the new listener and the old connection's TIME_WAIT share the port, now
        assert run.kernel("server").state == "TIME_WAIT"
        assert run.kernel("listener new").state == "LISTEN"
        assert run.kernel("server").local == run.kernel("listener new").local
        facts = run.data["facts"]
        assert facts["restart_v1"]["result"] == "EADDRINUSE"  # only the new one set it
        assert facts["restart_v2"]["result"] == "EADDRINUSE"  # the notes' experiment
        assert facts["restart_v3"]["result"] == "0"  # both set SO_REUSEPORT
        assert facts["reconnect_v4"] == "connected"  # a SYN may replace a TIME_WAIT
        assert run.kernel("v4 client again").state == "ESTABLISHED"
        run.finish()
    assert_cleaned_up(run)


def test_reuseport_two_listeners_share_the_connections(runner):
    with DemoRun(runner, ("reuseport",)) as run:
        table = run.table()
        a, b = run.kernel("listener A", table), run.kernel("listener B", table)
        assert a.state == b.state == "LISTEN" and a.local == b.local and a.inode != b.inode
        helper = run.data["processes"][0]["pid"]
        assert b.inode in fd_inodes(helper) and a.inode not in fd_inodes(helper)
        assert step_with(run, result="EADDRINUSE")["who"] == "server C"
        # the kernel's accept-queue lengths of the two listeners add up to every client
        clients = run.data["facts"]["connections"]
        assert a.recv_q + b.recv_q == clients
        assert run.data["facts"]["listener_a"] + run.data["facts"]["listener_b"] == clients
        run.finish()
    assert_cleaned_up(run)


def test_half_close_the_other_side_still_replies(runner):
    with DemoRun(runner, ("half-close",)) as run:
        shut = step_with(run, client="FIN_WAIT2", server="CLOSE_WAIT")
        assert "shutdown(SHUT_WR)" in shut["call"]
        reply = steps(run)[-1]
        assert reply["who"] == "client" and reply["result"] == "b'HELLO'"
        assert reply["step"] > shut["step"]
        assert run.kernel("client").state == "FIN_WAIT2"
        assert run.kernel("server").state == "CLOSE_WAIT"
        run.finish()
    assert_cleaned_up(run)


def test_close_vs_shutdown_with_a_forked_child(runner):
    with DemoRun(runner, ("close-vs-shutdown",)) as run:
        closed = step_with(run, result="0", **{"client 1": "ESTABLISHED",
                                               "server 1": "ESTABLISHED",
                                               "client 2": "ESTABLISHED"})
        assert closed["call"] == "close(server 1)"
        shut = step_with(run, **{"client 2": "CLOSE_WAIT", "client 1": "ESTABLISHED"})
        assert shut["call"].startswith("shutdown(")
        exited = step_with(run, **{"client 1": "CLOSE_WAIT", "server 1": "FIN_WAIT2"})
        assert closed["step"] < shut["step"] < exited["step"]
        # SHUT_RD: both directions shut -> EPOLLHUP; data after SHUT_RD is still delivered
        both = [s for s in steps(run) if s["call"].startswith("shutdown(server 2, SHUT_RD)")]
        assert both and "EPOLLHUP" in both[0]["result"]
        assert [s for s in steps(run) if s["who"] == "client 1" and s["result"] == "b'late'"]
        for role, state in (("client 1", "CLOSE_WAIT"), ("client 2", "CLOSE_WAIT"),
                            ("server 2", "FIN_WAIT2")):
            assert run.kernel(role).state == state
        run.finish()
    assert_cleaned_up(run)


def test_backlog_overflow(runner):
    with DemoRun(runner, ("backlog",)) as run:
        dropped = steps(run)[2]
        syn_sent = [r for r, s in dropped["states"].items() if s == "SYN_SENT"]
        assert len(syn_sent) == run.data["facts"]["clients"] - (run.data["facts"]["backlog"] + 1)
        listener = run.kernel("listener")
        assert listener.state == "LISTEN"
        assert listener.recv_q == run.data["facts"]["backlog"] + 1  # the queue is full again
        assert_kernel_matches_timeline(run)
        run.finish()
    assert_cleaned_up(run)


def test_zero_window(runner):
    with DemoRun(runner, ("zero-window",)) as run:
        table = run.table()
        client, server = run.kernel("client", table), run.kernel("server", table)
        assert client.state == server.state == "ESTABLISHED"
        assert server.recv_q > 0 and client.send_q > 0
        assert client.timer == 4  # the zero-window probe timer: the window is 0
        # the server read everything the client had sent before the window closed
        first = run.data["facts"]["first_fill"]
        assert [s for s in steps(run) if s["who"] == "server" and s["result"] == f"{first:,} bytes"]
        run.finish()
    assert_cleaned_up(run)


@pytest.mark.parametrize("model", ["iterative", "thread", "fork"])
def test_echo_server_models(runner, model):
    with DemoRun(runner, ("echo", "--model", model)) as run:
        listener = run.kernel("listener")
        assert listener.state == "LISTEN"
        if model == "iterative":
            # client 1 left; client 2 was served; client 3 waits in the accept queue
            assert listener.recv_q == 1
            assert "HELLO FROM CLIENT 2" in steps(run)[-1]["result"]
            assert run.kernel("server 3").inode == 0
        else:
            replies = [s["result"] for s in steps(run) if s["who"].startswith("client")]
            assert replies == [f"b'HELLO FROM CLIENT {i}'" for i in (1, 2, 3)]
            servers = [run.kernel(f"server {i}") for i in (1, 2, 3)]
            assert all(s.state == "ESTABLISHED" and s.inode for s in servers)
            if model == "thread":
                held = fd_inodes(run.proc.pid)
                assert all(s.inode in held for s in servers) and listener.inode in held
            else:
                procs = {p["role"]: p["pid"] for p in run.data["processes"]}
                assert listener.inode in fd_inodes(procs["listener"])
                workers = {procs[f"server {i}"] for i in (1, 2, 3)}
                assert len(workers) == 3
                for i, server in enumerate(servers, 1):
                    assert server.inode in fd_inodes(procs[f"server {i}"])
                    assert server.inode not in fd_inodes(procs["listener"])
        run.finish()
    assert_cleaned_up(run)


# ---- the command line ----------------------------------------------------------------

def sockstat(*args: str) -> subprocess.CompletedProcess:
    return run_sockstat(*args)


def test_unknown_demo_is_a_usage_error():
    result = sockstat("demo", "no-such-state")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockstat: error: unknown demo")
    assert "close-wait" in lines[0] and "half-close" in lines[0]


@pytest.mark.parametrize(("command", "name", "what"), [
    ("demo", "close-wait", "demo"), ("demo", "bogus", "demo"),
    ("explain", "time-wait", "topic"), ("explain", "bogus", "topic")])
def test_list_with_a_name_is_a_usage_error(command, name, what):
    """Regression: --list with a name listed everything and exited 0, the name (even one
    that names nothing) silently dropped."""
    result = sockstat(command, "--list", name)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr == f"sockstat: error: --list takes no {what} name (got " \
                            f"{name!r}): give one or the other\n"


def test_closed_is_explained_not_shown():
    result = sockstat("demo", "CLOSED")
    assert result.returncode == 2 and "sockstat explain closed" in result.stderr


def test_model_only_for_echo():
    result = sockstat("demo", "listen", "--model", "fork")
    assert result.returncode == 2 and "--model" in result.stderr


def test_list_names_every_demo():
    result = sockstat("demo", "--list", "--json")
    assert result.returncode == 0
    listed = json.loads(result.stdout)
    assert list(listed["states"]) == STATES
    assert set(listed["scenarios"]) == {"handshake", "teardown", "restart", "reuseport",
                                        "half-close", "close-vs-shutdown", "backlog",
                                        "zero-window", "echo"}


def test_every_listed_demo_is_reached_by_its_name(runner):
    """`demo time-wait` once ran the restart scenario: the TIME_WAIT state demo could not
    be reached. Every name in --list now runs the demo listed under it."""
    listed = json.loads(sockstat("demo", "--list", "--json").stdout)
    assert not set(listed["states"]) & set(listed["scenarios"])
    with DemoRun(runner, ("time-wait",), hold="0") as run:
        assert (run.data["demo"], run.data["kind"]) == ("time-wait", "state")
        assert run.data["target"] == "TIME_WAIT" and run.data["reached"]
        run.finish(None)
    assert_cleaned_up(run)
    with DemoRun(runner, ("restart",), hold="0") as run:
        assert (run.data["demo"], run.data["kind"]) == ("restart", "scenario")
        run.finish(None)
    assert_cleaned_up(run)


def test_piped_output_is_one_record_a_line():
    """Piped, nothing wraps at 80 columns: each step is one line with its call, both
    states and its note; each socket one line; each explanation field one line."""
    env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
    env["COLUMNS"] = "40"
    result = subprocess.run([sys.executable, "-m", "sockstat", "demo", "fin-wait1",
                             "--hold", "0"], capture_output=True, text=True, env=env,
                            stdin=subprocess.DEVNULL, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    shutdown = [line for line in lines if "shutdown(SHUT_WR)" in line]
    assert len(shutdown) == 1
    assert "client: FIN_WAIT1" in shutdown[0] and "server: ESTABLISHED" in shutdown[0]
    assert "it is never acknowledged." in shutdown[0]  # the note, on the same line
    client = [line for line in lines
              if line.lstrip("▶> ").split()[:2] == ["client", "FIN_WAIT1"]]
    assert len(client) == 1 and "python" in client[0]
    assert any(line.startswith("What it means") and line.rstrip().endswith(".")
               for line in lines)
    assert not [line for line in lines if line != line.rstrip()]


def test_terminal_output_shows_timeline_table_and_explanation():
    result = sockstat("demo", "FIN_WAIT_1", "--hold", "0")  # another spelling
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Step by step" in out and "shutdown(SHUT_WR)" in out
    assert "In the kernel now" in out and "FIN_WAIT1" in out
    assert "Which side" in out and "How long" in out and "Many of them" in out
    assert "\x1b[" not in out  # no colour when not on a terminal
    assert not [line for line in out.splitlines() if line != line.rstrip()]
    assert result.stderr.startswith("Cleaned up: 3 sockets closed with an RST")


# ---- --packets: the segments behind the states (root: CAP_NET_RAW) --------------------

@pytest.fixture(scope="module")
def root_runner():
    if os.geteuid() != 0:
        pytest.skip("--packets needs root (CAP_NET_RAW)")
    return Runner([sys.executable, "-m", "sockstat"],
                  {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}, str(REPO), 0)


def captured(runner: Runner, *args: str) -> DemoRun:
    """`demo <args> --packets --json --hold 0`, run to its end and cleaned up."""
    with DemoRun(runner, (*args, "--packets"), hold="0") as run:
        run.finish(None)
    assert_cleaned_up(run)
    assert run.data["capture"]["interface"] == "lo"
    return run


def test_packets_handshake_syn_synack_ack(root_runner):
    run = captured(root_runner, "handshake")
    syn, synack, ack = run.data["packets"][:3]
    assert [syn["flags"], synack["flags"], ack["flags"]] == ["SYN", "SYN,ACK", "ACK"]
    assert synack["ack"] == syn["seq"] + 1 and ack["ack"] == synack["seq"] + 1
    assert synack["ack_absolute"] == (syn["seq_absolute"] + 1) % (1 << 32)
    client = run.ends["client"]
    assert (syn["src_port"], syn["dst_port"]) == (client["local_port"], client["remote_port"])
    assert syn["options"]["mss"] > 0 and "wscale" in syn["options"]
    # only the demo's own segments: every one has the listener's port at one end
    port = run.ends["listener"]["local_port"]
    assert all(port in (p["src_port"], p["dst_port"]) for p in run.data["packets"])


def test_packets_teardown_a_fin_from_each_side_each_acknowledged(root_runner):
    packets = captured(root_runner, "teardown").data["packets"]
    fins = [p for p in packets if "FIN" in p["flags"].split(",")]
    assert {p["src"] for p in fins} == {"client", "server"}
    for fin in fins:
        assert [p for p in packets if p["src_port"] == fin["dst_port"]
                and p["ack"] == fin["seq"] + 1], f"{fin['src']}'s FIN is not acknowledged"


def test_packets_zero_window_and_a_probe(root_runner):
    packets = captured(root_runner, "zero-window").data["packets"]
    zero = [i for i, p in enumerate(packets) if p["src"] == "server" and p["window"] == 0]
    assert zero, "no segment advertised window 0"
    # a probe: a bare ACK one byte behind what the server last acknowledged
    probes = [p for i in zero for p in packets[i:] if p["src"] == "client"
              and p["len"] == 0 and p["flags"] == "ACK" and p["seq"] == packets[i]["ack"] - 1]
    assert probes, "no zero-window probe after the window closed"


def test_packets_syn_sent_retransmissions_with_growing_gaps(root_runner):
    packets = captured(root_runner, "syn-sent").data["packets"]
    syns = [p["time"] for p in packets if p["flags"] == "SYN" and p["src"] == "client 2"]
    gaps = [b - a for a, b in zip(syns, syns[1:], strict=False)]
    assert len(gaps) >= 2 and gaps[-1] > 1.5 * gaps[0], gaps


def test_packets_terminal_diagram_and_the_first_syn_field_by_field(root_runner):
    result = sockstat("demo", "syn-recv", "--packets", "--hold", "0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "The segments" in out and "The first SYN, field by field" in out
    ignored = [line for line in out.splitlines() if "bare ACK ignored (TCP_DEFER_ACCEPT" in line]
    assert len(ignored) == 1  # piped: the segment, its states and its note on one line
    assert ("──▶" in ignored[0] or "-->" in ignored[0]) and " ACK " in ignored[0]
    assert "ESTABLISHED · SYN_RECV" in ignored[0]
    assert "RST: SO_LINGER 0" in out  # the clean-up, after the hold
    assert "Traceback" not in result.stderr


def test_packets_without_cap_net_raw_is_one_line(runner):
    if runner.uid != NOBODY:
        pytest.skip(f"could not drop privileges here: {runner.why_privileged}")
    with DemoRun(runner, ("listen", "--packets"), hold="0") as run:
        assert run.data["packets"] is None and "CAP_NET_RAW" in run.data["capture"]["error"]
        assert run.data["reached"]
        run.finish(None)
    assert_cleaned_up(run)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "--packets needs root (CAP_NET_RAW)" in lines[0]


def test_packets_usage_errors():
    for args, message in ((("all", "--packets"), "one demo at a time"),
                          (("listen", "--absolute"), "--absolute applies with --packets")):
        result = sockstat("demo", *args)
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_packets_absolute_numbers_match_the_decoded_syn(root_runner):
    result = sockstat("demo", "established", "--packets", "--absolute", "--hold", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    syn = next(line.split() for line in lines if line.split()[4:5] == ["SYN"])
    isn = next(line.split()[4] for line in lines if line.startswith("Sequence number"))
    assert syn[5] == isn
    relative = sockstat("demo", "established", "--packets", "--hold", "0").stdout
    first = next(line.split() for line in relative.splitlines() if line.split()[4:5] == ["SYN"])
    assert first[5] == "0"


def _packet_inodes() -> set[int]:
    """Inodes of the machine's AF_PACKET sockets (/proc/net/packet)."""
    lines = Path("/proc/net/packet").read_text().splitlines()[1:]
    return {int(line.split()[-1]) for line in lines if line.split()}


def test_packets_ctrl_c_while_waiting_for_the_story_cleans_up(root_runner):
    """syn-sent waits for its SYNs to back off before it is ready: Ctrl-C there ends it
    (130), and its capture socket and its TCP sockets are gone."""
    proc = subprocess.Popen([*root_runner.argv, "demo", "syn-sent", "--packets", "--json",
                             "--hold", "60"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=root_runner.env, cwd=root_runner.cwd)
    try:
        def waiting() -> set[int] | None:
            # the capture socket, the listener, two clients and the queued connection
            inodes = fd_inodes(proc.pid)
            return inodes if inodes & _packet_inodes() and len(inodes) >= 4 else None

        inodes = wait_for(waiting, what="the demo to wait for its SYN retransmissions")
        capture_socket = inodes & _packet_inodes()
        tuples = _tuples_of_inodes(inodes - capture_socket)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and out == "", err
    assert "Traceback" not in err
    assert not capture_socket & _packet_inodes()
    ports = {port for pair in tuples for _, port in pair if port}
    mine = tuples | {(remote, local) for local, remote in tuples}
    wait_for(lambda: not [r for r in kernel_table(ports) if (r.local, r.remote) in mine],
             what="the interrupted demo's sockets to go")


def test_a_hold_longer_than_a_timer_can_wait_lasts_until_a_signal(runner):
    """--hold 1e10 is beyond what Event.wait() can time (OverflowError); it means "until
    a signal", and Ctrl-C still cleans up."""
    with DemoRun(runner, ("established",), hold="1e10") as run:
        assert run.data["reached"] is True
        run.finish(signal.SIGINT)
    assert_cleaned_up(run)
