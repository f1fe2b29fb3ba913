"""JSON for machines: every matching socket, one object each (schema in docs/json.md).

The schema is defined once, by `sockstat.model.socket_to_dict`. Big listings (100k
sockets) are written without it, field by field in the same order (ROW_FIELDS: one
list): from Sockets by `_rows`, one f-string a row made from that list once per kind
of row (`row_writer`), and from the kernel's compacted records by `write_records`, one
`%` a batch of rows with no Python code per row (addresses, labels and numbers need no
escaping; names go through the C string encoder). Several times cheaper than building
a dict and encoding it; tests hold all three to the same bytes (tests/test_render.py,
tests/test_json_real.py, tests/test_json_rows.py).

Why hand-written: a row is some thirty pieces of text and a dozen numbers, and each
step of building it costs; so the steps are as few as they can be. A holder's text
around its fd is made once per process (pid, name, user and via_listener), a row's
labels (proto, family, state, timer) once per kind into its template, and enum labels
come from tables (an enum's `.value` is a Python-level property).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain, compress, islice, repeat
from operator import attrgetter, is_

from sockstat.model import NOBODY, Family, Proto, Socket, TcpState, Timer, socket_to_dict

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

# A listing row's fields, in the schema's order (socket_to_dict's keys: a test holds
# them equal), and how each is written: KIND from the row's (proto, family, state,
# timer), which every row of a kind shares and its template holds; TEXT and NUMBER a
# row's own value (an address, an int); TIMER_MS the timer's expiry when a timer runs,
# else null; OWNER the holder's part, one text for all three of its fields; NULL never
# filled on a fast row. Both writers (Sockets: _rows; the kernel's records:
# write_records) format rows through the templates made from this one list.
KIND, TEXT, NUMBER, TIMER_MS, OWNER, NULL = "kind", "text", "number", "timer_ms", "owner", \
    "null"
ROW_FIELDS = (
    ("proto", KIND), ("family", KIND), ("state", KIND),
    ("local_address", TEXT), ("local_port", NUMBER),
    ("remote_address", TEXT), ("remote_port", NUMBER),
    ("recv_q", NUMBER), ("send_q", NUMBER), ("uid", NUMBER), ("inode", NUMBER),
    ("cookie", NUMBER), ("timer", KIND), ("timer_ms", TIMER_MS), ("retransmits", NUMBER),
    ("process", OWNER), ("tcp_info", OWNER), ("processes", OWNER),
    ("peer_process", NULL), ("netns", NULL), ("container", NULL),
)
# the values a template's slots take, in order (a row's tuple for `%`)
ROW_SLOTS = tuple(name for name, how in ROW_FIELDS if how in (TEXT, NUMBER, TIMER_MS)) \
    + ("process",)
# the owner's text: `"process":` then the holder, and tcp_info (null on a fast row) and
# every holder, which OWNER's three fields are
assert [name for name, how in ROW_FIELDS if how is OWNER] == ["process", "tcp_info",
                                                               "processes"]
_OWNER = '{0},"tcp_info":null,"processes":[{1}]'
_NO_OWNER = _OWNER.format("null", "")


def row_writer(proto: Proto, family: Family, state: TcpState, timer: Timer):
    """A function writing one kind of row from Sockets: its arguments ROW_SLOTS' values
    and the row's end (`}`, or --memory's field and `}`); its labels written in. An
    f-string made from ROW_FIELDS and compiled once per kind (as dataclasses makes its
    methods): a `%` template would be scanned character by character for every row,
    ~3k instructions of a row's ~14k."""
    kinds = {"proto": _PROTO[proto], "family": _FAMILY[family], "state": _STATE[state],
             "timer": _TIMER[timer] or "null"}
    running = _TIMER[timer] is not None
    parts = []
    for name, how in ROW_FIELDS:
        if how is KIND:
            value = kinds[name]
        elif how is NULL or (how is TIMER_MS and not running):
            value = "null"
        elif how is OWNER:
            if name != "process":  # the owner's one text writes all three
                continue
            value = "{process}"
        else:
            value = f'"{{{name}}}"' if how is TEXT else f"{{{name}}}"
        parts.append(f'"{name}":{value}')
    text = "{{" + ",".join(parts) + "{end}"
    assert "'" not in text and "\\" not in text
    namespace: dict = {}
    exec(f"def row({', '.join(ROW_SLOTS)}, end):\n    return f'{text}'\n", namespace)
    return namespace["row"]


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
    holders = _Holders()
    ports = PortTexts()
    rows = iter(sockets)
    separator = ""
    while batch := _rows(islice(rows, BATCH), holders, ports):
        stream.write(separator)
        stream.write(",\n".join(batch))
        separator = ",\n"
    stream.write("]\n")


