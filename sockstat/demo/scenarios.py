"""The classic socket scenarios, run for real on loopback and narrated as timelines.

Each scenario makes its calls one by one and, after each, records a Step (who called
what, what it returned, the state of each end as the kernel reports it). Notes that
depend on what happened (how the kernel split connections, which ACKs were dropped)
are written from what was observed, not assumed. `run()` yields the Lab holding the
sockets at the scenario's most telling moment; leaving it resets everything.

    with scenarios.run("half-close") as lab:
        for step in lab.timeline: ...
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sockstat.demo.lab import (
    STATE_TIMEOUT,
    Channel,
    DemoError,
    Lab,
    Row,
    become_helper,
    failures_explained,
    rst_close,
    state_name,
    stop_helper,
    timer_is_probe,
)
from sockstat.demo.states import fill_until_stuck, open_pair
from sockstat.model import TcpState

S = TcpState
ECHO_MODELS = ("iterative", "thread", "fork")


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # one line for `sockstat demo --list`
    run: Callable[..., None]
    topic: str  # `sockstat explain <topic>` says more


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _clients(numbers: list[str]) -> str:
    """['4', '5'] -> 'clients 4 and 5'."""
    if not numbers:
        return ""
    if len(numbers) == 1:
        return f"client {numbers[0]}"
    return f"clients {', '.join(numbers[:-1])} and {numbers[-1]}"


def _epoll_events(sock: socket.socket) -> str:
    """What epoll_wait() reports for the socket right now: 'EPOLLIN|EPOLLRDHUP'."""
    names = ("EPOLLIN", "EPOLLOUT", "EPOLLRDHUP", "EPOLLHUP", "EPOLLERR")
    with select.epoll() as ep:
        ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP)
        ready = ep.poll(0)
    mask = ready[0][1] if ready else 0
    return "|".join(n for n in names if mask & getattr(select, n)) or "nothing"


def _count(rows: list[Row], group: str, state: TcpState) -> int:
    return sum(1 for r in rows if r.role.split()[0] == group and r.sock.state is state)


# ---- handshake -----------------------------------------------------------------------

def _handshake(lab: Lab) -> None:
    lab.highlight = {S.SYN_RECV}
    listener = lab.listen(defer_accept=30)
    port = listener.getsockname()[1]
    lab.step("server", f"socket(); setsockopt(TCP_DEFER_ACCEPT, 30); bind({lab.addr(0)}); "
                       "listen(8)", f"port {port}", expect={"listener": S.LISTEN},
             note="TCP_DEFER_ACCEPT only freezes the handshake's last step so it can be "
                  "seen; without it the whole handshake takes microseconds here.")
    client = lab.connect(port)
    lab.step("client", "socket(); connect()", "0",
             expect={"client": S.ESTABLISHED, "server": S.SYN_RECV},
             note="SYN → SYN-ACK → ACK. The client's connect() returned on the SYN-ACK: it "
                  "is ESTABLISHED. The server still holds a request socket in SYN_RECV "
                  "(no descriptor yet): it does not count the bare ACK. (The client was in "
                  "SYN_SENT for one round trip: sockstat demo syn-sent freezes that.)")
    client.sendall(b"hello")
    lab.step("client", "send(b'hello')", "5",
             expect={"server": S.ESTABLISHED},
             note="Data with the ACK completes the handshake on the server: a new "
                  "ESTABLISHED socket waits in the accept queue (listener Recv-Q 1).")
    server = lab.accept(listener)
    lab.step("server", "accept()", "the connection's socket",
             expect={"server": S.ESTABLISHED},
             note="accept() took no part in the handshake: it took the finished connection "
                  "off the queue. Three sockets now: the client's, the listener, and the "
                  "server's socket for this client.")
    data = server.recv(100)
    server.sendall(data.upper())
    lab.step("server", "recv(); send(upper case)", f"{data!r}; {len(data)}")
    reply = _recv_exactly(lab, client, len(data))
    lab.step("client", "recv()", repr(reply),
             note="The classic echo model: read, upper-case, write back.")


# ---- teardown ------------------------------------------------------------------------

def _teardown(lab: Lab) -> None:
    lab.highlight = {S.FIN_WAIT2, S.CLOSE_WAIT, S.TIME_WAIT}
    _, client, server = open_pair(lab)
    client.close()
    lab.step("client", "close()", "0", expect={"client": S.FIN_WAIT2, "server": S.CLOSE_WAIT},
             note="FIN → ACK. The client passed through FIN_WAIT1 for one round trip. No "
                  "process holds its socket now (an orphan) and it waits for the server's "
                  "FIN; the server is in CLOSE_WAIT until its program closes.")
    data = server.recv(100)
    lab.step("server", "recv()", f"{data!r}: end of file", expect={"server": S.CLOSE_WAIT})
    server.close()
    lab.step("server", "close()", "0", expect={"server": None, "client": S.TIME_WAIT},
             note="FIN → ACK. The server passed through LAST_ACK for one round trip and is "
                  "gone. The client, which closed first, keeps the connection in TIME_WAIT "
                  "for 60 s.")
    lab.leaves_time_wait = True


# ---- restart: a server restarted over its own TIME_WAIT -------------------------------

def _time_wait(lab: Lab) -> None:
    lab.target = S.TIME_WAIT
    lab.highlight = {S.TIME_WAIT}
    lab.leaves_time_wait = True
    old = lab.listen("listener old", reuseaddr=True)
    port = old.getsockname()[1]
    lab.step("old server", f"socket(); setsockopt(SO_REUSEADDR); bind({lab.addr(0)}); "
                           "listen(8)", f"port {port}", expect={"listener old": S.LISTEN})
    client = lab.connect(port)
    server = lab.accept(old)
    lab.step("both", "client: connect(); old server: accept()", "connected",
             expect={"client": S.ESTABLISHED, "server": S.ESTABLISHED})
    server.close()
    lab.step("old server", "close() the connection", "0",
             expect={"server": S.FIN_WAIT2, "client": S.CLOSE_WAIT},
             note="The server closes first, as HTTP servers often do.")
    client.recv(1)
    client.close()
    lab.step("client", "recv(); close()", "b''; 0",
             expect={"server": S.TIME_WAIT, "client": None})
    old.close()
    lab.step("old server", "close() the listener: the restart begins", "0",
             expect={"listener old": None, "server": S.TIME_WAIT},
             note=f"Nothing listens on port {port} now; only the TIME_WAIT remains.")
    plain = lab.new_socket()
    try:
        plain.bind((lab.host, port))
        result = "0 (unexpected)"
    except OSError as exc:
        result = _errno_name(exc)
    lab.step("new server", f"socket(); bind({lab.addr(port)})", result,
             note="Without SO_REUSEADDR the TIME_WAIT blocks the port for 60 s: "
                  "'Address already in use'.")
    lab.facts["bind_without_reuseaddr"] = result
    new = lab.new_socket(reuseaddr=True)
    new.bind((lab.host, port))
    new.listen(8)
    lab.add_end("listener new", new)
    lab.step("new server", f"socket(); setsockopt(SO_REUSEADDR); bind({lab.addr(port)}); "
                           "listen(8)", "0", expect={"listener new": S.LISTEN,
                                                      "server": S.TIME_WAIT},
             note="With SO_REUSEADDR the new server listens next to the TIME_WAIT, which "
                  "stays its 60 s. It worked because the old server had set it too.")
    lab.facts["bind_with_reuseaddr"] = "0"

    # The same experiment on fresh ports, varying who set which option. Each row is a
    # complete run: old listener, connection closed by the server, restart attempt.
    variants = [
        ("v1", {}, {"reuseaddr": True}, False,
         "Only the new server set SO_REUSEADDR: the TIME_WAIT keeps the old listener's "
         "options, so on Linux the old server must set it too."),
        ("v2", {}, {"reuseport": True}, False,
         "The textbook experiment: only the new server set SO_REUSEPORT, and it fails, "
         "as textbooks say."),
        ("v3", {"reuseport": True}, {"reuseport": True}, False,
         "But when the old server had set SO_REUSEPORT too, the restart works: the common "
         "claim 'fails whether or not port reuse is set' is wrong."),
        ("v4", {"reuseaddr": True}, {"reuseaddr": True}, True,
         "A common claim: a client reconnecting from its old port is refused while the "
         "four-tuple is in TIME_WAIT. Linux accepts the SYN (its sequence number and "
         "timestamp are newer, RFC 6191) and the new connection replaces the TIME_WAIT."),
    ]
    for tag, old_opts, new_opts, reconnect, note in variants:
        _restart_variant(lab, tag, old_opts, new_opts, reconnect, note)


def _opt_names(opts: dict) -> str:
    names = [n for n, key in (("SO_REUSEADDR", "reuseaddr"), ("SO_REUSEPORT", "reuseport"))
             if opts.get(key)]
    return "+".join(names) or "nothing"


def _restart_variant(lab: Lab, tag: str, old_opts: dict, new_opts: dict, reconnect: bool,
                     note: str) -> None:
    old = lab.listen(f"{tag} listener", **old_opts)
    port = old.getsockname()[1]
    if reconnect:
        # The client will bind its port again after closing. Meanwhile another program's
        # connect() could take the freed port (with 100k connections on the machine it
        # does): a second socket bound to it keeps it ours, since connect() never picks a
        # port that bind() holds.
        keeper = lab.new_socket(reuseaddr=True)
        keeper.bind((lab.host, 0))
        client = lab.connect(port, f"{tag} client", reuseaddr=True,
                             bind_port=keeper.getsockname()[1])
    else:
        client = lab.connect(port, f"{tag} client")
    server = lab.accept(old)
    client_port = client.getsockname()[1]
    lab.wait({f"{tag} client": S.ESTABLISHED, f"{tag} server": S.ESTABLISHED})
    server.close()
    lab.wait({f"{tag} client": S.CLOSE_WAIT})
    client.close()
    old.close()
    lab.wait({f"{tag} server": S.TIME_WAIT, f"{tag} client": None,
              f"{tag} listener": None})
    new = lab.new_socket(**new_opts)
    try:
        new.bind((lab.host, port))
        new.listen(8)
        lab.add_end(f"{tag} listener new", new)
        result = "0: listening"
    except OSError as exc:
        result = _errno_name(exc)
    lab.facts[f"restart_{tag}"] = {"old": _opt_names(old_opts), "new": _opt_names(new_opts),
                                   "result": result.split(":")[0]}
    call = f"old set {_opt_names(old_opts)}, new sets {_opt_names(new_opts)}: bind(:{port})"
    if not reconnect:
        lab.step("variant", call, result, client=state_name(None),
                 server=_state_of(lab, f"{tag} server"), note=note)
        return
    again = lab.new_socket(reuseaddr=True)
    again.bind((lab.host, client_port))
    again.settimeout(lab.timeout)
    try:
        again.connect((lab.host, port))
        outcome = "connected"
    except OSError as exc:
        outcome = _errno_name(exc)
    again.settimeout(None)
    lab.add_end(f"{tag} client again", again, remote=(lab.host, port),
                peer_role=f"{tag} server")
    lab.facts[f"reconnect_{tag}"] = outcome
    if outcome == "connected":
        lab.wait({f"{tag} server": S.ESTABLISHED})
    lab.step("variant", f"{call}; client bind(:{client_port}), connect(:{port})",
             f"{result}; {outcome}", client=_state_of(lab, f"{tag} client again"),
             server=_state_of(lab, f"{tag} server"), note=note)


def _state_of(lab: Lab, role: str) -> str:
    return state_name(getattr(lab.row(lab.sockets(), role), "state", None))


# ---- reuseport -----------------------------------------------------------------------

REUSEPORT_CLIENTS = 16


def _reuseport(lab: Lab) -> None:
    lab.highlight = {S.LISTEN}
    a = lab.listen("listener A", reuseport=True, backlog=32)
    port = a.getsockname()[1]
    lab.step("server A", f"socket(); setsockopt(SO_REUSEPORT); bind({lab.addr(0)}); "
                         "listen(32)", f"port {port}", expect={"listener A": S.LISTEN})
    family, host = lab.family, lab.host

    def second_listener(channel: Channel) -> None:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(32)
        except OSError as exc:
            channel.send("error", _errno_name(exc))
            return
        channel.send("listening", os.fstat(sock.fileno()).st_ino)
        channel.recv()  # until the lab closes the channel

    helper = lab.spawn("reuseport-b", second_listener, role="listener B")
    inode = int(lab.expect_message(helper, "listening")[0])
    lab.add_remote_end("listener B", (host, port), None, inode=inode)
    lab.step("server B", f"another process (pid {helper.pid}): the same calls, same port",
             "0", expect={"listener A": S.LISTEN, "listener B": S.LISTEN},
             note="Two LISTEN sockets on one port, in two processes of the same user.")
    third = lab.new_socket()
    try:
        third.bind((host, port))
        result = "0 (unexpected)"
    except OSError as exc:
        result = _errno_name(exc)
    lab.step("server C", f"socket(); bind({lab.addr(port)}) without SO_REUSEPORT", result,
             note="Every socket sharing the port must set SO_REUSEPORT (and belong to the "
                  "same user).")
    for i in range(1, REUSEPORT_CLIENTS + 1):
        lab.connect(port, f"client {i}")

    def all_queued(rows: list[Row]) -> bool:
        queued = sum(r.sock.recv_q for r in rows if r.role.startswith("listener"))
        return queued == REUSEPORT_CLIENTS

    def split(rows: list[Row]) -> str:
        counts = {r.role[-1]: r.sock.recv_q for r in rows if r.role.startswith("listener")}
        lab.facts.update(connections=REUSEPORT_CLIENTS, listener_a=counts.get("A", 0),
                         listener_b=counts.get("B", 0))
        return (f"The kernel hashed each connection to one listener: A has "
                f"{counts.get('A', 0)} waiting, B has {counts.get('B', 0)} (listener Recv-Q). "
                "Both get connections; neither knows of the other's.")

    lab.step("clients", f"connect() × {REUSEPORT_CLIENTS}", "all connected", until=all_queued,
             what=f"{REUSEPORT_CLIENTS} connections in the two accept queues", note=split)
    lab.notes.append("tcp-notes.md says that with port reuse 'only one can establish "
                     "connections': the kernel shares them between all the listeners.")


# ---- half-close ----------------------------------------------------------------------

def _half_close(lab: Lab) -> None:
    lab.highlight = {S.FIN_WAIT2, S.CLOSE_WAIT}
    _, client, server = open_pair(lab)
    client.sendall(b"hello")
    lab.step("client", "send(b'hello')", "5")
    client.shutdown(socket.SHUT_WR)
    lab.step("client", "shutdown(SHUT_WR)", "0",
             expect={"client": S.FIN_WAIT2, "server": S.CLOSE_WAIT},
             note="'I am done sending': a FIN after the data. The client can still read.")
    lab.step("server", "epoll_wait()", _epoll_events(server),
             note="EPOLLRDHUP: the peer shut down its sending side (as the textbooks "
                  "say). read() returns the data, then 0.")
    request = _recv_exactly(lab, server, 5)
    eof = server.recv(100)
    lab.step("server", "recv(); recv()", f"{request!r}; {eof!r} (end of file)",
             note="The server reads the whole request, then end of file.")
    server.sendall(request.upper())
    lab.step("server", "send(b'HELLO')", "5", expect={"server": S.CLOSE_WAIT},
             note="CLOSE_WAIT only means the peer stopped sending: this side may still "
                  "send.")
    reply = _recv_exactly(lab, client, 5)
    lab.step("client", "recv()", repr(reply), expect={"client": S.FIN_WAIT2},
             note="The half-closed client still receives the answer. When the server "
                  "closes, the client goes to TIME_WAIT (sockstat demo teardown).")


# ---- close() vs shutdown() -----------------------------------------------------------

def _close_vs_shutdown(lab: Lab) -> None:
    lab.highlight = {S.CLOSE_WAIT, S.FIN_WAIT2}
    listener = lab.listen()
    port = listener.getsockname()[1]
    lab.step("server", f"socket(); bind({lab.addr(0)}); listen(8)", f"port {port}",
             expect={"listener": S.LISTEN})
    client1 = lab.connect(port, "client 1")
    lab.connect(port, "client 2")
    conn1 = lab.accept(listener)
    conn2 = lab.accept(listener)
    lab.step("both", "clients 1, 2: connect(); server: accept() × 2", "connected",
             expect={"server 1": S.ESTABLISHED, "server 2": S.ESTABLISHED})

    def hold(channel: Channel) -> None:
        channel.send("ready")
        while (msg := channel.recv()) is not None:  # until the lab says go (EOF)
            if msg[0] == "send":
                conn1.sendall(msg[1].encode())
                channel.send("sent", len(msg[1]))

    child = lab.spawn("fork-child", hold, keep=[conn1, conn2], role="holds copies")
    lab.expect_message(child, "ready")
    lab.step("server", "fork()", f"child pid {child.pid}",
             note="The child now holds copies of both connection sockets.")
    conn1.close()
    lab.step("server", "close(server 1)", "0",
             expect={"client 1": S.ESTABLISHED, "server 1": S.ESTABLISHED},
             note="No FIN: close() only dropped the parent's descriptor, and the child "
                  "still holds one. Client 1 has no idea anything happened.")
    conn2.shutdown(socket.SHUT_WR)
    lab.step("server", "shutdown(server 2, SHUT_WR)", "0",
             expect={"client 2": S.CLOSE_WAIT, "server 2": S.FIN_WAIT2},
             note="shutdown() acts on the connection itself: the FIN leaves although the "
                  "child still holds the socket.")
    conn2.shutdown(socket.SHUT_RD)
    lab.step("server", "shutdown(server 2, SHUT_RD); epoll_wait()",
             f"0; {_epoll_events(conn2)}",
             expect={"client 2": S.CLOSE_WAIT, "server 2": S.FIN_WAIT2},
             note="SHUT_RD sends nothing: client 2 sees no change. Both directions of server "
                  "2 are shut now, so epoll adds EPOLLHUP, as documented. Data arriving "
                  "now would be answered with an RST, as after close().")
    client1.shutdown(socket.SHUT_RD)
    lab.step("client 1", "shutdown(SHUT_RD); epoll_wait()", f"0; {_epoll_events(client1)}",
             expect={"client 1": S.ESTABLISHED},
             note="Only the reading side is shut: EPOLLRDHUP, and read() would return 0 "
                  "now. Nothing was sent.")
    child.channel.send("send", "late")
    lab.expect_message(child, "sent")
    lab.step("child", "send(server 1, b'late')", "4",
             until=lambda rows: getattr(lab.row(rows, "client 1"), "recv_q", 0) == 4,
             what="client 1's kernel to receive the data",
             note="The child still holds server 1 and writes to it.")
    late = _recv_exactly(lab, client1, 4)
    lab.step("client 1", "recv()", repr(late),
             note="Many texts say data arriving after SHUT_RD is acknowledged and silently "
                  "thrown away. On Linux it is delivered (while the socket can still send; "
                  "see step 6 for when it gets an RST instead).")
    stop_helper(child)
    lab.step("child", "exit()", "its descriptors are closed",
             expect={"client 1": S.CLOSE_WAIT, "server 1": S.FIN_WAIT2},
             note="The last descriptor of server 1 is gone, so now its FIN goes out. A "
                  "forking server must close its copy of every accepted socket, or its "
                  "clients never see a FIN.")


# ---- backlog -------------------------------------------------------------------------

BACKLOG = 2
BACKLOG_CLIENTS = 6


def _listen_overflows() -> int | None:
    from sockstat.collect.kernel import read_counters

    try:
        return read_counters().get("TcpExt.ListenOverflows")
    except Exception:  # the counter is narration only; never fail the demo over it
        return None


def _backlog(lab: Lab) -> None:
    lab.highlight = {S.SYN_SENT, S.SYN_RECV}
    listener = lab.listen(backlog=BACKLOG)
    port = listener.getsockname()[1]
    lab.step("server", f"socket(); bind({lab.addr(0)}); listen({BACKLOG})", f"port {port}",
             expect={"listener": S.LISTEN},
             note=f"The server never calls accept(). The queue takes backlog + 1 = "
                  f"{BACKLOG + 1} connections.")
    fits = BACKLOG + 1
    for i in range(1, fits + 1):
        lab.connect(port, f"client {i}", blocking=False)
    lab.step("clients", f"clients 1-{fits}: connect()", "0",
             until=lambda rows: _count(rows, "server", S.ESTABLISHED) == fits,
             what=f"{fits} connections in the accept queue",
             note=f"The accept queue is full: listener Recv-Q {fits}, backlog {BACKLOG}.")
    before = _listen_overflows()
    for i in range(fits + 1, BACKLOG_CLIENTS + 1):
        lab.connect(port, f"client {i}", blocking=False)
    dropped = BACKLOG_CLIENTS - fits

    def overflow_note(rows: list[Row]) -> str:
        after = _listen_overflows()
        grew = "" if before is None or after is None else \
            f" ListenOverflows grew by {after - before} (a counter for the whole machine)."
        return ("Their SYNs were dropped without an answer: SYN_SENT, sending the SYN "
                f"again every second or so, then less often.{grew}")

    lab.step("clients", f"clients {fits + 1}-{BACKLOG_CLIENTS}: connect()", "EINPROGRESS",
             until=lambda rows: _count(rows, "client", S.SYN_SENT) == dropped,
             what=f"{dropped} clients in SYN_SENT", note=overflow_note)
    lab.accept(listener, role="server 1")

    def retried(rows: list[Row]) -> bool:
        return _count(rows, "client", S.SYN_SENT) < dropped

    def after_accept(rows: list[Row]) -> str:
        late = [r for r in rows if r.role.startswith("server")
                and int(r.role.split()[1]) > fits]
        queued = [r.role.split()[1] for r in late if r.sock.state is S.ESTABLISHED]
        half = [r.role.split()[1] for r in late
                if r.sock.state.shown is S.SYN_RECV]
        lab.facts.update(backlog=BACKLOG, clients=BACKLOG_CLIENTS,
                         established_clients=_count(rows, "client", S.ESTABLISHED),
                         server_syn_recv=len(half))
        text = ("One slot opened. About a second later the waiting clients sent their SYNs "
                f"again; {_clients(queued) or 'none'} got into the queue.")
        if half:
            they = len(half) > 1
            text += (f" {_clients(half).capitalize()} {'are' if they else 'is'} ESTABLISHED, "
                     f"but the server holds {'them' if they else 'it'} in SYN_RECV: the SYN "
                     "found room, then the queue was full again when the final ACK came, "
                     "and the kernel dropped the ACK. The client believes it is "
                     "connected; the server does not, yet.")
        return text

    lab.step("server", "accept() one", "server 1", until=retried,
             what="a waiting client's SYN to get in", note=after_accept)


# ---- zero window ---------------------------------------------------------------------

RECEIVE_BUFFER = 32768
SEND_BUFFER = 32768


def _window(rows: list[Row], lab: Lab) -> str:
    client = lab.row(rows, "client")
    server = lab.row(rows, "server")
    if client is None or server is None:
        return ""
    parts = [f"server Recv-Q {server.recv_q:,}"]
    if server.tcp_info is not None and server.tcp_info.rcv_wnd is not None:
        parts.append(f"window {server.tcp_info.rcv_wnd:,}")
    parts.append(f"client Send-Q {client.send_q:,}")
    if timer_is_probe(client):
        parts.append("zero-window probes (timer persist)")
    return "; ".join(parts)


def _zero_window(lab: Lab) -> None:
    lab.highlight = {S.ESTABLISHED}
    _, client, server = open_pair(lab, listener_opts={"rcvbuf": RECEIVE_BUFFER},
                                  client_opts={"sndbuf": SEND_BUFFER},
                                  call_note="The server will not read for a while.")

    def numbers(rows: list[Row]) -> str:
        return _window(rows, lab)

    first = client.send(b"x" * 16384)
    lab.step("client", "send(16 KiB)", f"{first:,}", tcp_info=True,
             until=lambda rows: getattr(lab.row(rows, "server"), "recv_q", 0) == 16384,
             note=lambda rows: numbers(rows) + ". The data waits, unread, in the server's "
                                               "Recv-Q; the window it advertises shrinks.")
    sent = 16384 + fill_until_stuck(lab, client, "client")
    lab.step("client", "send() until EAGAIN", f"{sent:,} bytes in all", tcp_info=True,
             note=lambda rows: numbers(rows) + ". The server's buffer is full and its window "
                                               "is 0: the client stops and its Send-Q holds "
                                               "the rest.")
    got = _read_available(lab, server, sent)
    lab.step("server", "recv() everything", f"{got:,} bytes", tcp_info=True,
             until=lambda rows: getattr(lab.row(rows, "client"), "send_q", 1) == 0,
             what="the client's Send-Q to drain",
             note=lambda rows: numbers(rows) + ". Reading opened the window; the data "
                                               "flowed.")
    more = fill_until_stuck(lab, client, "client")
    lab.step("client", "send() until EAGAIN again", f"{more:,} bytes", tcp_info=True,
             note=lambda rows: numbers(rows) + ". Stalled again: held here for you to look "
                                               "at.")
    lab.facts.update(receive_buffer=RECEIVE_BUFFER, first_fill=sent, second_fill=more)


def _read_available(lab: Lab, sock: socket.socket, total: int) -> int:
    got = 0
    sock.settimeout(lab.timeout)
    try:
        while got < total:
            got += len(sock.recv(65536))
    except TimeoutError:
        raise DemoError(f"{lab.name}: only {got:,} of {total:,} bytes arrived") from None
    finally:
        sock.settimeout(None)
    return got


# ---- echo: the classic upper-case server, three ways ---------------------------------

def _recv_exactly(lab: Lab, sock: socket.socket, size: int) -> bytes:
    data = b""
    sock.settimeout(lab.timeout)
    try:
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    finally:
        sock.settimeout(None)
    if len(data) < size:
        raise DemoError(f"{lab.name}: expected {size} bytes, got {data!r}")
    return data


def _serve(conn: socket.socket, stopping) -> None:
    """Echo in upper case until the client leaves or the lab stops. Never blocks long
    (see Lab.thread) and never closes: the lab resets every socket at the end."""
    while not stopping.is_set():
        readable, _, _ = select.select([conn], [], [], 0.05)
        if not readable:
            continue
        try:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(data.upper())
        except OSError:  # reset by the client
            return


def _serve_blocking(conn: socket.socket) -> None:
    """The worker process's loop: a plain blocking echo, as in the classic echo server."""
    while True:
        try:
            data = conn.recv(4096)
        except OSError:
            return
        if not data:
            return
        conn.sendall(data.upper())


