"""JSON for machines: every matching socket, one object each (schema in docs/json.md).

The schema is defined once, by `sockstat.model.socket_to_dict`. Big listings (100k
sockets) are formatted by `_rows`, which writes the same object with one f-string a row
(addresses, labels and numbers need no escaping; names go through the C string
encoder): several times cheaper than building a dict and encoding it. A test holds the
two to the same bytes (tests/test_render.py, tests/test_json_real.py).

Why hand-written: a row is some thirty pieces of text and a dozen numbers, and each
step of building it costs; so the steps are as few as they can be. Port texts come from
a list indexed by port (`PortTexts`, filled as ports are met), queues, uid, retransmits
and timer_ms are mostly 0 (`n or "0"` is then their text); the inode, the cookie and
the fd, unique to each socket, are formatted as they are. A holder's text around its fd
is made once per process (pid, name, user and via_listener), a row's opening (proto,
family, state) once per kind, and enum labels come from tables (an enum's `.value` is a
Python-level property). The numbers are the model's ints (`n or "0"` would show False
as 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice, repeat

from sockstat.model import Family, Proto, Socket, TcpState, Timer, socket_to_dict

try:  # json.encoder's own C string encoder, without importing the json package (its
    # decoder and scanner too: ~1.5 ms of a listing's start-up); json comes when needed
    from _json import encode_basestring as _quote
except ImportError:  # an interpreter without the C module
    from json.encoder import encode_basestring as _quote

_encoder = None
BATCH = 4096  # rows per write(): never one giant string


def _encode_obj(obj) -> str:
    """One object as compact JSON (the general path: rare rows, not the listing's)."""
    global _encoder
    if _encoder is None:
        import json

        _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    return _encoder(obj)


_STATE = {s: f'"{s.label}"' for s in TcpState}
_FAMILY = {Family.INET: '"ipv4"', Family.INET6: '"ipv6"'}
_PROTO = {p: f'"{p.value}"' for p in Proto}
# a timer's JSON text; None for OFF, whose "timer" and "timer_ms" are null
_TIMER: dict = {t: f'"{t.label}"' for t in Timer} | {Timer.OFF: None}


class PortTexts(list):
    """Port number -> its decimal text, filled as ports are met: indexing a list is the
    cheapest look-up there is (one table per listing)."""

    def __init__(self) -> None:
        super().__init__(repeat(None, 65536))

    def fill(self, port: int) -> str:
        text = self[port] = str(port)
        return text


def write_sockets(stream, sockets: Iterable[Socket]) -> None:
    """A JSON array, one socket per line, written in batches (never one giant string)."""
    stream.write("[")
    ports, holders = PortTexts(), {}
    rows = iter(sockets)
    separator = ""
    while batch := _rows(islice(rows, BATCH), ports, holders):
        stream.write(separator)
        stream.write(",\n".join(batch))
        separator = ",\n"
    stream.write("]\n")


def _fast_row(s: Socket) -> str:
    """One socket's row, as write_sockets writes it."""
    return _rows((s,), PortTexts(), {})[0]


def _rows(sockets: Iterable[Socket], ports: PortTexts, holders: dict) -> list[str]:
    """The rows of these sockets. `ports` and `holders` (a holder's identity -> the
    text around its fd) are shared by every batch of a listing. Queues, uid,
    retransmits and timer_ms are mostly 0: `n or "0"` is then the text, else n is
    formatted."""
    rows: list[str] = []
    append = rows.append
    for s in sockets:
        if s.tcp_info is not None or s.others or s.peer_process is not None \
                or s.netns is not None or s.container is not None or s.unix is not None:
            # rare in big listings (a --netns/--peer one, UNIX rows with keys of their
            # own): take the general path
            append(_encode_obj(socket_to_dict(s)))
            continue
        p = s.process
        if p is None:
            owner = _NO_OWNER
        else:
            key = (p.pid, p.name, p.user, p.via_listener)
            around = holders.get(key)
            if around is None:
                around = holders[key] = (
                    f'{{"pid":{p.pid},"name":{_quote(p.name)},"fd":',
                    f',"user":{"null" if p.user is None else _quote(p.user)},'
                    f'"via_listener":{"true" if p.via_listener else "false"}}}')
            before, after = around
            fd = "null" if p.fd is None else p.fd
            owner = f'{before}{fd}{after},"tcp_info":null,"processes":[{before}{fd}{after}]'
        key = (s.proto, s.family, s.state)
        head = _HEADS.get(key) or _head(key)
        timer = _TIMER[s.timer]
        local, remote = s.local, s.remote
        cookie = s.cookie
        memory = s.memory
        lport, rport = local[1], remote[1]
        append(
            f'{head}{local[0]}","local_port":{ports[lport] or ports.fill(lport)},'
            f'"remote_address":"{remote[0]}",'
            f'"remote_port":{ports[rport] or ports.fill(rport)},'
            f'"recv_q":{s.recv_q or "0"},"send_q":{s.send_q or "0"},'
            f'"uid":{s.uid or "0"},"inode":{s.inode},'
            f'"cookie":{"null" if cookie is None else cookie},'
            f'"timer":{timer or "null"},'
            f'"timer_ms":{(s.timer_ms or "0") if timer else "null"},'
            f'"retransmits":{s.retransmits or "0"},"process":{owner},'
            f'"peer_process":null,"netns":null,"container":null'
            f'{"}" if memory is None else _memory(memory)}'
        )
    return rows


# "process" to "processes" of a row without one (tcp_info is null on every fast row)
_NO_OWNER = 'null,"tcp_info":null,"processes":[]'
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


def dumps(obj) -> str:
    import json

    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)
