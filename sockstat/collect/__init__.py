"""collect(): the one entry point that turns the kernel's socket table into a Snapshot.

Sources: `netlink` (sock_diag, Linux default), `proc` (/proc/net/*), `psutil`
(portable). `auto` picks netlink, then /proc, then psutil. Filters the kernel can apply
are pushed down: states as the request's bitmask, ports as a sock_diag filter program;
ports are checked again before a Socket object is built (exact whatever the source); the
rest is matched in one pass. Processes are looked up only when asked for, and the
/proc/*/fd scan stops once every wanted inode is found.
"""

from __future__ import annotations

import gc
import operator
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import field
from itertools import compress, repeat

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.errors import SourceUnavailable, UsageError
from sockstat.model import Attribution, Endpoint, Family, Proto, Snapshot, Socket, Source, TcpState
from sockstat.query import Query

SOURCES = tuple(Source)
_UNIX = operator.attrgetter("unix")
# collect(memory=DROPS): socket memory only for the sockets the drop detector judges (UDP
# sockets, TCP listeners), not for every TCP connection
DROPS = "drops"


@dataclass
class OwnerRequest:
    """collect(processes=OwnerRequest(picks)): name the processes of the sockets
    `picks(socket)` chooses only (and of every socket without a file, through its
    listener), not of the whole table; `name()` names more of them afterwards from
    the same scan. What a diagnosis asks for: the owners its verdicts depend on first,
    then those of the sockets its findings name. The scan itself still reads every
    process (every holder of a socket is found, as for a full attribution), and the
    services are grouped over the holders of every socket of the table, so a
    service's master is the one a full attribution names.

    Filters by process or container need every owner: collect then names them all,
    as it does for --netns and sources without inodes (name() has nothing left to do).
    """

    picks: Callable[[Socket], bool]
    _owner_map: object = field(default=None, repr=False)  # owners.OwnerMap, once scanned
    # the scan's (pid, name, user, fds, inodes) per process, when kept
    _processes: list[tuple] | None = field(default=None, repr=False)
    _named: list[Socket] = field(default_factory=list, repr=False)
    _holders: set[int] = field(default_factory=set, repr=False)

    def name(self, snap: Snapshot, sockets: Iterable[Socket]) -> int:
        """Name the processes (every holder), UNIX peers' holders and containers of
        these sockets of `snap` where collect left them unnamed; returns how many got
        an owner."""
        if self._owner_map is None:
            return 0
        unnamed = list({id(s): s for s in sockets if s.inode and s.process is None}.values())
        if not unnamed:
            return 0
        from sockstat.collect import owners, unix
        from sockstat.collect import services as services_mod

        owner_map = self._owner_map
        if self._processes is not None:  # the map so far has the picked sockets only
            need = {s.inode for s in unnamed}
            need |= _peer_inodes(unnamed)
            owner_map = owners.OwnerMap.from_processes(self._processes, wanted=need)
        by_inode, shared = owner_map.by_inode, owner_map.shared

        before = [(s.peer_process, s.container) for s in unnamed]
        for sock in unnamed:
            ref = by_inode.get(sock.inode)
            if ref is not None:
                sock.process = ref
                sock.others = tuple(shared.get(sock.inode, ()))
        unix.name_peer_holders(unnamed, by_inode)
        services_mod.set_containers(snap, unnamed)
        return sum(1 for s, (peer, container) in zip(unnamed, before, strict=True)
                   if s.process is not None or s.peer_process is not peer
                   or s.container is not container)


def collect(
    query: Query | None = None,
    *,
    source: str = "auto",
    processes: bool | OwnerRequest = False,
    tcp_info: bool | frozenset[TcpState] = False,
    procfs: str = "/proc",
    services: bool = False,
    netns: str | None = None,
    memory: bool | str = False,
) -> Snapshot:
    """Read the socket table, filtered by `query`.

    processes: fill Socket.process (needed anyway when the query filters by pid/name);
        an OwnerRequest for some sockets only (its docstring).
    tcp_info: fill Socket.tcp_info for TCP sockets (netlink only): True for all, or a
        set of states to fill it for just those (asked in a dump whose states are all
        in the set; else by one extra dump of them, filtered in the kernel: a listing
        that needs CLOSE_WAIT ages does not pay tcp_info for 100k others), or
        a (state, recv_q, send_q) -> bool test of the sockets to decode it for (the
        kernel sends it for all; decoding is the cost).
    services: also fill Snapshot.services (the service of every holder: master and
        forked children, systemd unit or container) and Socket.container; implies
        processes. A few /proc reads per holding process.
    netns: read these network namespaces instead of the current one: "all" (the current
        one included), "self" (the current one), an `ip netns` name, a pid or a path, or a
        comma list (sockstat.collect.netns); each socket gets Socket.netns. None (the default)
        reads the current namespace only and costs nothing extra.
    memory: fill Socket.memory (netlink's skmem: buffers and drops), only when asked;
        DROPS for UDP sockets and TCP listeners only (a second, LISTEN-only TCP dump).
    """
    with gc_paused():
        return _collect(query, source, processes, tcp_info, procfs, services, netns, memory)


