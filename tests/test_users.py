"""User names as the passwd database has them, bytes that are not UTF-8 included: every
output writes UTF-8 (a stray byte becomes U+FFFD, as in a process's comm), so `--json`
stays JSON and `--csv` stays text. The passwd file is bind-mounted in a mount namespace
of the test's own; the user's socket is made in a network namespace of its own too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import NEEDS_NETNS, REPO

UID = 4242
# in a namespace: a passwd naming UID with a Latin-1 byte, a process of UID holding a
# listener, then sockstat's --json, --csv and plain listing of it, as raw bytes
SCRIPT = r"""
import os, socket, subprocess, sys, base64, json
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/etc/passwd", "rb") as f:
    real = f.read()
fake = os.path.join(sys.argv[1], "passwd")
with open(fake, "wb") as f:
    f.write(real + b"caf\xe9:x:%d:%d::/nonexistent:/bin/false\n" % (UID, UID))
subprocess.run(["mount", "--bind", fake, "/etc/passwd"], check=True)
read, write = os.pipe()
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:
    os.setgid(UID)
    os.setuid(UID)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    os.write(write, str(srv.getsockname()[1]).encode())
    os.read(done_r, 1)
    os._exit(0)
port = os.read(read, 16).decode()
out = {}
for name, args in (("json", ["--json"]), ("csv", ["--csv"]), ("plain", [])):
    run = subprocess.run([sys.executable, "-m", "sockstat", "-p", port, *args],
                         capture_output=True)
    out[name] = base64.b64encode(run.stdout).decode()
os.write(done_w, b"x")
os.waitpid(child, 0)
print(json.dumps(out))
""".replace("UID", str(UID))


@pytest.mark.root
@NEEDS_NETNS
@pytest.mark.skipif(shutil.which("mount") is None, reason="mount (util-linux) is missing")
def test_a_user_name_that_is_not_utf8_is_written_as_utf8_everywhere(tmp_path):
    import base64

    proc = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child",
                           "--mount-proc", sys.executable, "-c", SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = {k: base64.b64decode(v) for k, v in json.loads(proc.stdout).items()}
    rows = json.loads(out["json"].decode("utf-8"))  # strict: no stray byte
    assert [r["process"]["user"] for r in rows] == ["caf\ufffd"]
    assert "caf\ufffd" in out["csv"].decode("utf-8")
    assert "caf\ufffd" in out["plain"].decode("utf-8")
