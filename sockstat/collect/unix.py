"""UNIX (AF_UNIX) sockets: a sock_diag unix_diag dump, and /proc/net/unix as the fallback.

This is how `ss -x` reads them: one SOCK_DIAG_BY_FAMILY request with family AF_UNIX and
a `udiag_show` mask saying which attributes each reply carries (the name, the peer
inode, the queues, the file's inode, the owner's uid, memory). The wire format is
include/uapi/linux/unix_diag.h, declared here once as (name, format) field lists in C
order, like the inet_diag structs in sockstat.collect.netlink (whose header, attribute
walker and batch reader it shares). Why hand-written: see that module's docstring.

What the kernel reports:
- state: TCP_LISTEN for listening stream/seqpacket sockets, TCP_ESTABLISHED for
  connected ones (datagram sockets too, after connect()), TCP_CLOSE otherwise.
- queues (UNIX_DIAG_RQLEN): on a listener, connections waiting for accept() and the
  backlog (as for TCP); elsewhere bytes unread (stream) or queued datagrams' bytes, and
  bytes sent but not yet read by the peer.
- the name (UNIX_DIAG_NAME): sun_path as bound. A leading NUL byte is the abstract
  namespace, shown as "@name" (further NULs as "@", as ss does); no name at all is an
  unnamed socket (socketpair(), a client's end).
- the peer (UNIX_DIAG_PEER): the other end's inode; `pair_peers` finds that socket in
  the same dump to name it, `name_peer_holders` its process (Socket.peer_process).

`parse_messages` and `parse_proc` are pure (tested on captured bytes and text, truncated
and malformed ones included); `dump` and `read_proc` are the thin I/O around them.
"""

from __future__ import annotations

import os
import struct

from sockstat.collect import netlink
from sockstat.errors import ParseError, PermissionDenied, SourceUnavailable
from sockstat.model import (
    Endpoint,
    Family,
    Proto,
    SkMemInfo,
    Socket,
    TcpState,
    UnixType,
)
from sockstat.unixinfo import UnixInfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    import socket  # annotations only: netlink uses _socket (socket.py's enums cost ~13M)

AF_UNIX = 1
# udiag_show bits: which attributes the kernel adds to each reply
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_VFS = 0x02
UDIAG_SHOW_PEER = 0x04
UDIAG_SHOW_ICONS = 0x08
UDIAG_SHOW_RQLEN = 0x10
UDIAG_SHOW_MEMINFO = 0x20
UDIAG_SHOW_UID = 0x40  # Linux 5.3+; older kernels simply leave it out
# attribute types (enum in unix_diag.h)
UNIX_DIAG_NAME = 0
UNIX_DIAG_VFS = 1
UNIX_DIAG_PEER = 2
UNIX_DIAG_ICONS = 3
UNIX_DIAG_RQLEN = 4
UNIX_DIAG_MEMINFO = 5
UNIX_DIAG_SHUTDOWN = 6
UNIX_DIAG_UID = 7

# struct unix_diag_req
UNIX_DIAG_REQ_FIELDS = (
    ("sdiag_family", "B"), ("sdiag_protocol", "B"), ("pad", "H"), ("udiag_states", "I"),
    ("udiag_ino", "I"), ("udiag_show", "I"), ("udiag_cookie0", "I"), ("udiag_cookie1", "I"),
)
# struct unix_diag_msg
UNIX_DIAG_MSG_FIELDS = (
    ("udiag_family", "B"), ("udiag_type", "B"), ("udiag_state", "B"), ("pad", "B"),
    ("udiag_ino", "I"), ("udiag_cookie0", "I"), ("udiag_cookie1", "I"),
)
# struct unix_diag_vfs, struct unix_diag_rqlen
UNIX_DIAG_VFS_FIELDS = (("udiag_vfs_ino", "I"), ("udiag_vfs_dev", "I"))
UNIX_DIAG_RQLEN_FIELDS = (("udiag_rqueue", "I"), ("udiag_wqueue", "I"))


def _declare(fields) -> struct.Struct:
    return struct.Struct("=" + "".join(fmt for _, fmt in fields))


UNIX_DIAG_REQ = _declare(UNIX_DIAG_REQ_FIELDS)
UNIX_DIAG_MSG = _declare(UNIX_DIAG_MSG_FIELDS)
_HEADER_AND_MSG = _declare(netlink.NLMSGHDR_FIELDS + UNIX_DIAG_MSG_FIELDS)
_PAIR = _declare(UNIX_DIAG_VFS_FIELDS)  # two u32s: vfs (ino, dev) and rqlen share it
_U32 = struct.Struct("=I")
assert UNIX_DIAG_REQ.size == 24 and UNIX_DIAG_MSG.size == 16

SHOW = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN | UDIAG_SHOW_UID
_STATES = {s.value: s for s in TcpState}
_TYPES = {t.value: t for t in UnixType}