AGED, FROZEN = "aged", "frozen"  # what gc_paused does with what was built meanwhile


class gc_paused:
    """No cyclic garbage collection in the block, while objects that are kept are built
    (a table read, a diagnosis, a one-shot command's whole look): each allocation burst
    made the collector walk them all again (0.1-0.3 s of a 100k-socket listing, as much
    as building the Sockets). Collection is as it was after, so a long-running watch or
    exporter still frees its old snapshots; inside an outer pause it stays off.

    `then`, what becomes of what was built meanwhile:
    - AGED (the default): moved to the oldest generation (freeze then unfreeze: two
      list splices), or the first young collection after the pause walks the whole new
      table at once (~20 ms at 30k sockets); full collections, which free old
      snapshots' cycles if any, still see it. By the pause that resumes collection
      only, and not where the caller froze objects itself (gc.freeze before forking
      workers): unfreezing would undo that.
    - FROZEN: frozen for good, inside an outer pause too, so neither a later collection
      nor the interpreter's last one at exit walks it (a one-shot command's look in its
      own process: sockstat.cli.oneshot).
    - None: left where it is (a program's call of a one-shot command: its collector
      frees the look).
    (Start-up's pause, before this module is imported, is cli.start_up's.)

    A class rather than a generator made a context manager: importing contextlib costs
    every listing's start-up ~3M instructions."""

    def __init__(self, then: str | None = AGED) -> None:
        self.then = then

    def __enter__(self) -> None:
        self.enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc) -> None:
        if self.then is FROZEN:
            gc.freeze()
        elif self.then is AGED and self.enabled and not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()
        if self.enabled:
            gc.enable()


def _collect(query, source, processes, tcp_info, procfs, services, netns,
             memory) -> Snapshot:
    query = query or Query()
    try:
        source = Source(source)
    except ValueError:
        raise UsageError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})") \
            from None
    services = services or query.container is not None
    request = processes if isinstance(processes, OwnerRequest) else None
    if request is not None and (query.needs_processes or query.container is not None):
        request = None  # filtering by owner: every socket's owner is needed
    processes = bool(processes) or query.needs_processes or services
    if netns is not None:
        if source is Source.PSUTIL:
            raise UsageError("--netns reads namespaces with netlink or /proc, not psutil")
        snap = _collect_namespaces(query, netns, processes, tcp_info, procfs,
                                   proc_only=source is Source.PROC, memory=memory)
        return _finish(snap, query, services, procfs)
    notes: list[str] = []
    with _owner_scan(query, processes, source, procfs) as background:
        # when the table is read: after the owner scan's fork and the reader's import,
        # which a loaded machine can take a good part of a second to make (rates
        # divide by two such stamps)
        if _tries_netlink(source, procfs):
            from sockstat.collect import netlink  # noqa: F401
        taken_at = time.time()
        used, sockets = _read(query, source, tcp_info, procfs, notes, memory)
        if used.can.inodes:
            sockets = [s for s in sockets if query.matches(s)] if not _kernel_exact(query) \
                else sockets
        else:
            sockets = [s for s in sockets if query.matches(s)]
        snap = Snapshot(sockets=sockets, taken_at=taken_at, source=used, notes=notes)
        if processes and used.can.inodes:
            _attribute(snap, query, used, procfs, background, request)
    if used is Source.PSUTIL and source is Source.PSUTIL:
        notes.append("psutil reports no queues, timers or inodes: Recv-Q/Send-Q show 0")
    if processes and not used.can.inodes:
        from sockstat.collect.owners import attribute_via_listeners

        attribute_via_listeners(snap.sockets, snap.sockets)
        snap.attribution.scanned = True
    return _finish(snap, query, services, procfs,
                   request if request is not None and request._owner_map is not None
                   else None)


def count(query: Query | None = None, *, source: str = "auto",
          notes: list[str] | None = None):
    """The counting views' numbers (a summarize.Tally) straight from the kernel's dump
    buffers, without a Socket per row: each batch compacted to fixed-size records
    (netlink.Records), counted in C. None when this query or source needs
    rows (address or uid filters, or no netlink here): then collect() and count those.
    UNIX sockets (few, and with no port or host to count) are counted from their rows."""
    import _socket as socket_mod  # not socket.py: see netlink's import

    from sockstat.collect import netlink
    from sockstat.summarize import Tally

    query = query or Query()
    if source not in (Source.AUTO, Source.NETLINK) or not sys.platform.startswith("linux") \
            or query.needs_processes or query.container is not None \
            or query.local_networks or query.remote_networks or query.uid is not None:
        return None
    tally = Tally()
    port_filter, bytecode = port_filter_for(query), kernel_port_program(query)
    try:
        nl = netlink.open_socket()
    except SourceUnavailable:
        if source is Source.NETLINK:
            raise
        return None
    try:
        for proto, family, states in dumps(query):
            chunks: list = []
            try:
                netlink.dump(family, proto, states, port_filter=port_filter,
                             bytecode=bytecode, nl=nl, out=chunks, tally=True)
            except SourceUnavailable:
                if proto is Proto.TCP and source is Source.NETLINK:
                    raise
                return None  # e.g. no udp_diag: the row path reads /proc for it
            records = netlink.Records(None, chunks)
            for fam in (Family.INET, Family.INET6) if family is None else (family,):
                af = socket_mod.AF_INET if fam is Family.INET else socket_mod.AF_INET6
                part = records.of_family(af)
                tally.add_rows(f"{proto.value}{fam.value}", part.states(),
                               part.local_ports(), part.remote_addresses(),
                               part.address_text)
        if Proto.UNIX in query.protos:
            _count_unix(query, tally, nl, notes)
    finally:
        nl.close()
    return tally


