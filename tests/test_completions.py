"""Completion scripts: current with the CLI, and working in real bash, zsh and fish.

The scripts in completions/ are generated (sockstat.completions); the first test fails
when they are stale (fix: `python -m sockstat.completions --write completions/`). The
others load each script into the real shell and ask it to complete a state name, a
subcommand, an option and a choice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import REPO

from sockstat import completions
from sockstat.cli import completions as completions_cli
from sockstat.model import STATE_GROUPS, TcpState

COMPLETIONS = REPO / "completions"

# Drives an interactive zsh in a pseudo-terminal (zsh/zpty), presses Tab after the
# command line, and prints every candidate the completion system offers: compadd is
# wrapped to print its matches with markers that never appear in the echoed input.
ZSH_HARNESS = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='' PROMPT='' RPROMPT=''"
zpty -w z "fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'compadd() { local -a __m; builtin compadd -O __m "$@"; local w; \
  for w in $__m; do print -r -- "<M""M>$w</M""M>"; done; builtin compadd "$@"; }'
zpty -w z 'end-capture() { print -r -- "<E""ND>"; }; zle -N end-capture; bindkey "^T" end-capture'
zpty -n -w z "$2"$'\t\x14'
out=""
integer tries=0
while (( tries++ < 600 )); do
  if zpty -r -t z line 2>/dev/null; then out+="$line"; else sleep 0.05; fi
  [[ "$out" == *"<END>"* ]] && break
done
[[ "$out" == *"<END>"* ]] || { print -u2 "zsh did not finish completing"; exit 1; }
print -r -- "$out" | grep -ao '<MM>[^<]*</MM>' | sed 's/<MM>\(.*\)<\/MM>/\1/' | sort -u
zpty -d z
"""


def need(shell: str):
    return pytest.mark.skipif(shutil.which(shell) is None,
                              reason=f"{shell} not installed (apt-get install {shell})")


