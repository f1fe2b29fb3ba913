"""Which side of a connection a socket is on: outgoing (a client's ephemeral port) or
incoming (a served port).

One rule every view uses (`sockstat check`'s TIME_WAIT detector and the exporter's
per-destination families), so the two can never disagree. Pure: sockets and sysctls in,
groups out. A diagnosis splits its table once (diagnose.index.SocketIndex.sides) and
hands the split on with its verdict (observe.Judgement.sides): an exporter scrape's
per-destination families read that one rather than split the table again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.kernelmodel import Sysctls
from sockstat.model import Proto, Socket, TcpState

# States that do not hold a client's ephemeral port (or are the server half)
NOT_CLIENT = frozenset(s for s in TcpState if s.shown in (
    TcpState.LISTEN, TcpState.SYN_RECV, TcpState.CLOSE, TcpState.BOUND_INACTIVE))


def split_sides(sockets: Iterable[Socket], sysctls: Sysctls,
                listeners: dict[int, Socket] | None = None) -> SideSplit:
    """TCP sockets split into the client side (outgoing connections, grouped by
    (local ip, remote ip, remote port)) and the server side's TIME_WAIT (by local port).

    Client side = the local port is in the ephemeral range (when known), is not reserved,
    is not a listening port, and the socket was not attributed through a listener; the
    one rule every view (check, export) uses to tell outgoing from incoming.
    `listeners`: local port -> the first TCP LISTEN socket on it, when the caller has
    them already (else found here).
    """
    tcp_proto = Proto.TCP
    if listeners is None:
        sockets = sockets if isinstance(sockets, list) else list(sockets)
        listeners = first_listeners(sockets)
    clients: dict[tuple, list[Socket]] = defaultdict(list)
    servers: dict[int, list[Socket]] = defaultdict(list)
    # hot loop (100k sockets): names and range bounds hoisted
    low, high = sysctls.port_range or (0, 65535)
    reserved = sysctls.reserved_ports
    time_wait = TcpState.TIME_WAIT
    not_client = NOT_CLIENT
    for s in sockets:
        state = s.state
        if state in not_client or s.proto is not tcp_proto:
            continue
        local = s.local
        port = local.port
        served = port in listeners or (s.process is not None and s.process.via_listener)
        if not served and low <= port <= high and port not in reserved:
            remote = s.remote
            clients[(local.address, remote.address, remote.port)].append(s)
        elif state is time_wait:
            servers[port].append(s)
    return SideSplit(listeners, clients, servers)


def first_listeners(sockets: Iterable[Socket]) -> dict[int, Socket]:
    """Local port -> the first TCP LISTEN socket on it (split_sides' `listeners`)."""
    tcp_proto = Proto.TCP
    listeners: dict[int, Socket] = {}
    for s in sockets:
        if s.state is TcpState.LISTEN and s.proto is tcp_proto:
            listeners.setdefault(s.local.port, s)
    return listeners


@dataclass
class SideSplit:
    listeners: dict[int, Socket]  # local port -> a LISTEN socket
    clients: dict[tuple, list[Socket]]  # (local ip, remote ip, remote port) -> sockets
    servers: dict[int, list[Socket]]  # local port -> server-side TIME_WAIT sockets
