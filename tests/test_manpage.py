"""The man page: current with the CLI, complete, and clean for groff and man.

man/sockstat.1 is generated (sockstat.manpage); the first test fails when it is stale
(fix: `python -m sockstat.manpage --write man/`). The others render it with the real
groff and man-db and fail on any warning.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from sockstat import completions, manpage

PAGE = REPO / "man" / manpage.FILE_NAME
SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS",
            "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO")
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}


def need(tool: str, package: str):
    return pytest.mark.skipif(shutil.which(tool) is None,
                              reason=f"{tool} not installed (apt-get install {package})")


@pytest.fixture(scope="module")
def rendered() -> str:
    """The page as `man -l` shows it (plain text: not a terminal)."""
    if shutil.which("man") is None:
        pytest.skip("man not installed (apt-get install man-db)")
    r = subprocess.run(["man", "--warnings", "-l", str(PAGE)], capture_output=True,
                       text=True, timeout=120, env=ENV)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout


def test_page_is_up_to_date():
    assert PAGE.exists(), f"{PAGE} missing"
    assert PAGE.read_text() == manpage.render(), (
        "man/sockstat.1 is stale: run `python -m sockstat.manpage --write man/`")


def test_page_is_ascii_and_deterministic():
    PAGE.read_bytes().decode("ascii")
    assert manpage.render() == manpage.render(completions.build())


@need("groff", "groff-base")
@pytest.mark.parametrize("device", ["ps", "utf8"])
def test_groff_renders_it_without_a_warning(device):
    r = subprocess.run(["groff", "-man", f"-T{device}", "-ww", "-z", str(PAGE)],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_man_renders_every_section(rendered):
    for section in SECTIONS:
        assert f"\n{section}\n" in rendered, section
    for other in ("ss(8)", "netstat(8)", "lsof(8)"):
        assert other in rendered
    assert "/proc/net/tcp" in rendered and "/proc/net/netstat" in rendered


def test_every_command_and_option_is_in_the_page(rendered):
    text = " ".join(rendered.split())
    for node in completions.build().walk():
        if node.path:
            assert f"sockstat {' '.join(node.path)} [OPTIONS]" in text, node.key
        for param in node.options:
            for name in param.names:
                assert name in text, (node.key, name)  # plain hyphens: copy-paste works
    assert "130" in text and "Ctrl-C" in text  # EXIT STATUS


def test_escaping_keeps_roff_requests_out_of_help_text():
    assert manpage.inline(".TH not a request") == "\\&.TH not a request"
    assert manpage.inline("a \\ backslash") == "a \\e backslash"
    assert manpage.inline("use `--port 80` → here") == "use \\fB\\-\\-port 80\\fR -> here"
    assert manpage.inline("snowman \u2603") == "snowman \\[u2603]"


def test_write_command_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sockstat.manpage", "--write", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / manpage.FILE_NAME).read_text() == PAGE.read_text()
