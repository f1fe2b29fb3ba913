"""Decode IPv4/IPv6 + TCP headers from captured bytes: the segments behind `demo --packets`.

Pure functions over bytes, no I/O. The input is a network-layer packet as an AF_PACKET
SOCK_DGRAM socket delivers it (the IP header first, no link-layer header), possibly cut
short by the capture's snap length: the payload is never needed, only its length, which
the IP header states.

Hand-written with `struct` because the stdlib has no packet decoder and the project's
dependencies include none; the few fixed headers TCP/IP needs here are a page of code.
Malformed or truncated headers raise DecodeError (a ValueError) naming what is wrong.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

PROTO_TCP = 6
# IPv6 extension headers that can sit between the IPv6 header and TCP (walked over)
_IPV6_EXTENSIONS = {0, 43, 60}  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = (1 << i for i in range(8))
# the order flags are written in: "SYN,ACK", "FIN,ACK", "PSH,ACK"
FLAG_ORDER = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"),
              (URG, "URG"), (ECE, "ECE"), (CWR, "CWR"))

# TCP option kinds (RFC 9293, RFC 7323, RFC 2018)
OPT_END, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERMITTED, OPT_SACK, OPT_TIMESTAMPS = \
    0, 1, 2, 3, 4, 5, 8
_OPTION_LENGTH = {OPT_MSS: 4, OPT_WSCALE: 3, OPT_SACK_PERMITTED: 2, OPT_TIMESTAMPS: 10}


class DecodeError(ValueError):
    """The bytes are not a complete IPv4/IPv6 TCP header."""


@dataclass(frozen=True)
class TcpOptions:
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None  # (TSval, TSecr)
    sack: tuple[tuple[int, int], ...] = ()  # SACK blocks (left, right), absolute
    other: tuple[int, ...] = ()  # kinds not decoded here

    def to_dict(self) -> dict:
        out: dict = {}
        if self.mss is not None:
            out["mss"] = self.mss
        if self.wscale is not None:
            out["wscale"] = self.wscale
        if self.sack_permitted:
            out["sack_permitted"] = True
        if self.timestamps is not None:
            out["timestamps"] = list(self.timestamps)
        if self.sack:
            out["sack"] = [list(block) for block in self.sack]
        if self.other:
            out["other"] = list(self.other)
        return out

    def describe(self) -> str:
        """'mss 65495 · sack-ok · ts 123/0 · wscale 7' (empty if none)."""
        parts = []
        if self.mss is not None:
            parts.append(f"mss {self.mss}")
        if self.sack_permitted:
            parts.append("sack-ok")
        if self.timestamps is not None:
            parts.append(f"ts {self.timestamps[0]}/{self.timestamps[1]}")
        if self.wscale is not None:
            parts.append(f"wscale {self.wscale}")
        if self.sack:
            parts.append("sack " + " ".join(f"{a}-{b}" for a, b in self.sack))
        return " · ".join(parts)


@dataclass(frozen=True)
class Segment:
    """One TCP segment: the addresses from the IP header, the TCP header, the payload's
    length. Sequence and acknowledgement numbers are absolute (as on the wire)."""

    ip_version: int  # 4 or 6
    src: str
    dst: str
    src_port: int
    dst_port: int
    seq: int
    ack: int
    header_length: int  # bytes: the 4-bit data offset × 4
    flags: int
    window: int  # the 16-bit field, before scaling
    checksum: int
    urgent: int
    length: int  # payload bytes, from the IP header's length
    options: TcpOptions = field(default_factory=TcpOptions)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def flag_names(self) -> str:
        return flag_names(self.flags)

    @property
    def source(self) -> tuple[str, int]:
        return self.src, self.src_port

    @property
    def destination(self) -> tuple[str, int]:
        return self.dst, self.dst_port

    @property
    def sequence_space(self) -> int:
        """How many sequence numbers the segment uses: its bytes, plus one for SYN and
        one for FIN (each counts as a byte)."""
        return self.length + self.has(SYN) + self.has(FIN)


def flag_names(flags: int) -> str:
    """0x12 -> 'SYN,ACK'."""
    return ",".join(name for bit, name in FLAG_ORDER if flags & bit)


def decode(packet: bytes) -> Segment:
    """An IPv4 or IPv6 packet carrying TCP -> Segment. DecodeError if it is not one, or if
    its headers are cut short."""
    if not packet:
        raise DecodeError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        return _ipv4(packet)
    if version == 6:
        return _ipv6(packet)
    raise DecodeError(f"IP version {version}: neither 4 nor 6")


def _ipv4(packet: bytes) -> Segment:
    if len(packet) < 20:
        raise DecodeError(f"IPv4 header truncated ({len(packet)} of 20 bytes)")
    ihl = (packet[0] & 0x0F) * 4
    total, frag, proto = struct.unpack_from("!H2xHxB", packet, 2)
    if ihl < 20 or len(packet) < ihl:
        raise DecodeError(f"IPv4 header length {ihl} with {len(packet)} bytes captured")
    if proto != PROTO_TCP:
        raise DecodeError(f"IP protocol {proto}, not TCP")
    if frag & 0x3FFF:  # more-fragments flag or an offset
        raise DecodeError("an IPv4 fragment")
    if total < ihl:
        raise DecodeError(f"IPv4 total length {total} shorter than its header")
    src = socket.inet_ntop(socket.AF_INET, packet[12:16])
    dst = socket.inet_ntop(socket.AF_INET, packet[16:20])
    return _tcp(packet, ihl, total - ihl, 4, src, dst)


def _ipv6(packet: bytes) -> Segment:
    if len(packet) < 40:
        raise DecodeError(f"IPv6 header truncated ({len(packet)} of 40 bytes)")
    payload, next_header = struct.unpack_from("!HB", packet, 4)
    offset = 40
    while next_header in _IPV6_EXTENSIONS:
        if len(packet) < offset + 8:
            raise DecodeError("IPv6 extension header truncated")
        next_header, units = packet[offset], packet[offset + 1]
        size = (units + 1) * 8
        offset += size
        payload -= size
    if next_header == _IPV6_FRAGMENT:
        raise DecodeError("an IPv6 fragment")
    if next_header != PROTO_TCP:
        raise DecodeError(f"IPv6 next header {next_header}, not TCP")
    src = socket.inet_ntop(socket.AF_INET6, packet[8:24])
    dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
    return _tcp(packet, offset, payload, 6, src, dst)


def _tcp(packet: bytes, at: int, ip_payload: int, version: int, src: str,
         dst: str) -> Segment:
    if len(packet) < at + 20:
        raise DecodeError(f"TCP header truncated ({max(len(packet) - at, 0)} of 20 bytes)")
    sport, dport, seq, ack, offset_flags, window, checksum, urgent = \
        struct.unpack_from("!HHIIHHHH", packet, at)
    header = (offset_flags >> 12) * 4
    if header < 20:
        raise DecodeError(f"TCP data offset {header} bytes, below the minimum 20")
    if len(packet) < at + header:
        raise DecodeError(f"TCP options truncated ({len(packet) - at} of {header} bytes)")
    if ip_payload < header:
        raise DecodeError(f"IP payload {ip_payload} bytes, shorter than the TCP header")
    options = parse_options(packet[at + 20:at + header])
    return Segment(ip_version=version, src=src, dst=dst, src_port=sport, dst_port=dport,
                   seq=seq, ack=ack, header_length=header, flags=offset_flags & 0xFF,
                   window=window, checksum=checksum, urgent=urgent,
                   length=ip_payload - header, options=options)


def parse_options(raw: bytes) -> TcpOptions:
    """The TCP options area -> TcpOptions. DecodeError on a length that does not fit."""
    values: dict = {}
    sack: list[tuple[int, int]] = []
    other: list[int] = []
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(raw):
            raise DecodeError(f"TCP option {kind} has no length byte")
        size = raw[i + 1]
        if size < 2 or i + size > len(raw):
            raise DecodeError(f"TCP option {kind} length {size} does not fit")
        expected = _OPTION_LENGTH.get(kind)
        if expected is not None and size != expected:
            raise DecodeError(f"TCP option {kind} length {size}, expected {expected}")
        body = raw[i + 2:i + size]
        if kind == OPT_MSS:
            values["mss"] = struct.unpack("!H", body)[0]
        elif kind == OPT_WSCALE:
            values["wscale"] = body[0]
        elif kind == OPT_SACK_PERMITTED:
            values["sack_permitted"] = True
        elif kind == OPT_TIMESTAMPS:
            values["timestamps"] = struct.unpack("!II", body)
        elif kind == OPT_SACK:
            if len(body) % 8:
                raise DecodeError(f"SACK option length {size} is not 2 + 8n")
            sack.extend(struct.iter_unpack("!II", body))
        else:
            other.append(kind)
        i += size
    return TcpOptions(sack=tuple(sack), other=tuple(other), **values)
