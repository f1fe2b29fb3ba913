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

import functools
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_, is_not

from sockstat.collect import collect, dumps, kernel_port_program, netlink, port_filter_for
from sockstat.errors import SourceUnavailable
from sockstat.model import Proto, Snapshot, Socket, Source, Timer
from sockstat.query import Query

_FIELD = {name: i for i, (name, _) in enumerate(netlink.INET_DIAG_MSG_FIELDS)}
_FAMILY = _FIELD["idiag_family"]
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
_EXPIRES_AT = netlink.AT["idiag_expires"]  # the timer's countdown in a record
RECORD = netlink.RECORD
assert _EXPIRES_AT % 4 == 0 and RECORD % 4 == 0  # read and zeroed as a u32 column
_U32 = struct.Struct("=I")
_MSG_TYPE = struct.Struct("=H")
_SET_TIMER_MS = Socket.timer_ms.__set__


@dataclass
class Collected:
    snapshot: Snapshot
    new: list[Socket]  # built (not reused) this time: the ones that need owners
    # the previous refresh's sockets that are not in this one; None when not known
    # (plain collect(): every socket is new)
    gone: list[Socket] | None = None


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
        # the last refresh's reports, byte for byte -> their Socket (or _REJECTED)
        self._records: dict[bytes, object] = {}
        # the last refresh's changed reports without their timer's countdown -> the
        # report as it was (the key of _records)
        self._counting_down: dict[bytes, bytes] = {}
        # the TCP/UDP sockets in view by cookie, kept up to date with what comes and
        # goes (a report that changed more than its countdown is matched by it)
        self._by_cookie: dict[int, Socket] = {}
        self.unix_sockets: list[Socket] = []  # the last refresh's UNIX sockets
        self._rejected: dict[int, int] = {}  # cookie -> state it was rejected in
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
        previous = self._records  # emptied as this refresh matches its reports
        records: dict[bytes, object] = {}
        counting_down: dict[bytes, bytes] = {}
        out: list[Socket] = []
        new: list[Socket] = []
        moved: set[int] = set()  # ids of sockets matched by cookie (their old report stays)
        port_filter = port_filter_for(self.query)
        bytecode = kernel_port_program(self.query)  # the kernel skips other ports
        reports = 0
        nl = netlink.open_socket()
        try:
            for proto, family, states in dumps(self.query):
                found: list[bytes] = []
                netlink.dump(family, proto, states, port_filter=port_filter,
                             bytecode=bytecode, nl=nl, out=found, tally=True, each=True)
                reports += len(found)
                hits = self._match(found, proto, previous, counting_down, new, moved)
                records.update(zip(found, hits, strict=True))
                out.extend(compress(hits, map(is_not, hits, repeat(_REJECTED))))
            unix_gone = self._unix(nl, out, new) if Proto.UNIX in self.query.protos else []
        finally:
            nl.close()
        if len(records) < reports:  # a socket reported twice (the table moved meanwhile)
            out = list({id(s): s for s in out}.values())
        gone = [s for s in previous.values() if s is not _REJECTED and id(s) not in moved]
        by_cookie = self._by_cookie
        for sock in gone:
            if by_cookie.get(sock.cookie) is sock:
                del by_cookie[sock.cookie]
        self._records = records
        self._counting_down = counting_down
        self._forget_rejected(len(out))
        self.reused = len(out) - len(new)
        return Collected(Snapshot(sockets=out, taken_at=taken_at, source=Source.NETLINK),
                         new, gone + unix_gone)

    def _match(self, found: list[bytes], proto: Proto, previous: dict[bytes, object],
               counting_down: dict[bytes, bytes], new: list[Socket],
               moved: set[int]) -> list:
        """The Socket (or _REJECTED) of each report of one dump, in order.

        A report equal, byte for byte, to one of the previous refresh's is the same
        socket with nothing changed (same cookie, state, inode, queues, timer): its
        Socket is taken out of `previous` through a dict look-up run in C, with no
        Python code per socket. Of the others, those that differ only in their timer's
        countdown (a TIME_WAIT's moves every refresh) are found the same way, in C, by
        the report without it, and get their new timer_ms; only what is left (new
        sockets, a state change, moving queues) is looked at one by one."""
        hits = list(map(previous.pop, found, repeat(None)))
        misses = list(compress(range(len(found)), map(is_, hits, repeat(None))))
        self.unchanged += len(found) - len(misses)
        if not misses:
            return hits
        changed = list(compress(found, map(is_, hits, repeat(None))))
        packed, steady = _without_countdown(changed)
        counting_down.update(zip(steady, changed, strict=True))
        counted = list(map(previous.pop, map(self._counting_down.get, steady),
                           repeat(None)))
        # the new countdowns, set in C on the sockets found so
        is_socket = list(map(is_, map(type, counted), repeat(Socket)))
        expires = memoryview(packed).cast("I")[_EXPIRES_AT // 4::RECORD // 4]
        deque(map(_SET_TIMER_MS, compress(counted, is_socket),
                  compress(expires, is_socket)), 0)
        for i, sock in zip(misses, counted, strict=True):
            hits[i] = self._one(found[i], proto, new, moved) if sock is None else sock
        return hits

    def _one(self, record: bytes, proto: Proto, new: list[Socket], moved: set[int]):
        """The socket reported by `record`: the previous refresh's object updated in
        place when its cookie, state and inode are the same, else a new one (added to
        `new`); _REJECTED when the query does not want it."""
        f = _UNPACK_MSG(record, _HEADER)
        cookie = f[_COOKIE0] | (f[_COOKIE1] << 32)
        state = f[_STATE]
        sock = self._by_cookie.get(cookie)
        if sock is not None and sock.state == state and sock.inode == f[_INODE] \
                and sock.proto is proto:
            sock.recv_q = f[_RQUEUE]
            sock.send_q = f[_WQUEUE]
            sock.timer = _TIMERS.get(f[_TIMER], _TIMER_OFF)
            sock.timer_ms = f[_EXPIRES]
            sock.retransmits = f[_RETRANS]
            moved.add(id(sock))
            return sock
        rejected = self._rejected
        if rejected.get(cookie) == state:
            return _REJECTED
        message = bytearray(record)
        _U32.pack_into(message, 0, len(message))  # nlmsg_len: the record alone
        msg_type = _MSG_TYPE.unpack_from(record, 4)[0]
        addresses = self._both_families if msg_type == netlink.TCPDIAG_GETSOCK \
            else self._addresses[f[_FAMILY]]
        built: list[Socket] = []
        netlink.parse_messages(message, proto, addresses, built)
        if built and self.query.matches(built[0]):
            new.append(built[0])
            rejected.pop(cookie, None)
            self._by_cookie[cookie] = built[0]
            return built[0]
        rejected[cookie] = state
        return _REJECTED

    def _unix(self, nl, out: list[Socket], new: list[Socket]) -> list[Socket]:
        """UNIX sockets: a unix_diag dump (few, next to a big TCP table), each one matched
        to the previous refresh's by cookie so that its owner stays named. Returns the
        previous refresh's UNIX sockets that are gone."""
        from sockstat.collect import unix

        previous = {s.cookie: s for s in self.unix_sockets}
        now: list[Socket] = []
        for sock in unix.dump(self.query.kernel_states(Proto.UNIX), nl=nl):
            if not self.query.matches(sock):
                continue
            old = previous.get(sock.cookie)
            if old is not None and old.state == sock.state and old.inode == sock.inode:
                old.recv_q, old.send_q = sock.recv_q, sock.send_q
                sock = old
                del previous[sock.cookie]
            else:
                new.append(sock)
            now.append(sock)
        self.unix_sockets = now
        out.extend(now)
        return list(previous.values())

    def _forget_rejected(self, in_view: int) -> None:
        # A rejected cookie that is gone stays in the map; bound its size.
        if len(self._rejected) > 4 * max(in_view, 1024):
            self._rejected.clear()


def _without_countdown(records: list[bytes]) -> tuple[bytearray, list[bytes]]:
    """(the records packed, each record with its timer's countdown zeroed), in C: a
    TIME_WAIT's report differs from its last one by that alone."""
    packed = bytearray(b"".join(records))
    steady = bytearray(packed)
    view = memoryview(steady).cast("I")
    view[_EXPIRES_AT // 4::RECORD // 4] = memoryview(bytes(4 * len(records))).cast("I")
    view.release()
    return packed, _each_record().findall(steady)


@functools.cache
def _each_record():  # noqa: N802 (a compiled constant, made on first use)
    import re  # here: `re` is ~8 ms of start-up, and a one-shot listing needs none

    return re.compile(b"(?s).{%d}" % RECORD)
