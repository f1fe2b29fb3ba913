"""The netlink source: a sock_diag (NETLINK_SOCK_DIAG) dump, written with the stdlib.

This is how `ss` reads the socket table, and it is the fastest way there is: one dump
request per (family, protocol), answered in 32 KiB batches, with the state filter applied
inside the kernel (the `idiag_states` bitmask) so that a `--state time-wait` query never
copies the other 100k sockets to user space.

Why hand-written and not pyroute2: pyroute2's DiagSocket was measured 40x slower than
`ss` on a 100k-socket table and costs ~300 ms just to import. The wire format is small
and stable (include/uapi/linux/inet_diag.h, sock_diag.h, netlink.h, tcp.h), so it is
declared here once, as (name, format) field lists in C order, and parsed with
precompiled `struct.Struct`s.

Pure parsing (`parse_messages`) is separate from the I/O (`dump`), so that the parser is
tested on captured bytes, including truncated and malformed ones.
"""

from __future__ import annotations

# the C module that socket.py wraps: everything used here, without socket.py's enums and
# selectors (~13M instructions of start-up)
import _socket as socket
import errno as errno_mod
import functools
import itertools
import operator
import os
import struct
import sys
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from itertools import compress, repeat

from sockstat.errors import ParseError, PermissionDenied, SourceUnavailable
from sockstat.model import Endpoint, Family, Proto, SkMemInfo, Socket, TcpState, Timer

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from sockstat.tcpinfo import TcpInfo

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
# The original TCP request (struct inet_diag_req): it asks for both address families at
# once (the kernel dumps it as AF_UNSPEC), so one walk of the TCP hash serves IPv4 and
# IPv6; the replies carry this type and the usual inet_diag_msg.
TCPDIAG_GETSOCK = 18
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
INET_DIAG_INFO = 2  # attribute carrying struct tcp_info
INET_DIAG_CONG = 4  # attribute carrying the congestion control's name ("cubic\\0")
INET_DIAG_SKMEMINFO = 7  # attribute carrying __u32 sk_meminfo[SK_MEMINFO_VARS]
INET_DIAG_REQ_BYTECODE = 1  # request attribute: a filter program the kernel runs
INET_DIAG_BC_JMP = 1  # always takes its `no` jump
INET_DIAG_BC_S_EQ = 11  # local port == next op's `no`
INET_DIAG_BC_D_EQ = 12  # remote port == next op's `no`
MAX_BYTECODE_TESTS = 1024
# A batch is at most 32 KiB (the kernel sizes dump skbs from the reader's buffer); a
# small buffer would get MSG_TRUNC and silently lose the rest of each batch.
RECV_BUFFER = 64 * 1024


