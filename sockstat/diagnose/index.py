"""The snapshot's sockets sorted once by what the detectors look for.

Most detectors judge a few sockets of a big table: listeners, CLOSE_WAIT, FIN_WAIT2,
half-open connections, sockets with data queued, sockets with drop counters. Each
used to walk the whole table to find them: six passes over 100k sockets per
diagnosis. `SocketIndex` is one pass, shared by the detectors of one diagnose() call
(`indexed()`); every list keeps the table's order, so the findings are exactly those
of a walk over the whole table. A detector called on its own builds its own index.
The index also holds the table's client/server split (`sides()`, sockstat.sides), made
on first ask: the diagnosis hands it on with its verdict (observe.Judgement.sides).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sockstat.model import Snapshot, Socket, TcpState
from sockstat.peers import other_ends

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from sockstat.kernelmodel import Sysctls
    from sockstat.sides import SideSplit


class SocketIndex:
    """One snapshot's sockets by state, and the ones with data queued or socket memory,
    each list in table order."""

    __slots__ = ("sockets", "by_state", "queued", "with_memory", "_other_ends", "split")

    def __init__(self, sockets: list[Socket]) -> None:
        self.sockets = sockets
        by_state: dict[TcpState, list[Socket]] = {}
        queued: list[Socket] = []
        with_memory: list[Socket] = []
        get = by_state.get
        for sock in sockets:  # the one pass over the table (100k sockets)
            group = get(sock.state)
            if group is None:
                group = by_state[sock.state] = []
            group.append(sock)
            if sock.recv_q or sock.send_q:
                queued.append(sock)
            if sock.memory is not None:
                with_memory.append(sock)
        self.by_state = by_state
        self.queued = queued  # Recv-Q or Send-Q not 0 (a listener's: its queue, backlog)
        self.with_memory = with_memory  # carry socket memory (drop counters)
        self._other_ends: dict[int, Socket] | None = None
        self.split: tuple[Sysctls, SideSplit] | None = None  # sides()'s last: its sysctls

    def state(self, state: TcpState) -> list[Socket]:
        """The sockets in `state` (do not modify the list)."""
        return self.by_state.get(state, [])

    def states(self, states: Iterable[TcpState]) -> list[Socket]:
        """The sockets in any of `states`, in table order."""
        states = frozenset(states)
        present = [state for state in states if state in self.by_state]
        if len(present) == 1:
            return self.by_state[present[0]]
        if not present:
            return []
        return [s for s in self.sockets if s.state in states]  # merged, in table order

    def sides(self, sysctls: Sysctls) -> SideSplit:
        """The table's TCP sockets split into client and server side with these sysctls
        (sockstat.sides.split_sides, its listeners from this index), made once: read
        its groups only."""
        if self.split is None or self.split[0] != sysctls:
            from sockstat.sides import first_listeners, split_sides

            listening = first_listeners(self.state(TcpState.LISTEN))
            self.split = (sysctls, split_sides(self.sockets, sysctls, listeners=listening))
        return self.split[1]

    def close_wait_ends(self) -> dict[int, Socket]:
        """id(socket) -> its other end on this host, for the CLOSE_WAIT and FIN_WAIT2
        sockets (the close_wait and orphans detectors both tell those stories)."""
        if self._other_ends is None:
            self._other_ends = other_ends(
                self.states((TcpState.CLOSE_WAIT, TcpState.FIN_WAIT2)))
        return self._other_ends


_current: ContextVar[tuple[list[Socket], int, SocketIndex] | None] = ContextVar(
    "sockstat_diagnose_index", default=None)


def _shared(snapshot: Snapshot) -> SocketIndex | None:
    """The index of the diagnosis in progress (`indexed`) when it is this snapshot's
    table, unchanged."""
    current = _current.get()
    if current is not None:
        sockets, size, found = current
        if sockets is snapshot.sockets and size == len(sockets):
            return found
    return None


def index(snapshot: Snapshot) -> SocketIndex:
    """The index of the diagnosis in progress (`indexed`) when it is this snapshot's
    table, unchanged; else a new one."""
    return _shared(snapshot) or SocketIndex(snapshot.sockets)


@contextmanager
def indexed(snapshot: Snapshot) -> Iterator[SocketIndex]:
    """Share one index of `snapshot` with every detector run inside the block."""
    shared = _shared(snapshot)
    if shared is not None:
        yield shared
        return
    found = SocketIndex(snapshot.sockets)
    token = _current.set((snapshot.sockets, len(snapshot.sockets), found))
    try:
        yield found
    finally:
        _current.reset(token)
