"""collect(), again and again: the socket table refreshed at the cost of what changed.

At 100k sockets a full collect() spends ~90% of its time building Socket objects in
Python (the kernel's dump itself is ~0.1 s of system time). Between two refreshes most
sockets are the same ones in the same state, so this collector keeps the previous
refresh's Socket objects by netlink cookie: for each message of the dump it reads the
fixed header only and, when the cookie, state and inode are unchanged, updates the
fields that move (queues, timer, retransmits) in place and reuses the object. Only new
sockets, and those whose state changed, go through the real parser
(sockstat.collect.netlink.parse_messages) and the query's matching. Sockets the query
rejected are remembered too, so a narrow filter over a big table stays cheap.

Consequences callers rely on: Socket objects are shared between consecutive
snapshots and mutated in place (a previous Snapshot's sockets show the latest queues);
Socket.process set on a socket survives into the next refresh; `new` lists the sockets
that were (re)built this time, which are the only ones that need attribution.

Without netlink (other OSes, /proc or psutil sources, a kernel without udp_diag) it
falls back to plain collect(), and every socket counts as new.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass

from sockstat.collect import collect, kernel_port_program, netlink, port_filter_for, tables
from sockstat.errors import SourceUnavailable
from sockstat.model import Family, Proto, Snapshot, Socket, Source, Timer
from sockstat.query import Query

_FIELD = {name: i for i, (name, _) in enumerate(netlink.INET_DIAG_MSG_FIELDS)}
_STATE = _FIELD["idiag_state"]
_TIMER = _FIELD["idiag_timer"]
_RETRANS = _FIELD["idiag_retrans"]
_COOKIE0 = _FIELD["idiag_cookie0"]
_COOKIE1 = _FIELD["idiag_cookie1"]
_EXPIRES = _FIELD["idiag_expires"]
_RQUEUE = _FIELD["idiag_rqueue"]
_WQUEUE = _FIELD["idiag_wqueue"]
_INODE = _FIELD["idiag_inode"]
_TIMERS = {t.value: t for t in Timer}
_HEADER = netlink.NLMSGHDR.size


@dataclass
class Collected:
    snapshot: Snapshot
    new: list[Socket]  # built (not reused) this time: the ones that need owners


class IncrementalCollector:
    """Repeated collect(query) that reuses unchanged sockets (netlink only)."""

    def __init__(self, query: Query, *, source: str = "auto", procfs: str = "/proc",
                 netns: str | None = None, processes: bool = False) -> None:
        self.query = query
        self.source = Source(source)
        self.procfs = procfs
        # --netns: every namespace read afresh (with its owners) on each refresh
        self.netns = netns
        self.processes = processes
        self.incremental = (self.source in (Source.AUTO, Source.NETLINK) and netns is None
                            and sys.platform.startswith("linux") and procfs == "/proc")
        self._previous: dict[int, Socket] = {}
        self._rejected: dict[int, int] = {}  # cookie -> state it was rejected in
        self._addresses = {af: netlink.AddressCache(af)
                           for af in (socket.AF_INET, socket.AF_INET6)}
        self.reused = 0  # sockets reused by the last refresh (for tests and the benchmark)

    def collect(self) -> Collected:
        if self.incremental:
            try:
                return self._collect_netlink()
            except SourceUnavailable:
                if self.source is Source.NETLINK:
                    raise
                # no sock_diag (or no udp_diag): the plain path, from now on
                self.incremental = False
        if self.netns is not None:
            snap = collect(self.query, source=self.source, procfs=self.procfs,
                           netns=self.netns, processes=self.processes)
        else:
            snap = collect(self.query, source=self.source, procfs=self.procfs)
        self.reused = 0
        return Collected(snap, snap.sockets)

    def _collect_netlink(self) -> Collected:
        taken_at = time.time()
        out: list[Socket] = []
        new: list[Socket] = []
        current: dict[int, Socket] = {}
        port_filter = port_filter_for(self.query)
        bytecode = kernel_port_program(self.query)  # the kernel skips other ports
        nl = netlink.open_socket()
        try:
            for proto, family, states in tables(self.query):
                af = socket.AF_INET if family is Family.INET else socket.AF_INET6
                ipproto = socket.IPPROTO_TCP if proto is Proto.TCP else socket.IPPROTO_UDP
                nl.send(netlink.build_request(af, ipproto, netlink.state_mask(states),
                                              bytecode=bytecode))
                addresses = self._addresses[af]
                for batch in netlink.batches(nl):
                    if self._parse(batch, proto, addresses, port_filter, out, new, current):
                        break
            if Proto.UNIX in self.query.protos:
                self._unix(nl, out, new, current)
        finally:
            nl.close()
        self._previous = current
        self.reused = len(out) - len(new)
        return Collected(Snapshot(sockets=out, taken_at=taken_at, source=Source.NETLINK), new)

    def _parse(self, data, proto: Proto, addresses, port_filter, out: list[Socket],
               new: list[Socket], current: dict[int, Socket]) -> bool:
        """One batch: reuse what is unchanged, hand everything else to the real parser.
        True when the dump is complete."""
        previous = self._previous
        rejected = self._rejected
        matches = self.query.matches
        unpack_header = netlink.NLMSGHDR.unpack_from
        unpack_msg = netlink.INET_DIAG_MSG.unpack_from
        diag_type = netlink.SOCK_DIAG_BY_FAMILY
        full = _HEADER + netlink.INET_DIAG_MSG.size
        timers = _TIMERS
        append = out.append
        end = len(data)
        offset = 0
        while offset < end:
            length = msg_type = 0
            if end - offset >= _HEADER:
                length, msg_type = unpack_header(data, offset)[:2]
            if msg_type == diag_type and length >= full and offset + length <= end:
                f = unpack_msg(data, offset + _HEADER)
                cookie = f[_COOKIE0] | (f[_COOKIE1] << 32)
                state = f[_STATE]
                sock = previous.get(cookie)
                if sock is not None and sock.state == state and sock.inode == f[_INODE] \
                        and sock.proto is proto:
                    sock.recv_q = f[_RQUEUE]
                    sock.send_q = f[_WQUEUE]
                    sock.timer = timers.get(f[_TIMER], Timer.OFF)
                    sock.timer_ms = f[_EXPIRES]
                    sock.retransmits = f[_RETRANS]
                    append(sock)
                    current[cookie] = sock
                    offset += (length + 3) & ~3
                    continue
                if rejected.get(cookie) == state:
                    offset += (length + 3) & ~3
                    continue
                built: list[Socket] = []
                netlink.parse_messages(data[offset:offset + length], proto, addresses, built,
                                       port_filter)
                if built and matches(built[0]):
                    sock = built[0]
                    append(sock)
                    new.append(sock)
                    current[cookie] = sock
                    rejected.pop(cookie, None)
                else:
                    rejected[cookie] = state
                offset += (length + 3) & ~3
                continue
            # DONE, an error reply, or something malformed: the real parser decides
            # (it returns True on DONE and raises on errors and truncation)
            if netlink.parse_messages(data[offset:offset + max(length, 16)], proto, addresses,
                                      out, port_filter):
                return True
            offset += (length + 3) & ~3
        self._forget_rejected()
        return False

    def _unix(self, nl, out: list[Socket], new: list[Socket],
              current: dict[int, Socket]) -> None:
        """UNIX sockets: a unix_diag dump (few, next to a big TCP table), each one matched
        to the previous refresh's by cookie so that its owner stays named."""
        from sockstat.collect import unix

        for sock in unix.dump(self.query.kernel_states(Proto.UNIX), nl=nl):
            if not self.query.matches(sock):
                continue
            old = self._previous.get(sock.cookie)
            if old is not None and old.state == sock.state and old.inode == sock.inode:
                old.recv_q, old.send_q = sock.recv_q, sock.send_q
                sock = old
            else:
                new.append(sock)
            out.append(sock)
            current[sock.cookie] = sock

    def _forget_rejected(self) -> None:
        # A rejected cookie that is gone stays in the map; bound its size.
        if len(self._rejected) > 4 * max(len(self._previous), 1024):
            self._rejected.clear()
