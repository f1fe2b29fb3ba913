"""A listing's table as the kernel's records, for a writer that needs no Socket per row.

`listing_rows()` reads what `collect()` reads for a TCP/UDP listing (the same dumps, the
same owner scan, the same TIME_WAIT owners through their listener) but keeps each dump
as its compacted records (`netlink.Records`: 88 bytes a socket, in the kernel's order)
and the owners as the scan's own records (pid, name, user, fds, inodes a process) and
look-ups by local endpoint, so that the JSON writer (`sockstat.render.jsonout`'s
RecordsWriter) writes every row straight from them: no Socket, no two Endpoints, no
ProcessRef and no attribute walk per row, and no table to free at exit.

It answers None (the caller then takes collect()) for whatever its rows do not carry
or its filters cannot decide from the kernel's filter alone: a source other than
netlink, UNIX sockets, filters by port, address, uid or process, exact look-ups, a
kernel that refuses a dump. The few sockets no process was found for are built as
Sockets all the same: the note that says why is made from them, as for collect().
"""

from __future__ import annotations

import _socket as socket  # not socket.py: see sockstat.collect.netlink's import
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import compress, groupby, repeat
from operator import itemgetter, not_

from sockstat.errors import SourceUnavailable
from sockstat.model import NOBODY, Family, Proto, Snapshot, Socket, Source, TcpState
from sockstat.query import Query


@dataclass
class RowOwners:
    """Who holds each row's socket: the scan's records themselves, no ProcessRef per
    socket (the JSON writer makes each inode's text from them, a process at a time)."""

    # every process holding a socket of the table, in pid order (the lowest pid is an
    # inode's primary holder, as OwnerMap.add has it): (pid, name, user, fds, inodes),
    # fds[i] holding inodes[i], in fd order where scanned (a process's first fd of an
    # inode is its one), the table's inodes only
    processes: list[tuple]
    # the table's inodes no process holds
    missing: set[int]
    # the local (address, port) of every socket without a file -> its listener's via
    # ref, or NOBODY
    via: dict


@dataclass
class ListingRows:
    """A listing's table: its records in the listing's order, and their owners."""

    parts: list[tuple]  # (proto, netlink.Records of one family, its AddressCache)
    owners: RowOwners | None  # None: processes not asked for
    # the collection's notes and attribution; its sockets are the rows left without a
    # process only (what the note about them counts)
    snapshot: Snapshot

    def __len__(self) -> int:
        return sum(len(records) for _, records, _ in self.parts)


def applies(query: Query, source: str = "auto", procfs: str = "/proc") -> bool:
    """Whether listing_rows() can read this query (it may still answer None, when the
    kernel refuses a dump)."""
    from sockstat.collect import _kernel_exact, _tries_netlink

    return _tries_netlink(source, procfs) and Proto.UNIX not in query.protos \
        and not query.needs_processes and query.container is None \
        and _kernel_exact(query)


def listing_rows(query: Query | None = None, *, source: str = "auto",
                 processes: bool = False, procfs: str = "/proc",
                 meanwhile: Callable[[list[tuple]], Iterable] | None = None
                 ) -> ListingRows | None:
    """The table collect(query, source=source, processes=processes) would give, as
    records; None when this path does not apply (then use collect()). `meanwhile`:
    the caller's work on the table's parts while a forked owner scan is still running
    (jsonout.RecordsWriter.prepare): its iterator is taken a step at a time until it
    ends or the scan is done, and is dropped then."""
    from sockstat.collect import _counted, _owner_scan, dumps, netlink

    query = query or Query()
    if not applies(query, source, procfs):
        return None
    taken_at = time.time()
    try:
        nl = netlink.open_socket()
    except SourceUnavailable:
        return None  # collect() falls back to /proc, with its note
    try:
        with _owner_scan(query, processes, source, procfs) as background:
            parts = []
            # a TIME_WAIT-only query skips the tables the namespace's counters say are
            # empty, as collect() does
            for proto, family, states in dumps(query, may_have=_counted(query, procfs)):
                pieces: list = []
                try:
                    # a batch of one message length (TIME_WAITs) as it came, others
                    # compacted to RECORDs
                    netlink.dump(family, proto, states, nl=nl, out=pieces, tally=True,
                                 strided=True)
                except SourceUnavailable:
                    return None  # e.g. no udp_diag: collect() reads /proc for it
                runs = [netlink.Records(None, [body for _, body in run], stride)
                        for stride, run in groupby(pieces, key=itemgetter(0))]
                for fam in (Family.INET, Family.INET6) if family is None else (family,):
                    af = socket.AF_INET if fam is Family.INET else socket.AF_INET6
                    addresses = netlink.AddressCache(af)
                    for run in runs:
                        part = run.of_family(af)
                        if len(part):
                            parts.append((proto, part, addresses))
            snap = Snapshot(sockets=[], taken_at=taken_at, source=Source.NETLINK)
            owners = _name(parts, query, background, procfs, snap, meanwhile) \
                if processes else None
            if owners is False:
                return None
    finally:
        nl.close()
    return ListingRows(parts, owners, snap)