def _accept_loop(lab: Lab, listener: socket.socket, per_connection) -> None:
    while not lab.stopping.is_set():
        readable, _, _ = select.select([listener], [], [], 0.05)
        if readable:
            per_connection(lab.accept(listener))


def _fork_server(listener: socket.socket) -> Callable[[Channel], None]:
    """The forking server's main loop, run in its own process."""

    def body(channel: Channel) -> None:
        me = os.getpid()
        workers: set[int] = set()
        try:
            while True:
                readable, _, _ = select.select([listener, channel], [], [], 0.2)
                if channel in readable:
                    break  # the lab closed the channel (or wrote to it): finish
                if listener in readable:
                    conn, peer = listener.accept()
                    pid = os.fork()
                    if pid == 0:
                        code = 1
                        try:
                            become_helper("echo-worker", me)
                            listener.close()  # the worker only needs its connection
                            channel.close()
                            _serve_blocking(conn)
                            code = 0
                        finally:
                            os._exit(code)
                    workers.add(pid)
                    conn.close()  # or the worker's close() would send no FIN
                    channel.send("worker", pid, peer[1])
                for pid in list(workers):
                    with contextlib.suppress(ChildProcessError):
                        if os.waitpid(pid, os.WNOHANG)[0]:
                            workers.discard(pid)
        finally:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            for pid in workers:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    return body


