"""`sockstat watch` on a real terminal: run inside tmux, make and close sockets on
loopback, read the screen with `tmux capture-pane`, quit with `q`.

Each test starts its own tmux server (-L, a unique socket name) so that it never
touches anyone else's sessions, and kills it whatever happens. The watch is filtered to
the test's own listening port. The shell around it writes the exit status and the
terminal mode after it, which is how "quits cleanly and restores the terminal" is
checked.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import wait_for

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


class Pane:
    def __init__(self, command: str, workdir, width: int = 200, height: int = 50) -> None:
        self.server = f"sockstat-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.exit_file = workdir / "exit"
        self.stty_file = workdir / "stty"
        # the shell traps SIGINT (a trap with a command, unlike an ignored signal, is not
        # inherited) so that Ctrl-C ends the watch but not the shell that reports on it
        script = (f"trap : INT; {command}; echo EXIT=$? > {shlex.quote(str(self.exit_file))}; "
                  f"stty -a > {shlex.quote(str(self.stty_file))}")
        env = dict(os.environ)
        env.pop("TMUX", None)  # not nested in a tmux the tests themselves may run in
        self._tmux("new-session", "-d", "-s", "watch", "-x", str(width), "-y", str(height),
                   f"sh -c {shlex.quote(script)}", env=env)

    def _tmux(self, *args: str, env=None, check: bool = True) -> str:
        result = subprocess.run([TMUX, "-L", self.server, *args], capture_output=True,
                                text=True, env=env, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"tmux {args[0]} failed: {result.stderr}")
        return result.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "watch", check=False)

    def alternate_screen(self) -> bool:
        return self._tmux("display-message", "-p", "-t", "watch", "#{alternate_on}",
                          check=False).strip() == "1"

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "watch", *keys)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "watch", "-x", str(width), "-y", str(height))

    def wait_screen(self, pattern: str, what: str) -> re.Match:
        regex = re.compile(pattern, re.MULTILINE)
        return wait_for(lambda: regex.search(self.screen()), timeout=30,
                        what=f"{what} on screen")

    def exit_status(self) -> str:
        wait_for(lambda: self.exit_file.exists() and self.stty_file.exists()
                 and self.stty_file.read_text(), timeout=30, what="watch to exit")
        return self.exit_file.read_text().strip()

    def kill(self) -> None:
        subprocess.run([TMUX, "-L", self.server, "kill-server"], capture_output=True,
                       timeout=30)


@pytest.fixture
def pane(tmp_path):
    panes: list[Pane] = []

    def start(*args: str, **size) -> Pane:
        command = shlex.join([sys.executable, "-m", "sockstat", "watch", *args])
        panes.append(Pane(command, tmp_path, **size))
        return panes[-1]

    yield start
    for p in panes:
        p.kill()


def _count(state: str, n: int) -> str:
    # a row of the state table: the state, then its count now
    return rf"^{state}\s+{n}\s"


def test_counts_change_on_screen_and_q_quits(loop, pane):
    server = loop.listener()
    port = server.getsockname()[1]
    p = pane("--interval", "0.5", "--port", str(port))
    p.wait_screen(_count("LISTEN", 1), "the listener")
    assert p.alternate_screen()
    header = p.screen().splitlines()[0]
    assert f"port {port}" in header and "q quits" in header

    pairs = [loop.connect(server) for _ in range(3)]
    p.wait_screen(_count("ESTABLISHED", 6), "6 ESTABLISHED")
    for client, _ in pairs:
        client.close()
    for _, conn in pairs:
        conn.settimeout(10)
        assert conn.recv(1) == b""  # the FIN arrived; never close: CLOSE_WAIT
    p.wait_screen(_count("CLOSE_WAIT", 3), "3 CLOSE_WAIT")
    p.wait_screen(_count("ESTABLISHED", 0), "ESTABLISHED back to 0")
    # each with its two ages (in the state, idle) and the process holding it: this test
    # (the watch is another one)
    p.wait_screen(rf"^\s*\d+\S*\s+(–|\d+\S*)\s+127\.0\.0\.1:{port}\s+127\.0\.0\.1:\d+\s+\d+\s+"
                  rf"\S+/{os.getpid()}\b", "an oldest CLOSE_WAIT row with its owner")
    assert re.search(r"^Oldest CLOSE_WAIT", p.screen(), re.MULTILINE)
    loop.close_all()
    p.wait_screen(_count("CLOSE_WAIT", 0), "CLOSE_WAIT back to 0")

    p.keys("q")
    assert p.exit_status() == "EXIT=0"
    stty = p.stty_file.read_text().split()
    assert "icanon" in stty and "echo" in stty  # cbreak mode undone
    assert not p.alternate_screen()


def test_resize_redraws_and_ctrl_c_quits(loop, pane):
    server = loop.listener()
    port = server.getsockname()[1]
    # a long interval: only a resize can explain a redraw in time
    p = pane("--interval", "30", "--port", str(port), width=80, height=24)
    p.wait_screen(_count("LISTEN", 1), "the listener")
    # one refresh so far: no span to claim (not the sparkline's capacity of 30 s each)
    assert "History" in p.screen() and "History (last" not in p.screen()
    p.resize(160, 40)
    p.wait_screen(r"q quits\s*$", "the header laid out for 160 columns")
    assert max(len(line) for line in p.screen().splitlines()) > 80
    p.keys("C-c")
    assert p.exit_status() == "EXIT=0"
    stty = p.stty_file.read_text().split()
    assert "icanon" in stty and "echo" in stty


def test_an_interval_longer_than_a_wait_can_last_still_quits_on_q(loop, pane):
    """Regression: the live view waited for keys with a select() timeout past what it
    takes (--interval 1e10): OverflowError's traceback instead of a view that q quits."""
    server = loop.listener()
    port = server.getsockname()[1]
    p = pane("--interval", "1e10", "--port", str(port))
    p.wait_screen(_count("LISTEN", 1), "the listener")
    p.keys("q")
    assert p.exit_status() == "EXIT=0"
    assert "Traceback" not in p.screen()


def test_sigterm_restores_the_terminal(loop, pane):
    server = loop.listener()
    port = server.getsockname()[1]
    p = pane("--interval", "0.5", "--port", str(port))
    p.wait_screen(_count("LISTEN", 1), "the listener")
    pid = int(p._tmux("display-message", "-p", "-t", "watch", "#{pane_pid}").strip())
    watch_pid = wait_for(lambda: _child_python(pid), timeout=10, what="the watch process")
    os.kill(watch_pid, 15)
    assert p.exit_status() == "EXIT=143"  # 128 + SIGTERM, as shells report it
    stty = p.stty_file.read_text().split()
    assert "icanon" in stty and "echo" in stty


def _child_python(shell_pid: int) -> int | None:
    """The `sockstat watch` process under the pane's shell."""
    try:
        children = Path(f"/proc/{shell_pid}/task/{shell_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sockstat" in cmdline and b"watch" in cmdline:
            return int(child)
    return None