def build_request(states: int, show: int = SHOW, seq: int = 1) -> bytes:
    """The bytes of one AF_UNIX dump request."""
    body = UNIX_DIAG_REQ.pack(AF_UNIX, 0, 0, states, 0, show, 0xFFFFFFFF, 0xFFFFFFFF)
    header = netlink.NLMSGHDR.pack(netlink.NLMSGHDR.size + len(body),
                                   netlink.SOCK_DIAG_BY_FAMILY,
                                   netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq, 0)
    return header + body


def decode_name(raw: bytes) -> str | None:
    """sun_path bytes as bound -> a printable name: '/run/x.sock', '@abstract', None.

    >>> decode_name(b"\\x00php-fpm"), decode_name(b"/run/a.sock\\x00"), decode_name(b"")
    ('@php-fpm', '/run/a.sock', None)
    """
    if not raw:
        return None
    if raw[0] == 0:  # the abstract namespace: NULs are part of the name
        return "@" + raw[1:].replace(b"\x00", b"@").decode("utf-8", "replace")
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace") or None


def parse_messages(data: bytes | memoryview, out: list[Socket],
                   want_memory: bool = False) -> bool:
    """Parse one batch of unix_diag replies, appending Sockets to `out`.

    Returns True at NLMSG_DONE. Raises ParseError on truncated or malformed messages,
    SourceUnavailable/PermissionDenied on an NLMSG_ERROR reply."""
    end = len(data)
    offset = 0
    full = _HEADER_AND_MSG.size
    while offset < end:
        if end - offset < 16:
            raise ParseError(f"unix_diag: truncated header at byte {offset} of {end}")
        length, msg_type = netlink.LEN_TYPE.unpack_from(data, offset)
        if length < 16 or offset + length > end:
            raise ParseError(f"unix_diag: message at byte {offset} claims {length} bytes, "
                             f"{end - offset} left")
        if msg_type == netlink.NLMSG_DONE:
            return True
        if msg_type == netlink.NLMSG_ERROR:
            netlink.raise_if_error(data, offset, length)
        elif msg_type == netlink.SOCK_DIAG_BY_FAMILY:
            if length < full:
                raise ParseError(f"unix_diag: unix_diag_msg at byte {offset} is "
                                 f"{length - 16} bytes, expected {full - 16}")
            out.append(_socket(data, offset, length, want_memory))
        offset += (length + 3) & ~3
    return False


def _socket(data, offset: int, length: int, want_memory: bool) -> Socket:
    (_, _, _, _, _, family, kind, state, _, inode, cookie0,
     cookie1) = _HEADER_AND_MSG.unpack_from(data, offset)
    unix_type = _TYPES.get(kind)
    tcp_state = _STATES.get(state)
    if family != AF_UNIX or unix_type is None or tcp_state is None:
        raise ParseError(f"unix_diag: message at byte {offset} has family {family}, type "
                         f"{kind}, state {state}: not a UNIX socket report")
    info = UnixInfo(unix_type)
    rqueue = wqueue = uid = 0
    memory: SkMemInfo | None = None
    for rta_type, begin, stop in netlink.attributes(data, offset + _HEADER_AND_MSG.size,
                                                    offset + length):
        size = stop - begin
        if rta_type == UNIX_DIAG_NAME:
            info.name = decode_name(bytes(data[begin:stop]))
        elif rta_type == UNIX_DIAG_PEER and size >= 4:
            info.peer_inode = _U32.unpack_from(data, begin)[0] or None
        elif rta_type == UNIX_DIAG_RQLEN and size >= 8:
            rqueue, wqueue = _PAIR.unpack_from(data, begin)
        elif rta_type == UNIX_DIAG_VFS and size >= 8:
            info.vfs_inode, info.vfs_dev = _PAIR.unpack_from(data, begin)
        elif rta_type == UNIX_DIAG_UID and size >= 4:
            uid = _U32.unpack_from(data, begin)[0]
        elif rta_type == UNIX_DIAG_MEMINFO and want_memory:
            memory = netlink.parse_meminfo(data, begin, stop)
        elif rta_type in (UNIX_DIAG_PEER, UNIX_DIAG_RQLEN, UNIX_DIAG_VFS, UNIX_DIAG_UID):
            raise ParseError(f"unix_diag: attribute {rta_type} at byte {begin - 4} is "
                             f"{size} bytes, too short")
    return Socket(Proto.UNIX, Family.UNIX, tcp_state, Endpoint(info.name or "", 0),
                  Endpoint("", 0), rqueue, wqueue, uid, inode, cookie0 | (cookie1 << 32),
                  unix=info, memory=memory)


def pair_peers(sockets: list[Socket]) -> None:
    """Name each socket's peer from the peer socket in the same dump (by inode)."""
    by_inode = {s.inode: s for s in sockets if s.unix is not None}
    for sock in sockets:
        info = sock.unix
        if info is None or not info.peer_inode:
            continue
        peer = by_inode.get(info.peer_inode)
        if peer is not None and peer.unix is not None:
            info.peer_name = peer.unix.name
            sock.remote = Endpoint(peer.unix.name or "", 0)


