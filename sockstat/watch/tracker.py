"""The memory of `sockstat watch`: socket identity across refreshes, and what it yields.

A Tracker is fed one Snapshot per refresh and returns a Refresh: counts per state, the
change since the last refresh and since the first, a short history per state, sockets
opened and closed (per second), the oldest CLOSE_WAIT sockets with their real age, top
processes / local ports / remote hosts, and who owned the TIME_WAIT sockets while they
were alive.

Identity is Socket.key: the netlink socket cookie, which the kernel copies when a
socket becomes a TIME_WAIT mini-socket, else the 4-tuple. Knowing that a socket is the
same one as last time is what gives a CLOSE_WAIT socket its age (time since we first
saw it in CLOSE_WAIT; a lower bound for the ones already there at start) and a
TIME_WAIT socket its process (remembered from when it had an fd; a mini-socket has no
inode, so the kernel can no longer say).

Counting rules (documented in docs/watch.md):
- opened: connections (sockets in any state but LISTEN, UNCONN and BOUND_INACTIVE) seen
  for the first time since the previous refresh, and sockets that became a connection
  (a UDP socket that connect()ed; without cookies, a 4-tuple reused after TIME_WAIT).
  The first refresh is the baseline: nothing is opened.
- closed: connections that ended since the previous refresh: gone from the table,
  moved into TIME_WAIT (only the kernel's 60 s remembrance is left), or reset (a TCP
  socket left in CLOSE until its process closes it). A TIME_WAIT socket that expires
  is not counted again. A socket that appears already in TIME_WAIT counts as opened
  and closed; one that opens and vanishes between two refreshes is not seen at all.
- Both ends of a loopback connection are two sockets, and count twice.

Incremental: the counts, top lists, CLOSE_WAIT ages and TIME_WAIT owners are kept
between refreshes. Given the Changes of an incremental collection (the sockets new or
renamed this refresh, and those gone), update() looks at those sockets only: what each
socket adds to the counts is remembered on its Track, taken back when it leaves or
changes, so an unchanged socket costs nothing. Without Changes every socket is looked
at and the counts are made from scratch (_recount): what the incremental counts must
always equal (tests check it on real sockets with churn).

Pure: no I/O, no clock (times come from Snapshot.taken_at), no UI (the services of the
holders are asked of a function the caller passes). Tested on hand-built Snapshots.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, eq, lt
from typing import Any

from sockstat.model import (
    DISPLAY_STATES,
    STATE_GROUPS,
    ProcessRef,
    Snapshot,
    Socket,
    TcpState,
)

# bound-only sockets (kernel >= 6.7) are not connections either
_CONNECTIONS = STATE_GROUPS["connected"] - {TcpState.BOUND_INACTIVE}
_LIVE = _CONNECTIONS - {TcpState.TIME_WAIT}  # connections not yet closed
_TIME_WAIT = TcpState.TIME_WAIT
_CLOSE_WAIT = TcpState.CLOSE_WAIT
_LISTEN = TcpState.LISTEN
_UNCONN = TcpState.CLOSE
_get_state = attrgetter("state")
_get_local_port = attrgetter("local.port")
_get_remote_address = attrgetter("remote.address")


@dataclass(slots=True)
class Track:
    """What the tracker remembers about one socket identity."""

    state: TcpState
    since: float  # when it was first seen in this state (Snapshot.taken_at)
    from_start: bool  # already in this state at the first refresh: its age is a lower bound
    owner: ProcessRef | None = None  # the process holding its fd, the last time one did
    order: int = 0  # when it entered this state, in the order the tracker saw it
    # the socket object counted for this identity, and what it was counted with
    socket: Socket | None = None
    counted: ProcessRef | None = None  # its owner, as counted
    holders: tuple[int, ...] = ()  # the pids holding it, as counted


@dataclass(slots=True)
class Aged:
    """A socket and how long it has been in its state, as far as the tracker saw."""

    socket: Socket
    age_s: float
    at_least: bool  # already in the state at start: the real age is longer
    owner: ProcessRef | None


@dataclass
class Refresh:
    """One refresh of the watch: what is there now and what changed."""

    number: int  # 1 for the first (baseline) refresh
    timestamp: float  # Snapshot.taken_at (seconds since the epoch)
    elapsed: float | None  # seconds since the previous refresh; None on the first
    source: str
    total: int
    counts: dict[TcpState, int]  # every DISPLAY_STATE, zeros included
    delta: dict[TcpState, int]  # since the previous refresh
    since_start: dict[TcpState, int]  # since the first refresh
    history: dict[TcpState, tuple[int, ...]]  # recent counts, oldest first, this one last
    opened: int
    closed: int
    opened_total: int  # since start
    closed_total: int
    top_processes: list[tuple[ProcessRef, int]]
    top_local_ports: list[tuple[int, int]]
    top_remote_hosts: list[tuple[str, int]]
    time_wait_owners: list[tuple[ProcessRef | None, int]]  # owner while alive (None: unknown)
    oldest_close_wait: list[Aged]
    interval: float | None = None  # the configured interval (set by the session)
    findings: list = field(default_factory=list)  # sockstat.diagnose Findings
    findings_at: float | None = None  # when the findings were computed (taken_at)
    # when each `history` point was taken: what the sparkline covers is real time, not
    # points x interval (slow refreshes, or fewer points than it has room for)
    history_times: tuple[float, ...] = ()
    # a top list's pid that stands for a service: master pid -> its processes (> 1 only)
    service_sizes: dict[int, int] = field(default_factory=dict)

    def processes_of(self, ref: ProcessRef | None) -> int:
        """How many processes a top list's entry stands for (a service's, else 1)."""
        return 1 if ref is None else self.service_sizes.get(ref.pid, 1)

    @property
    def opened_per_s(self) -> float | None:
        return None if not self.elapsed else self.opened / self.elapsed

    @property
    def closed_per_s(self) -> float | None:
        return None if not self.elapsed else self.closed / self.elapsed

    def to_dict(self) -> dict[str, Any]:
        """The JSONL line (schema in docs/watch.md)."""
        return {
            "timestamp": round(self.timestamp, 3),
            "refresh": self.number,
            "interval": self.interval,
            "elapsed": None if self.elapsed is None else round(self.elapsed, 3),
            "source": self.source,
            "total": self.total,
            "counts": _labels(self.counts),
            "delta": _labels(self.delta),
            "since_start": _labels(self.since_start),
            "opened": self.opened,
            "closed": self.closed,
            "opened_per_s": _rate(self.opened_per_s),
            "closed_per_s": _rate(self.closed_per_s),
            "opened_total": self.opened_total,
            "closed_total": self.closed_total,
            "top": {
                "processes": [_process(p) | {"sockets": n, "processes": self.processes_of(p)}
                              for p, n in self.top_processes],
                "local_ports": [{"port": p, "sockets": n} for p, n in self.top_local_ports],
                "remote_hosts": [{"host": h, "sockets": n} for h, n in self.top_remote_hosts],
            },
            "time_wait_owners": [_process(p) | {"sockets": n,
                                                "processes": self.processes_of(p)}
                                 for p, n in self.time_wait_owners],
            "oldest_close_wait": [{
                "age_s": round(a.age_s, 1), "at_least": a.at_least,
                "local": str(a.socket.local), "remote": str(a.socket.remote),
                **_process(a.owner),
            } for a in self.oldest_close_wait],
            "findings": [_finding(f) for f in self.findings],
            "findings_at": None if self.findings_at is None else round(self.findings_at, 3),
        }


def _labels(counts: dict[TcpState, int]) -> dict[str, int]:
    return {state.label: n for state, n in counts.items()}


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _process(ref: ProcessRef | None) -> dict[str, Any]:
    if ref is None:
        return {"process": None, "pid": None, "name": None, "via_listener": None}
    return {"process": f"{ref.name}/{ref.pid}", "pid": ref.pid, "name": ref.name,
            "via_listener": ref.via_listener}


def _finding(finding) -> dict[str, Any]:
    # The short form: a watch line carries what is wrong, not every socket involved
    # (`sockstat check --json` has the full evidence).
    return {"kind": finding.kind, "severity": str(finding.severity),
            "subject": finding.subject, "summary": finding.summary}


@dataclass
class Changes:
    """What changed between two snapshots of an incremental collection (see
    watch/incremental.py), so that Tracker.update works from those sockets only.

    touched: sockets of the new snapshot that are new objects, or whose owner
        (Socket.process, .others) may have been set since the previous snapshot;
    gone: sockets of the previous snapshot that are not in the new one.
    Every other socket of the new snapshot is the same object as before, in the same
    state, with the same owner: it adds to the counts exactly what it did."""

    touched: list[Socket]
    gone: list[Socket]


class _Totals:
    """The counts a Refresh is built from, kept between refreshes: what each socket
    adds is added when it is first counted and taken back when it leaves (or changes),
    so a refresh costs what changed. Counts that reach 0 are dropped."""

    __slots__ = ("by_state", "ports", "hosts", "owners", "tw", "refs", "ref_counts",
                 "holders", "close_wait")

    def __init__(self) -> None:
        self.by_state: Counter = Counter()
        self.ports: Counter = Counter()  # local ports of connections
        self.hosts: Counter = Counter()  # remote addresses of connections
        self.owners: Counter = Counter()  # owner pid -> sockets
        self.tw: Counter = Counter()  # TIME_WAIT owner (pid, via listener) or None
        # (pid, via listener) -> a ProcessRef standing for it, and how many sockets
        self.refs: dict[tuple[int, bool], ProcessRef] = {}
        self.ref_counts: Counter = Counter()
        self.holders: Counter = Counter()  # pid of every holder (process and others)
        self.close_wait: dict[int | tuple, Track] = {}

    def add(self, key, sock: Socket, track: Track, owner: ProcessRef | None,
            holders: tuple[int, ...], sign: int) -> None:
        """Count one socket in (sign 1) or out (sign -1): what the full recount in
        Tracker._recount counts for it."""
        state = sock.state
        _bump(self.by_state, state, sign)
        if state is not _LISTEN and state is not _UNCONN and sock.unix is None:
            _bump(self.ports, sock.local.port, sign)
            _bump(self.hosts, sock.remote.address, sign)
        ref_key = None
        if owner is not None:
            ref_key = (owner.pid, owner.via_listener)
            _bump(self.owners, owner.pid, sign)
            if _bump(self.ref_counts, ref_key, sign):
                if sign > 0:
                    self.refs.setdefault(ref_key, owner)
            else:
                del self.refs[ref_key]
        for pid in holders:
            _bump(self.holders, pid, sign)
        if state is _TIME_WAIT:
            _bump(self.tw, ref_key, sign)
        elif state is _CLOSE_WAIT:
            if sign > 0:
                self.close_wait[key] = track
            else:
                self.close_wait.pop(key, None)

    def process_ref(self, pid: int) -> ProcessRef:
        """The entry of a top list's pid: its own owner's ref, else the via-listener one."""
        return self.refs.get((pid, False)) or self.refs[(pid, True)]


def _bump(counter: Counter, key, sign: int) -> int:
    """counter[key] += sign, the key dropped at 0; returns the new count."""
    n = counter.get(key, 0) + sign
    if n:
        counter[key] = n
    else:
        del counter[key]
    return n


def _holders(sock: Socket) -> tuple[int, ...]:
    proc = sock.process
    if proc is None:
        return ()
    if not sock.others:
        return (proc.pid,)
    return (proc.pid, *(p.pid for p in sock.others))


class Tracker:
    """Feed it Snapshots in time order; it remembers sockets between them."""

    def __init__(self, history: int = 120, top: int = 10, oldest: int = 10) -> None:
        self.history_length = history
        self.top = top
        self.oldest = oldest
        self._tracks: dict[int | tuple, Track] = {}
        self._totals = _Totals()
        # the port and host top lists, kept while no socket came, went or changed
        self._tops: tuple[list, list] | None = None
        self._order = 0  # numbers the state changes (ties among equal ages: first seen)
        self._history: dict[TcpState, deque[int]] = {
            s: deque(maxlen=history) for s in DISPLAY_STATES}
        self._history_times: deque[float] = deque(maxlen=history)
        self._first: dict[TcpState, int] | None = None
        self._previous: dict[TcpState, int] | None = None
        self._previous_at: float | None = None
        self._number = 0
        self._opened_total = 0
        self._closed_total = 0

    def update(self, snapshot: Snapshot, changes: Changes | None = None,
               services: Callable[[set[int]], dict] | None = None) -> Refresh:
        """The Refresh for `snapshot`. changes: what changed since the previous snapshot
        (an incremental collection): only those sockets are looked at; None, every
        socket is. services: pids -> their Services (collect.services), asked for the
        holders of the sockets in view; None: snapshot.services."""
        first = self._first is None
        if changes is None or first:
            opened, closed = self._recount(snapshot, first)
            self._tops = None
        else:
            opened, closed = self._apply(snapshot, changes)
            if changes.touched or changes.gone:
                self._tops = None
        if services is not None:
            snapshot.services = services(set(self._totals.holders))
        return self._refresh(snapshot, first, opened, closed)

    def close_wait(self) -> list[Socket]:
        """The last snapshot's sockets in CLOSE_WAIT (what the detectors look at first),
        without a pass over the table."""
        return [track.socket for track in self._totals.close_wait.values()]

    def _track(self, key, sock: Socket, now: float, first: bool) -> tuple[Track, int, int]:
        """The track of `sock` after this refresh, and whether it opened/closed."""
        state = sock.state
        track = self._tracks.get(key)
        opened = closed = 0
        if track is None:
            self._order += 1
            track = Track(state, now, first, order=self._order)
            self._tracks[key] = track
            if not first and state in _CONNECTIONS:
                opened = 1
                if state is _TIME_WAIT:  # opened and closed between two refreshes
                    closed = 1
        elif track.state is not state:
            was_live = track.state in _LIVE
            if track.state is _TIME_WAIT:
                # the same 4-tuple again (sources without cookies): a new connection
                track.owner = None
            if state in _LIVE:
                if not was_live:  # a new connection (or a UDP socket connect()ed)
                    opened = 1
            elif was_live:  # into TIME_WAIT, or reset (a TCP socket left in CLOSE)
                closed = 1
            self._order += 1
            track.state = state
            track.since = now
            track.from_start = False
            track.order = self._order
        proc = sock.process
        if proc is not None and proc is not track.owner and not proc.via_listener:
            track.owner = proc
        return track, opened, closed

    def _apply(self, snapshot: Snapshot, changes: Changes) -> tuple[int, int]:
        """An incremental refresh: the touched sockets counted again, the gone ones out."""
        now = snapshot.taken_at
        totals = self._totals
        tracks = self._tracks
        opened = closed = 0
        for sock in changes.touched:
            key = sock.cookie
            if key is None:
                key = sock.key
            old = tracks.get(key)
            if old is not None and old.socket is not None:
                totals.add(key, old.socket, old, old.counted, old.holders, -1)
            track, o, c = self._track(key, sock, now, False)
            opened += o
            closed += c
            owner = track.owner or sock.process
            track.socket, track.counted, track.holders = sock, owner, _holders(sock)
            totals.add(key, sock, track, owner, track.holders, 1)
        for sock in changes.gone:
            key = sock.cookie
            if key is None:
                key = sock.key
            track = tracks.get(key)
            if track is not None and track.socket is sock:  # not replaced by another
                totals.add(key, sock, track, track.counted, track.holders, -1)
                del tracks[key]
                if track.state in _LIVE:
                    closed += 1
        return opened, closed

    def _recount(self, snapshot: Snapshot, first: bool) -> tuple[int, int]:
        """Every socket looked at: identity, then the counts from scratch (in C where
        it can be). What an incremental refresh must always agree with."""
        now = snapshot.taken_at
        old = self._tracks
        self._tracks = {}
        totals = self._totals = _Totals()
        opened = closed = 0
        owner_keys: list[tuple[int, bool]] = []
        tw_keys: list = []
        not_connections: list[Socket] = []
        holder_pids: list[int] = []
        close_wait = totals.close_wait
        refs = totals.refs
        tracks = self._tracks
        for sock in snapshot.sockets:
            # Socket.key, inlined: the bare cookie when there is one (an int never equals
            # the 4-tuple keys of cookie-less sources), which saves a call and a tuple
            key = sock.cookie
            if key is None:
                key = sock.key
            track = old.pop(key, None)
            if track is not None:
                tracks[key] = track
            track, o, c = self._track(key, sock, now, first)
            opened += o
            closed += c
            # the real owner, remembered; else collect's guess through the listener
            owner = track.owner or sock.process
            holders = _holders(sock)
            track.socket, track.counted, track.holders = sock, owner, holders
            if holders:
                holder_pids.extend(holders)
            state = sock.state
            ref_key = None
            if owner is not None:
                ref_key = (owner.pid, owner.via_listener)
                owner_keys.append(ref_key)
                if ref_key not in refs:
                    refs[ref_key] = owner
            if state is _TIME_WAIT:
                tw_keys.append(ref_key)
            elif state is _CLOSE_WAIT:
                close_wait[key] = track
            elif state is _LISTEN or state is _UNCONN:
                not_connections.append(sock)
            if sock.unix is not None and state is not _LISTEN and state is not _UNCONN:
                not_connections.append(sock)  # a UNIX socket has no port nor host

        sockets = snapshot.sockets
        totals.by_state = Counter(map(_get_state, sockets))
        # the same rule as `sockstat summary`: ports and hosts of connections only
        totals.ports = Counter(map(_get_local_port, sockets))
        totals.ports.subtract(map(_get_local_port, not_connections))
        totals.hosts = Counter(map(_get_remote_address, sockets))
        totals.hosts.subtract(map(_get_remote_address, not_connections))
        for counter in (totals.ports, totals.hosts):
            for value in [k for k, n in counter.items() if not n]:
                del counter[value]
        totals.ref_counts = Counter(owner_keys)
        totals.owners = Counter(pid for pid, _ in owner_keys)
        totals.tw = Counter(tw_keys)
        totals.holders = Counter(holder_pids)

        # What is left in the old map is gone from the table.
        for track in old.values():
            if track.state in _LIVE:
                closed += 1
        return opened, closed

    def _refresh(self, snapshot: Snapshot, first: bool, opened: int,
                 closed: int) -> Refresh:
        now = snapshot.taken_at
        totals = self._totals
        process_refs = {pid: totals.process_ref(pid) for pid in totals.owners}
        processes = totals.owners
        service_sizes: dict[int, int] = {}
        if snapshot.services:  # a forking server and its children are one entry
            processes = _by_service(processes, snapshot.services, process_refs,
                                    service_sizes)
        # by (pid, named through the listener): a TIME_WAIT socket watch never saw alive
        # keeps its via-listener mark even when the listener's own entry is the same pid
        tw_by_pid = totals.tw
        tw_refs = {None: None} | {
            key: totals.refs[key] if key[1] else process_refs[key[0]]
            for key in tw_by_pid if key is not None}
        if snapshot.services:
            tw_by_pid, tw_refs = _tw_by_service(tw_by_pid, tw_refs, snapshot.services,
                                                process_refs, service_sizes)

        counts = _fold(totals.by_state)
        self._number += 1
        if first:
            self._first = counts
            opened = closed = 0
        previous = self._previous or counts
        self._opened_total += opened
        self._closed_total += closed
        for state in DISPLAY_STATES:
            self._history[state].append(counts[state])
        self._history_times.append(now)
        elapsed = None if self._previous_at is None else now - self._previous_at
        if elapsed is not None and elapsed <= 0:  # the wall clock stepped back
            elapsed = None
        self._previous, self._previous_at = counts, now

        top = self.top
        tops = self._tops
        if tops is None:
            tops = self._tops = (_most(totals.ports, top), _most(totals.hosts, top))
        oldest = heapq.nsmallest(self.oldest, totals.close_wait.values(),
                                 key=_age_order)
        return Refresh(
            number=self._number,
            timestamp=now,
            elapsed=elapsed,
            source=snapshot.source,
            total=len(snapshot.sockets),
            counts=counts,
            delta={s: counts[s] - previous[s] for s in DISPLAY_STATES},
            since_start={s: counts[s] - self._first[s] for s in DISPLAY_STATES},
            history={s: tuple(h) for s, h in self._history.items()},
            history_times=tuple(self._history_times),
            opened=opened,
            closed=closed,
            opened_total=self._opened_total,
            closed_total=self._closed_total,
            top_processes=[(process_refs[pid], n) for pid, n in _most(processes, top)],
            top_local_ports=list(tops[0]),
            top_remote_hosts=list(tops[1]),
            time_wait_owners=[(tw_refs[pid], n) for pid, n in _most(tw_by_pid, top)],
            oldest_close_wait=[Aged(t.socket, now - t.since, t.from_start, t.owner)
                               for t in oldest],
            service_sizes=service_sizes,
        )


def _age_order(track: Track) -> tuple[float, int]:
    return track.since, track.order


def _master_ref(pid: int, services: dict, refs: dict[int, ProcessRef]) -> ProcessRef:
    service = services[pid]
    master = service.master_pid
    return refs.get(master) or ProcessRef(master, service.name)


def _by_service(counts: Counter, services: dict, refs: dict[int, ProcessRef],
                sizes: dict[int, int]) -> Counter:
    """pid -> sockets, folded into master pid -> sockets of its whole service (the same
    grouping as summary's top processes and check's findings); `refs` gains the masters
    and `sizes` how many processes each master's entry stands for."""
    folded: Counter = Counter()
    members: Counter = Counter()
    for pid, n in counts.items():
        if pid in services:
            ref = _master_ref(pid, services, refs)
            refs.setdefault(ref.pid, ref)
            pid = ref.pid
        folded[pid] += n
        members[pid] += 1
    sizes.update((pid, k) for pid, k in members.items() if k > 1)
    return folded