def _fast_row(s: Socket) -> str:
    """One socket's row, as write_sockets writes it."""
    return _rows((s,), _Holders(), PortTexts())[0]


class _Holders(dict):
    """A holder's identity (pid, name, user, via_listener) -> its text before and after
    its fd: made once per process (every socket of a process has its own fd)."""

    def __missing__(self, key: tuple) -> tuple[str, str]:
        pid, name, user, via = key
        around = self[key] = (
            f'{{"pid":{pid},"name":{_quote(name)},"fd":',
            f',"user":{"null" if user is None else _quote(user)},'
            f'"via_listener":{"true" if via else "false"}}}')
        return around


def _holder_text(holders: _Holders, p) -> str:
    """One holder's object in a row: {"pid":...,"fd":...,"via_listener":...}."""
    before, after = holders[p.pid, p.name, p.user, p.via_listener]
    return f'{before}{"null" if p.fd is None else p.fd}{after}'


def _rows(sockets: Iterable[Socket], holders: _Holders, ports: PortTexts) -> list[str]:
    """The rows of these sockets. `holders` and `ports` are shared by every batch of a
    listing. Queues, uid, retransmits and timer_ms are mostly 0: `n or "0"` is then
    their text (no int formatted), else n is; the numbers are the model's ints (`n or
    "0"` would show False as 0)."""
    rows: list[str] = []
    append = rows.append
    writers = _SOCKET_WRITERS
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
            holder = _holder_text(holders, p)
            owner = _OWNER.format(holder, holder)
        key = (s.proto, s.family, s.state, s.timer)
        row = writers.get(key) or _socket_writer(key)
        local, remote = s.local, s.remote
        cookie = s.cookie
        memory = s.memory
        lport, rport = local[1], remote[1]
        append(row(
            local[0], ports[lport] or ports.fill(lport), remote[0],
            ports[rport] or ports.fill(rport), s.recv_q or "0", s.send_q or "0",
            s.uid or "0", s.inode, "null" if cookie is None else cookie, s.timer_ms or "0",
            s.retransmits or "0", owner, "}" if memory is None else _memory(memory)))
    return rows


# (proto, family, state, timer) -> its row writer, made once per kind met
_SOCKET_WRITERS: dict = {}


def _socket_writer(key):
    row = _SOCKET_WRITERS[key] = row_writer(*key)
    return row


# -- rows straight from the kernel's records ----------------------------------------------
# the Records.columns field of a row field, where the two names differ
_COLUMN = {"timer_ms": "expires"}
INLINE = 16  # texts up to this long are written into a batch's template