def name_peer_holders(sockets: list[Socket], by_inode: dict) -> None:
    """Socket.peer_process of each UNIX socket: the holder of its peer's inode (from
    the same inode -> process scan that named the sockets themselves)."""
    for sock in sockets:
        info = sock.unix
        if info is not None and info.peer_inode:
            sock.peer_process = by_inode.get(info.peer_inode)


_AT = netlink.field_offsets(netlink.NLMSGHDR_FIELDS + UNIX_DIAG_MSG_FIELDS)
_VALID_TYPES = bytes(_TYPES)
_VALID_STATES = bytes(_STATES)


def _records_valid(records: bytes, record: int) -> bool:
    """Every packed unix_diag report is AF_UNIX, of a known type and state (what
    parse_messages refuses otherwise)."""
    return not records[_AT["udiag_family"]::record].translate(None, bytes([AF_UNIX])) \
        and not records[_AT["udiag_type"]::record].translate(None, _VALID_TYPES) \
        and not records[_AT["udiag_state"]::record].translate(None, _VALID_STATES)


def dump_states(states, *, nl: socket.socket) -> bytes:
    """The state number of every UNIX socket in `states`, one byte each: all a counting
    view needs of them. No attribute is asked for, and the batches are compacted as for
    inet sockets (netlink.Compactor); one it does not tile is parsed into rows."""
    mask = netlink.state_mask(states)
    if not mask:
        return b""
    record = _HEADER_AND_MSG.size
    compactor = netlink.Compactor(record, _records_valid)
    out = bytearray()
    nl.send(build_request(mask, show=0))
    for batch in netlink.batches(nl):
        packed = compactor.compact(batch)
        if packed is not None:
            out += packed[0][_AT["udiag_state"]::record]
            done = packed[1]
        else:
            found: list[Socket] = []
            done = parse_messages(batch, found)
            out += bytes(s.state for s in found)
        if done:
            break
    return bytes(out)


def dump(states, *, memory: bool = False, nl: socket.socket | None = None,
         out: list[Socket] | None = None) -> list[Socket]:
    """Every UNIX socket in `states` (filtered in the kernel), peers paired."""
    out = [] if out is None else out
    mask = netlink.state_mask(states)
    if not mask:
        return out
    show = SHOW | (UDIAG_SHOW_MEMINFO if memory else 0)
    own = nl is None
    nl = netlink.open_socket() if own else nl
    found: list[Socket] = []
    try:
        nl.send(build_request(mask, show))
        for batch in netlink.batches(nl):
            if parse_messages(batch, found, memory):
                break
    finally:
        if own:
            nl.close()
    pair_peers(found)
    out.extend(found)
    return out


# -- /proc/net/unix ------------------------------------------------------------------------

# `Flags` bit of a listening socket (__SO_ACCEPTCON), `St` value (socket_state)
_ACCEPTCON = 1 << 16
_SS_CONNECTED = 3


def parse_proc(text: str, source: str = "/proc/net/unix") -> list[Socket]:
    """/proc/net/unix text -> Sockets. It has no queues, peers or uids: those stay 0/None.

    Columns: Num RefCount Protocol Flags Type St Inode [Path]; the path is the rest of
    the line (it may hold spaces), '@name' for the abstract namespace."""
    sockets: list[Socket] = []
    for number, line in enumerate(text.splitlines()[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(None, 7)
        try:
            flags = int(fields[3], 16)
            unix_type = _TYPES[int(fields[4], 16)]
            st = int(fields[5], 16)
            inode = int(fields[6])
        except (IndexError, ValueError, KeyError) as exc:
            raise ParseError(f"{source}: line {number}: cannot parse {line.strip()!r} "
                             f"({exc})") from None
        name = fields[7].rstrip("\n") if len(fields) > 7 else None
        if not inode:
            # a connection waiting in a listener's accept queue: the kernel's server end,
            # not yet accepted, has no file (inode 0) and shows the listener's path with
            # St 02 (SS_CONNECTING) though it is established. Netlink does not list it
            # (it is counted in the listener's Recv-Q), nor does `ss -x`: left out too.
            continue
        if flags & _ACCEPTCON:
            state = TcpState.LISTEN
        elif st == _SS_CONNECTED:
            state = TcpState.ESTABLISHED
        else:
            state = TcpState.CLOSE
        sockets.append(Socket(Proto.UNIX, Family.UNIX, state, Endpoint(name or "", 0),
                              Endpoint("", 0), inode=inode,
                              unix=UnixInfo(unix_type, name=name or None)))
    return sockets


def read_proc(procfs: str = "/proc") -> list[Socket]:
    path = os.path.join(procfs, "net/unix")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        raise SourceUnavailable(f"{path} does not exist (no UNIX sockets here?)") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read {path}") from None
    return parse_proc(text, path)
