"""Why a socket has no process: each cause counted apart, and no note when every shown
row has an owner (issue: one note lumped exited processes with permission and PID
namespaces). Real sockets for the kernel look-up; hand-built snapshots for the note."""

from __future__ import annotations

from sockstat.cli.show import unattributed_note
from sockstat.collect import collect, netlink, owners
from sockstat.model import (
    Attribution,
    Endpoint,
    Family,
    ProcessRef,
    Proto,
    Snapshot,
    Socket,
    TcpState,
)
from sockstat.query import Query


def test_the_kernel_says_when_a_socket_is_gone(loop):
    srv = loop.listener()
    client, conn = loop.connect(srv)
    port = client.getsockname()[1]
    server_port = srv.getsockname()[1]
    [mine] = [s for s in collect(Query.build(sports=[port])).sockets
              if s.remote.port == server_port]
    nl = netlink.open_socket()
    try:
        assert netlink.exists(mine, nl) is True
        from conftest import rst_close, wait_for

        rst_close(client)
        wait_for(lambda: netlink.exists(mine, nl) is False, what="the socket to be gone")
    finally:
        nl.close()


def _sock(inode: int, uid: int = 0, state: TcpState = TcpState.ESTABLISHED,
          port: int = 1000, process: ProcessRef | None = None) -> Socket:
    return Socket(Proto.TCP, Family.INET, state, Endpoint("127.0.0.1", port),
                  Endpoint("127.0.0.1", 2000 + inode), uid=uid, inode=inode, process=process)


def test_causes_are_told_apart():
    sockets = [_sock(1), _sock(2, uid=33), _sock(3), _sock(4, process=ProcessRef(9, "x"))]
    owner_map = owners.OwnerMap(denied_uids={33})
    gone = {1}
    causes = owners.unattributed_causes(sockets, owner_map, lambda s: s.inode not in gone)
    assert causes == {1: owners.GONE, 2: owners.DENIED, 3: owners.HIDDEN}


def test_note_counts_each_cause_and_names_none_that_is_absent():
    sockets = [_sock(1), _sock(2), _sock(3, uid=33), _sock(4, process=ProcessRef(9, "x"))]
    snap = Snapshot(sockets, 0.0, "netlink", Attribution(
        scanned=True, unattributed=3,
        causes={1: owners.GONE, 2: owners.GONE, 3: owners.DENIED}))
    note = unattributed_note(snap)
    assert note.startswith("3 socket(s) shown without a process: 2 closed")
    assert "1 belong to users whose processes are not readable" in note
    assert "PID namespace" not in note and "no visible process" not in note


def test_no_note_when_every_shown_row_has_an_owner():
    owned = [_sock(i, port=1000 + i, process=ProcessRef(9, "x")) for i in range(1, 4)]
    ownerless = _sock(50, port=9999)  # sorts last: a 3-row terminal listing leaves it out
    snap = Snapshot(owned + [ownerless], 0.0, "netlink", Attribution(
        scanned=True, unattributed=1, causes={50: owners.GONE}))
    assert unattributed_note(snap, limit=3) is None
    assert unattributed_note(snap, limit=None).startswith("1 socket(s) shown without")


def test_an_owner_request_names_the_picked_sockets_then_more_from_the_same_scan(loop):
    """collect(processes=OwnerRequest(picks)) names only what picks chooses; name()
    names more from the same scan; a process filter needs every owner."""
    import os

    from sockstat.collect import OwnerRequest

    srv = loop.listener()
    port = srv.getsockname()[1]
    loop.connect(srv)
    query = Query.build(ports=[port])
    request = OwnerRequest(lambda s: s.state is TcpState.LISTEN)
    snap = collect(query, processes=request, services=True)
    [listener] = [s for s in snap.sockets if s.state is TcpState.LISTEN]
    rest = [s for s in snap.sockets if s.state is TcpState.ESTABLISHED]
    assert listener.process.pid == os.getpid() and len(rest) == 2
    assert all(s.process is None for s in rest)
    assert os.getpid() in snap.services  # every holder's service, named or not
    assert request.name(snap, rest) == 2
    assert all(s.process.pid == os.getpid() for s in rest)
    assert request.name(snap, rest) == 0  # nothing left to name
    every = OwnerRequest(lambda s: False)
    snap = collect(Query.build(ports=[port], pids=[os.getpid()]), processes=every)
    assert len(snap.sockets) == 3 and all(s.process is not None for s in snap.sockets)
    assert every.name(snap, snap.sockets) == 0