def _count_unix(query: Query, tally, nl, notes: list[str] | None) -> None:
    """UNIX sockets by state: their states alone (one byte each) when no filter needs
    their names or ports, else from their rows."""
    if not (query.paths or query.ports or query.local_ports or query.remote_ports):
        from sockstat.collect import unix

        try:
            tally.add_states("unix", unix.dump_states(query.kernel_states(Proto.UNIX), nl=nl))
            return
        except SourceUnavailable:
            pass  # no unix_diag: the rows come from /proc/net/unix, with the note
    unix_sockets: list[Socket] = []
    _read_unix(query, unix_sockets, nl, False, notes)
    tally.add_sockets([s for s in unix_sockets if query.matches(s)])


def _finish(snap: Snapshot, query: Query, services: bool, procfs: str,
            request: OwnerRequest | None = None) -> Snapshot:
    """The filters that need owners, and the services and containers of the owners."""
    if query.needs_processes:
        snap.sockets = [s for s in snap.sockets if query.matches_process(s)]
        snap.notes.extend(_unreadable_pids(query, procfs))
    if services:
        from sockstat.collect import services as services_mod

        if request is not None:  # grouped over every holder, containers of the named
            services_mod.fill(snap, procfs, sockets=request._named, pids=request._holders)
        else:
            services_mod.fill(snap, procfs)
    if query.container is not None:
        snap.sockets = [s for s in snap.sockets if query.matches_container(s)]
    return snap


def _collect_namespaces(query: Query, spec: str, processes: bool,
                        tcp_info: bool | frozenset, procfs: str,
                        proc_only: bool = False, memory: bool | str = False) -> Snapshot:
    """Every selected namespace's table in one snapshot (sockstat.collect.netns)."""
    from sockstat.collect import netns as netns_mod
    from sockstat.collect import owners

    taken_at = time.time()
    found = netns_mod.select(spec, procfs)

    def read_one(opened) -> tuple[list[Socket], list[Socket]] | None:
        """One namespace's sockets and the listeners that name its fileless ones."""
        nl, root = opened.netlink, opened.proc_root
        try:
            if nl is not None:
                part = _read_netlink(query, tcp_info, memory, nl=nl, proc_root=root,
                                     may_have=opened.may_have)
            elif root is not None:
                part = _read_proc(query, root)
            else:
                return None
            if not _kernel_exact(query):
                part = [s for s in part if query.matches(s)]
            for sock in part:
                sock.netns = opened.namespace
            fileless = fileless_ends(part)
            if not (processes and fileless):
                return part, []
            listeners = _listeners_on(
                fileless, query, part,
                lambda listening: _read_netlink(listening, False, nl=nl,
                                                may_have=opened.may_have)
                if nl is not None else _read_proc(listening, root))
            return part, [_in(s, opened.namespace) for s in listeners]
        finally:
            if nl is not None:
                nl.close()

    sockets: list[Socket] = []
    listeners: list[Socket] = []
    namespaces = []
    hidden = 0
    used = Source.NETLINK
    opened_all = list(netns_mod.open_all(found, procfs, netlink=not proc_only))
    # the owner scan runs in a forked child (broad queries) while threads dump the
    # namespaces: each dump walks the kernel's whole (shared) TCP hash table, ~10 ms at
    # 512k buckets however few sockets the namespace has, and send()/recv() release
    # the GIL, so two cores walk two namespaces at once
    with _owner_scan(query, processes, Source.NETLINK, procfs) as background:
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, min(len(opened_all), os.cpu_count() or 1, 4))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(read_one, opened_all))
        for opened, result in zip(opened_all, results, strict=True):
            if result is None:
                hidden += 1
                continue
            if opened.netlink is None:
                used = Source.PROC
            sockets += result[0]
            listeners += result[1]
            namespaces.append(opened.namespace)
        owner_map = None
        if processes:
            wanted = {s.inode for s in sockets if s.inode}
            primary_only = primary_holder_only(listeners, wanted)
            wanted |= primary_only | _peer_inodes(sockets)
            owner_map = _scan_for(background, procfs, wanted, primary_only)
    snap = Snapshot(sockets=sockets, taken_at=taken_at, source=used,
                    namespaces=namespaces, hidden_namespaces=hidden)
    unreadable = found.unreadable_processes if os.geteuid() != 0 else 0
    if hidden or unreadable:
        snap.notes.append(netns_hint(hidden, unreadable))
    if owner_map is not None:
        snap.attribution = owners.attribute(sockets, owner_map, listeners)
        from sockstat.collect import unix

        unix.name_peer_holders(sockets, owner_map.by_inode)
        if snap.attribution.unattributed:  # no kernel look-up: they span namespaces
            snap.attribution.causes = owners.unattributed_causes(sockets, owner_map)
    return snap


