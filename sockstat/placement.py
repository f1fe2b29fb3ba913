"""Where a socket's processes run: their container or systemd unit, the network
namespace, the service (master and workers) they belong to.

The ownership details collect fills when asked for them (`--container`, `--netns`,
`check`, `watch`, the exporter). A module of its own so that a plain listing, which
needs none of them, does not pay for creating these dataclasses at start-up (CPython
compiles each one's generated methods); `sockstat.model` names the same classes.
"""

from __future__ import annotations

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once


@dataclass(slots=True, frozen=True)
class Container:
    """What a process runs in, as its cgroup path names it: a container runtime's
    container (docker, containerd/Kubernetes, CRI-O, podman, LXC) or a systemd unit."""

    runtime: str  # docker, kubernetes, cri-o, podman, lxc, systemd
    id: str  # container id (64 hex, shown shortened), LXC name, or the unit name
    pod: str | None = None  # Kubernetes pod UID
    unit: str | None = None  # the systemd unit it runs under (nginx.service), if any

    @property
    def name(self) -> str:
        """Short, stable label: 'docker:3f2a9c1b2d4e', 'lxc:web', 'nginx.service'."""
        if self.runtime == "systemd":
            return self.id
        short = self.id[:12] if len(self.id) == 64 else self.id
        return f"{self.runtime}:{short}"


@dataclass(slots=True, frozen=True)
class NetNamespace:
    """A network namespace: the inode of /proc/<pid>/ns/net, its `ip netns` name (if
    any), and the container of the processes living in it (if they agree on one)."""

    inode: int
    name: str | None = None
    container: Container | None = None
    current: bool = False  # the namespace sockstat itself runs in

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.container is not None:
            return self.container.name
        return "host" if self.current else f"net:[{self.inode}]"


@dataclass(slots=True, frozen=True)
class Service:
    """The unit a person restarts: processes of one executable under a common parent
    (a prefork master and its workers, a fork-per-connection server and its children),
    named with its systemd unit or container when the cgroup tells.

    `key` identifies it within one snapshot: the master's pid (the topmost ancestor
    running the same executable) and the executable."""

    key: tuple
    name: str  # the process name (comm) of the master
    master_pid: int
    container: Container | None = None

    @property
    def label(self) -> str:
        """'socat', or 'nginx (nginx.service)', 'python3 (docker:3f2a9c1b2d4e)'."""
        if self.container is None:
            return self.name
        return f"{self.name} ({self.container.name})"
