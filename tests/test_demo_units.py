"""The demo lab's pure parts, on hand-built sockets: demo names, how the lab names each
socket it sees, how a group of ends is summed up in a timeline cell, the renderer's
collapsing of long tables. Plus one in-process run of the library API, checked against
the kernel's own table (tests/conftest.py's reader), to show it cleans up."""

from __future__ import annotations

import socket

import pytest
from conftest import kernel_rows

from sockstat.demo import resolve
from sockstat.demo.lab import CLOSED, NONE, Lab, Row, state_name
from sockstat.demo.render import _collapse, _holder, state_cell
from sockstat.errors import UsageError
from sockstat.model import Endpoint, Family, ProcessRef, Proto, Socket, TcpState


def sock(state: TcpState, local: tuple[str, int], remote: tuple[str, int], inode: int = 0,
         **kw) -> Socket:
    return Socket(Proto.TCP, Family.INET, state, Endpoint(*local), Endpoint(*remote),
                  inode=inode, **kw)


# ---- names ---------------------------------------------------------------------------

@pytest.mark.parametrize("typed, name, kind", [
    ("FIN_WAIT1", "fin-wait1", "state"), ("fin-wait-1", "fin-wait1", "state"),
    ("Syn_Rcvd", "syn-recv", "state"), ("close_wait", "close-wait", "state"),
    ("LISTENING", "listen", "state"), ("TIME_WAIT", "time-wait", "state"),
    ("time-wait", "time-wait", "state"), ("Restart", "restart", "scenario"),
    ("Half_Close", "half-close", "scenario"),
    ("ECHO", "echo", "scenario"), ("all", "all", "all"),
])
def test_demo_names_in_any_spelling(typed, name, kind):
    got = resolve(typed)
    assert (got.name, got.kind) == (name, kind)


def test_unknown_and_closed_names_are_usage_errors():
    with pytest.raises(UsageError, match="unknown demo 'nope'.*fin-wait1.*zero-window"):
        resolve("nope")
    with pytest.raises(UsageError, match="sockstat explain closed"):
        resolve("closed")


def test_state_names():
    assert state_name(TcpState.NEW_SYN_RECV) == "SYN_RECV"
    assert state_name(None) == state_name(TcpState.CLOSE) == CLOSED
    assert state_name(TcpState.TIME_WAIT) == "TIME_WAIT"


# ---- naming what the kernel reports --------------------------------------------------

class FakeLab(Lab):
    """A Lab whose ends are declared by hand (no sockets opened)."""

    def __init__(self) -> None:
        super().__init__("units")

    def declare(self, role, local, remote=None, inode=0, peer_role=None):
        from sockstat.demo.lab import End

        return self._add(End(role=role, local=local, remote=remote, inode=inode,
                             peer_role=peer_role))


HOST = "127.0.0.1"


def test_identify_by_inode_tuple_and_reverse_tuple():
    lab = FakeLab()
    lab.declare("listener A", (HOST, 80), inode=11)
    lab.declare("listener B", (HOST, 80), inode=12)
    lab.declare("client 1", (HOST, 5001), (HOST, 80), inode=21, peer_role="server 1")
    lab.declare("client 2", (HOST, 5002), (HOST, 80), inode=0, peer_role="server 2")
    lab.declare(None, (HOST, 80), (HOST, 5001), inode=31)  # accepted: named after client 1
    seen = [
        sock(TcpState.LISTEN, (HOST, 80), ("0.0.0.0", 0), inode=12),
        sock(TcpState.LISTEN, (HOST, 80), ("0.0.0.0", 0), inode=11),
        sock(TcpState.ESTABLISHED, (HOST, 5001), (HOST, 80), inode=21),
        sock(TcpState.ESTABLISHED, (HOST, 80), (HOST, 5001), inode=31),
        sock(TcpState.TIME_WAIT, (HOST, 5002), (HOST, 80)),  # closed client: by tuple
        sock(TcpState.NEW_SYN_RECV, (HOST, 80), (HOST, 5002)),  # nobody accepted it
        sock(TcpState.ESTABLISHED, (HOST, 80), (HOST, 6000), inode=99),  # not ours
        sock(TcpState.LISTEN, ("127.0.0.2", 80), ("0.0.0.0", 0), inode=98),  # not ours
    ]
    rows = lab._identify(seen)
    assert [(r.role, r.sock.state) for r in rows] == [
        ("listener A", TcpState.LISTEN), ("listener B", TcpState.LISTEN),
        ("client 1", TcpState.ESTABLISHED), ("server 1", TcpState.ESTABLISHED),
        ("client 2", TcpState.TIME_WAIT), ("server 2", TcpState.NEW_SYN_RECV),
    ]


def test_states_report_closed_for_ends_the_kernel_forgot():
    lab = FakeLab()
    lab.declare("client", (HOST, 5001), (HOST, 80), peer_role="server")
    lab._seen.update({"client": None, "server": None})
    rows = [Row("client", sock(TcpState.TIME_WAIT, (HOST, 5001), (HOST, 80)))]
    assert lab.states(rows) == {"client": "TIME_WAIT", "server": CLOSED}