def _in(sock: Socket, namespace) -> Socket:
    sock.netns = namespace
    return sock


def netns_hint(hidden: int, unreadable: int) -> str:
    """The one line an unprivileged --netns run prints about what it could not see."""
    parts = []
    if hidden:
        parts.append(f"{hidden} other network namespace(s) could not be entered")
    if unreadable:
        parts.append(f"{unreadable} process(es) whose namespace is not visible")
    return ("; ".join(parts) + ": their sockets are not shown (entering a namespace needs "
            "root: CAP_SYS_ADMIN, and CAP_SYS_PTRACE to see other users' processes)")


def _unreadable_pids(query: Query, procfs: str) -> list[str]:
    """`--pid 1` as an ordinary user finds nothing because pid 1's fds cannot be read,
    not because it has no sockets: say so."""
    from sockstat.errors import hidden_processes_hint

    notes = []
    for pid in sorted(query.pids):
        try:
            os.listdir(f"{procfs}/{pid}/fd")
        except PermissionError:
            notes.append(f"pid {pid}'s file descriptors are not readable by this user, so "
                         f"its sockets cannot be matched; {hidden_processes_hint()}")
        except OSError:
            pass  # it exited meanwhile: nothing hidden
    return notes


def _owner_scan(query: Query, processes: bool, source: str, procfs: str):
    """A full /proc scan started alongside the table read when it will be needed anyway:
    a broad query (no port filter, established connections included) on Linux. Narrow
    queries keep the scan that stops at the few inodes they need."""
    broad = not (query.ports or query.local_ports or query.remote_ports or query.pids
                 or query.exact) and TcpState.ESTABLISHED in query.states
    if processes and broad and source is not Source.PSUTIL and sys.platform.startswith("linux"):
        from sockstat.collect import owners

        return owners.BackgroundScan(procfs)
    return _NO_SCAN


class _NoScan:
    """What `with _owner_scan(...) as background:` gets when no scan runs alongside."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        pass


_NO_SCAN = _NoScan()


def _kernel_exact(query: Query) -> bool:
    """True when the kernel-side state filter plus the port pre-filter already did all
    the matching, so the Python pass can be skipped."""
    return (not query.local_networks and not query.remote_networks and query.uid is None
            and not query.local_ports and not query.remote_ports and not query.ports
            and not query.paths and not query.exact)


def tables(query: Query):
    """(proto, family, states to ask the kernel for) for every table the query needs."""
    for proto in (Proto.TCP, Proto.UDP):
        if proto not in query.protos:
            continue
        states = query.kernel_states(proto)
        if proto is Proto.UDP:  # UDP sockets are only ever CLOSE (unconnected) or ESTABLISHED
            states = states & {TcpState.CLOSE, TcpState.ESTABLISHED}
        if not states:
            continue
        for family in (Family.INET, Family.INET6):
            if family in query.families:
                yield proto, family, states


def dumps(query: Query, one_walk: bool = True, may_have=None):
    """tables(), with TCP's two families as one (TCP, None, states) when both are wanted
    in the same states (_tcp_together): one dump of both walks the kernel's TCP hash once
    instead of twice. one_walk=False: tables() as it is. `may_have(proto, family,
    states)` -> bool leaves out tables known to be empty (namespace reads)."""
    together = one_walk and _tcp_together(query, may_have)
    for proto, family, states in tables(query):
        if together and proto is Proto.TCP:
            if family is Family.INET:
                yield proto, None, states
        elif may_have is None or may_have(proto, family, states):
            yield proto, family, states


def port_filter_for(query: Query):
    """A (local port, remote port) -> bool check of the query's port filters, or None."""
    ports, local_ports, remote_ports = query.ports, query.local_ports, query.remote_ports
    if not (ports or local_ports or remote_ports):
        return None

    def matches(local: int, remote: int) -> bool:
        if ports and local not in ports and remote not in ports:
            return False
        if local_ports and local not in local_ports:
            return False
        return not (remote_ports and remote not in remote_ports)

    return matches


def _tries_netlink(source: Source, procfs: str) -> bool:
    """Whether a read from `source` starts with netlink sock_diag (Linux, this /proc)."""
    return source in (Source.AUTO, Source.NETLINK) and sys.platform.startswith("linux") \
        and procfs == "/proc"


def _read(query: Query, source: str, tcp_info: bool | frozenset, procfs: str,
          notes: list[str] | None = None,
          memory: bool | str = False) -> tuple[Source, list[Socket]]:
    notes = [] if notes is None else notes
    if _tries_netlink(source, procfs):
        try:
            return Source.NETLINK, _read_netlink(query, tcp_info, memory, notes=notes,
                                                 may_have=_counted(query, procfs))
        except SourceUnavailable as exc:
            if source is Source.NETLINK:
                raise
            notes.append(f"{exc}; read /proc/net instead (no listen backlog, socket cookies "
                         "or tcp_info, so queue and age checks are limited)")
    if memory:
        notes.append("socket memory and drops (--memory) come only from netlink: the "
                     "/proc and psutil sources have none")
    if source in (Source.AUTO, Source.PROC) and os.path.isdir(os.path.join(procfs, "net")):
        return Source.PROC, _read_proc(query, procfs)
    if source is Source.PROC:
        raise SourceUnavailable(f"{procfs}/net is not readable here (not Linux?)")
    from sockstat.collect import portable

    if source is Source.AUTO:
        notes.append("no netlink or /proc/net here: used psutil (no queues, timers or "
                     "tcp_info)")
    if Proto.UNIX in query.protos:
        notes.append("UNIX sockets come from netlink or /proc/net/unix: the psutil source "
                     "lists none")
    return Source.PSUTIL, portable.read_all()


