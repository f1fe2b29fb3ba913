"""The process at the other end: pairing the two local ends of one connection.

A connection between two sockets of this host (loopback, or any local address) appears
twice in the table: A:a -> B:b and B:b -> A:a, in the same network namespace. Pairing
them by the swapped 4-tuple gives each end the process that holds the other
(`Socket.peer_process`), so "python/456 never closes connections from python/123" can be
told as one story. Pure: model objects in, fields set; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from sockstat.model import Proto, Socket, TcpState

# Sockets that are not one end of a connection
_NOT_CONNECTIONS = frozenset({TcpState.LISTEN, TcpState.CLOSE})


def _key(sock: Socket) -> tuple:
    ns = sock.netns.inode if sock.netns is not None else 0
    a, b = sock.local, sock.remote
    return (ns, sock.proto, a.address, a.port, b.address, b.port)


def pairs(sockets: Iterable[Socket],
          others: Iterable[Socket] = ()) -> list[tuple[Socket, Socket]]:
    """(socket, its other end) for every socket of `sockets` whose other end is in
    `sockets` or `others` (say, a wider table than the one shown)."""
    ends: dict[tuple, Socket] = {}
    mine: dict[tuple, Socket] = {}
    for group, into in ((others, ends), (sockets, mine)):
        for sock in group:
            if sock.state in _NOT_CONNECTIONS or (sock.proto is Proto.TCP
                                                 and not sock.remote.port):
                continue
            if sock.unix is not None:  # paired by peer inode (sockstat.collect.unix)
                continue
            into[_key(sock)] = sock
    ends.update(mine)
    out = []
    for key, sock in mine.items():
        ns, proto, la, lp, ra, rp = key
        peer = ends.get((ns, proto, ra, rp, la, lp))
        if peer is not None and peer is not sock:
            out.append((sock, peer))
    return out


def other_ends(sockets: Iterable[Socket]) -> dict[int, Socket]:
    """id(socket) -> the socket at the other end (nothing is changed: for detectors)."""
    return {id(sock): peer for sock, peer in pairs(sockets)}


def pair(sockets: Iterable[Socket], others: Iterable[Socket] = ()) -> int:
    """Set Socket.peer_process on `sockets` wherever the other end (in `sockets` or
    `others`) has an owner; returns how many sockets got one."""
    named = 0
    for sock, peer in pairs(sockets, others):
        if peer.process is not None:
            sock.peer_process = peer.process
            named += 1
    return named