def test_describe_a_group_of_ends():
    lab = FakeLab()
    assert lab.describe({"listener": "LISTEN"}, "client") == NONE
    assert lab.describe({"client": "SYN_SENT", "server": CLOSED}, "client") == "SYN_SENT"
    two = {"client 1": "ESTABLISHED", "client 2": "CLOSE_WAIT", "server 1": "FIN_WAIT2"}
    assert lab.describe(two, "client") == "#1 ESTABLISHED · #2 CLOSE_WAIT"
    many = {f"client {i}": "ESTABLISHED" if i <= 3 else "SYN_SENT" for i in range(1, 7)}
    # in the order of a connection's life: SYN_SENT before ESTABLISHED
    assert lab.describe(many, "client") == "3 SYN_SENT · 3 ESTABLISHED"


def test_state_cell_puts_each_member_on_its_own_line():
    assert state_cell("#1 ESTABLISHED · #2 SYN_SENT").plain == "#1 ESTABLISHED\n#2 SYN_SENT"
    assert state_cell("CLOSED").plain == "CLOSED"


def test_long_tables_keep_listeners_and_a_few_of_each_kind():
    rows = [Row("listener A", sock(TcpState.LISTEN, (HOST, 80), ("0.0.0.0", 0), 1)),
            Row("listener B", sock(TcpState.LISTEN, (HOST, 80), ("0.0.0.0", 0), 2))]
    for i in range(1, 11):
        rows.append(Row(f"client {i}", sock(TcpState.ESTABLISHED, (HOST, 5000 + i),
                                            (HOST, 80), 100 + i)))
        rows.append(Row(f"server {i}", sock(TcpState.ESTABLISHED, (HOST, 80),
                                            (HOST, 5000 + i))))
    kept, summary = _collapse(rows)
    assert [r.role for r in kept] == ["listener A", "listener B", "client 1", "server 1",
                                      "client 2", "server 2", "client 3", "server 3"]
    assert summary == ["… 7 more client rows: 7 ESTABLISHED",
                       "… 7 more server rows: 7 ESTABLISHED"]
    assert _collapse(rows[:5]) == (rows[:5], [])


def test_sockets_without_a_process_say_what_they_are():
    owner = ProcessRef(pid=42, name="srv", via_listener=True)
    queued = sock(TcpState.ESTABLISHED, (HOST, 80), (HOST, 5001), process=owner)
    assert _holder(queued, set()) == "accept queue of srv/42"
    assert _holder(queued, {80}) == "an accept queue"  # two listeners: which one is unknown
    assert _holder(sock(TcpState.TIME_WAIT, (HOST, 80), (HOST, 5001)), set()) == \
        "none: kernel only"
    assert _holder(sock(TcpState.FIN_WAIT2, (HOST, 5001), (HOST, 80)), set()) == \
        "none: orphan (closed)"
    assert _holder(sock(TcpState.SYN_RECV, (HOST, 80), (HOST, 5001)), set()) == \
        "none: request socket"


# ---- the library API, in this process ------------------------------------------------

def test_a_state_context_manager_yields_the_state_and_resets_everything():
    from sockstat.demo import states

    with states.close_wait() as lab:
        ports = set(lab.ports)
        mine = {(e.local, e.remote) for e in lab.ends if e.remote}
        rows = {(r["local"], r["remote"]): r["state"] for r in kernel_rows(ports, ("tcp",))}
        server = lab.end("server")
        assert rows[server.local, server.remote] == "CLOSE_WAIT"
        assert [s.call for s in lab.timeline][-2:] == ["close()", "recv()"]
    assert lab.cleanup is not None and not lab.cleanup.leftovers
    left = [r for r in kernel_rows(ports, ("tcp",)) if (r["local"], r["remote"]) in mine]
    assert left == []


def test_a_recipe_that_cannot_finish_raises_a_demo_error_and_still_cleans_up():
    from sockstat.demo.lab import DemoError

    with pytest.raises(DemoError, match="did not happen within"), \
            Lab("impossible", timeout=0.2) as lab:
        listener = lab.listen()
        lab.connect(listener.getsockname()[1])
        lab.wait({"client": TcpState.CLOSING})
    assert lab.cleanup is not None and not lab.cleanup.leftovers
    assert all(s.fileno() == -1 for s in lab._owned)


def test_a_failing_socket_call_becomes_one_clear_error():
    import errno

    from sockstat.demo.lab import DemoError, failures_explained

    with pytest.raises(DemoError, match="v6: Cannot assign requested address") as caught, \
            failures_explained(Lab("v6", ipv6=True)):
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    assert "::1" in caught.value.hint


def test_lab_uses_loopback_only():
    lab = Lab("v6", ipv6=True)
    assert lab.host == "::1" and lab.family == socket.AF_INET6
    assert Lab("v4").host == "127.0.0.1"