def bash_complete(script: Path, *words: str) -> list[str]:
    """COMPREPLY for the words (the last one is being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    code = (f"source '{script}'; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
            "_sockstat; printf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [line for line in r.stdout.splitlines() if line]


def fish_complete(script: Path, line: str) -> list[str]:
    r = subprocess.run(["fish", "--no-config", "-c",
                        f"source '{script}'; complete -C '{line}'"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [row.split("\t")[0] for row in r.stdout.splitlines() if row]


def zsh_complete(directory: Path, line: str) -> list[str]:
    r = subprocess.run(["zsh", "-f", "-c", ZSH_HARNESS, "zsh", str(directory), line],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [row for row in r.stdout.splitlines() if row]


# -- generated and current ----------------------------------------------------------------

def test_scripts_are_up_to_date(tmp_path):
    completions.write(tmp_path)
    for shell, name in completions.FILE_NAMES.items():
        fresh = (tmp_path / name).read_text()
        shipped = COMPLETIONS / name
        assert shipped.exists(), f"{shipped} missing"
        assert shipped.read_text() == fresh, (
            f"completions/{name} ({shell}) is stale: run "
            "`python -m sockstat.completions --write completions/`")


def test_generation_is_deterministic():
    root = completions.build()
    assert [completions.generate(s, root) for s in completions.SHELLS] == \
        [completions.generate(s, completions.build()) for s in completions.SHELLS]


def test_the_tree_has_every_command_and_option():
    root = completions.build()
    commands = {child.key for child in root.walk()}
    assert {"summary", "export"} <= commands
    assert {"--state", "-s", "--port", "--version", "--help"} <= set(root.option_names)
    export = next(n for n in root.walk() if n.key == "export")
    textfile = next(p for p in export.options if "--textfile" in p.names)
    assert textfile.takes_value and textfile.values == (completions.FILES,)
    source = next(p for p in export.options if "--source" in p.names)
    assert source.values == ("auto", "netlink", "proc", "psutil")


def test_state_words_cover_every_state_and_group_once():
    words = completions.state_words()
    assert len(words) == len(set(words))
    assert {s.name.lower().replace("_", "-") for s in TcpState} <= set(words)
    assert set(STATE_GROUPS) <= set(words)
    for word in words:  # each one is accepted by the CLI's own parser
        from sockstat.query import parse_states

        assert parse_states([word])


def test_explain_topics_and_demo_names_complete_for_commands_that_take_them(tmp_path):
    """A CLI with `explain TOPIC` and `demo NAME` (declared without choices) gets the
    topics from sockstat.explain and the demo names from sockstat.demo."""
    app = typer.Typer()

    @app.command()
    def explain(topic: str = typer.Argument(...)) -> None:
        """Explain a state."""

    @app.command()
    def demo(name: str = typer.Argument(None)) -> None:
        """Run a demo."""

    root = completions.build(app)
    nodes = {n.key: n for n in root.walk()}
    topics = completions.explain_topics()
    assert "time-wait" in topics and "close-wait" in topics
    assert nodes["explain"].arguments[0].values == topics
    assert nodes["demo"].arguments[0].values == completions.demo_names()
    if shutil.which("bash"):
        completions.write(tmp_path, root)
        assert bash_complete(tmp_path / "sockstat.bash", "sockstat", "explain", "close-w") \
            == ["close-wait"]


def test_write_command_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sockstat.completions", "--write", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(completions.FILE_NAMES.values())


# -- real shells --------------------------------------------------------------------------

# (shell-independent) lines whose completion the real CLI tree must give
DEMO_CASES = [
    pytest.param(("sockstat", "demo", "close-"), ["close-vs-shutdown", "close-wait"],
                 id="demo-name"),
    pytest.param(("sockstat", "explain", "time-w"), ["time-wait"],
                 id="explain-topic"),
]

BASH = COMPLETIONS / "sockstat.bash"


@need("bash")
@pytest.mark.parametrize("words,expected", [
    (("sockstat", "--state", "ti"), ["time-wait"]),
    (("sockstat", "-s", "close-"), ["close-wait"]),
    (("sockstat", "--state", "=", "ti"), ["time-wait"]),  # --state=ti, split by bash
    (("sockstat", "--state=ti"), ["--state=time-wait"]),  # ... and unsplit
    (("sockstat", "su"), ["summary"]),
    (("sockstat", "--port", "80", "su"), ["summary"]),  # option values are skipped
    (("sockstat", "summary", "--state", "fin"), ["fin-wait1", "fin-wait2"]),
    (("sockstat", "export", "--te"), ["--textfile"]),
    (("sockstat", "export", "--source", "n"), ["netlink"]),
])
def test_bash_completes(words, expected):
    assert bash_complete(BASH, *words) == expected


@need("bash")
@pytest.mark.parametrize("words,expected", DEMO_CASES)
def test_bash_completes_demo_names_and_explain_topics(words, expected):
    assert sorted(bash_complete(BASH, *words)) == expected


@need("fish")
@pytest.mark.parametrize("words,expected", DEMO_CASES)
def test_fish_completes_demo_names_and_explain_topics(words, expected):
    assert sorted(fish_complete(COMPLETIONS / "sockstat.fish", " ".join(words))) == expected


@need("zsh")
@pytest.mark.parametrize("words,expected", DEMO_CASES)
def test_zsh_completes_demo_names_and_explain_topics(words, expected):
    assert sorted(zsh_complete(COMPLETIONS, " ".join(words))) == expected


@need("bash")
def test_bash_completes_files_for_the_textfile(tmp_path):
    (tmp_path / "node.prom").write_text("")
    got = bash_complete(BASH, "sockstat", "export", "--textfile", str(tmp_path / "no"))
    assert got == [str(tmp_path / "node.prom")]


@need("fish")
@pytest.mark.parametrize("line,expected", [
    ("sockstat --state tim", ["time-wait"]),
    ("sockstat -s close-", ["close-wait"]),
    ("sockstat su", ["summary"]),
    ("sockstat --port 80 su", ["summary"]),
    ("sockstat summary --state fin", ["fin-wait1", "fin-wait2"]),
    ("sockstat export --textf", ["--textfile"]),
    ("sockstat export --source n", ["netlink"]),
])
def test_fish_completes(line, expected):
    assert fish_complete(COMPLETIONS / "sockstat.fish", line) == expected


@need("zsh")
def test_zsh_script_loads_with_compinit():
    r = subprocess.run(["zsh", "-f", "-c", f"fpath=({COMPLETIONS} $fpath); autoload -U "
                        "compinit; compinit -u -D; print $_comps[sockstat]"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip() == "_sockstat"


@need("zsh")
@pytest.mark.parametrize("line,expected", [
    ("sockstat --state ti", ["time-wait"]),
    ("sockstat -s close-", ["close-wait"]),
    ("sockstat su", ["summary"]),
    ("sockstat --port 80 su", ["summary"]),
    ("sockstat summary --state fin", ["fin-wait1", "fin-wait2"]),
    ("sockstat export --te", ["--textfile"]),
    ("sockstat export --source n", ["netlink"]),
])
def test_zsh_completes(line, expected):
    assert zsh_complete(COMPLETIONS, line) == expected


# -- `sockstat completions SHELL [--install]` ---------------------------------------------

def home_env(home: Path) -> dict[str, str]:
    """The environment of a user whose home is `home` (no XDG overrides)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "BASH_COMP"))}
    env["HOME"] = str(home)
    return env


