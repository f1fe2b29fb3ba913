"""JSON for machines: every matching socket, one object each (schema in docs/json.md).

The schema is defined once, by `sockstat.model.socket_to_dict`. Big listings (100k
sockets) go through `_fast_row`, which formats the same object with one f-string
(addresses, labels and numbers need no escaping; names go through the C string
encoder): about three times cheaper than building a dict and encoding it. Enum labels
come from tables (an enum's `.value` is a Python-level property), and a row's opening
(proto, family, state) is formatted once per kind. A test holds the two to the same
bytes (tests/test_render.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sockstat.model import Family, Proto, Socket, TcpState, Timer, socket_to_dict

_encode_obj = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_quote = json.encoder.encode_basestring  # the C implementation when available
_STATE = {s: f'"{s.label}"' for s in TcpState}
_FAMILY = {Family.INET: '"ipv4"', Family.INET6: '"ipv6"'}
_PROTO = {p: f'"{p.value}"' for p in Proto}
# a timer's JSON text; None for OFF, whose "timer" and "timer_ms" are null
_TIMER: dict = {t: f'"{t.label}"' for t in Timer} | {Timer.OFF: None}


def _fast_row(s: Socket) -> str:
    if s.tcp_info is not None or s.others or s.peer_process is not None \
            or s.netns is not None or s.container is not None or s.unix is not None:
        # rare in big listings (a --netns/--peer one, UNIX rows with keys of their
        # own): take the general path
        return _encode_obj(socket_to_dict(s))
    p = s.process
    if p is None:
        proc = "null"
        holders = '"processes":[]'
    else:
        proc = (f'{{"pid":{p.pid},"name":{_quote(p.name)},'
                f'"fd":{"null" if p.fd is None else p.fd},'
                f'"user":{"null" if p.user is None else _quote(p.user)},'
                f'"via_listener":{"true" if p.via_listener else "false"}}}')
        holders = f'"processes":[{proc}]'
    key = (s.proto, s.family, s.state)
    head = _HEADS.get(key) or _head(key)
    timer = _TIMER[s.timer]
    local, remote = s.local, s.remote
    cookie = s.cookie
    memory = s.memory
    return (
        f'{head}{local[0]}","local_port":{local[1]},'
        f'"remote_address":"{remote[0]}","remote_port":{remote[1]},'
        f'"recv_q":{s.recv_q},"send_q":{s.send_q},"uid":{s.uid},"inode":{s.inode},'
        f'"cookie":{"null" if cookie is None else cookie},'
        f'"timer":{timer or "null"},'
        f'"timer_ms":{s.timer_ms if timer else "null"},'
        f'"retransmits":{s.retransmits},"process":{proc},"tcp_info":null,{holders},'
        f'"peer_process":null,"netns":null,"container":null'
        f'{"}" if memory is None else _memory(memory)}'
    )


# (proto, family, state) -> a row's opening, up to the local address: a handful of
# kinds in any listing, so each is formatted once
_HEADS: dict = {}


def _head(key) -> str:
    proto, family, state = key
    head = _HEADS[key] = (f'{{"proto":{_PROTO[proto]},"family":{_FAMILY[family]},'
                          f'"state":{_STATE[state]},"local_address":"')
    return head


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
