"""CSV for spreadsheets: every matching socket, flat columns, a header row.

tcp_info is flattened into `tcp_info.<field>` columns (the JSON object's keys), empty
when the socket has none or the kernel does not send that field."""

from __future__ import annotations

import csv
from collections.abc import Iterable

from sockstat.model import TCP_INFO_JSON, TCP_INFO_KEYS, Family, Socket

_FAMILY = {Family.INET: "ipv4", Family.INET6: "ipv6", Family.UNIX: "unix"}

CSV_COLUMNS = ("proto", "family", "state", "local_address", "local_port", "remote_address",
               "remote_port", "recv_q", "send_q", "uid", "inode", "pid", "process", "fd",
               "user", "via_listener", "timer", "timer_ms", "retransmits",
               # added later, at the end: every holder's pid (space-separated), the
               # namespace and container labels, the peer's pid (with --peer), then
               # tcp_info flattened
               "pids", "netns", "container", "peer_pid",
               *(f"tcp_info.{key}" for key in TCP_INFO_KEYS),
               # UNIX sockets' name, type and peer inode (empty for TCP/UDP)
               "path", "unix_type", "peer_inode")
_NO_INFO = ("",) * len(TCP_INFO_KEYS)
# with --memory only (SkMemInfo's fields, in its order)
MEMORY_COLUMNS = ("rmem_alloc", "rcvbuf", "wmem_alloc", "sndbuf", "fwd_alloc",
                  "wmem_queued", "optmem", "backlog", "drops")
_NO_UNIX = ("", "", "")
_NO_MEMORY = ("",) * len(MEMORY_COLUMNS)


def _info_cells(info) -> tuple:
    if info is None:
        return _NO_INFO
    cells = []
    for _, attr in TCP_INFO_JSON:
        value = getattr(info, attr)
        cells.append("" if value is None else int(value) if isinstance(value, bool) else value)
    return tuple(cells)


def write_sockets(stream, sockets: Iterable[Socket], memory: bool = False) -> None:
    """UNIX sockets fill path/unix_type/peer_inode (empty for TCP/UDP); `memory` adds
    the socket memory columns."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + MEMORY_COLUMNS if memory else CSV_COLUMNS)
    for s in sockets:
        p = s.process
        u = s.unix
        extra = _NO_UNIX if u is None else (u.name or "", u.type.label, u.peer_inode or "")
        if memory:
            m = s.memory
            extra += _NO_MEMORY if m is None else tuple("" if v is None else v for v in m)
        writer.writerow((
            s.proto.value, _FAMILY[s.family], s.state.label, s.local.address, s.local.port,
            s.remote.address, s.remote.port, s.recv_q, s.send_q, s.uid, s.inode,
            p.pid if p else "", p.name if p else "", p.fd if p and p.fd is not None else "",
            p.user if p and p.user else "", int(p.via_listener) if p else "",
            s.timer.label if s.timer else "", s.timer_ms if s.timer else "", s.retransmits,
            " ".join(str(h.pid) for h in s.holders) if s.others else (p.pid if p else ""),
            s.netns.label if s.netns else "", s.container.name if s.container else "",
            s.peer_process.pid if s.peer_process else "",
            *_info_cells(s.tcp_info),
            *extra,
        ))