ECHO_CLIENTS = 3


def _echo(lab: Lab, model: str = "iterative") -> None:
    if model not in ECHO_MODELS:
        from sockstat.errors import UsageError

        raise UsageError(f"unknown echo model {model!r} (choose from {', '.join(ECHO_MODELS)})")
    lab.title = f"echo ({model}): the classic upper-case echo server, {ECHO_CLIENTS} clients"
    lab.highlight_roles = {"listener", "server"}  # the point: who serves each client
    lab.facts["model"] = model
    listener = lab.listen()
    port = listener.getsockname()[1]
    how = {"iterative": "one loop: accept() a client, serve it until it leaves, then the "
                        "next",
           "thread": "accept() loop; one thread per client",
           "fork": "accept() loop in its own process; fork() one process per client"}[model]
    lab.step("server", f"socket(); bind({lab.addr(0)}); listen(8)", f"port {port}",
             expect={"listener": S.LISTEN}, note=f"Model {model}: {how}.")
    server = None
    if model == "iterative":
        lab.thread("echo-iterative",
                   lambda: _accept_loop(lab, listener, lambda c: _serve(c, lab.stopping)))
    elif model == "thread":
        lab.thread("echo-accept", lambda: _accept_loop(
            lab, listener,
            lambda c: lab.thread("echo-conn", lambda: _serve(c, lab.stopping))))
    else:
        server = lab.spawn("echo-server", _fork_server(listener), keep=[listener],
                           role="listener")
        listener.close()  # the server process holds the listener now, not the lab
    clients = []
    for i in range(1, ECHO_CLIENTS + 1):
        message = f"hello from client {i}".encode()
        client = lab.connect(port, f"client {i}")
        clients.append(client)
        client.sendall(message)
        call = f"connect(); send({message.decode()!r}); recv()"
        if model == "iterative" and i > 1:
            lab.step(f"client {i}", call, "(waiting)",
                     until=functools.partial(_queued_unread, lab, i=i, size=len(message)),
                     what=f"client {i}'s request to wait in the accept queue",
                     note=f"The server is busy with client 1: client {i}'s connection and "
                          f"its {len(message)} bytes wait in the accept queue, unread.")
            continue
        reply = _recv_exactly(lab, client, len(message))
        if server is not None:
            pid, peer_port = lab.expect_message(server, "worker")
            lab.processes.append({"pid": int(pid), "name": "echo-worker",
                                  "role": f"server {i}"})
            note = f"The server forked process {pid} for client {i}."
        else:
            note = "Served by a thread of the server process." if model == "thread" else ""
        lab.step(f"client {i}", call, repr(reply),
                 expect={f"client {i}": S.ESTABLISHED, f"server {i}": S.ESTABLISHED},
                 note=note)
    if model == "iterative":
        rst_close(clients[0])
        reply = _recv_exactly(lab, clients[1], len(b"hello from client 2"))
        lab.step("client 1", "close() (an RST, so nothing lingers)",
                 f"client 2 gets {reply!r}",
                 expect={"client 1": None, "server 1": None, "server 2": S.ESTABLISHED},
                 note="Client 1 left, so the server accept()ed client 2 and answered the "
                      "request that had waited. Client 3 still waits: an iterative server "
                      "serves one client at a time (try --model thread or fork).")
    elif model == "thread":
        lab.notes.append("One process holds the listener and every connection: threads "
                         "share the descriptors.")
    else:
        lab.notes.append("The listener belongs to echo-server, each connection to its own "
                         "echo-worker: after fork() each side closed the descriptor it "
                         "does not need.")


