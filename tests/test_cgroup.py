"""The cgroup parser on /proc/<pid>/cgroup texts of each runtime (tests/fixtures/cgroup:
cgroup v1 and v2, systemd and cgroupfs drivers), and on truncated and malformed ones."""

from __future__ import annotations

import os

import pytest
from conftest import FIXTURES

from sockstat.collect import cgroup

DOCKER = "3f2a9c1b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
K8S = "9e1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
POD = "5d0c1e2f-3a4b-4c5d-8e9f-0a1b2c3d4e5f"

CASES = {
    # fixture: (runtime, id, pod, unit, name)
    "docker-v1.txt": ("docker", DOCKER, None, None, "docker:3f2a9c1b2d4e"),
    "docker-v2-systemd.txt": ("docker", DOCKER, None, None, "docker:3f2a9c1b2d4e"),
    "docker-v2-cgroupfs.txt": ("docker", DOCKER, None, None, "docker:3f2a9c1b2d4e"),
    "kubernetes-containerd-v2.txt": ("containerd", K8S, POD, None, "containerd:9e1b2c3d4e5f"),
    "kubernetes-cgroupfs-v1.txt": ("kubernetes", K8S, POD, None, "kubernetes:9e1b2c3d4e5f"),
    "crio-v2.txt": ("cri-o", K8S, POD, None, "cri-o:9e1b2c3d4e5f"),
    "podman-rootless-v2.txt": ("podman", DOCKER, None, "user@1000.service",
                               "podman:3f2a9c1b2d4e"),
    "podman-root-v2.txt": ("podman", DOCKER, None, None, "podman:3f2a9c1b2d4e"),
    "podman-v1.txt": ("podman", DOCKER, None, None, "podman:3f2a9c1b2d4e"),
    "lxc-v2.txt": ("lxc", "web01", None, "nginx.service", "lxc:web01"),
    "lxc-v1.txt": ("lxc", "web01", None, "nginx.service", "lxc:web01"),
    "systemd-v2.txt": ("systemd", "nginx.service", None, "nginx.service", "nginx.service"),
    "systemd-v1.txt": ("systemd", "postgresql@16-main.service", None,
                       "postgresql@16-main.service", "postgresql@16-main.service"),
    "user-service-v2.txt": ("systemd", "syncthing.service", None, "syncthing.service",
                            "syncthing.service"),
}


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_each_runtime_is_recognised(fixture):
    found = cgroup.parse((FIXTURES / "cgroup" / fixture).read_text())
    runtime, ident, pod, unit, name = CASES[fixture]
    assert found is not None, fixture
    assert (found.runtime, found.id, found.pod, found.unit, found.name) == \
        (runtime, ident, pod, unit, name)


@pytest.mark.parametrize("fixture", ["session-v2.txt", "init-v2.txt", "crio-conmon-v2.txt",
                                     "truncated.txt", "malformed.txt"])
def test_no_container_where_there_is_none_and_never_an_error(fixture):
    # a login session, PID 1, the runtime's own monitor, cut-off or garbage text
    data = (FIXTURES / "cgroup" / fixture).read_bytes().decode("utf-8", "replace")
    assert cgroup.parse(data) is None


def test_an_app_scope_under_the_user_manager_names_the_manager():
    found = cgroup.parse((FIXTURES / "cgroup" / "user-app-scope-v2.txt").read_text())
    assert found is not None and found.name == "user@1000.service"


def test_every_prefix_of_a_fixture_parses_without_error():
    text = (FIXTURES / "cgroup" / "docker-v1.txt").read_text()
    for end in range(len(text)):
        cgroup.parse(text[:end])  # truncated anywhere: a value or None, never raises


def test_the_live_file_of_this_process_parses():
    cgroup.read("/proc", os.getpid())  # whatever this machine runs in
    assert cgroup.read("/proc", 999_999_999) is None  # no such process