def _counted(query: Query, procfs: str):
    """For a query of TIME_WAIT sockets only (`-s time-wait`), may_have() from this
    namespace's /proc/net/sockstat: where it counts no TIME_WAIT, no dump (and no walk
    of the kernel's TCP hash, which `ss` makes twice) is needed. Other queries find
    sockets "in use" on nearly every host: reading the counts would only add a read."""
    if not query.states <= {TcpState.TIME_WAIT}:
        return None
    from functools import partial

    from sockstat.collect.kernel import may_hold, read_sockstat

    counts = read_sockstat(procfs)
    return partial(may_hold, counts) if counts else None


def kernel_port_program(query: Query) -> bytes | None:
    """The query's port filters as a sock_diag program, so the kernel sends only the
    matching sockets (as `ss sport = :8080` does)."""
    from sockstat.collect import netlink

    s_eq, d_eq = netlink.INET_DIAG_BC_S_EQ, netlink.INET_DIAG_BC_D_EQ
    groups = []
    if query.ports:
        groups.append([(s_eq, p) for p in sorted(query.ports)]
                      + [(d_eq, p) for p in sorted(query.ports)])
    if query.local_ports:
        groups.append([(s_eq, p) for p in sorted(query.local_ports)])
    if query.remote_ports:
        groups.append([(d_eq, p) for p in sorted(query.remote_ports)])
    return netlink.port_bytecode(groups)


def _read_netlink(query: Query, tcp_info: bool | frozenset, memory: bool | str = False,
                  nl=None, proc_root: str | None = "/proc", may_have=None,
                  notes: list[str] | None = None) -> list[Socket]:
    """The query's tables by sock_diag; `nl`: a socket opened in another network
    namespace (the caller closes it), else one is opened and closed here. `may_have`
    (proto, family, states) -> bool skips tables known to be empty (namespace reads).
    TCP's two families come in one request when both are wanted (dumps()): every TCP
    dump walks the kernel's whole TCP hash, so one walk instead of two (`ss` makes two)."""
    from sockstat.collect import netlink

    if query.exact:
        return _look_up_exact(query, tcp_info, memory, nl)
    out: list[Socket] = []
    port_filter = port_filter_for(query)  # kept: exact even where the program is not used
    bytecode = kernel_port_program(query)
    info_states = frozenset() if isinstance(tcp_info, bool) or callable(tcp_info) \
        else frozenset(tcp_info)
    info_test = tcp_info if callable(tcp_info) else None
    own = nl is None
    nl = netlink.open_socket() if own else nl
    try:
        for proto, family, states in dumps(query, may_have=may_have):
            try:
                with_memory = memory is True or (memory == DROPS and (
                    proto is Proto.UDP or states == {TcpState.LISTEN}))
                parts = [(states, with_memory)]
                if memory == DROPS and proto is Proto.TCP and TcpState.LISTEN in states \
                        and not with_memory:
                    # the listeners' memory (drop counters) without everyone's: two
                    # dumps, the listeners then the rest, in the order one dump of all
                    # the states gives (the kernel walks its listening hash first)
                    parts = [({TcpState.LISTEN}, True), (states - {TcpState.LISTEN},
                                                         with_memory)]
                # a part wholly in info_states asks tcp_info itself: no second walk of
                # the kernel's hash for those states (below), no merge by cookie
                requests = [(part, dict(tcp_info=tcp_info is True or bool(
                                            info_states and part <= info_states),
                                        memory=part_memory, port_filter=port_filter,
                                        bytecode=bytecode, nl=nl))
                            for part, part_memory in parts]
                if family is None:  # TCP of both families
                    _dump_tcp_together(requests, out)
                else:
                    for part, request in requests:
                        netlink.dump(family, proto, part, out=out, **request)
            except SourceUnavailable:
                if proto is Proto.TCP:
                    raise
                # udp_diag module missing: take UDP from /proc instead of losing it
                from sockstat.collect import procfs as procfs_mod

                if proc_root is not None:  # the same namespace's /proc/<pid>/net
                    out.extend(procfs_mod.read_table(proc_root, proto, family))
            rest = (states & info_states).difference(
                *(part for part, request in requests if request["tcp_info"]))
            if proto is Proto.TCP and rest:
                with_info = netlink.dump(family, proto, rest, tcp_info=True,
                                         port_filter=port_filter, bytecode=bytecode, nl=nl)
                _merge(out, with_info, "tcp_info")
        if info_test is not None:
            _fill_tcp_info(out, info_test, nl, port_filter, bytecode)
        if Proto.UNIX in query.protos:
            _read_unix(query, out, nl, memory is True, notes, proc_root)
    finally:
        if own:
            nl.close()
    return out


