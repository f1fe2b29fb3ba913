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


def _key(sock: Socket, swapped: bool = False) -> tuple:
    ns = sock.netns.inode if sock.netns is not None else 0
    a, b = (sock.remote, sock.local) if swapped else (sock.local, sock.remote)
    return (ns, sock.proto, a.address, a.port, b.address, b.port)


def pair(sockets: Iterable[Socket]) -> dict[int, Socket]:
    """Set peer_process on every socket whose other end is in `sockets`; returns
    id(socket) -> its other end (for detectors that tell both ends as one story)."""
    ends: dict[tuple, Socket] = {}
    candidates = []
    for sock in sockets:
        if sock.state in _NOT_CONNECTIONS or (sock.proto is Proto.TCP and not sock.remote.port):
            continue
        ends[_key(sock)] = sock
        candidates.append(sock)
    other_end: dict[int, Socket] = {}
    for sock in candidates:
        peer = ends.get(_key(sock, swapped=True))
        if peer is not None and peer is not sock:
            other_end[id(sock)] = peer
            if peer.process is not None:
                sock.peer_process = peer.process
    return other_end
