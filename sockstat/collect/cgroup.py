"""What a process runs in, from the text of /proc/<pid>/cgroup: a container or a
systemd unit.

Container runtimes and systemd name a process's cgroup after the thing a person
restarts, so the path is the one place that tells "nginx.service", "docker container
3f2a…" or "Kubernetes pod 5d0c…, container 9e1b…" without asking any daemon:

    cgroup v2   0::/system.slice/docker-<64 hex>.scope
    cgroup v1   12:memory:/docker/<64 hex>     (one line per hierarchy)
    Kubernetes  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
                cri-containerd-<64 hex>.scope  (systemd driver; the cgroupfs driver writes
                /kubepods/burstable/pod<uid>/<64 hex>); CRI-O writes crio-<64 hex>.scope
    podman      /machine.slice/libpod-<64 hex>.scope (or under user@UID.service)
    LXC         /lxc.payload.<name>/...  (LXC 4+), /lxc/<name> (older)
    systemd     /system.slice/nginx.service, .../user@1000.service/app.slice/foo.service

`parse(text)` is pure (tested on captured texts); `read(procfs, pid)` reads the file.
Hand-written: no library reads these paths, and each rule is a regular expression.
"""

from __future__ import annotations

import re

from sockstat.placement import Container

_HEX64 = r"([0-9a-f]{64})"
# (runtime, pattern over one cgroup path), first match wins: the most specific first.
# Kubernetes pods: the pod UID (dashes become underscores under the systemd driver).
_POD = re.compile(r"kubepods\S*?[-/]pod([0-9a-f][0-9a-f_-]{30,})(?:\.slice)?/")
_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("cri-o", re.compile(r"/crio-(?!conmon-)" + _HEX64 + r"(?:\.scope)?(?:/|$)")),
    ("containerd", re.compile(r"/cri-containerd-" + _HEX64 + r"(?:\.scope)?(?:/|$)")),
    ("kubernetes", re.compile(r"/kubepods(?:/[^/]+)*?/pod[0-9a-f-]+/" + _HEX64 + r"(?:/|$)")),
    ("docker", re.compile(r"/docker[-/]" + _HEX64 + r"(?:\.scope)?(?:/|$)")),
    ("podman", re.compile(r"/libpod-(?!conmon-)" + _HEX64 + r"(?:\.scope)?(?:/|$)")),
    ("lxc", re.compile(r"/lxc\.payload\.([^/]+)")),
    ("lxc", re.compile(r"^/lxc/([^/]+)")),
)
_UNIT = re.compile(r"[^/]+\.service$")


def paths(text: str) -> list[str]:
    """The cgroup paths of a /proc/<pid>/cgroup text: the v2 line first (it is the
    whole truth where present), then the v1 lines, name=systemd first."""
    v2, systemd, v1 = [], [], []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue  # malformed or truncated: skip the line, never fail
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2.append(path)
        elif controllers == "name=systemd":
            systemd.append(path)
        else:
            v1.append(path)
    return v2 + systemd + v1


def parse(text: str) -> Container | None:
    """The container or systemd unit a /proc/<pid>/cgroup text names, else None.

    >>> parse("0::/system.slice/nginx.service\\n").name
    'nginx.service'
    """
    found = [p for p in paths(text) if p not in ("/", "/init.scope")]
    for path in found:
        for runtime, pattern in _RULES:
            match = pattern.search(path)
            if match is not None:
                pod = _POD.search(path + "/")
                return Container(runtime, match.group(1),
                                 pod=pod.group(1).replace("_", "-") if pod else None,
                                 unit=_unit(path))
    for path in found:
        unit = _unit(path)
        if unit is not None:
            return Container("systemd", unit, unit=unit)
    return None


def _unit(path: str) -> str | None:
    """The innermost .service in a path (user@1000.service/app.slice/foo.service: foo);
    container scopes and user sessions are not services."""
    for part in reversed(path.strip("/").split("/")):
        if _UNIT.fullmatch(part):
            return part
    return None


def read(procfs: str, pid: int) -> Container | None:
    try:
        with open(f"{procfs}/{pid}/cgroup", "rb") as f:
            text = f.read(65536).decode("utf-8", "replace")
    except OSError:
        return None
    return parse(text)
