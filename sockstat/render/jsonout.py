"""JSON for machines: every matching socket, one object each (schema in docs/json.md).

The schema is defined once, by `sockstat.model.socket_to_dict`. Big listings (100k
sockets) go through `_fast_row`, which formats the same object with one f-string
(addresses, labels and numbers need no escaping; names go through the C string
encoder): about three times cheaper than building a dict and encoding it. A test holds
the two to byte-for-byte equal meaning (tests/test_render.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sockstat.model import Family, Socket, TcpState, Timer, socket_to_dict

_encode_obj = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_quote = json.encoder.encode_basestring  # the C implementation when available
_STATE = {s: f'"{s.label}"' for s in TcpState}
_FAMILY = {Family.INET: '"ipv4"', Family.INET6: '"ipv6"'}
_TIMER = {t: f'"{t.label}"' for t in Timer}


def _fast_row(s: Socket) -> str:
    if s.tcp_info is not None or s.others or s.peer_process is not None \
            or s.netns is not None or s.container is not None or s.unix is not None:
        # rare in big listings (a --netns/--peer one, UNIX rows with keys of their
        # own): take the general path
        return _encode_obj(socket_to_dict(s))
    p = s.process
    if p is None:
        proc = "null"
    else:
        proc = (f'{{"pid":{p.pid},"name":{_quote(p.name)},'
                f'"fd":{"null" if p.fd is None else p.fd},'
                f'"user":{"null" if p.user is None else _quote(p.user)},'
                f'"via_listener":{"true" if p.via_listener else "false"}}}')
    timer = s.timer
    local, remote = s.local, s.remote
    return (
        f'{{"proto":"{s.proto.value}","family":{_FAMILY[s.family]},"state":{_STATE[s.state]},'
        f'"local_address":"{local.address}","local_port":{local.port},'
        f'"remote_address":"{remote.address}","remote_port":{remote.port},'
        f'"recv_q":{s.recv_q},"send_q":{s.send_q},"uid":{s.uid},"inode":{s.inode},'
        f'"cookie":{"null" if s.cookie is None else s.cookie},'
        f'"timer":{_TIMER[timer] if timer else "null"},'
        f'"timer_ms":{s.timer_ms if timer else "null"},'
        f'"retransmits":{s.retransmits},"process":{proc},"tcp_info":null,'
        f'"processes":{"[]" if p is None else "[" + proc + "]"},"peer_process":null,'
        f'"netns":null,"container":null{"}" if s.memory is None else _memory(s.memory)}'
    )


def _memory(m) -> str:
    """`,"memory":{...}}` (--memory: every row has one, so it stays on the fast path)."""
    return (f',"memory":{{"rmem_alloc":{m.rmem_alloc},"rcvbuf":{m.rcvbuf},'
            f'"wmem_alloc":{m.wmem_alloc},"sndbuf":{m.sndbuf},"fwd_alloc":{m.fwd_alloc},'
            f'"wmem_queued":{m.wmem_queued},"optmem":{m.optmem},'
            f'"backlog":{"null" if m.backlog is None else m.backlog},'
            f'"drops":{"null" if m.drops is None else m.drops}}}}}')


def write_sockets(stream, sockets: Iterable[Socket]) -> None:
    """A JSON array, one socket per line, written in batches (never one giant string)."""
    stream.write("[")
    batch: list[str] = []
    first = True
    for sock in sockets:
        batch.append(_fast_row(sock))
        if len(batch) >= 4096:
            stream.write(("" if first else ",\n") + ",\n".join(batch))
            first = False
            batch.clear()
    if batch:
        stream.write(("" if first else ",\n") + ",\n".join(batch))
    stream.write("]\n")


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)