def _look_up_exact(query: Query, tcp_info, memory: bool | str, nl=None) -> list[Socket]:
    """The sockets of query.exact, each by an exact look-up (no walk of the table),
    with tcp_info and memory as _read_netlink gives them."""
    from sockstat.collect import netlink

    out: list[Socket] = []
    for proto, family, _ in tables(query):
        pairs = sorted(p for p in query.exact if (":" in p[0][0]) == (family is Family.INET6))
        if pairs:
            netlink.look_up(family, proto, pairs, tcp_info=bool(tcp_info),
                            memory=bool(memory), nl=nl, out=out)
    for sock in out:  # only where a dump would have given them
        if sock.tcp_info is not None and tcp_info is not True and (
                sock.state not in tcp_info if isinstance(tcp_info, frozenset)
                else not tcp_info(sock.state, sock.recv_q, sock.send_q)):
            sock.tcp_info = None
        if memory == DROPS and sock.proto is Proto.TCP and sock.state is not TcpState.LISTEN:
            sock.memory = None
    return out


def _tcp_together(query: Query, may_have) -> bool:
    """True when a read wants both TCP families with the same states, and neither is
    known to be empty (`may_have`, None: neither is): one request then walks the
    kernel's TCP hash once, not twice."""
    wanted = {family: states for proto, family, states in tables(query) if proto is Proto.TCP}
    states = wanted.get(Family.INET)
    return states is not None and states == wanted.get(Family.INET6) \
        and (may_have is None or (may_have(Proto.TCP, Family.INET, states)
                                  and may_have(Proto.TCP, Family.INET6, states)))


def _dump_tcp_together(dumps: list[tuple[set | frozenset, dict]], out: list[Socket]) -> None:
    """Both TCP families' rows of each (states, dump arguments) in one dump each,
    appended in the order per-family dumps give them (IPv4's, then IPv6's)."""
    from sockstat.collect import netlink

    replies = [netlink.dump(None, Proto.TCP, states, **dump) for states, dump in dumps]
    rows = replies[0]
    for more in replies[1:]:
        rows += more
    # a stable sort (C; one pass when every row has one family) keeps each family's
    # rows in the kernel's order, as per-family dumps give them: IPv4 (2) before IPv6 (10)
    rows.sort(key=_FAMILY_OF)
    out += rows


_FAMILY_OF = operator.attrgetter("family")
_STATE_OF = operator.attrgetter("state")
_INODE_OF = operator.attrgetter("inode")


# exact look-ups (one request each) up to this many sockets; more take a dump
TCP_INFO_LOOKUPS = 512


def _fill_tcp_info(sockets: list[Socket], test, nl, port_filter, bytecode) -> None:
    """tcp_info for the TCP sockets `test(state, recv_q, send_q)` picks, after a dump
    without it: by exact look-ups when they are few, else CLOSE_WAIT by a state-filtered
    dump and the others (sockets with data queued) by look-ups, or by a dump of their
    states when they too are many. A 100k table's idle sockets never carry tcp_info
    through the kernel, and a few sockets never cost a walk of its whole hash table
    (each dump's, ~20-30 ms at 512k buckets however few sockets it finds)."""
    from sockstat.collect import netlink

    wanted = [s for s in sockets if s.proto is Proto.TCP and s.unix is None
              and test(s.state, s.recv_q, s.send_q)]
    if len(wanted) <= TCP_INFO_LOOKUPS:
        looked_up, by_dump = wanted, set()
    else:
        looked_up = [s for s in wanted if s.state is not TcpState.CLOSE_WAIT]
        by_dump = {(s.family, s.state) for s in wanted if s.state is TcpState.CLOSE_WAIT}
    if len(looked_up) > TCP_INFO_LOOKUPS:
        by_dump |= {(s.family, s.state) for s in looked_up}
        looked_up = []
    for sock in looked_up:
        sock.tcp_info = netlink.lookup_tcp_info(sock, nl)
    for family in (Family.INET, Family.INET6):
        states = {state for fam, state in by_dump if fam is family}
        if states:
            with_info = netlink.dump(family, Proto.TCP, states, tcp_info=test,
                                     port_filter=port_filter, bytecode=bytecode, nl=nl)
            _merge(sockets, with_info, "tcp_info")


def _read_unix(query: Query, out: list[Socket], nl, memory: bool,
               notes: list[str] | None, proc_root: str | None = "/proc") -> None:
    """UNIX sockets by unix_diag, or from /proc/net/unix where the kernel lacks it."""
    from sockstat.collect import unix

    states = query.kernel_states(Proto.UNIX)
    if not states:
        return
    try:
        unix.dump(states, memory=memory, nl=nl, out=out)
    except SourceUnavailable as exc:  # unix_diag not built or not loaded
        if notes is not None:
            notes.append(f"{exc}; read /proc/net/unix instead (no queues, peers or owners' "
                         "uids for UNIX sockets)")
        if proc_root is not None:  # the same namespace's /proc/<pid>/net
            out.extend(s for s in unix.read_proc(proc_root) if s.state in states)