def _declare(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct("=" + "".join(fmt for _, fmt in fields))


# struct nlmsghdr (linux/netlink.h)
NLMSGHDR_FIELDS = (
    ("nlmsg_len", "I"), ("nlmsg_type", "H"), ("nlmsg_flags", "H"),
    ("nlmsg_seq", "I"), ("nlmsg_pid", "I"),
)
# struct inet_diag_sockid (linux/inet_diag.h). Ports and addresses are big-endian
# (network order); interface and cookie are host order.
INET_DIAG_SOCKID_FIELDS = (
    ("idiag_sport", "H"), ("idiag_dport", "H"), ("idiag_src", "16s"), ("idiag_dst", "16s"),
    ("idiag_if", "I"), ("idiag_cookie0", "I"), ("idiag_cookie1", "I"),
)
# struct inet_diag_req_v2
INET_DIAG_REQ_V2_FIELDS = (
    ("sdiag_family", "B"), ("sdiag_protocol", "B"), ("idiag_ext", "B"), ("pad", "B"),
    ("idiag_states", "I"), *INET_DIAG_SOCKID_FIELDS,
)
# struct inet_diag_req (the TCPDIAG_GETSOCK request)
INET_DIAG_REQ_FIELDS = (
    ("idiag_family", "B"), ("idiag_src_len", "B"), ("idiag_dst_len", "B"),
    ("idiag_ext", "B"), *INET_DIAG_SOCKID_FIELDS, ("idiag_states", "I"), ("idiag_dbs", "I"),
)
# struct inet_diag_msg
INET_DIAG_MSG_FIELDS = (
    ("idiag_family", "B"), ("idiag_state", "B"), ("idiag_timer", "B"), ("idiag_retrans", "B"),
    *INET_DIAG_SOCKID_FIELDS,
    ("idiag_expires", "I"), ("idiag_rqueue", "I"), ("idiag_wqueue", "I"), ("idiag_uid", "I"),
    ("idiag_inode", "I"),
)
# struct rtattr
RTATTR_FIELDS = (("rta_len", "H"), ("rta_type", "H"))
# struct tcp_info (linux/tcp.h), in full as of Linux 6.x. Kernels send as much of it as
# they know (104 bytes on 2.6, 248 on 6.8+, more on newer ones): fields past the
# received length are absent (None), never zero. The first 104 bytes (up to
# tcpi_total_retrans) are in every kernel; shorter payloads are rejected.
TCP_INFO_FIELDS = (
    ("tcpi_state", "B"), ("tcpi_ca_state", "B"), ("tcpi_retransmits", "B"),
    ("tcpi_probes", "B"), ("tcpi_backoff", "B"), ("tcpi_options", "B"), ("tcpi_wscale", "B"),
    ("tcpi_flags", "B"),  # bit 0: tcpi_delivery_rate_app_limited
    ("tcpi_rto", "I"), ("tcpi_ato", "I"), ("tcpi_snd_mss", "I"), ("tcpi_rcv_mss", "I"),
    ("tcpi_unacked", "I"), ("tcpi_sacked", "I"), ("tcpi_lost", "I"), ("tcpi_retrans", "I"),
    ("tcpi_fackets", "I"),
    ("tcpi_last_data_sent", "I"), ("tcpi_last_ack_sent", "I"), ("tcpi_last_data_recv", "I"),
    ("tcpi_last_ack_recv", "I"),
    ("tcpi_pmtu", "I"), ("tcpi_rcv_ssthresh", "I"), ("tcpi_rtt", "I"), ("tcpi_rttvar", "I"),
    ("tcpi_snd_ssthresh", "I"), ("tcpi_snd_cwnd", "I"), ("tcpi_advmss", "I"),
    ("tcpi_reordering", "I"), ("tcpi_rcv_rtt", "I"), ("tcpi_rcv_space", "I"),
    ("tcpi_total_retrans", "I"),
    # -- 104 bytes: everything below arrived later, in this order
    ("tcpi_pacing_rate", "Q"), ("tcpi_max_pacing_rate", "Q"),  # 3.15
    ("tcpi_bytes_acked", "Q"), ("tcpi_bytes_received", "Q"),  # 4.1
    ("tcpi_segs_out", "I"), ("tcpi_segs_in", "I"),  # 4.2
    ("tcpi_notsent_bytes", "I"), ("tcpi_min_rtt", "I"),  # 4.6
    ("tcpi_data_segs_in", "I"), ("tcpi_data_segs_out", "I"),
    ("tcpi_delivery_rate", "Q"),  # 4.9
    ("tcpi_busy_time", "Q"), ("tcpi_rwnd_limited", "Q"), ("tcpi_sndbuf_limited", "Q"),  # 4.10
    ("tcpi_delivered", "I"), ("tcpi_delivered_ce", "I"),  # 4.18
    ("tcpi_bytes_sent", "Q"), ("tcpi_bytes_retrans", "Q"),  # 4.19
    ("tcpi_dsack_dups", "I"), ("tcpi_reord_seen", "I"),
    ("tcpi_rcv_ooopack", "I"),  # 5.4
    ("tcpi_snd_wnd", "I"),  # 5.4
    ("tcpi_rcv_wnd", "I"), ("tcpi_rehash", "I"),  # 6.2
    ("tcpi_total_rto", "H"), ("tcpi_total_rto_recoveries", "H"),  # 6.7
    ("tcpi_total_rto_time", "I"),
)
TCP_INFO_MIN_SIZE = 104  # up to tcpi_total_retrans: what every kernel sends
UNLIMITED_RATE = (1 << 64) - 1  # ~0ULL: "no pacing limit"

NLMSGHDR = _declare(NLMSGHDR_FIELDS)
INET_DIAG_REQ_V2 = _declare(INET_DIAG_REQ_V2_FIELDS)
INET_DIAG_REQ = _declare(INET_DIAG_REQ_FIELDS)
INET_DIAG_MSG = _declare(INET_DIAG_MSG_FIELDS)
RTATTR = _declare(RTATTR_FIELDS)
TCP_INFO = _declare(TCP_INFO_FIELDS)
_HEADER_AND_MSG = _declare(NLMSGHDR_FIELDS + INET_DIAG_MSG_FIELDS)
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_U32X4 = struct.Struct("=4I")
LEN_TYPE = struct.Struct("=IH")  # nlmsghdr's length and type: how every reply message starts
assert INET_DIAG_REQ_V2.size == 56 and INET_DIAG_MSG.size == 72 and TCP_INFO.size == 248
assert INET_DIAG_REQ.size == 60

_STATES = {s.value: s for s in TcpState}
_FAMILIES = {socket.AF_INET: Family.INET, socket.AF_INET6: Family.INET6}
_TIMERS = {t.value: t for t in Timer}
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


class AddressCache(dict):
    """Raw address bytes -> printable text. Hosts have few distinct addresses and many
    sockets, so a dict lookup beats calling inet_ntop 200k times."""

    by_family: dict | None = None  # BothFamilies: one cache per address family

    def __init__(self, family: int) -> None:
        super().__init__()
        self.family = family

    def __missing__(self, raw: bytes) -> str:
        if self.family == socket.AF_INET:
            text = socket.inet_ntop(socket.AF_INET, raw[:4])
        elif raw[:12] == _V4_MAPPED_PREFIX:  # ::ffff:127.0.0.1 is shown as 127.0.0.1
            text = socket.inet_ntop(socket.AF_INET, raw[12:16])
        else:
            text = socket.inet_ntop(socket.AF_INET6, raw)
        self[raw] = text
        return text


class BothFamilies(AddressCache):
    """The caches of a dump of both families (TCPDIAG_GETSOCK): the same 16 raw bytes
    are one address as IPv4 and another as IPv6, so each message picks its family's."""

    def __init__(self) -> None:
        super().__init__(socket.AF_UNSPEC)
        self.by_family = {socket.AF_INET: AddressCache(socket.AF_INET),
                          socket.AF_INET6: AddressCache(socket.AF_INET6)}


# struct inet_diag_bc_op: a test, then where to jump (in bytes) if it holds or not
INET_DIAG_BC_OP = _declare((("code", "B"), ("yes", "B"), ("no", "H")))


def port_bytecode(groups: list[list[tuple[int, int]]]) -> bytes | None:
    """A sock_diag filter program: every group must match (AND); a group matches when
    any of its (op, port) tests holds (OR), op being INET_DIAG_BC_S_EQ or _D_EQ. None
    when there is nothing to push down or the program would be too long (the caller
    filters in user space anyway, so the program only saves copying).

    How the kernel runs it, per socket: each op says where to go next in bytes, `yes`
    when its test holds and `no` when not; landing exactly on the end accepts, 4 bytes
    past it rejects. Its verifier walks the `yes` chain only and requires every `no`
    target to lie on it, so `yes` always steps to the next op and the jumps are `no`s:

        [test 1][JMP to group end][test 2][JMP to group end] ... [test n]
        test i:  yes -> its JMP (match: leave the group);  no -> test i+1
        test n:  yes -> next group;  no -> reject
    A port test is two 4-byte ops: the second only carries the port in its `no` field.
    """
    groups = [g for g in groups if g]
    tests = sum(len(g) for g in groups)
    if not tests or tests > MAX_BYTECODE_TESTS:
        return None
    total = sum(len(g) * 12 - 4 for g in groups)
    program = bytearray()
    for group in groups:
        group_end = len(program) + len(group) * 12 - 4
        for i, (code, port) in enumerate(group):
            here = len(program)
            if i == len(group) - 1:
                program += INET_DIAG_BC_OP.pack(code, 8, total + 4 - here)
                program += INET_DIAG_BC_OP.pack(0, 0, port)
            else:
                program += INET_DIAG_BC_OP.pack(code, 8, 12)
                program += INET_DIAG_BC_OP.pack(0, 0, port)
                jmp_at = len(program)
                program += INET_DIAG_BC_OP.pack(INET_DIAG_BC_JMP, 4, group_end - jmp_at)
    assert len(program) == total
    return bytes(program)


def build_request(family: int, protocol: int, states: int, ext: int = 0, seq: int = 1,
                  bytecode: bytes | None = None) -> bytes:
    """The bytes of one SOCK_DIAG_BY_FAMILY dump request (with an optional filter)."""
    body = INET_DIAG_REQ_V2.pack(family, protocol, ext, 0, states, 0, 0, b"", b"", 0,
                                 0xFFFFFFFF, 0xFFFFFFFF)  # cookie: INET_DIAG_NOCOOKIE
    return _dump_request(SOCK_DIAG_BY_FAMILY, body, seq, bytecode)


def build_both_families_request(states: int, ext: int = 0, seq: int = 1,
                                bytecode: bytes | None = None) -> bytes:
    """The bytes of one TCPDIAG_GETSOCK dump request: TCP, IPv4 and IPv6 together."""
    body = INET_DIAG_REQ.pack(socket.AF_UNSPEC, 0, 0, ext, 0, 0, b"", b"", 0,
                              0xFFFFFFFF, 0xFFFFFFFF, states, 0)
    return _dump_request(TCPDIAG_GETSOCK, body, seq, bytecode)


def _dump_request(msg_type: int, body: bytes, seq: int, bytecode: bytes | None) -> bytes:
    """A dump request's header, its body and the filter program (if any) after it."""
    if bytecode:
        body += RTATTR.pack(RTATTR.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type,
                           NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def state_mask(states) -> int:
    mask = 0
    for state in states:
        mask |= 1 << int(state)
    return mask


def _field_ends() -> tuple[int, ...]:
    ends, offset = [], 0
    for _, fmt in TCP_INFO_FIELDS:
        offset += struct.calcsize("=" + fmt)
        ends.append(offset)
    return tuple(ends)


_TCP_INFO_ENDS = _field_ends()
_TCP_INFO_INDEX = {name: i for i, (name, _) in enumerate(TCP_INFO_FIELDS)}

# TcpInfo attribute <- kernel field, and the unit conversion: "us" microseconds to ms,
# "rate" a pacing rate (~0 means unlimited: None), "flag" bit 0 of tcpi_flags (only
# meaningful when the kernel sends tcpi_delivery_rate). Every other field is as sent.
TCP_INFO_FROM_KERNEL = (
    ("rtt_ms", "tcpi_rtt", "us"), ("rttvar_ms", "tcpi_rttvar", "us"),
    ("snd_cwnd", "tcpi_snd_cwnd", None), ("snd_mss", "tcpi_snd_mss", None),
    ("rcv_mss", "tcpi_rcv_mss", None), ("retransmits", "tcpi_retransmits", None),
    ("total_retrans", "tcpi_total_retrans", None), ("unacked", "tcpi_unacked", None),
    ("lost", "tcpi_lost", None), ("last_data_sent_ms", "tcpi_last_data_sent", None),
    ("last_data_recv_ms", "tcpi_last_data_recv", None),
    ("last_ack_recv_ms", "tcpi_last_ack_recv", None), ("snd_wnd", "tcpi_snd_wnd", None),
    ("rcv_wnd", "tcpi_rcv_wnd", None), ("rcv_space", "tcpi_rcv_space", None),
    ("probes", "tcpi_probes", None), ("backoff", "tcpi_backoff", None),
    ("ca_state", "tcpi_ca_state", None), ("rto_ms", "tcpi_rto", "us"),
    ("ato_ms", "tcpi_ato", "us"), ("sacked", "tcpi_sacked", None),
    ("retrans", "tcpi_retrans", None), ("pmtu", "tcpi_pmtu", None),
    ("rcv_ssthresh", "tcpi_rcv_ssthresh", None), ("snd_ssthresh", "tcpi_snd_ssthresh", None),
    ("advmss", "tcpi_advmss", None), ("reordering", "tcpi_reordering", None),
    ("rcv_rtt_ms", "tcpi_rcv_rtt", "us"), ("pacing_rate", "tcpi_pacing_rate", "rate"),
    ("max_pacing_rate", "tcpi_max_pacing_rate", "rate"),
    ("bytes_acked", "tcpi_bytes_acked", None), ("bytes_received", "tcpi_bytes_received", None),
    ("segs_out", "tcpi_segs_out", None), ("segs_in", "tcpi_segs_in", None),
    ("notsent_bytes", "tcpi_notsent_bytes", None), ("min_rtt_ms", "tcpi_min_rtt", "us"),
    ("data_segs_in", "tcpi_data_segs_in", None), ("data_segs_out", "tcpi_data_segs_out", None),
    ("delivery_rate", "tcpi_delivery_rate", None),
    ("delivery_rate_app_limited", "tcpi_flags", "flag"),
    ("busy_time_ms", "tcpi_busy_time", "us"), ("rwnd_limited_ms", "tcpi_rwnd_limited", "us"),
    ("sndbuf_limited_ms", "tcpi_sndbuf_limited", "us"),
    ("delivered", "tcpi_delivered", None), ("delivered_ce", "tcpi_delivered_ce", None),
    ("bytes_sent", "tcpi_bytes_sent", None), ("bytes_retrans", "tcpi_bytes_retrans", None),
    ("dsack_dups", "tcpi_dsack_dups", None), ("reord_seen", "tcpi_reord_seen", None),
    ("rcv_ooopack", "tcpi_rcv_ooopack", None), ("rehash", "tcpi_rehash", None),
    ("total_rto", "tcpi_total_rto", None),
    ("total_rto_recoveries", "tcpi_total_rto_recoveries", None),
    ("total_rto_time_ms", "tcpi_total_rto_time", None),  # the kernel keeps it in ms
)
# `parse_tcp_info` runs once per socket of a tcp_info dump (100k on a big host): the
# values are picked in TcpInfo's order by one itemgetter (C) and the frozen instance is
# filled through its slots, skipping the frozen __init__'s per-field object.__setattr__
# (a third of the cost). Only the few converted fields are touched in Python.
_PICK = operator.itemgetter(*(_TCP_INFO_INDEX[k] for _, k, _ in TCP_INFO_FROM_KERNEL))
_MICROS = tuple(i for i, (_, _, unit) in enumerate(TCP_INFO_FROM_KERNEL) if unit == "us")
_RATES = tuple(i for i, (_, _, unit) in enumerate(TCP_INFO_FROM_KERNEL) if unit == "rate")
_FLAG = next(i for i, (_, _, unit) in enumerate(TCP_INFO_FROM_KERNEL) if unit == "flag")
_DELIVERY_RATE_END = _TCP_INFO_ENDS[_TCP_INFO_INDEX["tcpi_delivery_rate"]]


@functools.cache
def _tcp_info_class() -> tuple[type, tuple]:
    """TcpInfo and its slots' setters in _PICK's order (then congestion), on first use:
    sockstat.tcpinfo is imported only by reads that decode tcp_info."""
    from sockstat.tcpinfo import TcpInfo

    names = (*(a for a, _, _ in TCP_INFO_FROM_KERNEL), "congestion")
    assert set(names) == set(TcpInfo.__slots__)
    return TcpInfo, tuple(getattr(TcpInfo, name).__set__ for name in names)


def parse_tcp_info(payload: bytes | memoryview, congestion: str | None = None
                   ) -> TcpInfo | None:
    """struct tcp_info bytes (as long as the kernel sent) -> TcpInfo, in the units
    `ss -i` shows: times in ms, sizes in bytes, rates in bytes/s. None when shorter than
    the 104 bytes every kernel sends (a truncated attribute).

    Decoded when first read (a TcpInfo that keeps the bytes: _lazy_tcp_info_class): a
    scrape or a watch refresh receives tcp_info for every connection of a big table and
    reads it for the few that are busy, queued or closing; decoding all of them was
    most of an exporter scrape (~15 us a socket)."""
    if len(payload) < TCP_INFO_MIN_SIZE:
        return None
    lazy, put_raw, put_congestion, screened = _lazy_tcp_info_class()
    info = _new_tcp_info(lazy)
    payload = payload if isinstance(payload, bytes) else bytes(payload)
    put_raw(info, payload)
    put_congestion(info, congestion)
    # the screened fields are read for every connection: decoded now, in one unpack
    # when the kernel sends them all
    if len(payload) >= _SCREEN_END:
        for put, value, scale in zip(screened, _SCREEN.unpack_from(payload), _SCREEN_SCALES,
                                     strict=True):
            put(info, value / scale if scale else value)
    else:
        for put, name in zip(screened, _SCREEN_NAMES, strict=True):
            put(info, _one_field(payload, name))
    return info


def _decode_tcp_info(info, payload: bytes) -> None:
    """Fill every field of a TcpInfo from the struct tcp_info bytes (at least 104)."""
    size = len(payload)
    if size >= TCP_INFO.size:
        raw = TCP_INFO.unpack_from(payload, 0)
    else:  # an older kernel: unpack what came, and mark the rest absent
        import bisect  # here, not at start-up: only an older kernel sends less

        raw = list(TCP_INFO.unpack(bytes(payload[:size]) + bytes(TCP_INFO.size - size)))
        present = bisect.bisect_right(_TCP_INFO_ENDS, size)
        raw[present:] = [None] * (len(raw) - present)
    values = list(_PICK(raw))
    for i in _MICROS:
        value = values[i]
        if value is not None:
            values[i] = value / 1000
    for i in _RATES:
        if values[i] == UNLIMITED_RATE:
            values[i] = None
    values[_FLAG] = bool(values[_FLAG] & 1) if size >= _DELIVERY_RATE_END else None
    _, slots = _tcp_info_class()
    for put, value in zip(slots[:-1], values, strict=True):  # congestion is set already
        put(info, value)


def _one_field(payload: bytes, name: str):
    """One TcpInfo field from the bytes, as _decode_tcp_info gives it."""
    at, end, unpack, unit = _ONE_FIELD[name]
    if len(payload) < end:
        return None
    value = unpack(payload, at)[0]
    if unit == "us":
        return value / 1000
    if unit == "rate":
        return None if value == UNLIMITED_RATE else value
    if unit == "flag":
        return bool(value & 1) if len(payload) >= _DELIVERY_RATE_END else None
    return value


def _one_field_table() -> dict[str, tuple[int, int, Callable, str | None]]:
    out = {}
    for attribute, kernel_name, unit in TCP_INFO_FROM_KERNEL:
        index = _TCP_INFO_INDEX[kernel_name]
        fmt = struct.Struct("=" + TCP_INFO_FIELDS[index][1])
        end = _TCP_INFO_ENDS[index]
        out[attribute] = (end - fmt.size, end, fmt.unpack_from, unit)
    return out


_ONE_FIELD = _one_field_table()
# decoded at once, without the rest: what screens every connection of a table for
# work (diagnose.slow.idle compares them between two samples)
SCREENED_FIELDS = frozenset({"busy_time_ms", "bytes_acked"})
_SCREEN_NAMES = tuple(sorted(SCREENED_FIELDS, key=lambda name: _ONE_FIELD[name][0]))
_SCREEN_END = max(_ONE_FIELD[name][1] for name in SCREENED_FIELDS)


def _screen_struct() -> struct.Struct:
    """The screened fields (raw) of a payload that has them all, in one unpack."""
    fmt, at = "=", 0
    for name in _SCREEN_NAMES:
        start, end, _, _ = _ONE_FIELD[name]
        index = _TCP_INFO_INDEX[next(k for a, k, _ in TCP_INFO_FROM_KERNEL if a == name)]
        fmt += f"{start - at}x{TCP_INFO_FIELDS[index][1]}"
        at = end
    return struct.Struct(fmt)


_SCREEN = _screen_struct()
# every screened field is a plain number or microseconds (converted as for the rest)
_SCREEN_SCALES = tuple(1000 if _ONE_FIELD[name][3] == "us" else None
                       for name in _SCREEN_NAMES)
assert {_ONE_FIELD[name][3] for name in _SCREEN_NAMES} <= {None, "us"}


@functools.cache
def _lazy_tcp_info_class() -> tuple[type, Callable, Callable, tuple[Callable, ...]]:
    """A TcpInfo that keeps its struct tcp_info bytes and decodes them when a field is
    first read (every field at once; parse_tcp_info sets SCREENED_FIELDS). Equal to, and
    hashing as, the TcpInfo of the same values. Defined in the reader, not in
    sockstat.tcpinfo: decoding is the wire format's business."""
    tcp_info, _ = _tcp_info_class()
    fields = tcp_info.__slots__

    class LazyTcpInfo(tcp_info):
        __slots__ = ("_payload",)

        def __getattr__(self, name: str):  # only for a field not decoded yet
            try:
                payload = object.__getattribute__(self, "_payload")
            except AttributeError:
                payload = None
            if name not in _ONE_FIELD:
                raise AttributeError(name)
            if payload is not None:  # None: another thread decoded it since the look-up
                _decode_tcp_info(self, payload)
                put_raw(self, None)  # decoded: the bytes are not needed any more
            return object.__getattribute__(self, name)

        def __eq__(self, other):
            if isinstance(other, tcp_info):
                return all(getattr(self, f) == getattr(other, f) for f in fields)
            return NotImplemented

        __hash__ = tcp_info.__hash__  # defining __eq__ would drop the inherited one

        def __reduce__(self):  # pickled and copied as the plain TcpInfo it equals
            return tcp_info, tuple(getattr(self, f) for f in fields)

    LazyTcpInfo.__qualname__ = tcp_info.__qualname__  # repr() as a TcpInfo's

    put_raw = LazyTcpInfo._payload.__set__
    screened = tuple(getattr(tcp_info, name).__set__ for name in _SCREEN_NAMES)
    return LazyTcpInfo, put_raw, tcp_info.congestion.__set__, screened


_new_tcp_info = object.__new__


def parse_congestion(payload: bytes | memoryview) -> str | None:
    """INET_DIAG_CONG: a NUL-terminated name ('cubic', 'bbr')."""
    name = bytes(payload).split(b"\0", 1)[0].decode("ascii", "replace")
    return name or None


# __u32 sk_meminfo[] (linux/sock_diag.h, SK_MEMINFO_*), in this order; kernels before
# 3.x stop after optmem, so backlog and drops are read only when present
SK_MEMINFO_FIELDS = ("rmem_alloc", "rcvbuf", "wmem_alloc", "sndbuf", "fwd_alloc",
                     "wmem_queued", "optmem", "backlog", "drops")
SK_MEMINFO_REQUIRED = 7
_SK_MEMINFO = struct.Struct(f"={len(SK_MEMINFO_FIELDS)}I")


def parse_meminfo(payload: bytes | memoryview, start: int = 0,
                  stop: int | None = None) -> SkMemInfo:
    """An sk_meminfo attribute (__u32 values, payload[start:stop]) -> SkMemInfo. Raises
    ParseError when it is shorter than the seven values every kernel sends, or not a
    whole number of u32s. (Offsets instead of a slice: `--memory` parses one per socket.)"""
    size = (len(payload) if stop is None else stop) - start
    n = size // 4
    if size % 4 or n < SK_MEMINFO_REQUIRED:
        raise ParseError(f"netlink: sk_meminfo is {size} bytes, expected at least "
                         f"{SK_MEMINFO_REQUIRED * 4} in 4-byte values")
    if n >= len(SK_MEMINFO_FIELDS):  # the common case: one precompiled unpack
        return tuple.__new__(SkMemInfo, _SK_MEMINFO.unpack_from(payload, start))
    return SkMemInfo(*struct.unpack_from(f"={n}I", payload, start))


def attributes(data, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each rtattr in data[start:end]; ParseError
    for an attribute that claims more bytes than are left."""
    while start + 4 <= end:
        rta_len, rta_type = RTATTR.unpack_from(data, start)
        if rta_len < 4 or start + rta_len > end:
            raise ParseError(f"netlink: attribute at byte {start} claims {rta_len} bytes")
        yield rta_type, start + 4, start + rta_len
        start += (rta_len + 3) & ~3


PortFilter = Callable[[int, int], bool]
# (state, recv_q, send_q) -> whether to decode that socket's tcp_info (15 us each): a
# single-sample diagnosis reads it for a few sockets of a 100k table only
InfoWanted = Callable[[TcpState, int, int], bool]


def parse_messages(
    data: bytes | memoryview,
    proto: Proto,
    addresses: AddressCache,
    out: list[Socket],
    port_filter: PortFilter | None = None,
    want_info: bool = False,
    want_memory: bool = False,
    tally: bool = False,
    info_if: InfoWanted | None = None,
) -> bool:
    """Parse one batch of netlink messages, appending Sockets to `out`, or with `tally`
    each socket's report as a RECORD (its nlmsghdr + inet_diag_msg bytes, attributes
    dropped): what counting views read, at a fraction of a Socket's cost (see Records;
    `compact` does the same for a whole batch at once).

    Returns True when the batch ends the dump (NLMSG_DONE). Raises ParseError on
    truncated or malformed messages and SourceUnavailable/PermissionDenied on an
    NLMSG_ERROR reply, so nothing is ever silently lost.
    """
    unpack_full = _HEADER_AND_MSG.unpack_from
    unpack_len_type = LEN_TYPE.unpack_from
    # ports arrive big-endian but were unpacked in host order: ntohs swaps them back
    ntohs, states, timers, families = socket.ntohs, _STATES, _TIMERS, _FAMILIES
    new_endpoint = tuple.__new__  # Endpoint is a NamedTuple: skip its Python-level __new__
    full_size = _HEADER_AND_MSG.size
    by_family = addresses.by_family
    # a socket's report: SOCK_DIAG_BY_FAMILY, or TCPDIAG_GETSOCK in a both-families reply
    report = SOCK_DIAG_BY_FAMILY if by_family is None else TCPDIAG_GETSOCK
    end = len(data)
    offset = 0
    append = out.append
    while offset < end:
        if end - offset >= full_size:
            # the common case, one unpack for nlmsghdr + inet_diag_msg together
            (length, msg_type, _, _, _, family, state, timer, retrans, sport, dport, src, dst,
             ifindex, cookie0, cookie1, expires, rqueue, wqueue, uid,
             inode) = unpack_full(data, offset)
        elif end - offset >= 16:
            length, msg_type = unpack_len_type(data, offset)
        else:
            raise ParseError(f"netlink: truncated header at byte {offset} of {end}")
        if length < 16 or offset + length > end:
            raise ParseError(f"netlink: message at byte {offset} claims {length} bytes, "
                             f"{end - offset} left")
        if msg_type == report:
            if length < full_size:
                raise ParseError(f"netlink: inet_diag_msg at byte {offset} is {length - 16} "
                                 f"bytes, expected {full_size - 16}")
            address_family = families.get(family)
            tcp_state = states.get(state)
            if address_family is None or tcp_state is None:
                raise ParseError(f"netlink: message at byte {offset} has address family "
                                 f"{family} and state {state}: not a TCP/UDP socket report")
            if by_family is not None:
                addresses = by_family[family]
            if tally:
                if port_filter is None or port_filter(ntohs(sport), ntohs(dport)):
                    append(bytes(data[offset:offset + full_size]))
                offset += (length + 3) & ~3
                continue
            local_port = ntohs(sport)
            remote_port = ntohs(dport)
            if port_filter is None or port_filter(local_port, remote_port):
                info = None
                if want_info and length > full_size and (
                        info_if is None or info_if(tcp_state, rqueue, wqueue)):
                    info = _find_tcp_info(data, offset + full_size, offset + length)
                append(Socket(
                    proto, address_family, tcp_state,
                    new_endpoint(Endpoint, (addresses[src], local_port)),
                    new_endpoint(Endpoint, (addresses[dst], remote_port)),
                    rqueue, wqueue, uid, inode,
                    cookie0 | (cookie1 << 32),
                    timers.get(timer, Timer.OFF), expires, retrans, info, None, ifindex,
                ))
                if want_memory and length > full_size:  # set after: the default costs 0
                    out[-1].memory = find_meminfo(data, offset + full_size, offset + length,
                                                  INET_DIAG_SKMEMINFO)
        elif msg_type == NLMSG_DONE:
            return True
        elif msg_type == NLMSG_ERROR:
            raise_if_error(data, offset, length)
        offset += (length + 3) & ~3
    return False


def raise_if_error(data, offset: int, length: int) -> None:
    """An NLMSG_ERROR message at `offset`: raise for its errno (0 is an ACK, not an
    error). Every sock_diag parser's one way of reading one."""
    code = -_I32.unpack_from(data, offset + 16)[0] if length >= 20 else 0
    if code != 0:
        _raise_for_errno(code)


# -- counting without rows ---------------------------------------------------------------
# A counting view (summary, watch's counts) reads a few fixed fields of every socket and
# no attribute. The messages of a reply are not at fixed offsets (a TIME_WAIT
# mini-socket carries fewer attributes than a full socket), so `Compactor.compact` copies
# each message's nlmsghdr + inet_diag_msg into a packed array of RECORD-byte records in
# one regular-expression pass (C), and `Records` reads each field of every socket as a
# strided slice of that array (C too): no Python code runs per socket. Why a pattern:
# the stdlib has no other way to walk variable-length messages without a Python loop
# per message, and that loop was most of summary's cost. parse_messages(tally=True)
# makes the same records one message at a time for any batch the pattern does not cover
# (a message length not seen before, an error reply, malformed bytes), and refuses
# malformed input exactly as it does for rows. A listing without attributes (no
# tcp_info, no memory) builds its rows from the same records, a column at a time
# (Records.sockets): the per-message Python loop was most of a row's cost too.
RECORD = _HEADER_AND_MSG.size  # nlmsghdr + inet_diag_msg: 88 bytes
MAX_RECORD_KINDS = 32  # distinct (length, type, flags) headers one pattern matches


def field_offsets(fields: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """Field name -> byte offset in a struct declared as (name, format) pairs."""
    offsets, at = {}, 0
    for name, fmt in fields:
        offsets[name] = at
        at += struct.calcsize("=" + fmt)
    return offsets


AT = field_offsets(NLMSGHDR_FIELDS + INET_DIAG_MSG_FIELDS)  # field -> byte offset in a RECORD
_VALID_FAMILIES = bytes(_FAMILIES)
_VALID_STATES = bytes(_STATES)
_DONE_SIZE = NLMSGHDR.size + 4  # NLMSG_DONE: the header and an int
_HEAD = struct.Struct("=IHH")  # nlmsg_len, nlmsg_type, nlmsg_flags: one message kind
_REPORT_TYPES = (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK)
# bytes.translate tables: family byte -> 1 for this family, else 0
_ONE_FAMILY = {af: bytes(int(n == af) for n in range(256))
               for af in (socket.AF_INET, socket.AF_INET6)}


@functools.lru_cache(maxsize=16)
def _records_pattern(kinds: frozenset[bytes], record: int):
    """Matches one whole message of a known kind (its first 8 header bytes, so its
    length), capturing its first `record` bytes."""
    import re  # here: a listing never compacts, and `re` is ~8 ms of start-up

    alternatives = [re.escape(head) + b".{%d}" % (_HEAD.unpack(head)[0] - len(head))
                    for head in sorted(kinds)]
    return re.compile(b"(?s)(?=(.{%d}))(?:%s)" % (record, b"|".join(alternatives)))


def inet_records_valid(records: bytes, record: int = RECORD) -> bool:
    """Every packed inet_diag report names a known address family and TCP state (what
    parse_messages refuses otherwise)."""
    return not records[AT["idiag_family"]::record].translate(None, _VALID_FAMILIES) \
        and not records[AT["idiag_state"]::record].translate(None, _VALID_STATES)


_LEARNT: dict[int, frozenset[bytes]] = {}  # record size -> kinds of message seen


class Compactor:
    """Batches of one dump (or of many, as a watch's) -> packed records of the first
    `record` bytes of each report, learning the kinds of message the kernel sends (two
    or three: full sockets, mini-sockets). `valid` checks the packed fields the one-by-
    one parser would refuse; unix_diag's reports use it with their own size and check."""

    def __init__(self, record: int = RECORD,
                 valid: Callable[[bytes, int], bool] = inet_records_valid) -> None:
        self.record = record
        self.valid = valid
        # what earlier dumps of this process learnt (every table sends the same kinds)
        self.kinds: frozenset[bytes] = _LEARNT.get(record, frozenset())

    def compact(self, data) -> tuple[bytes, bool] | None:
        """(this batch's socket reports as packed RECORDs, whether it ends the dump), or
        None when the pattern does not cover the batch exactly: then
        parse_messages(tally=True) reads it (and raises for what is malformed)."""
        found = self.split(data)
        return None if found is None else (found[1], found[2])

    def split(self, data) -> tuple[list[bytes], bytes, bool] | None:
        """compact(), with each report's record as a bytes object of its own too (what
        a watch matches against the previous refresh's): (records, packed, done)."""
        end = len(data)
        done = end >= _DONE_SIZE and \
            LEN_TYPE.unpack_from(data, end - _DONE_SIZE) == (_DONE_SIZE, NLMSG_DONE)
        cut = end - _DONE_SIZE if done else end
        record = self.record
        for attempt in range(2):
            if self.kinds:
                found = _records_pattern(self.kinds, record).findall(data, 0, cut)
                records = b"".join(found)
                # matches never overlap and each spans its own nlmsg_len: lengths adding
                # up to the batch mean they tile it from byte 0, message by message (a
                # message of another kind would leave a gap, and a DONE taken from the
                # end of one that is not there would leave the batch untiled)
                if sum(memoryview(records).cast("I")[::record // 4]) == cut \
                        and self.valid(records, record):
                    return found, records, done
            if attempt or not self._learn(data, cut):
                return None
        return None

    def strided(self, data) -> tuple[int, bytes, bool] | None:
        """A batch whose socket reports are all of one kind, so one length (every full
        socket, or every TIME_WAIT mini-socket, of a dump of those states only), as it
        came: (that length, the reports, whether it ends the dump); None when it is
        not so. Checked in C: the header of every report, read as strided columns."""
        end = len(data)
        done = end >= _DONE_SIZE and \
            LEN_TYPE.unpack_from(data, end - _DONE_SIZE) == (_DONE_SIZE, NLMSG_DONE)
        cut = end - _DONE_SIZE if done else end
        if cut == 0:
            return self.record, b"", done
        if cut < _HEAD.size:
            return None
        length, msg_type, _ = _HEAD.unpack_from(data, 0)
        if msg_type not in _REPORT_TYPES or length < self.record or length % 4 \
                or cut % length:
            return None
        body = bytes(data[:cut])
        count = cut // length
        # every report starts with the same length, type and flags (two u32 columns
        # compared at once): they tile the batch
        words = memoryview(body).cast("I")
        step = length // 4
        if words[0::step].tobytes() != body[0:4] * count \
                or words[1::step].tobytes() != body[4:8] * count \
                or not self.valid(body, length):
            return None
        return length, body, done

    def _learn(self, data, cut: int) -> bool:
        """Add the kinds of message in data[:cut] (when all are socket reports at least a
        RECORD long); False when there is nothing new to learn."""
        kinds, offset = set(), 0
        while offset + NLMSGHDR.size <= cut:
            length, msg_type, _ = _HEAD.unpack_from(data, offset)
            if msg_type not in _REPORT_TYPES or length < self.record or length % 4 \
                    or offset + length > cut:
                return False
            kinds.add(bytes(data[offset:offset + _HEAD.size]))
            offset += length
        if offset != cut or kinds <= self.kinds or len(kinds | self.kinds) > MAX_RECORD_KINDS:
            return False
        self.kinds = _LEARNT[self.record] = frozenset(kinds | self.kinds)
        return True


class Records:
    """One table's compacted socket reports (address family `af`, or None for a dump of
    both: see of_family), each field of every socket as a strided view over them, in the
    dump's order. Each report is `stride` bytes long: a RECORD, or every message of a
    batch of one length as it came (its fields lie in its first RECORD bytes)."""

    def __init__(self, af: int | None, chunks: list[bytes], stride: int = RECORD) -> None:
        self.af = af
        self.stride = stride
        self.data = b"".join(chunks)
        self._u16 = memoryview(self.data).cast("H")
        self._u32 = memoryview(self.data).cast("I")
        self._addresses = AddressCache(af) if af is not None else None

    def __len__(self) -> int:
        return len(self.data) // self.stride

    def of_family(self, af: int) -> Records:
        """The reports of one address family (of a dump of both)."""
        families = self.data[AT["idiag_family"]::self.stride]
        if families.count(af) == len(families):
            return Records(af, [self.data], self.stride)
        if af not in families:
            return Records(af, [], self.stride)
        return self.where(families.translate(_ONE_FAMILY[af]), af)

    def where(self, keep: Iterable, af: int | None = None) -> Records:
        """The reports whose `keep` (one truth value each, in order) is true, as
        Records of family `af` (None: this one's)."""
        # a slice per report kept, which are chosen in C (few, for a table's listeners)
        stride, data = self.stride, self.data
        kept = [data[i:i + stride] for i in compress(range(0, len(data), stride), keep)]
        return Records(self.af if af is None else af, [b"".join(kept)], stride)

    def batches(self, size: int) -> Iterator[Records]:
        """These reports, `size` at a time (each batch a copy of its bytes)."""
        step = size * self.stride
        for start in range(0, len(self.data), step):
            yield Records(self.af, [self.data[start:start + step]], self.stride)

    def _field(self, name: str, view) -> memoryview:
        size = view.itemsize
        return view[AT[name] // size::self.stride // size]

    def states(self) -> bytes:
        """The kernel's state number of each socket, one byte each."""
        return self.data[AT["idiag_state"]::self.stride]

    def local_ports(self) -> memoryview:
        """Local port numbers."""
        return self._ports("idiag_sport")

    def _ports(self, name: str) -> memoryview:
        """Port numbers. They are sent in network order: on a little-endian host their
        two bytes are swapped by two strided copies (C), not one ntohs per socket."""
        if sys.byteorder == "big":
            return self._field(name, self._u16)
        at = AT[name]
        swapped = bytearray(2 * len(self))
        swapped[0::2] = self.data[at + 1::self.stride]
        swapped[1::2] = self.data[at::self.stride]
        return memoryview(swapped).cast("H")

    def columns(self, addresses: AddressCache) -> Columns:
        """Every field a row shows, each a column over every report (all in C): the
        one reading of the records that Sockets (sockets()) and rows written straight
        from them (sockstat.render.jsonout.write_records) share. A field every report
        holds alike is a Same (checked on the raw bytes, before any int is made):
        TIME_WAITs' queues, uid and inode, say. `addresses`: this table's address
        cache (a BothFamilies for a dump of both families)."""
        data, stride = self.data, self.stride
        if not data:
            return Columns(*([] for _ in Columns._fields))
        u32 = self._u32_column
        if self.af == socket.AF_INET and addresses.family == socket.AF_INET:
            # IPv4: the address's first 4 bytes as a u32 key (no bytes object per row)
            texts = _v4_texts(addresses)
            local, remote = (u32(name, texts.__getitem__) for name in ("idiag_src", "idiag_dst"))
        else:
            local, remote = self._address_texts(addresses)
        high = u32("idiag_cookie1")
        cookies = u32("idiag_cookie0")
        if not isinstance(high, Same) or high.value:  # past 2**32 sockets since boot
            cookies = list(map(operator.or_, cookies,
                               map(operator.lshift, high, repeat(32))))
        return Columns(
            _byte_column(data, "idiag_family", stride), _byte_column(data, "idiag_state", stride),
            _byte_column(data, "idiag_timer", stride), local, self._port_column("idiag_sport"),
            remote, self._port_column("idiag_dport"), u32("idiag_rqueue"),
            u32("idiag_wqueue"), u32("idiag_uid"), u32("idiag_inode"), cookies,
            u32("idiag_expires"), _byte_column(data, "idiag_retrans", stride),
            u32("idiag_if"))

    def _u32_column(self, name: str, convert=None) -> list | Same:
        """A u32 field of every report: a Same when all alike, else a list (each item
        through `convert` when given)."""
        view = self._field(name, self._u32)
        if _alike(self.data, AT[name], self.stride):
            return Same(view[0] if convert is None else convert(view[0]), len(self))
        return view.tolist() if convert is None else list(map(convert, view))

    def _port_column(self, name: str) -> list[int] | Same:
        at = AT[name]
        if _alike(self.data, at, self.stride, 2):
            return Same(self.data[at] << 8 | self.data[at + 1], len(self))  # network order
        return self._ports(name).tolist()

    def _address_texts(self, addresses: AddressCache) -> tuple:
        """(local, remote) address texts of reports of any family (IPv6, or both)."""
        data, n, stride = self.data, len(self), self.stride
        families = data[AT["idiag_family"]::stride]
        one_family = families.count(families[0]) == n
        alike = [one_family and _alike(data, AT[name], stride, 16)
                 for name in ("idiag_src", "idiag_dst")]
        src, dst = zip(*_addresses(stride).iter_unpack(data), strict=True) \
            if not all(alike) else ((), ())
        out = []
        for same, name, raw in zip(alike, ("idiag_src", "idiag_dst"), (src, dst),
                                   strict=True):
            if same:
                at = AT[name]
                out.append(Same(next(_texts(addresses, families[:1],
                                             (data[at:at + 16],))), n))
            else:
                out.append(list(_texts(addresses, families, raw)))
        return tuple(out)

    def inodes(self) -> list[int] | Same:
        """Each socket's inode (0: a socket without a file, as TIME_WAIT's)."""
        return self._u32_column("idiag_inode")

    def local_endpoints(self, addresses: AddressCache, keep: list | None = None
                        ) -> set[Endpoint]:
        """The distinct local Endpoints these sockets are at (only those whose `keep`,
        one truth value each, is true), read as raw keys (few distinct: every
        TIME_WAIT of a server is at the server's) and made text once each."""
        if keep is not None:
            if not any(keep):
                return set()
            if all(keep):
                keep = None
        if self.af is None or not self.data:
            c = self.columns(addresses)
            locals_ = zip(c.local_address, c.local_port, strict=True)
            return set(map(_new_endpoint, repeat(Endpoint),
                           locals_ if keep is None else compress(locals_, keep)))
        ports = self._ports("idiag_sport")
        if self.af == socket.AF_INET and addresses.family == socket.AF_INET:
            texts = _v4_texts(addresses)
            src = self._field("idiag_src", self._u32)
            if _alike(self.data, AT["idiag_src"], self.stride) \
                    and _alike(self.data, AT["idiag_sport"], self.stride, 2):
                return {Endpoint(texts[src[0]], ports[0])}  # one server's TIME_WAITs
        else:
            texts = addresses
            src = (address for address, _ in _addresses(self.stride).iter_unpack(self.data))
        raw = zip(src, ports, strict=True)
        raw = set(raw if keep is None else compress(raw, keep))
        return {Endpoint(texts[address], port) for address, port in raw}

    @staticmethod
    def kind(family: int, state: int, timer: int) -> tuple[Family, TcpState, Timer]:
        """A report's family, state and timer numbers as a Socket names them."""
        return _FAMILIES[family], _STATES[state], _TIMERS.get(timer, Timer.OFF)

    def sockets(self, proto: Proto, addresses: AddressCache) -> Iterator[Socket]:
        """A Socket for each report, as parse_messages makes them of the same messages
        (without attributes: no tcp_info, no memory), built field by field over every
        socket at once from columns(); only Socket's own __init__ runs per socket."""
        if not self.data:
            return iter(())
        c = self.columns(addresses)
        return map(
            Socket, repeat(proto), map(_FAMILIES.__getitem__, c.family),
            map(_STATES.__getitem__, c.state),
            map(_new_endpoint, repeat(Endpoint),
                zip(c.local_address, c.local_port, strict=True)),
            map(_new_endpoint, repeat(Endpoint),
                zip(c.remote_address, c.remote_port, strict=True)),
            c.recv_q, c.send_q, c.uid, c.inode, c.cookie,
            map(_TIMERS.get, c.timer, repeat(Timer.OFF)), c.expires, c.retransmits,
            repeat(None), repeat(None), c.interface)

    def remote_addresses(self):
        """Remote addresses, raw: an int (IPv4) or 4 ints (IPv6); see address_text."""
        first = self._field("idiag_dst", self._u32)
        if self.af == socket.AF_INET:
            return first
        step = self.stride // 4
        start = AT["idiag_dst"] // 4
        return zip(first, *(self._u32[start + i::step] for i in range(1, 4)), strict=True)

    def address_text(self, raw) -> str:
        """A raw remote address as printed (IPv4-mapped IPv6 as IPv4, as for rows)."""
        packed = _U32.pack(raw) + bytes(12) if self.af == socket.AF_INET \
            else _U32X4.pack(*raw)
        return self._addresses[packed]


# The fields of every report of a Records, one column each (Records.columns): the
# family, state and timer numbers as bytes, addresses as text, the rest as ints.
Columns = namedtuple("Columns", (
    "family", "state", "timer", "local_address", "local_port", "remote_address",
    "remote_port", "recv_q", "send_q", "uid", "inode", "cookie", "expires",
    "retransmits", "interface"))


class _V4Texts(dict):
    """An IPv4 address's text by its 4 bytes read as a u32 (in host order, as they lie
    in the record), through the table's AddressCache: a dict look-up of an int per row
    instead of slicing 16 bytes out of each report."""

    def __init__(self, addresses: AddressCache) -> None:
        super().__init__()
        self.addresses = addresses

    def __missing__(self, raw: int) -> str:
        text = self[raw] = self.addresses[_U32.pack(raw) + bytes(12)]
        return text


class Same:
    """A column whose every row holds one value (Records.columns): what a writer can
    write once for all its rows. Iterated, it gives the value `count` times."""

    __slots__ = ("value", "count")

    def __init__(self, value, count: int) -> None:
        self.value, self.count = value, count

    def __iter__(self) -> Iterator:
        return repeat(self.value, self.count)

    def __len__(self) -> int:
        return self.count


def _alike(data: bytes, at: int, stride: int, size: int = 4) -> bool:
    """Whether the `size`-byte field at `at` of every `stride`-byte report is the same:
    each of its bytes a strided slice, counted in C (no int made)."""
    for i in range(at, at + size):
        column = data[i::stride]
        if column.count(column[0]) != len(column):
            return False
    return True


def _byte_column(data: bytes, name: str, stride: int) -> bytes | Same:
    """A one-byte field of every report: a Same when all alike, else the bytes."""
    column = data[AT[name]::stride]
    return Same(column[0], len(column)) if column.count(column[0]) == len(column) \
        else column


def _v4_texts(addresses: AddressCache) -> _V4Texts:
    """The u32-keyed texts of an IPv4 AddressCache, one for the cache's life."""
    texts = getattr(addresses, "v4_texts", None)
    if texts is None:
        texts = addresses.v4_texts = _V4Texts(addresses)
    return texts


# each report's two raw addresses (16 bytes each, as AddressCache keys them)
@functools.lru_cache(maxsize=8)
def _addresses(stride: int) -> struct.Struct:
    """Each report's two raw addresses, of reports `stride` bytes long."""
    return struct.Struct(f"={AT['idiag_src']}x16s16s{stride - AT['idiag_dst'] - 16}x")
_new_endpoint = tuple.__new__  # Endpoint is a namedtuple: skip its Python-level __new__


def _texts(addresses: AddressCache, families: bytes, raw: tuple[bytes, ...]
           ) -> Iterator[str]:
    """The printable text of each raw address; `families`: each one's address family
    (a dump of both families has a cache for each)."""
    by_family = addresses.by_family
    if by_family is None:
        return map(addresses.__getitem__, raw)
    if families.count(families[0]) == len(families):  # the usual batch: one family
        return map(by_family[families[0]].__getitem__, raw)
    return map(dict.__getitem__, map(by_family.__getitem__, families), raw)


def _find_tcp_info(data, start: int, end: int) -> TcpInfo | None:
    # attributes() inlined: this walk runs for every connection of a tcp_info dump
    info = congestion = None
    unpack = RTATTR.unpack_from
    while start + 4 <= end:
        rta_len, rta_type = unpack(data, start)
        if rta_len < 4 or start + rta_len > end:
            raise ParseError(f"netlink: attribute at byte {start} claims {rta_len} bytes")
        if rta_type == INET_DIAG_INFO:
            info = bytes(data[start + 4:start + rta_len])
        elif rta_type == INET_DIAG_CONG:
            congestion = _congestion(bytes(data[start + 4:start + rta_len]))
        start += (rta_len + 3) & ~3
    return None if info is None else parse_tcp_info(info, congestion)


@functools.lru_cache(maxsize=64)
def _congestion(payload: bytes) -> str | None:
    """parse_congestion, once per name: a table has a few (cubic, bbr)."""
    return parse_congestion(payload)


def find_meminfo(data, start: int, end: int, attribute: int) -> SkMemInfo | None:
    """The sk_meminfo attribute (inet_diag's or unix_diag's number) of one message."""
    for rta_type, begin, stop in attributes(data, start, end):
        if rta_type == attribute:
            return parse_meminfo(data, begin, stop)
    return None


MAX_ERRNO = 4095  # the kernel's errors are -1 .. -MAX_ERRNO (include/linux/err.h)


def _raise_for_errno(code: int) -> None:
    if not 0 < code <= MAX_ERRNO:  # e.g. INT_MIN: os.strerror() would overflow
        raise ParseError(f"netlink: NLMSG_ERROR carries {-code}, which is no errno")
    message = os.strerror(code)
    if code in (errno_mod.EPERM, errno_mod.EACCES):
        raise PermissionDenied(f"netlink sock_diag refused: {message}")
    if code in (errno_mod.ENOENT, errno_mod.EOPNOTSUPP, errno_mod.EPROTONOSUPPORT,
                errno_mod.EINVAL):
        # e.g. udp_diag not loaded: that protocol is simply not reported this way
        raise SourceUnavailable(f"netlink sock_diag: {message}")
    raise SourceUnavailable(f"netlink sock_diag error: {message} (errno {code})")


def open_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except (AttributeError, OSError) as exc:
        raise SourceUnavailable(f"netlink sock_diag is not available here: {exc}") from None
    return sock


def dump(
    family: Family | None,
    proto: Proto,
    states,
    *,
    tcp_info: bool | InfoWanted = False,
    memory: bool = False,
    port_filter: PortFilter | None = None,
    bytecode: bytes | None = None,
    nl: socket.socket | None = None,
    out: list[Socket] | None = None,
    tally: bool = False,
    strided: bool = False,
) -> list[Socket]:
    """Dump one (family, protocol) table with the state filter applied in the kernel
    (with `tally`: `out` gets packed RECORDs instead of Sockets: read them with
    Records; with `strided` too, (stride, reports) pieces: a batch whose reports are
    all one length as it came, any other compacted to RECORDs; what a watch compares
    with its previous refresh's). family None: TCP's IPv4 and IPv6 tables
    in one request (one walk of the kernel's TCP hash instead of two; where a kernel
    lacks that request, one dump per family, IPv4's then IPv6's)."""
    out = [] if out is None else out
    mask = state_mask(states)
    if not mask:
        return out
    if family is None and proto is not Proto.TCP:
        raise ValueError("both families at once: TCP only")
    ipproto = socket.IPPROTO_TCP if proto is Proto.TCP else socket.IPPROTO_UDP
    want_info = bool(tcp_info) and proto is Proto.TCP
    info_if = tcp_info if callable(tcp_info) else None
    ext = ((1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1))) if want_info else 0
    if memory:  # asked only when a view shows it: 40 more bytes per socket to copy
        ext |= 1 << (INET_DIAG_SKMEMINFO - 1)
    own = nl is None
    nl = open_socket() if own else nl
    start = len(out)
    try:
        if family is None:
            nl.send(build_both_families_request(mask, ext, bytecode=bytecode))
            addresses: AddressCache = BothFamilies()
        else:
            af = socket.AF_INET if family is Family.INET else socket.AF_INET6
            nl.send(build_request(af, ipproto, mask, ext, bytecode=bytecode))
            addresses = AddressCache(af)
        # a whole table without attributes (counting it, or rows without tcp_info or
        # memory): whole batches at once (a port filter checks each message)
        compactor = Compactor() if port_filter is None and (
            tally or not (want_info or memory)) else None
        for batch in batches(nl):
            if strided and compactor is not None:
                whole = compactor.strided(batch)
                if whole is not None:
                    if whole[1]:
                        out.append(whole[:2])
                    if whole[2]:
                        break
                    continue
            packed = compactor.compact(batch) if compactor is not None else None
            if packed is not None:
                if not tally:
                    out += Records(None, [packed[0]]).sockets(proto, addresses)
                else:
                    out.append((RECORD, packed[0]) if strided else packed[0])
                if packed[1]:
                    break
                continue
            records: list = [] if strided else out
            done = parse_messages(batch, proto, addresses, records, port_filter, want_info,
                                  memory, tally, info_if)
            if strided:
                out.extend((RECORD, record) for record in records)
            if done:
                break
    except SourceUnavailable:
        if family is not None:
            raise
        del out[start:]  # a kernel without the both-families request: one dump each
        for one in (Family.INET, Family.INET6):
            dump(one, proto, states, tcp_info=tcp_info, memory=memory,
                 port_filter=port_filter, bytecode=bytecode, nl=nl, out=out, tally=tally,
                 strided=strided)
    finally:
        if own:
            nl.close()
    return out


def batches(nl: socket.socket) -> Iterator[memoryview]:
    """The reply to a dump, one receive buffer at a time (the view is reused: parse each
    batch before asking for the next). MSG_TRUNC is an error, never silent loss."""
    buffer = bytearray(RECV_BUFFER)
    view = memoryview(buffer)
    truncated = int(socket.MSG_TRUNC)  # an int: `&` on the enum runs Python code
    while True:
        nbytes, _, flags, _ = nl.recvmsg_into([buffer])
        if flags & truncated:
            raise ParseError("netlink: a reply batch was truncated (receive buffer too small)")
        if nbytes == 0:
            raise ParseError("netlink: the kernel closed the dump before NLMSG_DONE")
        yield view[:nbytes]


# -- requests for one socket: look it up, or reset it (what `ss -K` does) ---------------
# Both name the socket exactly, as the dump reported it: its 4-tuple, interface and
# cookie. The cookie makes a reset safe: if that socket is gone and another now has the
# same 4-tuple, the kernel answers ESTALE instead of killing the newcomer. SOCK_DESTROY
# needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN in the socket's network namespace.
SOCK_DESTROY = 21
NLM_F_ACK = 0x4
NO_COOKIE = 0xFFFFFFFFFFFFFFFF  # INET_DIAG_NOCOOKIE: match any


def _raw_address(family: Family, address: str) -> bytes:
    """Printable address -> the 16 bytes of inet_diag_sockid (IPv4-mapped IPv6 is
    printed as IPv4, so it is mapped back)."""
    if family is Family.INET:
        return socket.inet_pton(socket.AF_INET, address) + b"\0" * 12
    if ":" not in address:
        address = "::ffff:" + address
    return socket.inet_pton(socket.AF_INET6, address)


def _exact_request(sock: Socket, msg_type: int, flags: int, states: int, cookie: int,
                   seq: int, ext: int = 0) -> bytes:
    return _sockid_request(sock.family, sock.proto, sock.local, sock.remote,
                           sock.interface, msg_type, flags, states, cookie, seq, ext)


def _sockid_request(family: Family, proto: Proto, local: tuple[str, int],
                    remote: tuple[str, int], interface: int, msg_type: int, flags: int,
                    states: int, cookie: int, seq: int, ext: int = 0) -> bytes:
    af = socket.AF_INET if family is Family.INET else socket.AF_INET6
    ipproto = socket.IPPROTO_TCP if proto is Proto.TCP else socket.IPPROTO_UDP
    if proto is Proto.UDP and msg_type == SOCK_DIAG_BY_FAMILY:
        # udp_dump_one looks the socket up as a datagram arriving from idiag_src would
        # be (the kernel keeps that order "for historical reasons"); UDP's SOCK_DESTROY
        # and every TCP request take the socket's own addresses as `src`
        local, remote = remote, local
    body = INET_DIAG_REQ_V2.pack(
        af, ipproto, ext, 0, states, socket.htons(local[1]), socket.htons(remote[1]),
        _raw_address(family, local[0]), _raw_address(family, remote[0]), interface,
        cookie & 0xFFFFFFFF, cookie >> 32)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def build_lookup(sock: Socket, seq: int = 1, ext: int = 0) -> bytes:
    """A request for exactly one socket (no NLM_F_DUMP): its 4-tuple and cookie."""
    cookie = sock.cookie if sock.cookie is not None else NO_COOKIE
    return _exact_request(sock, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 0xFFFFFFFF, cookie, seq,
                          ext)


def lookup_tcp_info(sock: Socket, nl: socket.socket) -> TcpInfo | None:
    """One TCP socket's tcp_info now, by an exact request (its 4-tuple and cookie): for a
    few sockets of a big table, far cheaper than a dump carrying everyone's. None when
    it is gone (or the kernel will not say)."""
    af = socket.AF_INET if sock.family is Family.INET else socket.AF_INET6
    try:
        nl.send(build_lookup(sock, ext=(1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1))))
        data = nl.recv(RECV_BUFFER)
        found: list[Socket] = []
        parse_messages(data, sock.proto, AddressCache(af), found, want_info=True)
    except (OSError, SourceUnavailable, PermissionDenied):  # gone: ENOENT, ESTALE
        return None
    return found[0].tcp_info if found else None


def build_destroy_request(sock: Socket, seq: int = 1) -> bytes:
    """The bytes of a SOCK_DESTROY request for one dumped socket (an ACK is asked for,
    so success is reported too, not only failure). Never without the cookie."""
    if sock.cookie is None:
        raise ValueError("SOCK_DESTROY needs the socket cookie from a netlink dump")
    return _exact_request(sock, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK,
                          state_mask({sock.state}), sock.cookie, seq)


def exists(sock: Socket, nl: socket.socket) -> bool | None:
    """Whether the kernel still has this socket (same 4-tuple and cookie): True, False
    (gone), or None when the kernel cannot say.

    An exact look-up finds a connection by its 4-tuple. A socket without a peer (a
    listener, an unconnected UDP socket, a TCP socket only bound) it may miss while it
    is there: the kernel picks it as it would for an arriving packet, so another member
    of a SO_REUSEPORT group answers for it (ESTALE, or ENOENT), and a socket only bound
    is in no table the look-up reads. Its "not there" is None: `cookies_on_ports` (one
    dump for them all) tells."""
    if sock.unix is not None:  # an inet_diag lookup: UNIX sockets cannot be asked so
        return None
    try:
        nl.send(build_lookup(sock))
        data = nl.recv(RECV_BUFFER)
    except OSError:
        return None
    if len(data) < NLMSGHDR.size:
        return None
    _, msg_type, _, _, _ = NLMSGHDR.unpack_from(data, 0)
    if msg_type == SOCK_DIAG_BY_FAMILY and len(data) >= AT["idiag_inode"] + 4:
        # a closed connection lingers in TIME_WAIT under the same cookie, with no file
        return _U32.unpack_from(data, AT["idiag_inode"])[0] == sock.inode
    if msg_type == NLMSG_ERROR and len(data) >= 20:
        code = -_I32.unpack_from(data, 16)[0]
        if code not in GONE_ERRNOS:
            return None
        return None if _peerless(sock) else False
    return None


def _peerless(sock: Socket) -> bool:
    """A socket without a peer (a listener, an unconnected UDP socket, a TCP socket
    only bound): one an exact look-up may miss while it is there."""
    return not sock.remote.port


class Presence:
    """Whether the kernel still has each of some sockets (True, False: gone, None:
    cannot say): an exact look-up each (exists()), and for those without a peer it
    cannot tell, one dump a kind of them (family, protocol, and listener, TCP socket
    only bound, or UDP socket) on all their ports at once (cookies_on_ports), asked the
    first time one needs it. A socket is there when its cookie is listed with its
    inode (a closed one lingers in TIME_WAIT under its cookie, with no file)."""

    def __init__(self, sockets: list[Socket], nl: socket.socket) -> None:
        # `sockets`: the ones that will be asked about (their ports make the dumps)
        self.sockets, self.nl = sockets, nl
        self.listed: dict[tuple, dict[int, int] | None] = {}  # kind -> cookie: inode

    def __call__(self, sock: Socket) -> bool | None:
        alive = exists(sock, self.nl)
        if alive is not None or not _peerless(sock) or sock.unix is not None \
                or sock.cookie is None:
            return alive
        kind = _peerless_kind(sock)
        if kind not in self.listed:
            self.listed[kind] = cookies_on_ports(
                sock.family, sock.proto, _STATES_OF_KIND[kind[2]],
                {s.local.port for s in self.sockets
                 if _peerless(s) and _peerless_kind(s) == kind}, self.nl)
        cookies = self.listed[kind]
        return None if cookies is None else cookies.get(sock.cookie) == sock.inode


# what a socket without a peer may have become since the table was read: a listener
# nothing but closed; a TCP socket only bound may have connected (every state); an
# unconnected UDP socket may have connected
_STATES_OF_KIND = {"listen": {TcpState.LISTEN}, "bound": set(TcpState),
                   "udp": {TcpState.CLOSE, TcpState.ESTABLISHED}}


def _peerless_kind(sock: Socket) -> tuple:
    what = "udp" if sock.proto is Proto.UDP else \
        "listen" if sock.state is TcpState.LISTEN else "bound"
    return (sock.family, sock.proto, what)


def cookies_on_ports(family: Family, proto: Proto, states: set[TcpState], ports: set[int],
                     nl: socket.socket) -> dict[int, int] | None:
    """cookie -> inode of every socket of one family and protocol in these states on
    these local ports: one dump filtered in the kernel (a TCP socket only bound is
    dumped from the bind hash); None when the kernel refuses it."""
    try:
        found = dump(family, proto, states, nl=nl, bytecode=port_bytecode(
            [[(INET_DIAG_BC_S_EQ, port) for port in sorted(ports)]]))
    except (OSError, ParseError, PermissionDenied, SourceUnavailable):
        return None
    return {s.cookie: s.inode for s in found}


def parse_ack(data: bytes | memoryview, seq: int) -> int:
    """The errno of the NLMSG_ERROR reply to request `seq` (0: it worked). Raises
    ParseError when the reply is not one."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, _, msg_seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise ParseError(f"netlink: reply message at byte {offset} claims {length} bytes")
        if msg_type == NLMSG_ERROR and msg_seq == seq:
            if length < NLMSGHDR.size + 4:
                raise ParseError("netlink: truncated error reply")
            return -_I32.unpack_from(data, offset + NLMSGHDR.size)[0]
        offset += (length + 3) & ~3
    raise ParseError(f"netlink: no acknowledgement for request {seq}")


def destroy(sock: Socket, nl: socket.socket, seq: int = 1) -> int:
    """Ask the kernel to reset `sock`; returns the errno (0 when it was destroyed)."""
    nl.send(build_destroy_request(sock, seq))
    return parse_ack(nl.recv(RECV_BUFFER), seq)


# -- exact look-ups by address: sockets whose 4-tuples the caller knows ------------------
# A dump walks the kernel's whole TCP hash table whatever its filter (~30 ms at 86k
# sockets); a request without NLM_F_DUMP names one socket by its 4-tuple and the kernel
# finds it with one hash look-up (inet_diag_find_one_icsk: the established hash, where
# TIME_WAIT and request sockets live too, then the listeners), so its cost does not grow
# with the table. The demo lab polls its own few sockets this way.
LOOKUP_BATCH = 32  # requests per send(): their replies must fit the receive buffer
LOOKUP_TIMEOUT = 2.0  # seconds to wait for a reply; the kernel answers at once
WILDCARD = {Family.INET: "0.0.0.0", Family.INET6: "::"}  # a listener's remote address
GONE_ERRNOS = (errno_mod.ENOENT, errno_mod.ESTALE)  # the look-up found no such socket

Pair = tuple[tuple[str, int], tuple[str, int]]  # (local, remote) as (address, port)


def look_up(family: Family, proto: Proto, pairs: list[Pair], *, tcp_info: bool = False,
            memory: bool = False, nl: socket.socket | None = None,
            out: list[Socket] | None = None) -> list[Socket]:
    """The sockets at exactly these (local, remote) addresses, found one by one: a
    request each (LOOKUP_BATCH to a send()), one reply each, a Socket as a dump would
    report it, or nothing for one that is gone. A listener is asked for by its local
    address and the wildcard remote (WILDCARD, port 0).

    The kernel looks for a connection first and then, as for an arriving SYN, for the
    listener that would take it: a gone connection on a listening port is answered with
    the listener. So a reply counts only if its addresses are the ones asked for."""
    out = [] if out is None else out
    ext = ((1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1))) if tcp_info else 0
    if memory:
        ext |= 1 << (INET_DIAG_SKMEMINFO - 1)
    own = nl is None
    nl = open_socket() if own else nl
    addresses = AddressCache(socket.AF_INET if family is Family.INET else socket.AF_INET6)
    import select  # here, not at start-up: only exact look-ups poll

    replies = select.poll()  # not select(): a process may hold fds past FD_SETSIZE
    replies.register(nl, select.POLLIN)
    try:
        for start in range(0, len(pairs), LOOKUP_BATCH):
            batch = pairs[start:start + LOOKUP_BATCH]
            first = next(_batches) * LOOKUP_BATCH  # numbers no earlier request used
            nl.send(b"".join(build_pair_lookup(family, proto, pair, first + i, ext)
                             for i, pair in enumerate(batch)))
            waiting = {first + i: pair for i, pair in enumerate(batch)}
            while waiting:
                if not replies.poll(LOOKUP_TIMEOUT * 1000):
                    raise SourceUnavailable("netlink sock_diag: no answer to an exact "
                                            "look-up")
                for seq, found in parse_lookup_replies(nl.recv(RECV_BUFFER), proto,
                                                       addresses, tcp_info, memory):
                    pair = waiting.pop(seq, None)
                    if found is not None and pair is not None \
                            and (found.local, found.remote) == pair:
                        out.append(found)
    finally:
        if own:
            nl.close()
    return out


_batches = itertools.count(1)  # so a late reply to an earlier batch never counts


def build_pair_lookup(family: Family, proto: Proto, pair: Pair, seq: int,
                      ext: int = 0) -> bytes:
    """A request for the one socket at (local, remote), any interface and cookie."""
    local, remote = pair
    return _sockid_request(family, proto, local, remote, 0, SOCK_DIAG_BY_FAMILY,
                           NLM_F_REQUEST, 0xFFFFFFFF, NO_COOKIE, seq, ext)


def parse_lookup_replies(data: bytes | memoryview, proto: Proto, addresses: AddressCache,
                         want_info: bool = False, want_memory: bool = False
                         ) -> list[tuple[int, Socket | None]]:
    """Replies to exact look-ups: (request number (nlmsg_seq), the Socket found, or None
    when it is gone: an NLMSG_ERROR with ENOENT or ESTALE) for each. Any other error is
    raised as for a dump; truncated or malformed messages are a ParseError."""
    answered: list[tuple[int, Socket | None]] = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < NLMSGHDR.size:
            raise ParseError(f"netlink: truncated header at byte {offset} of {end}")
        length, msg_type, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > end:
            raise ParseError(f"netlink: message at byte {offset} claims {length} bytes, "
                             f"{end - offset} left")
        if msg_type == SOCK_DIAG_BY_FAMILY:
            found: list[Socket] = []
            parse_messages(data[offset:offset + length], proto, addresses, found,
                           want_info=want_info, want_memory=want_memory)
            answered.append((seq, found[0]))
        elif msg_type == NLMSG_ERROR:
            if length < NLMSGHDR.size + 4:
                raise ParseError(f"netlink: truncated error reply at byte {offset}")
            code = -_I32.unpack_from(data, offset + NLMSGHDR.size)[0]
            if code not in GONE_ERRNOS:
                _raise_for_errno(code)  # 0 would be an acknowledgement: never asked for
            answered.append((seq, None))
        offset += (length + 3) & ~3
    return answered
