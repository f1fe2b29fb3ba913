"""Grouping sockets by the service that holds them and the port they serve.

A service (sockstat.model.Service, filled by collect when asked for ownership details)
is a master and its forked children. Its sockets are grouped by where they serve: the
local port when it is a listening port (or several of its sockets share it), else the
remote endpoint they talk to (a client's ephemeral ports differ for every connection).
Pure: model objects in, groups out.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import field

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.diagnose.common import owner_key, owner_label
from sockstat.diagnose.index import index
from sockstat.model import Endpoint, ProcessRef, Snapshot, Socket, TcpState
from sockstat.placement import Service

PID_LIST_LIMIT = 50


@dataclass
class ServiceGroup:
    service: Service
    where: tuple  # ("port", local port) or ("to", remote Endpoint)
    sockets: list[Socket] = field(default_factory=list)

    @staticmethod
    def pids(sockets: Iterable[Socket]) -> set[int]:
        return {p.pid for s in sockets for p in s.holders}

    def busiest(self, sockets: list[Socket]) -> ProcessRef | None:
        counts = Counter(s.process for s in sockets if s.process is not None)
        return max(counts, key=lambda p: (counts[p], -p.pid)) if counts else None

    def place(self, sockets: list[Socket]) -> str:
        if self.where[0] == "port":
            address = Counter(s.local.address for s in sockets).most_common(1)[0][0]
            return f"on {Endpoint(address, self.where[1])}"
        return f"to {self.where[1]}"

    def label(self, sockets: list[Socket]) -> str:
        """'socat (30 processes) on 127.0.0.1:8080'."""
        n = len(self.pids(sockets))
        return f"{self.service.label} ({n:,} processes) {self.place(sockets)}"

    def evidence(self, sockets: list[Socket]) -> dict:
        pids = sorted(self.pids(sockets))
        out = service_dict(self.service)
        out.update({
            "pid": self.service.master_pid, "process": self.service.name,
            "pids": pids[:PID_LIST_LIMIT], "processes": len(pids),
            "local_port": self.where[1] if self.where[0] == "port" else None,
            "remote": str(self.where[1]) if self.where[0] == "to" else None,
        })
        return out


def service_dict(service: Service | None) -> dict:
    if service is None:
        return {"service": None, "master_pid": None, "container": None}
    return {"service": service.label, "master_pid": service.master_pid,
            "container": None if service.container is None else service.container.name}


def service_evidence(sock: Socket, snapshot: Snapshot | None) -> dict:
    """The service keys of a single process's finding (None when not known)."""
    service = None if snapshot is None else snapshot.service_of(sock.process)
    return service_dict(service)


def service_groups(snapshot: Snapshot, sockets: list[Socket]) -> list[ServiceGroup]:
    """`sockets` grouped by (service, where they serve); sockets of no known service
    are left out."""
    services = snapshot.services
    if not services:
        return []
    listening = {s.local.port for s in index(snapshot).state(TcpState.LISTEN)}
    by_service: dict[tuple, list[Socket]] = defaultdict(list)
    chosen: dict[tuple, Service] = {}
    for sock in sockets:
        service = services.get(sock.process.pid) if sock.process is not None else None
        if service is not None:
            by_service[service.key].append(sock)
            chosen[service.key] = service
    groups: dict[tuple, ServiceGroup] = {}
    for key, members in by_service.items():
        shared_ports = Counter(s.local.port for s in members)
        for sock in members:
            port = sock.local.port
            if port in listening or shared_ports[port] > 1:
                where: tuple = ("port", port)
            else:
                where = ("to", sock.remote)
            group = groups.get((key, where))
            if group is None:
                group = groups[(key, where)] = ServiceGroup(chosen[key], where)
            group.sockets.append(sock)
    return list(groups.values())


def service_key(sock: Socket, services: dict) -> tuple:
    """Group key for 'the service behind this socket': its service when known, else
    its process (sockstat.diagnose.common.owner_key)."""
    service = services.get(sock.process.pid) if services and sock.process else None
    return ("service", service.key) if service is not None else owner_key(sock)


def owners_label(sockets: list[Socket], snapshot: Snapshot) -> str:
    """'python/812', or 'gunicorn (4 processes)' when a service's processes share the
    group; with where it runs when that is not this host's own namespace."""
    first = sockets[0]
    pids = {s.process.pid for s in sockets if s.process is not None}
    service = snapshot.service_of(first.process)
    if service is not None and len(pids) > 1:
        label = f"{service.label} ({len(pids):,} processes)"
    else:
        label = owner_label(first) + container_suffix(first, snapshot)
    return label


def container_suffix(sock: Socket, snapshot: Snapshot) -> str:
    """' in docker:3f2a9c1b2d4e' / ' in net ns blue' where a socket lives in a
    container or another network namespace; '' on the host itself."""
    service = snapshot.service_of(sock.process)
    container = service.container if service is not None else sock.container
    if container is not None and container.runtime != "systemd":
        return f" in {container.name}"
    ns = sock.netns
    if ns is not None and not ns.current:
        return f" in net ns {ns.label}"
    return ""