def _tw_by_service(counts: Counter, tw_refs: dict, services: dict,
                   refs: dict[int, ProcessRef], sizes: dict[int, int]):
    """The TIME_WAIT owners' (pid, via listener) counts folded by service the same way;
    an entry named through the listener keeps its mark."""
    folded: Counter = Counter()
    folded_refs: dict = {None: None}
    members: Counter = Counter()
    for key, n in counts.items():
        if key is not None and key[0] in services:
            master = _master_ref(key[0], services, refs)
            via = key[1]
            new_key = (master.pid, via)
            if new_key not in folded_refs:
                folded_refs[new_key] = (ProcessRef(master.pid, master.name, user=master.user,
                                                   via_listener=True) if via else master)
            members[new_key] += 1
            key = new_key
        else:
            folded_refs.setdefault(key, tw_refs[key])
        folded[key] += n
    for (pid, _via), k in members.items():
        if k > 1:
            sizes[pid] = max(sizes.get(pid, 1), k)
    return folded, folded_refs


def _fold(by_state: Counter) -> dict[TcpState, int]:
    counts = dict.fromkeys(DISPLAY_STATES, 0)
    for state, n in by_state.items():
        counts[state.shown] += n
    return counts


def _most(counter: dict, n: int) -> list:
    """The n largest (value, count) pairs with a count, ties in a stable order (by value)."""
    if len(counter) > 8 * n:  # a big table's client ports: narrowed down in C first
        counter = _candidates(counter, n)
    # None (an unknown owner) sorts after known ones with the same count
    return heapq.nsmallest(n, ((k, v) for k, v in counter.items() if v > 0),
                           key=lambda kv: (-kv[1], kv[0] is None, kv[0]))


def _candidates(counter: dict, n: int) -> dict:
    """The part of a big counter that holds its n largest entries (ties at the n-th
    count: the smallest values): a few passes in C instead of a Python step for each of
    tens of thousands of entries (a client's ephemeral ports, one socket each)."""
    per_count = Counter(counter.values())
    threshold, above = 0, 0
    for count in sorted(per_count, reverse=True):
        threshold = count
        if above + per_count[count] >= n:
            break
        above += per_count[count]
    if threshold <= 0:
        return {}
    keys, values = counter.keys(), counter.values()
    picked = list(compress(keys, map(lt, repeat(threshold), values)))
    tied = list(compress(keys, map(eq, repeat(threshold), values)))
    if len(tied) > n:
        last = None in tied
        tied = sorted(k for k in tied if k is not None) if last else sorted(tied)
        tied = tied[:n] + ([None] if last and len(tied) < n else [])
    return {k: counter[k] for k in picked + tied}
