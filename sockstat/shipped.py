"""Files sockstat ships for operators: alerting rules, a Grafana dashboard, a systemd unit.

They live in the package (sockstat/rules/, sockstat/contrib/: package data) so that an
installed sockstat can print them (`sockstat export --rules`, `--dashboard`,
`--systemd-unit`); the repository's contrib/ holds copies for people who clone it, written
by `python -m sockstat.shipped --write contrib/` (a test fails when they differ).

The rules and the dashboard carry one monitoring version (`sockstat-monitoring-version: N`
in the rules, the tag `sockstat-monitoring-N` on the dashboard): they are changed together
when a metric either uses changes, and a test checks they agree.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# The executable the shipped unit runs: where `pip install` as root puts it.
UNIT_EXECUTABLE = "/usr/local/bin/sockstat"
# Directories the unit's sandbox hides from the service, and the setting that hides them.
HIDDEN_BY_UNIT = {"/home/": "ProtectHome=yes", "/root/": "ProtectHome=yes",
                  "/run/user/": "ProtectHome=yes", "/tmp/": "PrivateTmp=yes",
                  "/var/tmp/": "PrivateTmp=yes"}


@dataclass(frozen=True)
class Shipped:
    resource: str  # path inside the sockstat package
    contrib: str | None  # file name in the repository's contrib/, if copied there


RULES = Shipped("rules/sockstat-alerts.yml", None)
DASHBOARD = Shipped("contrib/grafana-dashboard.json", "grafana-dashboard.json")
UNIT = Shipped("contrib/sockstat-exporter.service", "sockstat-exporter.service")
ALL = (RULES, DASHBOARD, UNIT)


def read(item: Shipped) -> str:
    from importlib import resources

    return resources.files("sockstat").joinpath(item.resource).read_text(encoding="utf-8")


def rules_version(text: str) -> str | None:
    match = re.search(r"^# sockstat-monitoring-version: (\S+)$", text, re.MULTILINE)
    return match.group(1) if match else None


def dashboard_version(text: str) -> str | None:
    import json

    for tag in json.loads(text).get("tags", []):
        if tag.startswith("sockstat-monitoring-"):
            return tag.removeprefix("sockstat-monitoring-")
    return None


def unit(executable: str | None = None) -> str:
    """The systemd unit, running `executable` (default: the path in the shipped file)."""
    text = read(UNIT)
    if executable and executable != UNIT_EXECUTABLE:
        text = re.sub(rf"^(#?\s*ExecStart=){re.escape(UNIT_EXECUTABLE)} ",
                      lambda m: f"{m.group(1)}{executable} ", text, flags=re.MULTILINE)
    return text


def hidden_from_unit(executable: str) -> tuple[str, str] | None:
    """(hidden path, the unit setting that hides it) when the service could not run
    `executable`: the script, its interpreter (from the shebang: a venv's python), or
    what either resolves to through symlinks lives where the unit's sandbox hides it."""
    for path in _needed_paths(executable):
        for prefix, setting in HIDDEN_BY_UNIT.items():
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return path, setting
    return None


def _needed_paths(executable: str) -> list[str]:
    """The script, the interpreter its shebang names, and their symlink targets."""
    import os

    paths = [executable, os.path.realpath(executable)]
    interpreter = _shebang_interpreter(executable)
    if interpreter:
        paths += [interpreter, os.path.realpath(interpreter)]
    return paths


def _shebang_interpreter(script: str) -> str | None:
    """The program a `#!` line runs (`#!/usr/bin/env python3`: env itself, which is
    fine to run; the venv's python is what pip writes)."""
    try:
        with open(script, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    return words[0] if words else None


def write(directory: Path) -> list[Path]:
    """Copy the shipped files that belong in contrib/ into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for item in ALL:
        if item.contrib is not None:
            path = directory / item.contrib
            path.write_text(read(item), encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sockstat.shipped",
        description="Copy the Grafana dashboard and systemd unit from the package into DIR.")
    parser.add_argument("--write", metavar="DIR", type=Path, required=True,
                        help="the repository's contrib/ directory")
    args = parser.parse_args(argv)
    for path in write(args.write):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