def write_records(stream, parts, owners=None) -> None:
    """The JSON array write_sockets writes for the same table, byte for byte, from the
    kernel's compacted records (no Socket per row). `parts`: (proto, Records,
    AddressCache) in the listing's order; `owners`: a collect.rows.RowOwners, or None
    without processes. Whatever a fast row does not carry (tcp_info, memory, peers,
    namespaces, UNIX keys) is not asked for on this path (collect.rows says when).

    A batch of rows is one `%` of "%s" repeated, over a flat tuple of every row's
    pieces, each piece a column (Records.columns, made in C) or the same text for
    every row: the labels of a batch of one kind, a field every row holds alike
    (Same), and the literal text between them, merged. No Python code runs per row,
    and `%` copies each piece whole instead of scanning a template's literal text."""
    stream.write("[")
    texts = None if owners is None else _OwnerTexts(owners)
    first = True
    for proto, records, addresses in parts:
        for batch in records.batches(BATCH):
            c = batch.columns(addresses)
            n = len(c.inode)
            owner = _NO_OWNER if texts is None else texts.column(c)
            pieces = _row_pieces(proto, batch.kind, c, owner)
            # a short text is cheaper in the template (`%` scans it a character at a
            # time) than as a piece of every row (a slot to fill: ~30 characters' worth)
            inline = [isinstance(piece, str) and len(piece) <= INLINE for piece in pieces]
            template = "".join(piece.replace("%", "%%") if short else "%s"
                               for piece, short in zip(pieces, inline, strict=True))
            text = (template * n) % tuple(chain.from_iterable(zip(
                *(repeat(piece, n) if isinstance(piece, str) else piece
                  for piece, short in zip(pieces, inline, strict=True) if not short),
                strict=True)))
            stream.write(text[2:] if first else text)  # each row after ",\n"
            first = False
    stream.write("]\n")


def _row_pieces(proto: Proto, kind, c, owner) -> list:
    """A batch's row, ",\n" first, as pieces: a str where every row has the same
    text, else a column (an iterable of each row's text or number). `owner`: the
    owners' texts, a column or one str for every row."""
    pieces: list = []

    def text(more: str) -> None:
        if pieces and isinstance(pieces[-1], str):
            pieces[-1] += more
        else:
            pieces.append(more)

    def column(values) -> None:
        if isinstance(values, str):  # one text for every row
            text(values)
        elif hasattr(values, "value"):  # a Same (netlink's): one value for every row
            text(str(values.value))
        else:
            pieces.append(values)

    # each label column's distinct numbers (a Same has one), and their labels
    families, states, timers = (_distinct(values) for values in (c.family, c.state, c.timer))
    some = (next(iter(families)), next(iter(states)), next(iter(timers)))
    labels = {
        "proto": {None: _PROTO[proto]},
        "family": {f: _FAMILY[kind(f, *some[1:])[0]] for f in families},
        "state": {s: _STATE[kind(some[0], s, some[2])[1]] for s in states},
        "timer": {t: _TIMER[kind(*some[:2], t)[2]] or "null" for t in timers},
    }
    by = {"proto": None, "family": c.family, "state": c.state, "timer": c.timer}
    running = {t: _TIMER[kind(*some[:2], t)[2]] is not None for t in timers}
    separator = ",\n{"
    for name, how in ROW_FIELDS:
        if how is OWNER and name != "process":
            continue  # the owner's one piece writes all three
        text(f'{separator}"{name}":')
        separator = ","
        if how is KIND:
            label = labels[name]
            if len(label) == 1:
                text(next(iter(label.values())))
            else:
                pieces.append(list(map(label.__getitem__, by[name])))
        elif how is NULL:
            text("null")
        elif how is OWNER:
            for part in owner if isinstance(owner, tuple) else (owner,):
                column(part)
        elif how is TIMER_MS:
            values = getattr(c, _COLUMN.get(name, name))
            if not any(running.values()):
                text("null")
            elif all(running.values()):
                column(values)
            else:  # timers off and on: null, or the expiry
                pieces.append(list(map(str.format, map(_EXPIRY.__getitem__,
                                                       map(running.__getitem__, c.timer)),
                                       values)))
        elif how is TEXT:
            text('"')
            column(getattr(c, name))
            text('"')
        else:
            column(getattr(c, name))
    text("}")
    return pieces


_EXPIRY = {True: "{}", False: "null"}  # a timer's expiry, by whether it runs


def _distinct(values) -> set:
    """The distinct values of a column (a Same's one)."""
    return {values.value} if hasattr(values, "value") else set(values)


