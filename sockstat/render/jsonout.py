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

from collections.abc import Iterable, Iterator
from itertools import chain, compress, islice, repeat
from operator import getitem, not_

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
    return _holder_at(holders[p.pid, p.name, p.user, p.via_listener], p.fd)


def _holder_at(around: tuple[str, str], fd: int | None) -> str:
    """A holder's object from its text around its fd (_Holders') and the fd."""
    before, after = around
    return f"{before}{_fd_text(fd)}{after}"


def _fd_text(fd: int | None) -> int | str:
    """A holder's fd as its row writes it: null where it is not known (via a listener)."""
    return "null" if fd is None else fd


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
        owner = _owner_text(holders, s.process or NOBODY)
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

    A batch of rows is one `%` of its row's template repeated ("%s", and "%d" for a
    column of ints), over a flat tuple of every row's pieces, each piece a column
    (Records.columns, made in C) or the same text for every row: the labels of a batch
    of one kind, a field every row holds alike (Same), and the literal text between
    them, merged; `%` copies each piece whole instead of scanning a template's literal
    text. The owner texts are made a process at a time and looked up by inode (a batch
    of rows with and without a file fills the fileless ones' in a loop of its own)."""
    RecordsWriter().write(stream, parts, owners)


class RecordsWriter:
    """write_records in two halves, so that most of a listing with processes is
    written while its owner scan still runs (collect.rows.listing_rows' `meanwhile`):
    prepare() makes a batch's text at a time, with `%s` where each row's owner text
    goes, and write() fills those in (one `%` of the batch's text: ~a fifth of making
    it) and makes whole the batches prepare() did not reach. At 100k sockets ~0.2 s of
    the writing then runs beside the scan's other half instead of after it, for ~30 MB
    of prepared text held meanwhile."""

    def __init__(self) -> None:
        # per batch, in order: (its text, the owner's inputs), or None: made in write()
        self.prepared: list[tuple[str, _OwnerInputs] | None] = []

    def prepare(self, parts) -> Iterator[None]:
        """Prepare the batches of `parts` (as write() gets them), one each step."""
        for proto, records, addresses in parts:
            for batch in records.batches(BATCH):
                c = batch.columns(addresses)
                text = _batch_text(proto, batch.kind, c, _PENDING)
                # a `%` the text held of its own (none can: addresses, numbers and
                # labels) would be taken for an owner's: make that batch whole later
                self.prepared.append((text, _OwnerInputs(c))
                                     if text.count("%") == len(c.inode) else None)
                yield

    def write(self, stream, parts, owners=None) -> None:
        """write_records(stream, parts, owners), with the batches prepared so far."""
        stream.write("[")
        texts = None if owners is None else _OwnerTexts(owners)
        prepared = self.prepared[::-1]  # each batch's text let go once written
        self.prepared = []
        first = True
        for proto, records, addresses in parts:
            for batch in records.batches(BATCH):
                ready = prepared.pop() if prepared else None
                if ready is None:
                    c = batch.columns(addresses)
                    text = _batch_text(proto, batch.kind, c,
                                       _NO_OWNER if texts is None else texts.column(c))
                else:
                    text, c = ready
                    owner = _NO_OWNER if texts is None else texts.column(c)
                    text %= tuple(repeat(owner, len(c.inode)) if isinstance(owner, str)
                                  else owner)
                stream.write(text[2:] if first else text)  # each row after ",\n"
                first = False
        stream.write("]\n")


_PENDING = object()  # a batch's owner texts, filled in later (RecordsWriter.prepare)


class _OwnerInputs:
    """The columns of a prepared batch that its owner texts are made from (its other
    columns are in its text already)."""

    __slots__ = ("inode", "local_address", "local_port")

    def __init__(self, c) -> None:
        self.inode, self.local_address, self.local_port = c.inode, c.local_address, \
            c.local_port


def _batch_text(proto: Proto, kind, c, owner) -> str:
    """A batch's rows, each after ",\n". `owner`: the owner texts (one for all rows,
    or a column), or _PENDING: a literal `%s` in each row where its goes."""
    pieces = _row_pieces(proto, kind, c, owner)
    # a short text is cheaper in the template (`%` scans it a character at a time) than
    # as a piece of every row (a slot to fill: ~30 characters' worth)
    inline = [piece is _PENDING or isinstance(piece, str) and len(piece) <= INLINE
              for piece in pieces]
    # a column of ints is `%d`: written straight into the result, where `%s` makes a
    # str of each first
    template = "".join("%%s" if piece is _PENDING else piece.replace("%", "%%") if short
                       else "%d" if isinstance(piece, _Ints) else "%s"
                       for piece, short in zip(pieces, inline, strict=True))
    n = len(c.inode)
    return (template * n) % tuple(chain.from_iterable(zip(
        *(repeat(piece, n) if isinstance(piece, str) else
          piece.values if isinstance(piece, _Ints) else piece
          for piece, short in zip(pieces, inline, strict=True) if not short),
        strict=True)))


class _Ints:
    """A piece that is a column of ints only (a NUMBER field's, the expiries of
    running timers): written by `%d`."""

    __slots__ = ("values",)

    def __init__(self, values) -> None:
        self.values = values


def _row_pieces(proto: Proto, kind, c, owner) -> list:
    """A batch's row, ",\n" first, as pieces: a str where every row has the same
    text, else a column (an iterable of each row's text or number). `owner`: the
    owners' texts, a column or one str for every row (or _PENDING: its own piece)."""
    pieces: list = []

    def text(more: str) -> None:
        if pieces and isinstance(pieces[-1], str):
            pieces[-1] += more
        else:
            pieces.append(more)

    def column(values, ints: bool = False) -> None:
        if isinstance(values, str):  # one text for every row
            text(values)
        elif hasattr(values, "value"):  # a Same (netlink's): one value for every row
            text(str(values.value))
        else:
            pieces.append(_Ints(values) if ints else values)

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
            column(owner)
        elif how is TIMER_MS:
            values = getattr(c, _COLUMN.get(name, name))
            if not any(running.values()):
                text("null")
            elif all(running.values()):
                column(values, ints=True)
            else:  # timers off and on: null, or the expiry (in C: ("null", n)[running])
                pieces.append(list(map(getitem, zip(repeat("null"), values, strict=False),
                                       map(running.__getitem__, c.timer))))
        elif how is TEXT:
            text('"')
            column(getattr(c, name))
            text('"')
        else:  # NUMBER: the kernel's numbers, ints every one
            column(getattr(c, name), ints=True)
    text("}")
    return pieces


def _distinct(values) -> set:
    """The distinct values of a column (a Same's one)."""
    return {values.value} if hasattr(values, "value") else set(values)


def _owner_text(holders: _Holders, ref) -> str:
    """One holder's owner text (a ProcessRef, or NOBODY: no owner): the holder, null
    tcp_info, and the holder again as the only one of "processes"."""
    if ref is NOBODY:
        return _NO_OWNER
    holder = _holder_text(holders, ref)
    return _OWNER.format(holder, holder)


class _OwnerTexts:
    """Each row's owner text, a column at a time, from a RowOwners: by inode for a
    socket with a file (every inode's text made up front from the scan's records, one
    `%` template a process: ~0.2 µs a socket, where a ProcessRef and its parts cost
    ~2 µs), through its listener for one without (every TIME_WAIT of a server shares
    one text), every holder for a socket several processes share."""

    def __init__(self, owners) -> None:
        self.holders = _Holders()
        self.by_inode = _texts_by_inode(owners.processes, self.holders)
        self.by_inode.update(dict.fromkeys(owners.missing, _NO_OWNER))
        self.via_texts = _ViaTexts(self.holders, owners.via)

    def column(self, c) -> str | list[str]:
        """The owner text of each row of these columns: one text for all, or a column
        of texts."""
        inodes = c.inode if isinstance(c.inode, list) else list(c.inode)  # or a Same
        if not any(inodes):  # sockets without a file only (a TIME_WAIT listing)
            if hasattr(c.local_address, "value") and hasattr(c.local_port, "value"):
                return self.via_texts[c.local_address.value, c.local_port.value]
            locals_ = zip(c.local_address, c.local_port, strict=True)
            texts = list(map(self.via_texts.__getitem__, locals_))
            return texts[0] if texts.count(texts[0]) == len(texts) else texts
        if all(inodes):
            return list(map(self.by_inode.__getitem__, inodes))
        # inode 0 is no socket's: those take their listener's text
        texts = list(map(self.by_inode.get, inodes))
        fileless = list(map(not_, inodes))
        locals_ = compress(zip(c.local_address, c.local_port, strict=True), fileless)
        for at, local in zip(compress(range(len(inodes)), fileless), locals_, strict=True):
            texts[at] = self.via_texts[local]
        return texts


def _texts_by_inode(processes: list[tuple], holders: _Holders) -> dict[int, str]:
    """inode -> its owner text, from the scan's records (pid, name, user, fds, inodes),
    in pid order: an inode's primary holder is its lowest pid, by that process's first
    fd of it; an inode several processes hold lists every holder, primary first."""
    texts: dict[int, str] = {}
    for pid, name, user, fds, inodes in reversed(processes):  # the lowest pid writes last
        before, after = holders[pid, name, user, False]
        holder = f'{before.replace("%", "%%")}%s{after.replace("%", "%%")}'
        if None in fds:  # a ref's fd unknown (an owner map's): null, as _holder_text
            fds = list(map(_fd_text, fds))
        # reversed: a process's first fd of an inode (a dup's lowest) writes last
        texts.update(zip(reversed(inodes), reversed(list(map(
            _OWNER.format(holder, holder).__mod__, zip(fds, fds, strict=True)))),
            strict=True))
    held = sum(len(inodes) for *_, inodes in processes)
    if held > len(texts):  # an inode held twice: by one process (a dup) or several
        for inode, every in _every_holder(processes, holders).items():
            texts[inode] = _OWNER.format(every[0], ",".join(every))
    return texts


def _every_holder(processes: list[tuple], holders: _Holders) -> dict[int, list[str]]:
    """inode -> each holder's text, in pid order, of the inodes several processes hold."""
    once: set[int] = set()
    shared: set[int] = set()
    for *_, inodes in processes:
        mine = set(inodes)
        shared |= once & mine
        once |= mine
    every: dict[int, list[str]] = {}
    for pid, name, user, fds, inodes in processes:
        if shared.isdisjoint(inodes):
            continue
        around = holders[pid, name, user, False]
        mine = {}
        for fd, inode in compress(zip(fds, inodes, strict=True), map(shared.__contains__,
                                                                     inodes)):
            mine.setdefault(inode, fd)  # the process's first fd of it
        for inode, fd in mine.items():
            every.setdefault(inode, []).append(_holder_at(around, fd))
    return every


class _ViaTexts(dict):
    """(address, port) of a socket without a file -> its owner text: through its
    listener, or none (also for one `via` does not hold: a kernel-held UDP socket)."""

    def __init__(self, holders: _Holders, via) -> None:
        # a text per distinct ref (a listener's one, NOBODY), not per endpoint: a
        # client's TIME_WAITs each have their own port (25k at 100k sockets)
        refs = {id(ref): ref for ref in via.values()}
        text_of = {key: _owner_text(holders, ref) for key, ref in refs.items()}
        super().__init__(zip(via, map(text_of.__getitem__, map(id, via.values())),
                             strict=True))

    def __missing__(self, local: tuple[str, int]) -> str:
        return _NO_OWNER


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