def drop_watched(query: Query, source: str = "auto", netns: str | None = None
                 ) -> list[Socket]:
    """The query's UDP sockets and TCP listeners with their memory (drop counters), now:
    small dumps filtered in the kernel, no process scan; [] where the source has none.
    What the drop detector compares a later look with (`check --interval`, watch).
    netns: the same --netns selection as the look it is compared with, so sockets in
    other namespaces have a starting count too."""
    import dataclasses

    bare = dataclasses.replace(query, pids=frozenset(), process_name=None, container=None)
    out: list[Socket] = []
    if Proto.UDP in query.protos:
        snap = collect(dataclasses.replace(bare, protos=frozenset({Proto.UDP})),
                       source=source, memory=True, netns=netns)
        out += snap.sockets if snap.source.can.memory else []
    if Proto.TCP in query.protos and TcpState.LISTEN in query.states:
        snap = collect(dataclasses.replace(bare, protos=frozenset({Proto.TCP}),
                                           states=frozenset({TcpState.LISTEN})),
                       source=source, memory=True, netns=netns)
        out += snap.sockets if snap.source.can.memory else []
    return out


def merge_memory(sockets: list[Socket], fetched: list[Socket]) -> None:
    """Socket memory from another dump onto the same sockets (by cookie)."""
    _merge(sockets, fetched, "memory")


def _merge(sockets: list[Socket], fetched: list[Socket], name: str) -> None:
    """Copy one field (tcp_info, memory) from a second, state-filtered dump onto the
    same sockets (by cookie; a socket that changed state in between simply keeps none)."""
    found = {s.cookie: value for s in fetched if (value := getattr(s, name)) is not None}
    if found:
        for sock in sockets:
            value = found.get(sock.cookie)
            if value is not None:
                setattr(sock, name, value)


def _read_proc(query: Query, procfs: str) -> list[Socket]:
    from sockstat.collect import procfs as procfs_mod

    out: list[Socket] = []
    for proto, family, states in tables(query):
        out.extend(procfs_mod.read_table(procfs, proto, family, states))
    if Proto.UNIX in query.protos:
        from sockstat.collect import unix

        states = query.kernel_states(Proto.UNIX)
        out.extend(s for s in unix.read_proc(procfs) if s.state in states)
    return out


def _attribute(snap: Snapshot, query: Query, used: str, procfs: str,
               background=None, request: OwnerRequest | None = None) -> None:
    if not snap.sockets and background is None and request is None:
        snap.attribution = Attribution(scanned=True)  # what scanning for nothing finds
        return
    from sockstat.collect import owners

    sockets = snap.sockets
    inodes = list(map(owners.inode_of, sockets))  # each pass below is a map in C
    wanted = set(inodes)
    wanted.discard(0)
    table = wanted.copy() if request is not None else None
    listeners = None
    primary_only: set[int] = set()
    # where sockets that have no file are (TIME_WAIT, SYN_RECV, not yet accepted,
    # orphans): their owner is the listener on the same local port
    fileless = fileless_ends(sockets, inodes)
    if fileless:
        listeners = _listeners_on(fileless, query, sockets,
                                  lambda listening: _read(listening, used, False, procfs)[1])
        primary_only = primary_holder_only(listeners, wanted)
        wanted |= primary_only
    # a UNIX socket's peer is named by its holder too (nginx -> php-fpm)
    peers = _peer_inodes(sockets)
    wanted |= peers
    processes = None
    if request is not None:
        # the picked sockets and the fileless ones (named through their listener, a
        # dict look-up each)
        sockets = [s for s in sockets if not s.inode or request.picks(s)]
    if request is not None and background is not None and background.forked:
        # the child reads every process; refs are made for the picked sockets only,
        # its processes keep every holder (for the services, and for naming more later)
        need = {s.inode for s in sockets if s.inode}
        need |= {s.inode for s in listeners or () if s.inode}
        need |= _peer_inodes(sockets)
        owner_map = background.result(need)
        processes = background.processes
        if processes is None:  # the child failed and result() scanned for `need` only
            owner_map = owners.scan(procfs, wanted)
    else:
        owner_map = _scan_for(background, procfs, wanted, primary_only)
    snap.attribution = owners.attribute(sockets, owner_map, listeners)
    if peers:
        from sockstat.collect import unix

        unix.name_peer_holders(sockets, owner_map.by_inode)
    if request is not None:
        request._owner_map, request._processes, request._named = owner_map, processes, sockets
        request._holders = _holder_pids(owner_map, processes, table, peers, sockets)
    if snap.attribution.unattributed and request is None:
        # an OwnerRequest is a diagnosis's (check, the exporter): it reads no causes,
        # and each costs a look-up (up to CAUSE_CHECK_LIMIT, and a dump a kind)
        snap.attribution.causes = _causes(sockets, owner_map, used)


def primary_holder_only(listeners: Iterable[Socket], wanted: set[int]) -> set[int]:
    """The inodes of the listeners that only name sockets without a file (not wanted for
    rows of their own): their primary holder is all that is needed of them."""
    return {s.inode for s in listeners if s.inode} - wanted


