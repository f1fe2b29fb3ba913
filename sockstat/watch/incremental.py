"""collect(), again and again: the socket table refreshed at the cost of what changed.

At 100k sockets a full collect() spends ~90% of its time building Socket objects in
Python (the kernel's dump itself is ~0.1 s of system time). Between two refreshes most
sockets are the same ones in the same state, so this collector keeps the previous
refresh's Socket objects, and an unchanged socket costs it no Python code and no
object of its own:

- the dumps come from sockstat.collect.netlink.dump (strided=True): a batch whose
  reports are all one length (all full sockets, or all TIME_WAIT mini-sockets) is a
  strided array, used as it came; one that mixes them is compacted to RECORDs (in C).
  TCP's TIME_WAIT sockets come in the same dump as the others: a dump of their own
  would walk the kernel's whole TCP hash once more (~0.3 us a socket in it, more than
  compacting the mixed batches costs);
- the reports are cut into blocks where a socket's cookie ends in 6 zero bits (~64
  sockets a block; where a block starts depends on its own sockets, so a socket that
  comes or goes changes its block only). A block equal byte for byte to the last
  refresh's block with the same first socket, timer countdowns aside (zeroed in place,
  then set from the reports in C), is the same sockets with nothing changed: its
  Socket list is reused after one comparison;
- a changed block is matched report by report (in C) with that block; what is left is
  looked up by cookie, and updated in place (queues, timer, retransmits) when its state,
  inode and ends are the same. Only new sockets, and those whose state or ends changed, go through
  the real parser (netlink.parse_messages) and the query's matching. Sockets the query
  rejected are remembered in their blocks, so a narrow filter over a big table stays
  cheap.

The kernel's dump costs ~1.5 us a socket of system time, most of what a refresh of a
big table costs. Part of it is not the sockets reported: asked for BOUND_INACTIVE
sockets (bound, neither listening nor connecting; shown as UNCONN), the kernel walks its
bind hash, where every bound socket is (accepted connections too), ~0.25 us a socket
however few are inactive. So collect(bound=False) leaves that walk out when it cannot
have found anything new: the last walk found none, the namespace's count of sockets
(/proc/net/sockstat's `sockets: used`) is the same as then, and no TCP socket with a
file left the view (a reset connection whose fd is still open becomes one). What is
left unseen is a socket bound while that count did not move: created before a walk and
bound after it, or created and bound while another socket closed; the caller walks
again now and then (watch: with each run of the detectors).

Consequences callers rely on: Socket objects are shared between consecutive
snapshots and mutated in place (a previous Snapshot's sockets show the latest queues);
Socket.process set on a socket survives into the next refresh; `new` lists the sockets
that were (re)built this time, which are the only ones that need attribution, and
`gone` the last refresh's that are not there any more (what Tracker.update's Changes
are made of).

Without netlink (other OSes, /proc or psutil sources, a kernel without udp_diag) it
falls back to plain collect(), and every socket counts as new (gone: None).
"""

from __future__ import annotations

import functools
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass
from itertools import compress, groupby, repeat
from operator import is_, is_not, itemgetter

