"""collect(), again and again: the socket table refreshed at the cost of what changed.

At 100k sockets a full collect() spends ~90% of its time building Socket objects in
Python (the kernel's dump itself is ~0.1 s of system time). Between two refreshes most
sockets are the same ones in the same state, so this collector keeps the previous
refresh's Socket objects. Each batch of the dump is compacted (in C) to one record per
socket, its nlmsghdr + inet_diag_msg bytes: a record equal to one of the last refresh's
is the same socket with nothing changed, reused through a dict look-up run in C (no
Python code per socket); one that differs only in its timer's countdown (a TIME_WAIT's,
every refresh) gets its timer_ms updated; any other is matched by netlink cookie, and
when the cookie, state and inode are unchanged the fields that move (queues, timer,
retransmits) are updated in place. Only new sockets, and those whose state changed, go
through the real parser (sockstat.collect.netlink.parse_messages) and the query's
matching. Sockets the query rejected are remembered too, so a narrow filter over a big
table stays cheap.

Consequences callers rely on: Socket objects are shared between consecutive
snapshots and mutated in place (a previous Snapshot's sockets show the latest queues);
Socket.process set on a socket survives into the next refresh; `new` lists the sockets
that were (re)built this time, which are the only ones that need attribution.

Without netlink (other OSes, /proc or psutil sources, a kernel without udp_diag) it
falls back to plain collect(), and every socket counts as new.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter, is_, is_not

from sockstat.collect import collect, dumps, kernel_port_program, netlink, port_filter_for
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
_TIMER_OFF = Timer.OFF  # (an enum member looked up once: 0.4 us per lookup on 3.11)
_HEADER = netlink.NLMSGHDR.size
_UNPACK_MSG = netlink.INET_DIAG_MSG.unpack_from
_REJECTED = object()  # a report the query does not want (remembered, not rebuilt)
_get_cookie = attrgetter("cookie")
_EXPIRES_AT = netlink.AT["idiag_expires"]  # the timer's countdown in a record
_EXPIRES_END = _EXPIRES_AT + 4
_U32 = struct.Struct("=I")


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
        # the last refresh's sockets; by cookie only when a report needs it (most refreshes
        # match every socket by its record, and building the map cost as much again)
        self._previous_sockets: list[Socket] = []
        self._by_cookie: dict[int, Socket] | None = {}
        self._rejected: dict[int, int] = {}  # cookie -> state it was rejected in
        # the last refresh's reports, byte for byte -> their Socket (or _REJECTED)
        self._records: dict[bytes, object] = {}
        # ... and those that changed, without their timer's countdown
        self._counting_down: dict[bytes, object] = {}
        self._compactor = netlink.Compactor()
        self._one_walk = True  # TCP's two families in one dump (collect.dumps)
        self._both_families = netlink.BothFamilies()  # TCP's one-walk dump
        self._addresses = {af: netlink.AddressCache(af)
                           for af in (socket.AF_INET, socket.AF_INET6)}
        self.reused = 0  # sockets reused by the last refresh (for tests and the benchmark)
        self.unchanged = 0  # ... of which matched byte for byte (no Python code each)

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
        self.unchanged = 0
        out: list[Socket] = []
        new: list[Socket] = []
        records: dict[bytes, object] = {}
        moving: dict[bytes, object] = {}
        port_filter = port_filter_for(self.query)
        bytecode = kernel_port_program(self.query)  # the kernel skips other ports
        nl = netlink.open_socket()
        try:
            for proto, family, states in dumps(self.query, self._one_walk):
                mask = netlink.state_mask(states)
                if family is None:  # TCP of both families, in one walk of the kernel's hash
                    nl.send(netlink.build_both_families_request(mask, bytecode=bytecode))
                    addresses = self._both_families
                else:
                    af = socket.AF_INET if family is Family.INET else socket.AF_INET6
                    ipproto = socket.IPPROTO_TCP if proto is Proto.TCP \
                        else socket.IPPROTO_UDP
                    nl.send(netlink.build_request(af, ipproto, mask, bytecode=bytecode))
                    addresses = self._addresses[af]
                try:
                    for batch in netlink.batches(nl):
                        if self._parse(batch, proto, addresses, port_filter, out, new,
                                       records, moving):
                            break
                except SourceUnavailable:
                    if family is not None:
                        raise
                    self._one_walk = False  # a kernel without that request: one dump each
                    nl.close()
                    return self._collect_netlink()
            if Proto.UNIX in self.query.protos:
                self._unix(nl, out, new)
        finally:
            nl.close()
        self._previous_sockets = out
        self._by_cookie = None
        self._records = records
        self._counting_down = moving
        self.reused = len(out) - len(new)
        return Collected(Snapshot(sockets=out, taken_at=taken_at, source=Source.NETLINK), new)

    def _parse(self, data, proto: Proto, addresses, port_filter, out: list[Socket],
               new: list[Socket], records: dict[bytes, object],
               moving: dict[bytes, object]) -> bool:
        """One batch: reuse what is unchanged, hand everything else to the real parser.
        True when the dump is complete.

        The batch is first compacted to one record (nlmsghdr + inet_diag_msg) per
        socket, in C (netlink.Compactor). A record equal, byte for byte, to one of the
        previous refresh's is the same socket with nothing changed (same cookie, state,
        inode, queues, timer): its Socket is reused through a dict look-up done in C,
        with no Python code per socket. Only the others (new sockets, a state change,
        moving queues or timers: a TIME_WAIT's countdown) are looked at one by one."""
        split = self._compactor.split(data)
        if split is None:  # not covered by the pattern: message by message
            return self._parse_messages(data, proto, addresses, port_filter, out, new)
        keys, _, done = split
        hits = list(map(self._records.get, keys))
        misses = list(compress(range(len(keys)), map(is_, hits, repeat(None))))
        self.unchanged += len(keys) - len(misses)
        counting_down = self._counting_down
        for i in misses:
            key = keys[i]
            # the same but for its timer's countdown (a TIME_WAIT's moves every refresh):
            # found by the record without it, and only timer_ms changes
            steady = key[:_EXPIRES_AT] + key[_EXPIRES_END:]
            sock = counting_down.get(steady)
            if sock is _REJECTED:
                pass
            elif sock is not None:
                sock.timer_ms = _U32.unpack_from(key, _EXPIRES_AT)[0]
            else:
                record = bytearray(key)
                _U32.pack_into(record, 0, len(record))  # nlmsg_len: the record alone
                sock = self._one(record, 0, len(record), proto, addresses, port_filter,
                                 new)
            hits[i] = sock
            moving[steady] = sock
        records.update(zip(keys, hits, strict=True))
        kept = list(compress(hits, map(is_not, hits, repeat(_REJECTED))))
        out.extend(kept)
        if not done:
            self._forget_rejected()
        return done

    def _one(self, data, offset: int, length: int, proto: Proto, addresses, port_filter,
             new: list[Socket]):
        """The socket reported at data[offset:offset + length]: the previous refresh's
        object updated in place when its cookie, state and inode are the same, else a new
        one (added to `new`); _REJECTED when the query does not want it."""
        f = _UNPACK_MSG(data, offset + _HEADER)
        cookie = f[_COOKIE0] | (f[_COOKIE1] << 32)
        state = f[_STATE]
        sock = self._previous().get(cookie)
        if sock is not None and sock.state == state and sock.inode == f[_INODE] \
                and sock.proto is proto:
            sock.recv_q = f[_RQUEUE]
            sock.send_q = f[_WQUEUE]
            sock.timer = _TIMERS.get(f[_TIMER], _TIMER_OFF)
            sock.timer_ms = f[_EXPIRES]
            sock.retransmits = f[_RETRANS]
            return sock
        rejected = self._rejected
        if rejected.get(cookie) == state:
            return _REJECTED
        built: list[Socket] = []
        netlink.parse_messages(data[offset:offset + length], proto, addresses, built,
                               port_filter)
        if built and self.query.matches(built[0]):
            new.append(built[0])
            rejected.pop(cookie, None)
            return built[0]
        rejected[cookie] = state
        return _REJECTED

    def _parse_messages(self, data, proto: Proto, addresses, port_filter,
                        out: list[Socket], new: list[Socket]) -> bool:
        """_parse for a batch the compactor does not cover: one message at a time."""
        diag_types = (netlink.SOCK_DIAG_BY_FAMILY, netlink.TCPDIAG_GETSOCK)
        full = _HEADER + netlink.INET_DIAG_MSG.size
        end = len(data)
        offset = 0
        while offset < end:
            length = msg_type = 0
            if end - offset >= _HEADER:
                length, msg_type = netlink.LEN_TYPE.unpack_from(data, offset)
            if msg_type in diag_types and length >= full and offset + length <= end:
                sock = self._one(data, offset, length, proto, addresses, port_filter, new)
                if sock is not _REJECTED:
                    out.append(sock)
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

    def _unix(self, nl, out: list[Socket], new: list[Socket]) -> None:
        """UNIX sockets: a unix_diag dump (few, next to a big TCP table), each one matched
        to the previous refresh's by cookie so that its owner stays named."""
        from sockstat.collect import unix

        for sock in unix.dump(self.query.kernel_states(Proto.UNIX), nl=nl):
            if not self.query.matches(sock):
                continue
            old = self._previous().get(sock.cookie)
            if old is not None and old.state == sock.state and old.inode == sock.inode:
                old.recv_q, old.send_q = sock.recv_q, sock.send_q
                sock = old
            else:
                new.append(sock)
            out.append(sock)

    def _previous(self) -> dict[int, Socket]:
        """The last refresh's sockets by cookie, built the first time a refresh asks."""
        if self._by_cookie is None:
            self._by_cookie = dict(zip(map(_get_cookie, self._previous_sockets),
                                       self._previous_sockets, strict=True))
        return self._by_cookie

    def _forget_rejected(self) -> None:
        # A rejected cookie that is gone stays in the map; bound its size.
        if len(self._rejected) > 4 * max(len(self._previous_sockets), 1024):
            self._rejected.clear()
