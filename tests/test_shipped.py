"""The files sockstat ships for operators: the Grafana dashboard and the systemd unit.

The dashboard's queries use only metrics a real collection exports (the integration test
with a real Prometheus runs each of them: tests/test_prometheus_integration.py), the unit
passes `systemd-analyze verify`, the rules and dashboard carry the same monitoring
version, and contrib/ holds the package's copies (fix: `python -m sockstat.shipped
--write contrib/`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_sockstat
from test_netns import unshared  # noqa: F401  (a fixture: a process in its own netns)

from sockstat import shipped

DASHBOARD = json.loads(shipped.read(shipped.DASHBOARD))
# Series Prometheus itself adds to every scrape target (scrape health), not the exporter.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds"}
RANGE_FUNCTIONS = ("rate", "irate", "increase", "delta", "deriv", "avg_over_time",
                   "max_over_time", "min_over_time")


def panels(dashboard: dict = DASHBOARD) -> list[dict]:
    """Every panel, those inside collapsed rows included; rows themselves excluded."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def targets(dashboard: dict = DASHBOARD) -> list[tuple[str, dict]]:
    """(panel title, target) for every query of every panel."""
    return [(p["title"], t) for p in panels(dashboard) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by a selector that are
    not functions, keywords or label names."""
    names = set()
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{|\[|\)|$|\s)", expr):
        word = match.group(1)
        if word.startswith("sockstat_") or word in PROMETHEUS_SERIES:
            names.add(word)
    return names


def exported_names() -> set[str]:
    """The sample names of one real collection on this machine."""
    from sockstat.exporter import Scraper

    return {fam.sample_name for fam in Scraper(cache_seconds=0).families()}


# -- the dashboard ------------------------------------------------------------------------

def test_dashboard_is_grafana_10_and_11_json_with_a_datasource_variable():
    assert DASHBOARD["schemaVersion"] == 39  # Grafana 10.3+/11 (newer ones migrate it)
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert "sockstat_build_info" in variables[name]["definition"]
    for title, target in targets():
        assert target["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, title
    for panel in panels():
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_has_the_panels_operators_need():
    titles = {p["title"] for p in panels()}
    assert {"TCP sockets by state", "CLOSE_WAIT by process", "CLOSE_WAIT by service",
            "TIME_WAIT per destination", "Ephemeral ports used per destination",
            "Accept queue fill per listener", "Findings by kind and severity",
            "Listen overflows and drops", "Retransmitted segments", "Resets", "UDP errors",
            "Scrape health", "UNIX sockets", "UNIX accept queue fill per listener",
            "Socket drops"} <= titles


def test_dashboard_layout_is_valid():
    ids = [p["id"] for p in DASHBOARD["panels"]] + [p["id"] for p in panels()
                                                    if p not in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_every_query_selects_the_job_and_host_variables_and_rates_use_rate_interval():
    for title, target in targets():
        expr = target["expr"]
        for selector in re.findall(r"\{([^}]*)\}", expr):
            if "$" in selector or "job" in selector:  # every series selector, not by()
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, \
                    (title, expr)
        assert re.search(r'\{[^}]*job=~"\$job"', expr), (title, expr)
        for fn in RANGE_FUNCTIONS:
            for window in re.findall(rf"\b{fn}\([^\[]*\[([^\]]*)\]", expr):
                assert window == "$__rate_interval", (title, expr)


def test_every_query_uses_only_metrics_the_exporter_exposes():
    exported = exported_names() | PROMETHEUS_SERIES
    used = set()
    for title, target in targets():
        names = metric_names(target["expr"])
        assert names, (title, target["expr"])
        assert names <= exported, (title, names - exported)
        used |= names
    # the kernel counters the issue names are there, as rates
    assert {"sockstat_kernel_tcp_listen_overflows_total",
            "sockstat_kernel_tcp_retransmitted_segments_total",
            "sockstat_kernel_tcp_resets_sent_total",
            "sockstat_kernel_udp_receive_buffer_errors_total"} <= used


# -- versions and copies ------------------------------------------------------------------

def test_rules_and_dashboard_carry_the_same_monitoring_version():
    rules = shipped.rules_version(shipped.read(shipped.RULES))
    dashboard = shipped.dashboard_version(shipped.read(shipped.DASHBOARD))
    assert rules is not None and dashboard is not None
    assert rules == dashboard
    assert f"Monitoring version {dashboard}" in DASHBOARD["description"]


def test_contrib_holds_the_package_copies(tmp_path):
    shipped.write(tmp_path)
    for item in shipped.ALL:
        if item.contrib is None:
            continue
        committed = REPO / "contrib" / item.contrib
        assert committed.exists(), f"{committed} missing"
        assert committed.read_text() == (tmp_path / item.contrib).read_text(), (
            f"contrib/{item.contrib} differs from sockstat/{item.resource}: run "
            "`python -m sockstat.shipped --write contrib/`")


def test_export_prints_the_dashboard():  # --rules: tests/test_export.py
    r = run_sockstat("export", "--dashboard")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (REPO / "sockstat" / shipped.DASHBOARD.resource).read_text()


def test_export_prints_one_shipped_file_at_a_time():
    r = run_sockstat("export", "--rules", "--dashboard")
    assert r.returncode == 2
    assert r.stderr.startswith("sockstat: error: ") and len(r.stderr.splitlines()) == 1


# -- the systemd unit ---------------------------------------------------------------------

UNIT_TEXT = shipped.read(shipped.UNIT)


def unit_settings(text: str = UNIT_TEXT) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_is_hardened_and_keeps_only_the_capabilities_it_needs():
    settings = unit_settings()
    for key, value in [("DynamicUser", "yes"), ("NoNewPrivileges", "yes"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"),
                       ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK")]:
        assert settings[key] == [value], key
    assert settings["AmbientCapabilities"] == ["CAP_DAC_READ_SEARCH CAP_SYS_PTRACE"]
    assert settings["CapabilityBoundingSet"] == settings["AmbientCapabilities"]
    assert settings["ExecStart"] == [f"{shipped.UNIT_EXECUTABLE} export --listen "
                                     "127.0.0.1:9977"]
    # every capability is explained in a comment; CAP_SYS_ADMIN only as an opt-in
    for cap in ("CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"):
        assert re.search(rf"^#\s+{cap}\s+\S", UNIT_TEXT, re.MULTILINE), cap
    assert "--netns all" in UNIT_TEXT


def _installed_sockstat() -> Path:
    script = Path(sys.executable).parent / "sockstat"
    if not script.exists():
        pytest.skip("no sockstat console script next to this Python (pip install -e .)")
    return script


def test_systemd_unit_flag_puts_the_running_sockstat_into_execstart():
    script = _installed_sockstat()
    r = subprocess.run([str(script), "export", "--systemd-unit"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert unit_settings(r.stdout)["ExecStart"] == [f"{script} export --listen "
                                                    "127.0.0.1:9977"]
    # everything else is the shipped file
    assert r.stdout.replace(str(script), shipped.UNIT_EXECUTABLE) == UNIT_TEXT
    assert shipped.unit() == UNIT_TEXT


def test_a_unit_that_cannot_start_is_named_in_one_line(tmp_path):
    """A sockstat under /tmp (PrivateTmp=yes) or /home (ProtectHome=yes) cannot run."""
    script = tmp_path / "sockstat"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom sockstat.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    r = subprocess.run([str(script), "export", "--systemd-unit"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"sockstat: note: this unit cannot start: it runs {script}")
    assert "PrivateTmp=yes" in r.stderr and len(r.stderr.splitlines()) == 1
    assert unit_settings(r.stdout)["ExecStart"][0].startswith(f"{script} export")


def test_the_interpreter_a_script_needs_is_followed_through_symlinks(tmp_path):
    """pip's script names the venv's python, often a symlink into a home directory."""
    import tempfile

    if shipped.hidden_from_unit(str(REPO)) is not None:
        pytest.skip("this checkout itself is where the unit cannot see")
    python = tmp_path / "python3.11"  # where the venv's python really lives
    python.write_text("")
    here = Path(tempfile.mkdtemp(dir=REPO, prefix=".test-shebang-"))
    try:
        (here / "python3").symlink_to(python)
        script = here / "sockstat"
        script.write_text(f"#!{here / 'python3'}\n")
        assert shipped.hidden_from_unit(str(script)) == (str(python.resolve()),
                                                          "PrivateTmp=yes")
        script.write_text("#!/bin/sh\n")
        assert shipped.hidden_from_unit(str(script)) is None
        assert shipped.hidden_from_unit("/root/.local/bin/sockstat") == (
            "/root/.local/bin/sockstat", "ProtectHome=yes")
    finally:
        shutil.rmtree(here)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package: systemd)")
def test_systemd_analyze_verify_passes(tmp_path):
    """The unit as `sockstat export --systemd-unit` prints it (ExecStart = this checkout's
    sockstat, which exists), with the man page it documents on MANPATH."""
    script = _installed_sockstat()
    unit = tmp_path / "sockstat-exporter.service"
    r = subprocess.run([str(script), "export", "--systemd-unit"], capture_output=True,
                       text=True, timeout=60)
    unit.write_text(r.stdout)
    man1 = tmp_path / "man" / "man1"
    man1.mkdir(parents=True)
    shutil.copy(REPO / "man" / "sockstat.1", man1 / "sockstat.1")
    env = {"PATH": "/usr/bin:/bin", "MANPATH": str(tmp_path / "man"), "LC_ALL": "C"}
    # verify checks Documentation=man:sockstat(1) with man(1), when there is one
    man = [] if shutil.which("man") else ["--man=no"]
    r = subprocess.run(["systemd-analyze", "verify", *man, str(unit)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_documented_exposure_score_is_what_systemd_analyze_security_says():
    """docs/export.md records `systemd-analyze security --offline=yes` on the unit."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    unit = REPO / "contrib" / "sockstat-exporter.service"
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        str(unit)], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    if r.returncode != 0 or match is None:
        pytest.skip(f"systemd-analyze security does not work offline here: {r.stderr}")
    docs = (REPO / "docs" / "export.md").read_text()
    assert f"**{match.group(1)} {match.group(2)}**" in docs


