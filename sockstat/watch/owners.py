"""Naming the process behind each socket, refresh after refresh, at the cost of the new
sockets only.

The /proc/*/fd scan (sockstat.collect.owners.scan) reads one symlink per open fd on the
machine: at 100k sockets that is 100k readlink calls. `watch` keeps the inode -> process
map between refreshes and scans only for inodes it has not seen. Inodes that no visible
process holds (another user's process without root, another PID namespace) would make
every refresh scan the whole of /proc in vain, so they are remembered as not found and
searched for again only every `retry_every` refreshes.

A socket's inode never changes and is not reused while the socket lives, so a cached
owner stays right until the socket closes (a process that passes the fd on, or forks
and exits, is the rare exception: the retry also refreshes nothing there; accepted).
"""

from __future__ import annotations

import dataclasses

from sockstat.collect import owners
from sockstat.model import ProcessRef, Proto, Snapshot, Socket, TcpState
from sockstat.query import Query


class OwnerCache:
    """inode -> ProcessRef across refreshes, plus the inodes searched for in vain."""

    def __init__(self, procfs: str = "/proc", retry_every: int = 30) -> None:
        self.procfs = procfs
        self.retry_every = retry_every
        self.by_inode: dict[int, ProcessRef] = {}
        self.not_found: set[int] = set()
        self.scans = 0  # how many /proc scans ran (for tests and the benchmark)
        self._refreshes = 0

    def attribute(self, snapshot: Snapshot, sockets: list[Socket] | None = None,
                  listeners: list[Socket] = ()) -> None:
        """Fill Socket.process for `sockets` (default: all of the snapshot's; watch passes
        only the new ones), scanning /proc only for inodes not seen before. `listeners`:
        the LISTEN sockets that name sockets without a file of their own (TIME_WAIT,
        SYN_RECV, not yet accepted) by their local port."""
        self._refreshes += 1
        if self._refreshes % self.retry_every == 0:
            self.not_found.clear()
        self._prune(snapshot)
        sockets = snapshot.sockets if sockets is None else sockets
        if not sockets:
            return
        by_inode = self.by_inode
        not_found = self.not_found
        missing = {s.inode for group in (sockets, listeners) for s in group
                   if s.inode and s.inode not in by_inode and s.inode not in not_found}
        if missing:
            found = owners.scan(self.procfs, missing)
            self.scans += 1
            by_inode.update(found.by_inode)
            not_found.update(missing - found.by_inode.keys())
        owners.attribute(sockets, owners.OwnerMap(by_inode=by_inode), list(listeners))

    def _prune(self, snapshot: Snapshot) -> None:
        # Closed sockets leave their inode behind; drop them once they dominate.
        live = len(snapshot.sockets)
        if len(self.by_inode) > 2 * live + 1024 or len(self.not_found) > 2 * live + 1024:
            inodes = {s.inode for s in snapshot.sockets if s.inode}
            self.by_inode = {i: r for i, r in self.by_inode.items() if i in inodes}
            self.not_found &= inodes


def fileless_ports(sockets: list[Socket]) -> set[int]:
    """Local ports of TCP sockets that have no file (no inode) and so no owner of their
    own: their listener on the same port names them, as in collect()."""
    return {s.local.port for s in sockets if not s.inode and s.proto is Proto.TCP
            and s.state is not TcpState.LISTEN}


def without_process_filters(query: Query) -> Query:
    """The query minus --pid/--process, which need owners: watch applies them itself after
    naming owners incrementally (collect() would scan /proc in full each time)."""
    if not query.needs_processes:
        return query
    return dataclasses.replace(query, pids=frozenset(), process_name=None)
