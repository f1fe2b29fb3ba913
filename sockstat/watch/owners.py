"""Naming the process behind each socket, refresh after refresh, at the cost of the new
sockets only.

The /proc/*/fd scan (sockstat.collect.owners.scan) reads one symlink per open fd on the
machine: at 100k sockets that is 100k readlink calls, ~0.3 s. `watch` keeps the
inode -> process map between refreshes and scans only for inodes it has not seen, and
the scan stops as soon as it has found them all.

An inode it never finds makes the scan read every fd on the machine: one held by no
visible process (another user's without root, another PID namespace), or one whose
socket closed between the dump and the scan (short connections under churn). So:
- inodes searched for in vain are remembered and searched for again only every
  `retry_every` refreshes;
- scans run on a CPU budget (`scan_budget`, a share of one core): after a scan that
  cost c seconds the next one waits c / scan_budget seconds. Sockets that appear in
  between stay unnamed until the next scan (if they still live).

A socket's inode never changes and is not reused while the socket lives, so a cached
owner stays right until the socket closes (a process that passes the fd on, or forks
and exits, is the rare exception; accepted).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from itertools import compress, repeat
from operator import attrgetter, is_

from sockstat.collect import owners
from sockstat.model import ProcessRef, Snapshot, Socket
from sockstat.query import Query

_PROCESS = attrgetter("process")


class OwnerCache:
    """inode -> ProcessRef across refreshes, plus the inodes searched for in vain."""

    def __init__(self, procfs: str = "/proc", retry_every: int = 30,
                 scan_budget: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.procfs = procfs
        self.retry_every = retry_every
        self.scan_budget = scan_budget  # None: scan whenever something is new
        self.by_inode: dict[int, ProcessRef] = {}
        self.shared: dict[int, list[ProcessRef]] = {}  # the other holders of a socket
        self.not_found: set[int] = set()
        self.scans = 0  # how many /proc scans ran (for tests and the benchmark)
        self.deferred = False  # sockets were left unnamed for the next scan
        self._refreshes = 0
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._next_scan = 0.0

    def to_name(self, snapshot: Snapshot, new: list[Socket]) -> list[Socket]:
        """The sockets to name this refresh: the new ones or, after a deferred scan, every
        socket of the snapshot still without an owner (the new ones included)."""
        if not self.deferred:
            return new
        sockets = snapshot.sockets
        return list(compress(sockets, map(is_, map(_PROCESS, sockets), repeat(None))))

    def attribute(self, snapshot: Snapshot, sockets: list[Socket] | None = None,
                  listeners: list[Socket] = (), primary_only: set[int] = frozenset()
                  ) -> None:
        """Fill Socket.process for `sockets` (default: all of the snapshot's; watch passes
        only the new ones), scanning /proc only for inodes not seen before. `listeners`:
        the LISTEN sockets that name sockets without a file of their own (TIME_WAIT,
        SYN_RECV, not yet accepted) by their local port. `primary_only`: their inodes
        whose primary holder alone is needed (listeners not in view themselves), as
        owners.scan() takes them."""
        self._refreshes += 1
        if self._refreshes % self.retry_every == 0:
            self.not_found.clear()
        self._prune(snapshot)
        sockets = snapshot.sockets if sockets is None else sockets
        by_inode = self.by_inode
        not_found = self.not_found
        if not sockets:
            return
        missing = {s.inode for group in (sockets, listeners) for s in group
                   if s.inode and s.inode not in by_inode and s.inode not in not_found}
        self.deferred = False
        if missing:
            if self._clock() >= self._next_scan:
                started = self._cpu_clock()
                found = owners.scan(self.procfs, missing, primary_only=primary_only & missing)
                self.scans += 1
                by_inode.update(found.by_inode)
                self.shared.update(found.shared)
                not_found.update(missing - found.by_inode.keys())
                if self.scan_budget:
                    cost = self._cpu_clock() - started
                    self._next_scan = self._clock() + cost / self.scan_budget
            else:
                self.deferred = True
        owners.attribute(sockets, owners.OwnerMap(by_inode=by_inode, shared=self.shared),
                         list(listeners))

    def _prune(self, snapshot: Snapshot) -> None:
        # Closed sockets leave their inode behind; drop them once they dominate.
        live = len(snapshot.sockets)
        if len(self.by_inode) > 2 * live + 1024 or len(self.not_found) > 2 * live + 1024:
            inodes = {s.inode for s in snapshot.sockets if s.inode}
            self.by_inode = {i: r for i, r in self.by_inode.items() if i in inodes}
            self.shared = {i: r for i, r in self.shared.items() if i in inodes}
            self.not_found &= inodes


def without_process_filters(query: Query) -> Query:
    """The query minus --pid/--process, which need owners: watch applies them itself after
    naming owners incrementally (collect() would scan /proc in full each time)."""
    if not query.needs_processes:
        return query
    return dataclasses.replace(query, pids=frozenset(), process_name=None)