_HOLDER = attrgetter("pid", "name", "user", "via_listener")  # a _Holders key
_FD = attrgetter("fd")


class _OwnerParts(dict):
    """A holder's identity (_HOLDER of its ref) -> its owner text in three parts, to
    be filled with its fd after the first and the second: the holder up to its fd;
    after it, tcp_info and the holders up to the fd again; the rest. NOBODY's (pid
    None) is the text of no owner (and its fd's text is empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.holders = _Holders()

    def __missing__(self, key: tuple) -> tuple[str, str, str]:
        if key[0] is None:
            parts = (_NO_OWNER, "", "")
        else:
            before, after = self.holders[key]
            middle = _OWNER.format("\0", "\0").split("\0")[1]
            parts = (before, after + middle + before, after + "]")
        self[key] = parts
        return parts

    def text(self, ref) -> str:
        """One ref's owner text."""
        first, middle, last = self[_HOLDER(ref)]
        fd = _fd_text(ref)
        return f"{first}{fd}{middle}{fd}{last}"


def _fd_text(ref) -> str:
    return "" if ref is NOBODY else "null" if ref.fd is None else str(ref.fd)


class _OwnerTexts:
    """Each row's owner text, a column at a time, from a RowOwners: by inode for a
    socket with a file, through its listener for one without (every TIME_WAIT of a
    server shares one text), every holder for a socket several processes share."""

    def __init__(self, owners) -> None:
        self.by_inode, self.via, self.shared = owners.by_inode, owners.via, owners.shared
        self.parts = _OwnerParts()
        self.via_texts = _ViaTexts(self.parts, self.via)

    def column(self, c) -> str | list[str] | tuple[list, ...]:
        """The owner text of each row of these columns: one text for all, a column
        of texts, or five columns (the parts of _OwnerParts, with each row's fd text
        between them) whose pieces, written in turn, are each row's text."""
        inodes = c.inode if isinstance(c.inode, list) else list(c.inode)  # or a Same
        locals_ = zip(c.local_address, c.local_port, strict=True)
        if not any(inodes):  # sockets without a file only (a TIME_WAIT listing)
            if hasattr(c.local_address, "value") and hasattr(c.local_port, "value"):
                return self.via_texts[c.local_address.value, c.local_port.value]
            texts = list(map(self.via_texts.__getitem__, locals_))
            return texts[0] if texts.count(texts[0]) == len(texts) else texts
        if all(inodes):
            refs = list(map(self.by_inode.__getitem__, inodes))
        else:  # inode 0 is no socket's: those take their listener's ref
            refs = list(map(self.by_inode.get, inodes, map(self.via.get, locals_)))
        first, middle, last = map(list, zip(*map(self.parts.__getitem__, map(_HOLDER, refs)),
                                            strict=True))
        fds = list(map(_FD, refs))
        fd_texts = list(map(_FD_TEXTS.get, fds, fds))  # None: null (via a listener)
        for at in compress(range(len(refs)), map(is_, refs, repeat(NOBODY))):
            fd_texts[at] = ""  # no holder: no fd
        shared = self.shared
        if shared and not shared.keys().isdisjoint(inodes):
            for at in compress(range(len(inodes)), map(shared.__contains__, inodes)):
                every = [_holder_text(self.parts.holders, ref) for ref in shared[inodes[at]]]
                first[at], fd_texts[at], middle[at], last[at] = \
                    _OWNER.format(every[0], ",".join(every)), "", "", ""
        return first, fd_texts, middle, fd_texts, last


_FD_TEXTS = {None: "null"}


class _ViaTexts(dict):
    """(address, port) of a socket without a file -> its owner text (through its
    listener, or none), once per local endpoint."""

    def __init__(self, parts: _OwnerParts, via) -> None:
        super().__init__()
        self.parts, self.via = parts, via

    def __missing__(self, local: tuple[str, int]) -> str:
        text = self[local] = self.parts.text(self.via[local])
        return text


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
