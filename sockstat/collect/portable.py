"""The portable source: psutil.net_connections, for macOS, the BSDs and Windows, and the
last fallback on a Linux without netlink and /proc.

It knows less than the kernel sources: no queues, no inode, no uid, no timers; it does
know the pid, which fills Socket.process. psutil is imported here only, on first use.
"""

from __future__ import annotations

import socket

from sockstat.errors import PermissionDenied
from sockstat.model import Endpoint, Family, ProcessRef, Proto, Socket, TcpState

# psutil spells states as the kernel does, except UDP's "NONE".
_PSUTIL_STATES = {s.name: s for s in TcpState}
_PSUTIL_STATES.update({"NONE": TcpState.CLOSE, "CLOSED": TcpState.CLOSE,
                       "SYN_RECV": TcpState.SYN_RECV})


def read_all() -> list[Socket]:
    import psutil  # a dependency: installed wherever sockstat is
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        raise PermissionDenied("psutil could not list connections") from None
    names: dict[int, str] = {}
    sockets = []
    for c in conns:
        proto = Proto.TCP if c.type == socket.SOCK_STREAM else Proto.UDP
        family = Family.INET if c.family == socket.AF_INET else Family.INET6
        state = _PSUTIL_STATES.get(c.status, TcpState.CLOSE)
        if proto is Proto.UDP:  # psutil says NONE for every UDP socket; the kernel does not
            state = TcpState.ESTABLISHED if c.raddr else TcpState.CLOSE
        local = Endpoint(_plain(c.laddr.ip), c.laddr.port) if c.laddr else _ANY[family]
        remote = Endpoint(_plain(c.raddr.ip), c.raddr.port) if c.raddr else _ANY[family]
        process = None
        if c.pid:
            if c.pid not in names:
                try:
                    names[c.pid] = psutil.Process(c.pid).name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    names[c.pid] = "?"
            process = ProcessRef(c.pid, names[c.pid], c.fd if c.fd >= 0 else None)
        sockets.append(Socket(proto, family, state, local, remote, process=process))
    return sockets


_ANY = {Family.INET: Endpoint("0.0.0.0", 0), Family.INET6: Endpoint("::", 0)}


def _plain(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") and "." in address else address