def _as_unit_user(caps: list[str], *args: str) -> subprocess.CompletedProcess:
    """sockstat as an unprivileged user keeping exactly `caps` (CAP_X names) as ambient
    capabilities, as systemd runs the unit's DynamicUser."""
    import os

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a command as an unprivileged user")
    names = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in caps)
    setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               "--no-new-privs"]
    if caps:
        setpriv += [f"--inh-caps={names}", f"--ambient-caps={names}",
                    f"--bounding-set=-all,{names}"]
    probe = subprocess.run([*setpriv, sys.executable, "-c", "import sockstat"],
                           capture_output=True, cwd=REPO, timeout=60)
    if probe.returncode != 0:
        pytest.skip("the package is not readable by an unprivileged user here")
    return subprocess.run([*setpriv, sys.executable, "-m", "sockstat", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_the_units_capabilities_are_needed_and_enough_to_name_other_users_processes(loop):
    """With the unit's ambient capabilities an unprivileged sockstat names the (root)
    test process holding a listener; without either one it cannot."""
    import os

    server = loop.listener()
    port = str(server.getsockname()[1])
    caps = unit_settings()["AmbientCapabilities"][0].split()

    def owner(caps: list[str]):
        r = _as_unit_user(caps, "-p", port, "--json")
        assert r.returncode == 0, r.stderr
        rows = [row for row in json.loads(r.stdout) if row["state"] == "LISTEN"]
        assert len(rows) == 1, rows
        return rows[0]["process"]

    assert owner(caps)["pid"] == os.getpid()
    for cap in caps:
        assert owner([c for c in caps if c != cap]) is None, f"{cap} is not needed"


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="needs unshare and ip to make a network namespace")
def test_netns_all_under_the_unit_reads_other_namespaces_and_sys_admin_adds_sock_diag(
        unshared):  # noqa: F811  (the fixture imported from test_netns)
    """What the unit's comment says about --netns all: with the unit's capabilities the
    sockets of another namespace are read from /proc/PID/net; CAP_SYS_ADMIN (setns) lets
    sock_diag dump them inside it, with what only netlink knows (the listen() backlog)."""
    import os

    pid = unshared(1)
    inode = os.stat(f"/proc/{pid}/ns/net").st_ino
    caps = unit_settings()["AmbientCapabilities"][0].split()

    def listener(caps: list[str]) -> dict:
        r = _as_unit_user(caps, "--netns", "all", "-p", "8080", "-l", "--json")
        assert r.returncode == 0, r.stderr
        rows = [row for row in json.loads(r.stdout)
                if (row.get("netns") or {}).get("inode") == inode]
        assert len(rows) == 1, (rows, r.stderr)
        return rows[0]

    assert listener(caps)["cookie"] is None  # /proc/PID/net/tcp: no socket cookies
    with_admin = listener([*caps, "CAP_SYS_ADMIN"])
    assert with_admin["cookie"] is not None and with_admin["send_q"] == 64  # sock_diag