def _scan_for(background, procfs: str, wanted: set[int], primary_only: set[int]):
    """The owner map of the `wanted` inodes: from the forked scan when one runs, else
    by a scan of their own (scan()'s `primary_only`)."""
    from sockstat.collect import owners

    return background.result(wanted, primary_only) if background is not None \
        else owners.scan(procfs, wanted, primary_only=primary_only)


def _peer_inodes(sockets: Iterable[Socket]) -> set[int]:
    """The inodes of these UNIX sockets' peers: their holders are named too."""
    return {u.peer_inode for u in filter(None, map(_UNIX, sockets)) if u.peer_inode}


def _holder_pids(owner_map, processes: list[tuple] | None, table: set[int],
                 peers: set[int], named: list[Socket]) -> set[int]:
    """The pids a full attribution of the table would name: every holder of its
    sockets' inodes, the primary holder (the lowest pid) of its UNIX sockets' peers, and
    the listeners' processes named for its fileless sockets. From what the scan found
    per process, else from a map of the whole table."""
    if processes is not None:
        pids: set[int] = set()
        peer_holders: dict[int, int] = {}
        for pid, _name, _user, _fds, inodes in processes:
            if not table.isdisjoint(inodes):
                pids.add(pid)
            for inode in peers.intersection(inodes):
                if pid < peer_holders.get(inode, pid + 1):
                    peer_holders[inode] = pid
        pids.update(peer_holders.values())
    else:
        by_inode = owner_map.by_inode
        pids = {ref.pid for inode, ref in by_inode.items() if inode in table}
        pids.update(ref.pid for inode, refs in owner_map.shared.items() if inode in table
                    for ref in refs)
        pids.update(by_inode[inode].pid for inode in peers if inode in by_inode)
    pids.update(s.process.pid for s in named if not s.inode and s.process is not None)
    return pids


_LISTENERS = Query(states=frozenset({TcpState.LISTEN}), protos=frozenset({Proto.TCP}))
_LISTEN = TcpState.LISTEN


def fileless_ends(sockets: list[Socket], inodes: list[int] | None = None) -> set[Endpoint]:
    """The local endpoints of the TCP sockets that have no file (inode 0: TIME_WAIT,
    SYN_RECV, not yet accepted, orphans) and so no owner of their own: what
    _listeners_on is asked for, the listener there (or on a wildcard address and the
    same port) names them. `inodes`: the sockets' inodes, when the caller has them.

    Not a LISTEN socket's: a listener is never named through another
    (owners.attribute_via_listeners), so its endpoint would only cost a look-up of
    listeners that name nothing. (A listener without a file is not seen in practice:
    closing its last fd ends it; the rows path falls back if one is.)"""
    if inodes is None:
        inodes = map(_INODE_OF, sockets)
    return {s.local for s in compress(sockets, map(operator.not_, inodes))
            if s.proto is Proto.TCP and s.state is not _LISTEN}


def _listeners_on(fileless: set, query: Query, table: list[Socket],
                  read: Callable[[Query], list[Socket]]) -> list[Socket]:
    """The TCP listeners that can name the table's sockets without a file (TIME_WAIT,
    SYN_RECV, not yet accepted, orphans), given their local endpoints: on the same
    address and port, or a wildcard address and the same port (owners.serves). From the
    table when the query read every listener, else by `read(_LISTENERS)`: a small
    LISTEN-only dump, filtered in the kernel. A listener on the same port but another
    address names none of them, so its holder is not searched for."""
    from sockstat.collect.owners import serves

    found = table if _has_every_listener(query) else read(_LISTENERS)
    ports = {local.port for local in fileless}
    # the few listeners of a 100k table picked out in C first (the listcomp over every
    # socket cost as much as the rest of this function)
    listening = compress(found, map(operator.is_, map(_STATE_OF, found), repeat(TcpState.LISTEN)))
    return [s for s in listening if s.proto is Proto.TCP and serves(s, fileless, ports)]


def _has_every_listener(query: Query) -> bool:
    """Whether the query's table holds every TCP listener of the namespace (both
    families, no filter before the owners' that could leave one out)."""
    return Proto.TCP in query.protos and TcpState.LISTEN in query.kernel_states(Proto.TCP) \
        and query.families == Query().families and _kernel_exact(query)


def _causes(sockets: list[Socket], owner_map, used: Source) -> dict[int, str]:
    """Why each unattributed socket has none: netlink can ask the kernel whether the
    socket still exists (one exact lookup each, a few hundred at most; for those
    without a peer, which the lookup cannot tell, one dump of their family and
    protocol on their ports, filtered in the kernel)."""
    from sockstat.collect import owners

    if used is not Source.NETLINK:
        return owners.unattributed_causes(sockets, owner_map)
    from sockstat.collect import netlink

    nl = netlink.open_socket()
    try:
        return owners.unattributed_causes(
            sockets, owner_map, netlink.Presence(owners.checked_for_causes(sockets), nl))
    finally:
        nl.close()


from sockstat._callable import make_callable  # noqa: E402

make_callable(__name__, "collect")  # `sockstat.collect(...)` calls the function
