"""The /proc source: /proc/net/{tcp,tcp6,udp,udp6}.

Slower than netlink (the kernel formats text, we parse it) and it filters nothing in the
kernel, but it needs no netlink and works on any Linux, and inside containers that hide
sock_diag. What it lacks: the listen backlog (Send-Q of a LISTEN row is 0 here), socket
cookies and tcp_info.

`parse(text, proto, family)` and `parse_lines` are pure (tested on captured text,
malformed lines included); `read_table(procfs, proto, family)` is the I/O around them,
which parses the table as it reads it (a chunk at a time, sockstat.collect.procfile):
at 100k sockets the text, its decoded copy and its list of lines took ~50 MB at once.

Kernel surprises handled here:
- Addresses are 32-bit words printed in *host* byte order: 0100007F is 127.0.0.1 on
  little-endian machines. IPv6 is four such words.
- IPv4-mapped IPv6 (::ffff:127.0.0.1) is shown as IPv4, as netlink does here.
- Under churn the kernel can print a socket twice as the hash table moves under the
  reader; duplicates are dropped, keyed by the 4-tuple and inode.
- Timer expiry (`tm->when`) is in clock ticks (USER_HZ).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Collection, Iterable

from sockstat.errors import ParseError, PermissionDenied, SourceUnavailable
from sockstat.model import Endpoint, Family, Proto, Socket, TcpState, Timer

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_STATES = {s.value: s for s in TcpState}
_TIMERS = {t.value: t for t in Timer}
_LITTLE = sys.byteorder == "little"
_HEX = frozenset("0123456789abcdefABCDEF")


def _word_bytes(hex_word: str) -> bytes:
    raw = bytes.fromhex(hex_word)
    return raw[::-1] if _LITTLE else raw


_ADDRESS_DIGITS = {Family.INET: 8, Family.INET6: 32}


def decode_address(text: str, family: Family | None = None) -> tuple[str, int]:
    """'0100007F:1F90' -> ('127.0.0.1', 8080) on a little-endian host.

    With `family`, the address must be that family's width (an IPv6 address in
    /proc/net/tcp is malformed input, not a socket)."""
    hex_addr, _, hex_port = text.partition(":")
    return _host(hex_addr, family, text), _port(hex_port)


def _port(hex_port: str) -> int:
    # int(x, 16) also takes '-1', '+5' and '0x50': the kernel prints exactly 4 digits
    if len(hex_port) != 4 or not _HEX.issuperset(hex_port):
        raise ValueError(f"port {hex_port!r} is not 4 hex digits (0000-FFFF)")
    return int(hex_port, 16)


def _host(hex_addr: str, family: Family | None, text: str) -> str:
    if family is not None and len(hex_addr) != _ADDRESS_DIGITS[family]:
        raise ValueError(f"address {hex_addr!r} is not {family.name} "
                         f"({_ADDRESS_DIGITS[family]} hex digits)")
    if len(hex_addr) == 8:
        return socket.inet_ntop(socket.AF_INET, _word_bytes(hex_addr))
    if len(hex_addr) == 32:
        raw = b"".join(_word_bytes(hex_addr[i:i + 8]) for i in range(0, 32, 8))
        if raw[:12] == b"\x00" * 10 + b"\xff\xff":
            return socket.inet_ntop(socket.AF_INET, raw[12:])
        return socket.inet_ntop(socket.AF_INET6, raw)
    raise ValueError(f"bad address {text!r}")


def _endpoint(text: str, family: Family, hosts: dict[str, str]) -> Endpoint:
    """decode_address() as an Endpoint, each host decoded once (`hosts`, by its hex):
    a table has few hosts but a port per socket, so only hosts are worth keeping."""
    hex_addr, _, hex_port = text.partition(":")
    host = hosts.get(hex_addr)
    if host is None:
        host = hosts[hex_addr] = _host(hex_addr, family, text)
    return Endpoint(host, _port(hex_port))


def parse(text: str, proto: Proto, family: Family, source: str = "<text>",
          states: Collection[TcpState] | None = None) -> list[Socket]:
    """/proc/net/tcp-style text -> Sockets. A malformed line raises ParseError naming the
    source, the line number and the line."""
    return parse_lines(text.splitlines(), proto, family, source, states)


def parse_lines(lines: Iterable[str], proto: Proto, family: Family, source: str = "<text>",
                states: Collection[TcpState] | None = None) -> list[Socket]:
    """parse() of the table's lines as they come (the header first); `states`: build
    Sockets only for these (the others are skipped before their addresses are read)."""
    sockets: list[Socket] = []
    seen: set[tuple] = set()
    hosts: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if number == 1:  # the column header
            continue
        fields = line.split()
        if not fields:
            continue
        if states is not None:
            try:
                skip = _STATES[int(fields[3], 16)] not in states
            except (IndexError, ValueError, KeyError):
                skip = False  # malformed: the full parse below names it
            if skip:
                continue
        try:
            local = _endpoint(fields[1], family, hosts)
            remote = _endpoint(fields[2], family, hosts)
            state_number = int(fields[3], 16)
            tx_queue, _, rx_queue = fields[4].partition(":")
            timer_kind, _, timer_when = fields[5].partition(":")
            retransmits = int(fields[6], 16)
            uid = int(fields[7])
            inode = int(fields[9])
            state = _STATES[state_number]
            row = Socket(
                proto, family, state, local, remote,
                int(rx_queue, 16), int(tx_queue, 16), uid, inode, None,
                _TIMERS.get(int(timer_kind, 16), Timer.OFF),
                int(timer_when, 16) * 1000 // USER_HZ, retransmits,
            )
        except (IndexError, ValueError, KeyError) as exc:
            raise ParseError(f"{source}: line {number}: cannot parse {line.strip()!r} ({exc})") \
                from None
        key = (local, remote, inode)
        if key in seen:  # the same socket printed twice while the table changed
            continue
        seen.add(key)
        sockets.append(row)
    return sockets


TABLES = {
    (Proto.TCP, Family.INET): "net/tcp",
    (Proto.TCP, Family.INET6): "net/tcp6",
    (Proto.UDP, Family.INET): "net/udp",
    (Proto.UDP, Family.INET6): "net/udp6",
}


def read_table(procfs: str, proto: Proto, family: Family,
               states: Collection[TcpState] | None = None) -> list[Socket]:
    """One table's Sockets (only those in `states`, unless None), parsed as it is read:
    never the whole text at once (15 MB at 100k sockets, and as much again decoded)."""
    from sockstat.collect.procfile import read_lines

    path = os.path.join(procfs, TABLES[(proto, family)])
    try:
        lines = read_lines(path)
    except FileNotFoundError:
        if family is Family.INET6:  # IPv6 disabled: simply no v6 sockets
            return []
        raise SourceUnavailable(f"{path} does not exist (is /proc mounted?)") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read {path}") from None
    try:
        return parse_lines(lines, proto, family, path, states)
    except PermissionError:
        raise PermissionDenied(f"cannot read {path}") from None
    finally:
        lines.close()
