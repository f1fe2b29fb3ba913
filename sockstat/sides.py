"""Which side of a connection a socket is on: outgoing (a client's ephemeral port) or
incoming (a served port).

One rule every view uses (`sockstat check`'s TIME_WAIT detector and the exporter's
per-destination families), so the two can never disagree. Pure: sockets and sysctls in,
groups out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sockstat.kernelmodel import Sysctls
from sockstat.model import Proto, Socket, TcpState

# States that do not hold a client's ephemeral port (or are the server half)
NOT_CLIENT = frozenset(s for s in TcpState if s.shown in (
    TcpState.LISTEN, TcpState.SYN_RECV, TcpState.CLOSE, TcpState.BOUND_INACTIVE))


def split_sides(sockets: Iterable[Socket], sysctls: Sysctls) -> SideSplit:
    """TCP sockets split into the client side (outgoing connections, grouped by
    (local ip, remote ip, remote port)) and the server side's TIME_WAIT (by local port).

    Client side = the local port is in the ephemeral range (when known), is not reserved,
    is not a listening port, and the socket was not attributed through a listener; the
    one rule every view (check, export) uses to tell outgoing from incoming.
    """
    tcp = [s for s in sockets if s.proto is Proto.TCP]
    listeners: dict[int, Socket] = {}
    for s in tcp:
        if s.state is TcpState.LISTEN:
            listeners.setdefault(s.local.port, s)
    clients: dict[tuple, list[Socket]] = defaultdict(list)
    servers: dict[int, list[Socket]] = defaultdict(list)
    # hot loop (100k sockets): range bounds hoisted
    low, high = sysctls.port_range or (0, 65535)
    reserved = sysctls.reserved_ports
    time_wait = TcpState.TIME_WAIT
    for s in tcp:
        state = s.state
        if state in NOT_CLIENT:
            continue
        port = s.local.port
        served = port in listeners or (s.process is not None and s.process.via_listener)
        if not served and low <= port <= high and port not in reserved:
            clients[(s.local.address, s.remote.address, s.remote.port)].append(s)
        elif state is time_wait:
            servers[port].append(s)
    return SideSplit(listeners, clients, servers)


@dataclass
class SideSplit:
    listeners: dict[int, Socket]  # local port -> a LISTEN socket
    clients: dict[tuple, list[Socket]]  # (local ip, remote ip, remote port) -> sockets
    servers: dict[int, list[Socket]]  # local port -> server-side TIME_WAIT sockets