def _name(parts: list[tuple], query: Query, background, procfs: str,
          snap: Snapshot, meanwhile=None) -> RowOwners | bool:
    """The owners of the rows, as collect()'s attribution names them (every holder of
    each inode; a socket without a file through the listener on its local endpoint);
    the attribution and the Sockets left without a process go to `snap`. False when a
    row is one this path cannot name as collect() does."""
    from sockstat.collect import (
        _causes,
        _listeners_on,
        _read,
        _scan_for,
        netlink,
        owners,
        primary_holder_only,
    )

    table: set[int] = set()
    fileless: set = set()
    listening: list[Socket] = []  # the table's own listeners, as Sockets
    listen = TcpState.LISTEN.value
    inodes_of = []
    for proto, records, addresses in parts:
        inodes = records.inodes()
        states = records.states()
        inodes_of.append(inodes)
        if isinstance(inodes, netlink.Same):  # one row, or none with a file
            none = not inodes.value
            table.add(inodes.value)
        else:
            none = not any(inodes)
            table.update(inodes)
        if proto is Proto.TCP and (none or not all(inodes)):
            without = repeat(True) if none else list(map(not_, inodes))
            if listen in compress(states, without):
                return False  # a listener without a file: none is ever seen
            fileless |= records.local_endpoints(addresses, None if none else without)
        if proto is Proto.TCP and listen in states:
            listening += records.where(map(listen.__eq__, states)).sockets(proto, addresses)
    table.discard(0)
    wanted = set(table)
    listeners, primary_only = None, set()
    if fileless:
        listeners = _listeners_on(fileless, query, listening,
                                  lambda asked: _read(asked, Source.NETLINK, False, procfs)[1])
        primary_only = primary_holder_only(listeners, wanted)
        wanted |= primary_only
    finished = None
    if background is not None and background.forked:
        if meanwhile is not None:
            for _ in meanwhile(parts):
                if background.done():
                    break
        # the whole scan as it came: no ProcessRef per socket (~0.1 s at 100k)
        finished = background.processes_found()
    if finished is not None:
        scanned, owner_map = finished
        processes = list(_of_table(scanned, table))
    else:  # a scan that stops at the wanted inodes (a TIME_WAIT listing's listeners),
        # or the one collect() takes where the forked child failed
        scanned, owner_map = None, _scan_for(background, procfs, wanted, primary_only)
        processes = _as_processes(owner_map, table)
    if listeners is None:
        listeners = listening
    if scanned is not None and listeners:  # their holders name the sockets without a file
        owner_map = owners.OwnerMap.from_processes(
            scanned, owner_map.denied_processes, owner_map.vanished_processes,
            owner_map.denied_uids, wanted=set(map(owners.inode_of, listeners)))
    found = row_owners(processes, table, fileless, listeners, owner_map)
    missing = found.missing
    snap.attribution = owners.attribution(owner_map, len(missing))
    if missing:
        unowned: list[Socket] = []
        for (proto, records, addresses), inodes in zip(parts, inodes_of, strict=True):
            if not missing.isdisjoint(inodes):
                unowned += records.where(map(missing.__contains__, inodes)) \
                    .sockets(proto, addresses)
        snap.sockets = unowned
        snap.attribution.causes = _causes(unowned, owner_map, Source.NETLINK)
    return found


def _of_table(processes: list[tuple], table: set[int]):
    """The scan's records with only the table's inodes, and only the processes that
    hold one (kept in C: a map of set look-ups a process)."""
    from sockstat.collect.owners import _only_wanted

    for pid, name, user, fds, inodes in processes:
        if not table.isdisjoint(inodes):
            yield (pid, name, user, *_only_wanted(fds, inodes, table))


def _as_processes(owner_map, table: set[int]) -> list[tuple]:
    """An owner map's holders of the table's inodes as the scan's records (pid order;
    one fd an inode a process)."""
    by_pid: dict[int, tuple] = {}
    shared = owner_map.shared
    for inode, ref in owner_map.by_inode.items():
        if inode in table:
            for holder in (ref, *shared.get(inode, ())):
                record = by_pid.get(holder.pid)
                if record is None:
                    record = by_pid[holder.pid] = (holder.pid, holder.name, holder.user, [], [])
                record[3].append(holder.fd)
                record[4].append(inode)
    return [by_pid[pid] for pid in sorted(by_pid)]


def row_owners(processes: list[tuple], table: set[int], fileless: set,
               listeners: list[Socket], listener_map) -> RowOwners:
    """The owners of a table's rows as the JSON writer reads them: `processes` the
    scan's records of the table's inodes (pid order), `table` every inode of the
    table, `fileless` the local Endpoints of its sockets without a file, `listeners`
    the LISTEN sockets that name those (owners.attribute's), filled here from
    `listener_map` (an owners.OwnerMap holding at least their inodes)."""
    from sockstat.collect import owners

    if listeners:
        owners.fill_processes(listeners, listener_map)
    by_port = owners.via_listener_refs(listeners)
    via = {local: owners.via_listener(by_port, 0, *local) or NOBODY for local in fileless}
    return RowOwners(processes, table.difference(*(inodes for *_, inodes in processes)), via)
