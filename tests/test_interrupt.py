"""Ctrl-C at any moment of the command's start-up ends it quietly: exit 130 (or death by
SIGINT, before the interpreter has a handler), never a traceback.

Real processes of the command's own script (bin/sockstat, what pip installs), run in a
network namespace of their own where the kernel allows one. Two ways of interrupting:
a real SIGINT at the moment a given module is imported (a fault injector on the import
system, loaded by sitecustomize, sends it: every import of start-up in turn), and a
SIGINT at fixed delays after exec, as a person's Ctrl-C lands. No timed assertions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "bin" / "sockstat"

# sitecustomize for the child: records the modules imported after site (RECORD), or
# sends SIGINT to its own process when INTERRUPT_AT is first looked for
INJECTOR = '''
import os, sys

class Injector:
    def find_spec(self, name, path=None, target=None):
        record = os.environ.get("RECORD")
        if record:
            with open(record, "a") as out:
                out.write(name + "\\n")
        elif name == os.environ.get("INTERRUPT_AT") and not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), 2)  # SIGINT: handled at the import's next bytecode
        return None

sys.meta_path.insert(0, Injector())
'''



def _interpreter_own(err: str) -> bool:
    """What the interpreter prints when Ctrl-C lands in its own initialisation (the
    standard streams, site, sys.path[0]: "Fatal Python error: init_...", "Failed checking
    if argv[0] is an import path entry", an "Exception ignored" in the import system),
    before the script runs (`python -c pass` prints the same): no frame of ours."""
    return bool(err) and f"{os.sep}sockstat{os.sep}" not in err and "bin/sockstat" not in err


def _command(args: list[str]) -> list[str]:
    base = [sys.executable, str(SCRIPT), *args]
    if os.geteuid() == 0 and Path("/usr/bin/unshare").exists():
        return ["/usr/bin/unshare", "--net", *base]  # an empty table: the same path each run
    return base


@pytest.fixture
def injector(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(INJECTOR)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(_command(args), env=env, capture_output=True, text=True,
                          timeout=60, cwd="/")


def _imports_of(args: list[str], env: dict, tmp_path) -> list[str]:
    record = tmp_path / "imports.txt"
    done = _run(args, {**env, "RECORD": str(record)})
    assert done.returncode in (0, 1), done.stderr  # 1: no source of the table here
    names = list(dict.fromkeys(record.read_text().split()))
    assert "sockstat.cli" in names and len(names) > 10
    return names


@pytest.mark.parametrize("args, every", [
    (["--port", "8080"], 1),  # the fast path (no typer): every import of it
    (["-s", "time-wait", "--json"], 1),
    (["summary", "--no-processes"], 1),
    (["watch", "--help"], 15),  # typer's app: every 15th of its ~150 imports
])
def test_ctrl_c_during_any_import_of_start_up_exits_130_quietly(args, every, injector,
                                                                 tmp_path):
    names = _imports_of(args, injector, tmp_path)
    for name in names[::every]:
        done = _run(args, {**injector, "INTERRUPT_AT": name})
        assert done.returncode == 130, (name, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr and "Exception" not in done.stderr, \
            (name, done.stderr)
        assert done.stderr.strip() == "", (name, done.stderr)


@pytest.mark.parametrize("args", [["--port", "8080"], ["watch", "--help"]])
def test_ctrl_c_at_any_delay_after_exec_ends_quietly(args):
    """Ctrl-C from 0 ms after exec (the interpreter has no handler yet: death by the
    signal) to after the command has begun (130)."""
    for delay_ms in (0, 1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 70, 100):
        proc = subprocess.Popen(_command(args), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            try:
                proc.wait(delay_ms / 1000)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if _interpreter_own(err):
            continue  # in the interpreter's own start, before the script: not ours to quiet
        assert proc.returncode in (0, 130, -signal.SIGINT), (delay_ms, proc.returncode, err)
        assert "Traceback" not in err and "Exception" not in err, (delay_ms, err)


def test_a_start_up_run_ignoring_sigint_keeps_ignoring_it(injector, tmp_path):
    """Started with SIGINT ignored (nohup, a background job of a script), the command
    does not take it back: the signal at an import changes nothing."""
    done = subprocess.run(_command(["--port", "8080"]), capture_output=True, text=True,
                          timeout=60, cwd="/", env={**injector, "INTERRUPT_AT": "sockstat.query"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.returncode in (0, 1), done.stderr


def test_the_script_and_the_exit_codes_agree():
    from sockstat import cli
    from sockstat.status import ExitStatus

    assert cli.INTERRUPTED == ExitStatus.INTERRUPTED == 130
    text = SCRIPT.read_text()
    assert text.startswith("#!python\n")  # pip writes the interpreter's path there
    assert "SystemExit(130)" in text and "import re" not in text
