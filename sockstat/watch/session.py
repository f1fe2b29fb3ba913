"""One `watch` session: collect -> name owners -> track -> findings, once per refresh.

Watcher.refresh() is everything `sockstat watch` does per refresh except drawing:
the incremental collector (reuses unchanged sockets), the owner cache (scans /proc for
new inodes only), the Tracker (identity, deltas, rates), and the detectors of
sockstat.diagnose. The detectors look at the whole table (at 100k sockets they cost
about as much as the collection), so they run on a CPU budget: when one run costs more
than FINDINGS_BUDGET of the time between their runs, the next run waits, and the
findings shown are the latest ones, with their time. Kernel counters are sampled at
each run, so rate findings (accept-queue overflows, TIME_WAIT bucket overflows) cover
the time between two runs.

Also `next_deadline`, the refresh schedule (pure, tested).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from operator import attrgetter

from sockstat.collect import fileless_ends, primary_holder_only
from sockstat.errors import SockstatError
from sockstat.model import Proto, Source, TcpState
from sockstat.query import Query
from sockstat.watch.incremental import IncrementalCollector
from sockstat.watch.owners import OwnerCache, without_process_filters
from sockstat.watch.tracker import Changes, Refresh, Tracker

# Share of one core the detectors may use on average. The rest of a refresh is the
# kernel's dump and ~30 ms of collection and tracking at 100k sockets; the detectors'
# passes over the whole table (~0.15 s there) were most of watch's CPU at 5%. At 10k
# sockets they still run at about every refresh of 2 s, at 100k about every 15 s.
FINDINGS_BUDGET = 0.01
# The same for the /proc scans that name new sockets (see watch/owners.py)
SCAN_BUDGET = 0.05
_PEER_PROCESS = attrgetter("peer_process")


class Watcher:
    def __init__(
        self,
        query: Query,
        *,
        source: str = "auto",
        processes: bool = True,
        findings: bool = True,
        interval: float | None = None,
        procfs: str = "/proc",
        history: int = 120,
        top: int = 10,
        findings_budget: float = FINDINGS_BUDGET,
        thresholds=None,
        clock: Callable[[], float] = time.process_time,
        netns: str | None = None,
    ) -> None:
        self.query = query
        self.processes = processes or query.needs_processes
        self.interval = interval
        self.procfs = procfs
        self.collector = IncrementalCollector(
            without_process_filters(query) if self.processes else query, source=source,
            procfs=procfs, netns=netns, processes=self.processes)
        # with --netns each refresh names its owners itself (listeners per namespace)
        self.owners = OwnerCache(procfs, scan_budget=SCAN_BUDGET) \
            if self.processes and netns is None else None
        self.tracker = Tracker(history=history, top=top)
        self.findings_available = findings
        self._judge = None
        if findings:
            from sockstat.observe import Judge

            self._judge = Judge(thresholds, procfs=procfs)
        self._clock = clock
        self.findings_budget = findings_budget
        self.thresholds = thresholds  # sockstat.diagnose.Thresholds; None: the defaults
        self._findings: list = []
        self._findings_at: float | None = None
        self._findings_due = 0.0  # taken_at after which the detectors run again
        self.snapshot = None  # the last refresh's table (its sockets are reused after)
        self._process_info = None  # collect.services.LastingProcessInfo, once needed
        self.findings_cost = 0.0  # CPU seconds of the last detector run

    def close(self) -> None:
        """Close the netlink socket the collector keeps between refreshes and the
        holders' stat files (a refresh after this opens them again)."""
        self.collector.close()
        if self._process_info is not None:
            self._process_info.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def refresh(self) -> Refresh:
        # the detectors' runs are when the kernel's bind hash is walked for sure (it
        # costs ~0.25 us a socket; between runs only when something says it may have
        # changed: see watch/incremental.py)
        judging = self._judge is not None and time.time() >= self._findings_due
        collected = self.collector.collect(bound=judging or self._judge is None)
        snap = self.snapshot = collected.snapshot
        touched = collected.new  # the sockets whose counts may have changed
        incremental = collected.gone is not None
        # UNIX sockets apart (few): their peers are named afresh at each refresh
        unix = self.collector.unix_sockets if incremental else snap.sockets
        if self.owners is not None and snap.source.can.inodes:
            unnamed = self.owners.to_name(snap, collected.new)
            fileless = fileless_ends(unnamed)
            listeners = self._listeners(snap, fileless) if fileless else []
            # the table's own listeners (an older one may be named only now) are named
            # in place, every holder listed; one not in view itself only names them:
            # its primary holder will do
            by_cookie = self.collector.by_cookie() if listeners else None
            if by_cookie:  # a LISTEN dump of its own (--port): the table's where in view
                listeners = [by_cookie.get(s.cookie, s) for s in listeners]
            in_view = [s for s in listeners if by_cookie.get(s.cookie) is s] \
                if by_cookie else []
            primary_only = primary_holder_only(
                listeners, {s.inode for s in unnamed} | {s.inode for s in in_view}) \
                if listeners else set()
            self.owners.attribute(snap, unnamed, listeners, primary_only)
            self._unix_peers(unix)
            if unnamed is not collected.new:  # a deferred scan named older ones too
                touched = collected.new + unnamed
            if in_view:  # their counts may have changed with their owner
                touched = touched + in_view
        # the tracker counts what changed; a filter by process decides on every socket
        changes = None
        if incremental and not self.query.needs_processes:
            changes = Changes(touched, collected.gone)
        if self.query.needs_processes:
            snap.sockets = [s for s in snap.sockets if self.query.matches_process(s)]
        services = None
        if self.processes and snap.source.can.inodes:
            services = functools.partial(self._services, snap, unix)
        refresh = self.tracker.update(snap, changes, services)
        refresh.interval = self.interval
        if judging:
            self._run_detectors(snap)
        refresh.findings = self._findings
        refresh.findings_at = self._findings_at
        return refresh

    def _services(self, snap, unix: list, holders: set[int]) -> dict:
        """Services of the processes that hold sockets (`holders`, from the tracker) and
        of the UNIX peers' holders, so top lists and TIME_WAIT owners count a forking
        server and its children as one entry: the same processes as
        collect.services.add_services finds, two /proc reads per holding process (its
        stat, from a file kept open, and its executable: both change while it runs),
        not per socket; its cgroup is kept from the refresh before while it is the same
        process (pid and start time: LastingProcessInfo)."""
        from sockstat.collect.services import LastingProcessInfo, group

        if self._process_info is None:
            self._process_info = LastingProcessInfo(self.procfs)
        pids = holders | {p.pid for p in filter(None, map(_PEER_PROCESS, unix))}
        snap.services.update(group(pids, self._process_info.next_look()))
        return snap.services

    def _unix_peers(self, unix: list) -> None:
        """A UNIX socket's peer holder, from the owners already known (both ends of a
        local connection are usually in view, so no extra scan)."""
        from sockstat.collect.unix import name_peer_holders

        name_peer_holders(unix, self.owners.by_inode)

    def _listeners(self, snap, fileless: set) -> list:
        """The TCP listeners that can name the sockets without a file (local endpoints
        `fileless`), as the one-shot listing finds them (collect._listeners_on): from
        the table when it holds every listener, else a small LISTEN-only dump filtered
        in the kernel; a listener on the same port but another address names none."""
        from sockstat.collect import _listeners_on, collect

        return _listeners_on(fileless, self.collector.query, snap.sockets,
                             lambda listening: collect(listening, source=snap.source,
                                                       procfs=self.procfs).sockets)

    def _run_detectors(self, snap) -> None:
        started = self._clock()
        # the CLOSE_WAIT sockets, as the tracker has them (no pass over the table)
        close_wait = [s for s in self.tracker.close_wait() if s.proto is Proto.TCP]
        self._close_wait_ages(snap, close_wait)
        self._drop_counters(snap)
        if self.processes and close_wait:  # a forking server's leak is one service
            from sockstat.collect.services import fill

            fill(snap, self.procfs, sockets=close_wait)
        self._judge.thresholds = self.thresholds
        # a filtered watch judges its sockets only, as a filtered `check` does
        self._findings = self._judge.judge(snap, host=self.query.is_everything).findings
        first = self._findings_at is None
        self._findings_at = snap.taken_at
        self.findings_cost = cost = self._clock() - started
        # run again once this run's cost is at most findings_budget of the time between;
        # the first run's cost is mostly the detectors' imports (~10 times a later
        # run's on a small table), so it sets no delay
        wait = 0.0 if first else cost / self.findings_budget
        self._findings_due = snap.taken_at + wait - 1e-3


    def _drop_counters(self, snap) -> None:
        """Drop counters for the UDP sockets and TCP listeners in view (small dumps, as
        for CLOSE_WAIT ages): the judge counts what they dropped since its last run."""
        if not snap.source.can.memory:
            return
        from sockstat.collect import drop_watched, merge_memory

        try:
            fetched = drop_watched(self.collector.query, Source.NETLINK, self.collector.netns)
        except SockstatError:
            return
        by_cookie = self.collector.by_cookie()
        if by_cookie is None:
            merge_memory(snap.sockets, fetched)
            return
        for sock in fetched:  # the same sockets in this refresh's table, by cookie
            mine = by_cookie.get(sock.cookie)
            if mine is not None and sock.memory is not None:
                mine.memory = sock.memory

    def _close_wait_ages(self, snap, close_wait: list) -> None:
        """tcp_info for the CLOSE_WAIT sockets only (the CLOSE_WAIT detector's ages come
        from it: without, every CLOSE_WAIT counts however young). A second dump filtered
        to CLOSE_WAIT in the kernel, so it costs what the CLOSE_WAIT sockets cost, not
        what the table does; the stalled detector keeps its no-tcp_info fallback."""
        if not snap.source.can.tcp_info:
            return
        if not close_wait:
            return
        from sockstat.collect import collect

        query = dataclasses.replace(self.collector.query,
                                    states=frozenset({TcpState.CLOSE_WAIT}),
                                    protos=frozenset({Proto.TCP}))
        try:
            fresh = collect(query, source=Source.NETLINK, tcp_info=True)
        except SockstatError:
            return
        infos = {s.cookie: s.tcp_info for s in fresh.sockets}
        for sock in close_wait:
            sock.tcp_info = infos.get(sock.cookie)


def next_deadline(start: float, interval: float, now: float) -> float:
    """The next refresh time on the grid start + k*interval that is still ahead of `now`:
    refreshes do not drift, and a refresh slower than the interval skips ticks instead
    of piling up."""
    if now < start:
        return start
    ticks = int((now - start) // interval) + 1
    return start + ticks * interval