def _queued_unread(lab: Lab, rows: list[Row], *, i: int, size: int) -> bool:
    sock = lab.row(rows, f"server {i}")
    return sock is not None and sock.inode == 0 and sock.recv_q == size


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("handshake", "SYN, SYN-ACK, ACK: connect(), accept() and the states between",
             _handshake, "handshake"),
    Scenario("teardown", "FIN, ACK, FIN, ACK: who ends in CLOSE_WAIT and TIME_WAIT",
             _teardown, "teardown"),
    Scenario("restart", "a restart over TIME_WAIT: EADDRINUSE, then SO_REUSEADDR",
             _time_wait, "reuseaddr"),
    Scenario("reuseport", "two listeners share a port; the kernel splits connections",
             _reuseport, "reuseport"),
    Scenario("half-close", "shutdown(SHUT_WR): the other side still replies",
             _half_close, "half-close"),
    Scenario("close-vs-shutdown", "a forked child holds the socket: close() vs shutdown()",
             _close_vs_shutdown, "close-vs-shutdown"),
    Scenario("backlog", "a full accept queue: SYNs dropped, ListenOverflows rising",
             _backlog, "backlog"),
    Scenario("zero-window", "the receiver stops reading: window 0, Send-Q grows",
             _zero_window, "window"),
    Scenario("echo", "the upper-case echo server: --model iterative, thread or fork",
             _echo, "handshake"),
)}


@contextlib.contextmanager
def run(name: str, *, ipv6: bool = False, on_step=None, model: str | None = None,
        timeout: float = STATE_TIMEOUT, capture=None) -> Iterator[Lab]:
    """Run a scenario; yields the Lab holding its sockets; everything is reset on exit."""
    scenario = SCENARIOS[name]
    with Lab(name, title=scenario.summary, ipv6=ipv6, on_step=on_step,
             timeout=timeout, capture=capture) as lab:
        lab.topic = scenario.topic
        with failures_explained(lab):
            if name == "echo":
                scenario.run(lab, model or "iterative")
            else:
                scenario.run(lab)
        yield lab