def run_completions(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sockstat", "completions", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)


@pytest.mark.parametrize("shell", completions.SHELLS)
def test_completions_command_prints_the_script(shell, tmp_path):
    r = run_completions(shell, env=home_env(tmp_path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == (COMPLETIONS / completions.FILE_NAMES[shell]).read_text()


def test_completions_command_rejects_an_unknown_shell(tmp_path):
    r = run_completions("tcsh", env=home_env(tmp_path))
    assert r.returncode == 2
    assert r.stderr.startswith("sockstat: error: ") and "tcsh" in r.stderr


def test_completions_without_a_shell_says_so_in_one_line(tmp_path):
    r = run_completions(env=home_env(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("sockstat: error: missing SHELL: bash, zsh or fish")
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("shell,relative", [
    ("bash", ".local/share/bash-completion/completions/sockstat"),
    ("zsh", ".local/share/zsh/site-functions/_sockstat"),
    ("fish", ".config/fish/completions/sockstat.fish"),
])
def test_install_writes_to_the_user_completion_directory(shell, relative, tmp_path):
    r = run_completions(shell, "--install", env=home_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    path = tmp_path / relative
    assert path.read_text() == (COMPLETIONS / completions.FILE_NAMES[shell]).read_text()
    assert f"sockstat: wrote {path}" in r.stderr.splitlines()
    # and again with the XDG base directories set
    env = home_env(tmp_path) | {"XDG_DATA_HOME": str(tmp_path / "data"),
                                "XDG_CONFIG_HOME": str(tmp_path / "config")}
    assert run_completions(shell, "--install", env=env).returncode == 0
    if shell == "fish":
        assert (tmp_path / "config" / relative.removeprefix(".config/")).exists()
    else:
        assert (tmp_path / "data" / relative.removeprefix(".local/share/")).exists()


def test_install_into_an_unwritable_place_is_one_error_line(tmp_path):
    (tmp_path / ".config").write_text("a file, not a directory")
    r = run_completions("fish", "--install", env=home_env(tmp_path))
    assert r.returncode != 0
    assert r.stderr.startswith("sockstat: error: cannot write ")
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("home", ["missing", "relative"])
def test_install_never_makes_a_home_nor_writes_relative_to_the_working_directory(home,
                                                                                 tmp_path):
    """Regression: HOME=/nonexistent (the home of system users such as nobody) made that
    directory, as root, and a relative HOME wrote under the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    value = str(tmp_path / "missing") if home == "missing" else "relative/home"
    for shell in completions.SHELLS:
        r = subprocess.run([sys.executable, "-m", "sockstat", "completions", shell,
                            "--install"], capture_output=True, text=True, cwd=work,
                           env=home_env(tmp_path) | {"HOME": value,
                                                     "PYTHONPATH": str(REPO)}, timeout=60)
        assert r.returncode == 1 and r.stdout == "", r.stderr
        assert r.stderr.startswith("sockstat: error: ") and len(r.stderr.splitlines()) == 1
        assert "HOME" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert list(work.iterdir()) == []


def test_install_ignores_relative_xdg_directories_as_the_spec_says(tmp_path):
    """A relative XDG_DATA_HOME or XDG_CONFIG_HOME is invalid (XDG base directory spec:
    ignore it): the home's default is used, never a path under the working directory."""
    env = home_env(tmp_path) | {"XDG_DATA_HOME": "data", "XDG_CONFIG_HOME": "config"}
    assert completions_cli.install_path("bash", env) == \
        tmp_path / ".local/share/bash-completion/completions/sockstat"
    assert completions_cli.install_path("fish", env) == \
        tmp_path / ".config/fish/completions/sockstat.fish"


def test_an_empty_home_is_the_user_database_s_home_not_the_root(monkeypatch):
    """HOME="" is taken as unset (the passwd entry's home), never as "/", where it
    wrote /.local/share/... as root."""
    import pwd

    monkeypatch.setenv("HOME", "")
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    mine = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert completions_cli.install_path("zsh") == \
        mine / ".local/share/zsh/site-functions/_sockstat"


BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


@need("bash")
@pytest.mark.skipif(not BASH_COMPLETION.exists(),
                    reason="bash-completion not installed (apt-get install bash-completion)")
def test_bash_loads_the_installed_script_on_demand(tmp_path):
    """bash-completion finds ~/.local/share/bash-completion/completions/sockstat by
    itself, the first time `sockstat` is completed."""
    assert run_completions("bash", "--install", env=home_env(tmp_path)).returncode == 0
    code = (f"source {BASH_COMPLETION}; complete -p sockstat >/dev/null 2>&1 && exit 3; "
            "__load_completion sockstat || _completion_loader sockstat; "
            "COMP_WORDS=(sockstat --state ti); COMP_CWORD=2; "
            "$(complete -p sockstat | sed 's/.*-F \\([^ ]*\\) .*/\\1/'); "
            "printf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True,
                       text=True, timeout=60, env=home_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["time-wait"]


@need("zsh")
def test_zsh_completes_from_the_installed_directory(tmp_path):
    r = run_completions("zsh", "--install", env=home_env(tmp_path))
    directory = tmp_path / ".local/share/zsh/site-functions"
    assert f"fpath=({directory} $fpath)" in r.stderr  # the hint says what to add
    assert zsh_complete(directory, "sockstat su") == ["summary"]


@need("fish")
def test_fish_autoloads_the_installed_script(tmp_path):
    assert run_completions("fish", "--install", env=home_env(tmp_path)).returncode == 0
    r = subprocess.run(["fish", "-c", "complete -C 'sockstat --state tim'"],
                       capture_output=True, text=True, timeout=60, env=home_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert [row.split("\t")[0] for row in r.stdout.splitlines()] == ["time-wait"]


def test_help_mentions_printing_and_installing(tmp_path):
    env = home_env(tmp_path) | {"COLUMNS": "200"}
    top = subprocess.run([sys.executable, "-m", "sockstat", "--help"], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=60)
    assert "sockstat completions bash --install" in top.stdout
    own = run_completions("--help", env=env)
    assert own.returncode == 0
    assert "--install" in own.stdout and "sockstat completions bash > " in own.stdout