from sockstat.collect import collect, dumps, kernel_port_program, netlink, port_filter_for
from sockstat.errors import ParseError, SourceUnavailable
from sockstat.model import Proto, Snapshot, Socket, Source, TcpState, Timer
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
_SPORT = _FIELD["idiag_sport"]
_DPORT = _FIELD["idiag_dport"]
_SRC = _FIELD["idiag_src"]
_DST = _FIELD["idiag_dst"]
_IF = _FIELD["idiag_if"]
_TIMERS = {t.value: t for t in Timer}
_TIMER_OFF = Timer.OFF  # (an enum member looked up once: 0.4 us per lookup on 3.11)
_HEADER = netlink.NLMSGHDR.size
_UNPACK_MSG = netlink.INET_DIAG_MSG.unpack_from
_REJECTED = object()  # a report the query does not want (remembered, not rebuilt)
RECORD = netlink.RECORD
_EXPIRES_AT = netlink.AT["idiag_expires"]  # the timer's countdown in a report
_STATE_AT = netlink.AT["idiag_state"]
_CLOSE = TcpState.CLOSE.value
_TIMER_AT = netlink.AT["idiag_timer"]
_COOKIE_AT = netlink.AT["idiag_cookie0"]  # the cookie's 8 bytes
# a report's two ends (ports, addresses) and bound device: a UDP socket connect()ed again
# (or bound to a device) keeps its cookie, inode and state but not these
_ENDS = slice(netlink.AT["idiag_sport"], netlink.AT["idiag_cookie0"])
# the cookie's lowest byte (host order): a block starts where its 6 low bits are 0
_COOKIE_LOW = _COOKIE_AT if sys.byteorder == "little" else _COOKIE_AT + 3
_BLOCK_START = bytes(0 if n & 63 == 0 else 1 for n in range(256))
# what differs between two reports of an unchanged socket: the timer's countdown (set
# from each report anyway). Not the request's sequence number (always 1) nor its port
# id: one netlink socket serves the collector's every refresh
assert _EXPIRES_AT % 4 == 0  # zeroed as a u32 column
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
        # the last refresh's blocks: (stride, first cookie) -> (the block's reports
        # without their countdowns, the Socket (or _REJECTED) of each)
        self._blocks: dict[tuple[int, bytes], tuple[bytes, list]] = {}
        # ... and each segment (stride, first cookie, count) -> (its reports, countdowns
        # zeroed; its (key, block) pairs)
        self._segments: dict[tuple, tuple[bytearray, list]] = {}
        # the TCP/UDP sockets in view by cookie, kept up to date with what comes and
        # goes: what a report no block matched is looked up by
        self._by_cookie: dict[int, Socket] = {}
        self.unix_sockets: list[Socket] = []  # the last refresh's UNIX sockets
        # cookie -> (state, ends) it was rejected with
        self._rejected: dict[int, tuple[int, bytes]] = {}
        self._rejects_kept = False  # some block holds a _REJECTED (left out of the view)
        self._both_families = netlink.BothFamilies()  # TCP's one-walk dump
        self._addresses = {af: netlink.AddressCache(af)
                           for af in (socket.AF_INET, socket.AF_INET6)}
        # the bind hash's walk (see the module's docstring): sockets.used at the last
        # walk (None: no walk yet), whether it reported a bound-inactive socket, and
        # whether a TCP socket with a file left the view since
        self._used_at_walk: int | None = None
        self._bound_seen = False
        self._files_gone = False
        self.walked = True  # the last refresh walked the bind hash (for tests)
        self._nl = None  # the netlink socket of every refresh (see _socket)
        self.reused = 0  # sockets reused by the last refresh (for tests and the benchmark)
        self.unchanged = 0  # ... of which in unchanged blocks (no Python code each)

    def collect(self, *, bound: bool = True) -> Collected:
        """The table now. bound=False: the bound-inactive sockets may be taken as the
        last walk of the kernel's bind hash left them, where nothing says they changed
        (module docstring)."""
        if self.incremental:
            try:
                return self._collect_netlink(bound)
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

    def _collect_netlink(self, bound: bool) -> Collected:
        taken_at = time.time()
        self.unchanged = 0
        refresh = _Refresh(self._blocks)
        port_filter = port_filter_for(self.query)
        bytecode = kernel_port_program(self.query)  # the kernel skips other ports
        nl = self._socket()
        try:
            used = sockets_used(self.procfs) if _every_tcp_state(self.query) else None
            walk = refresh.walking = bound or used is None or self._bound_seen \
                or self._files_gone or used != self._used_at_walk
            for proto, family, states in dumps(self.query):
                if not walk and proto is Proto.TCP:
                    states = states - _BOUND
                pieces: list[tuple[int, bytes]] = []
                netlink.dump(family, proto, states, port_filter=port_filter,
                             bytecode=bytecode, nl=nl, out=pieces, tally=True,
                             strided=True)
                for stride, data in _joined(pieces):
                    self._segment(stride, data, proto, refresh)
            unix_gone = self._unix(nl, refresh.out, refresh.new) \
                if Proto.UNIX in self.query.protos else []
        except BaseException:
            self.close()  # a dump left half read: the next refresh starts afresh
            raise
        out, new = refresh.out, refresh.new
        if refresh.twice:  # a socket reported twice (the table moved during the dump)
            out = list({id(s): s for s in out}.values())
        gone = refresh.gone()
        by_cookie = self._by_cookie
        for sock in gone:
            if by_cookie.get(sock.cookie) is sock:
                del by_cookie[sock.cookie]
        self._blocks = refresh.blocks
        self._segments = refresh.segments
        self._forget_rejected(len(out))
        self.walked = walk
        if walk:
            self._used_at_walk, self._bound_seen, self._files_gone = \
                used, refresh.bound_seen, False
        # a connection reset while its fd stays open is bound-inactive: walk again
        self._files_gone = self._files_gone or any(
            s.inode and s.proto is Proto.TCP for s in gone)
        self.reused = len(out) - len(new)
        return Collected(Snapshot(sockets=out, taken_at=taken_at, source=Source.NETLINK),
                         new, gone + unix_gone)

    def _socket(self):
        """The netlink socket every refresh dumps with: one for the collector's life,
        so that its reports' port id does not move (and no socket is made and freed
        per refresh)."""
        if self._nl is None:
            self._nl = netlink.open_socket()
        return self._nl

    def close(self) -> None:
        """Close the netlink socket (the next refresh opens another)."""
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _segment(self, stride: int, data: bytearray, proto: Proto,
                 refresh: _Refresh) -> None:
        """The sockets of `data`, reports of `stride` bytes each, in order (`data` is
        changed: the timers' countdowns are zeroed).

        The reports are cut into blocks where a socket's cookie ends in 6 zero bits (so
        ~64 sockets a block, and where a block starts depends on the sockets alone, not
        on what came before: a socket that comes or goes changes its own block only).
        A block equal, byte for byte, to the last refresh's block with the same first
        socket (but for the timers' countdowns, set afterwards) is the same sockets
        with nothing changed: its Socket list is reused after one comparison (memcmp),
        with no Python code per socket. The sockets of a changed block are matched
        report by report (in C) with that block's, and what is left by cookie. A whole
        segment equal to the last refresh's (an idle table) takes its blocks at once."""
        count = len(data) // stride
        if refresh.walking and proto is Proto.TCP and not refresh.bound_seen:
            # a TCP report in state CLOSE: a bound-inactive socket (from the bind hash)
            refresh.bound_seen = _CLOSE in data[_STATE_AT::stride]
        words = memoryview(data).cast("I")
        step = stride // 4
        # the countdowns (set on the sockets with a timer once they are found), then the
        # fields that move zeroed in place: what is compared from here on
        timed = data[_TIMER_AT::stride]
        countdowns = list(compress(words[_EXPIRES_AT // 4::step], timed)) \
            if timed.count(0) != count else None
        if countdowns is not None:
            words[_EXPIRES_AT // 4::step] = memoryview(bytes(4 * count)).cast("I")
        words.release()
        old, blocks, out = refresh.old, refresh.blocks, refresh.out
        first = len(out)
        # the whole segment as it was (an idle table): its blocks as they were, at once
        whole = (stride, bytes(data[_COOKIE_AT:_COOKIE_AT + 8]), count)
        before = self._segments.get(whole)
        if before is not None and before[0] == data:
            pairs = before[1]
            deque(map(old.pop, map(_KEY, pairs), repeat(None)), 0)
            blocks.update(pairs)
            for _, (_, found) in pairs:
                out.extend(found)
            self.unchanged += count
        else:
            pairs = self._blocks_of(data, stride, count, proto, refresh)
        refresh.segments[whole] = (data, pairs)
        mine = out[first:]
        if countdowns is not None:  # set in C
            socks = list(compress(mine, timed))
            wanted = list(map(is_, map(type, socks), repeat(Socket)))
            deque(map(_SET_TIMER_MS, compress(socks, wanted), compress(countdowns, wanted)),
                  0)
        if self._rejects_kept:  # the query's rejects are kept in their blocks, not shown
            del out[first:]
            out.extend(compress(mine, map(is_not, mine, repeat(_REJECTED))))

    def _blocks_of(self, data: bytearray, stride: int, count: int, proto: Proto,
                   refresh: _Refresh) -> list:
        """The segment block by block (see _segment); returns its (key, block) pairs."""
        marks = data[_COOKIE_LOW::stride].translate(_BLOCK_START)
        starts = [0]
        at = marks.find(0, 1)
        while at != -1:
            starts.append(at)
            at = marks.find(0, at + 1)
        starts.append(count)
        old, blocks, out = refresh.old, refresh.blocks, refresh.out
        pairs = []
        for a, b in zip(starts, starts[1:]):  # noqa: B905 (starts[1:] is one shorter)
            chunk = bytes(data[a * stride:b * stride])
            key = (stride, chunk[_COOKIE_AT:_COOKIE_AT + 8])
            before = old.pop(key, None)
            if before is not None and before[0] == chunk:
                found = before[1]
                self.unchanged += b - a
            else:
                found = self._changed(chunk, stride, before, data, a, proto, refresh)
            if key in blocks:
                refresh.twice = True
            block = blocks[key] = (chunk, found)
            pairs.append((key, block))
            out.extend(found)
        return pairs

    def _changed(self, chunk: bytes, stride: int, before, data: bytearray, start: int,
                 proto: Proto, refresh: _Refresh) -> list:
        """The Socket (or _REJECTED) of each report of a changed block: matched report by
        report with the last refresh's block of the same first socket (in C), the rest
        by cookie (updated in place) or built."""
        records = _split(chunk, stride)
        if before is not None:
            was = dict(zip(_split(before[0], stride), before[1], strict=True))
            found = list(map(was.pop, records, repeat(None)))
            refresh.left.extend(was.values())
        else:
            found = [None] * len(records)
        for i in compress(range(len(found)), map(is_, found, repeat(None))):
            found[i] = self._one(data, (start + i) * stride, proto, refresh)
        return found

    def _one(self, data: bytearray, offset: int, proto: Proto, refresh: _Refresh):
        """The socket reported at data[offset:]: the previous refresh's object updated
        in place when its cookie, state and inode are the same, else a new one (added
        to `new`); _REJECTED when the query does not want it."""
        f = _UNPACK_MSG(data, offset + _HEADER)
        cookie = f[_COOKIE0] | (f[_COOKIE1] << 32)
        state = f[_STATE]
        sock = self._by_cookie.get(cookie)
        if sock is not None and sock.state == state and sock.inode == f[_INODE] \
                and sock.proto is proto and self._same_ends(sock, f):
            sock.recv_q = f[_RQUEUE]
            sock.send_q = f[_WQUEUE]
            sock.timer = _TIMERS.get(f[_TIMER], _TIMER_OFF)
            sock.timer_ms = f[_EXPIRES]
            sock.retransmits = f[_RETRANS]
            refresh.placed.add(id(sock))
            return sock
        rejected = self._rejected
        seen = (state, bytes(data[offset + _ENDS.start:offset + _ENDS.stop]))
        if rejected.get(cookie) == seen:
            return _REJECTED
        message = bytearray(data[offset:offset + RECORD])
        _U32.pack_into(message, 0, RECORD)  # nlmsg_len: the report without attributes
        msg_type = _MSG_TYPE.unpack_from(message, 4)[0]
        addresses = self._both_families if msg_type == netlink.TCPDIAG_GETSOCK \
            else self._addresses[f[_FAMILY]]
        built: list[Socket] = []
        netlink.parse_messages(message, proto, addresses, built)
        if built and self.query.matches(built[0]):
            refresh.new.append(built[0])
            rejected.pop(cookie, None)
            self._by_cookie[cookie] = built[0]
            return built[0]
        rejected[cookie] = seen
        self._rejects_kept = True
        return _REJECTED

    def _same_ends(self, sock: Socket, f: tuple) -> bool:
        """Whether the report `f` (unpacked) has `sock`'s ports, addresses and device."""
        addresses = self._addresses[f[_FAMILY]]
        return sock.interface == f[_IF] and sock.local.port == socket.ntohs(f[_SPORT]) \
            and sock.remote.port == socket.ntohs(f[_DPORT]) \
            and sock.remote.address == addresses[f[_DST]] \
            and sock.local.address == addresses[f[_SRC]]

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
            # a socket connect()ed again (datagram) keeps its cookie, inode and state:
            # reused only with the same peer, else a new one (as a UDP socket's ends)
            if old is not None and old.state == sock.state and old.inode == sock.inode \
                    and old.remote == sock.remote and old.unix == sock.unix:
                old.recv_q, old.send_q = sock.recv_q, sock.send_q
                sock = old
                del previous[sock.cookie]
            else:
                new.append(sock)
            now.append(sock)
        self.unix_sockets = now
        out.extend(now)
        return list(previous.values())

    def by_cookie(self) -> dict[int, Socket] | None:
        """The last refresh's TCP and UDP sockets by cookie (do not modify); None when
        it was a plain collect()."""
        return self._by_cookie if self.incremental else None

    def _forget_rejected(self, in_view: int) -> None:
        # A rejected cookie that is gone stays in the map; bound its size.
        if len(self._rejected) > 4 * max(in_view, 1024):
            self._rejected.clear()


class _Refresh:
    """What one refresh of the collector gathers as it goes."""

    def __init__(self, old: dict) -> None:
        self.old = old  # the last refresh's blocks, taken out as they are found again
        self.blocks: dict[tuple[int, bytes], tuple[bytes, list]] = {}
        self.segments: dict[tuple, tuple[bytearray, list]] = {}
        self.out: list = []
        self.new: list[Socket] = []
        self.left: list = []  # sockets of changed blocks that their block lost
        self.placed: set[int] = set()  # ids of sockets found again by cookie
        self.twice = False
        self.walking = True  # the kernel's bind hash is walked this time
        self.bound_seen = False  # a bound-inactive socket was reported

    def gone(self) -> list[Socket]:
        """The last refresh's sockets that this one did not find."""
        left = self.left + [s for _, found in self.old.values() for s in found]
        placed = self.placed
        return [s for s in left if s is not _REJECTED and id(s) not in placed]


_BOUND = frozenset({TcpState.BOUND_INACTIVE})
_ALL_BUT_BOUND = frozenset(TcpState) - _BOUND
_KEY = itemgetter(0)


def _every_tcp_state(query: Query) -> bool:
    """Whether the query wants TCP sockets in every state (no state filter): only then
    may the bind hash's walk be left out, since a socket that becomes bound-inactive
    from a connection was in view before (its leaving tells)."""
    return Proto.TCP in query.protos and query.kernel_states(Proto.TCP) >= _ALL_BUT_BOUND


def _joined(pieces: list[tuple[int, bytes]]):
    """Consecutive pieces of the same stride as one (a block may span two batches)."""
    for stride, group in groupby(pieces, key=itemgetter(0)):
        yield stride, bytearray().join(map(itemgetter(1), group))


def sockets_used(procfs: str = "/proc") -> int | None:
    """How many sockets this network namespace has (every family; /proc/net/sockstat's
    `sockets: used`), None when it cannot be read."""
    from sockstat.collect.kernel import SOCKSTAT_FILES, read_sockstat

    try:  # sockstat6 has no `sockets:` line: one file is read
        return read_sockstat(procfs, SOCKSTAT_FILES[:1]).get("sockets.used")
    except (OSError, ParseError):
        return None


def _split(chunk: bytes, stride: int) -> list[bytes]:
    """The reports of a strided chunk, each its own bytes (in C)."""
    return _each(stride).findall(chunk)


@functools.cache
def _each(stride: int):
    import re  # here: `re` is ~8 ms of start-up, and a one-shot listing needs none

    return re.compile(b"(?s).{%d}" % stride)
