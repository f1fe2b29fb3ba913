"""The bench under every demo: real loopback sockets, watched through sockstat's collector.

A `Lab` makes listeners and connections on 127.0.0.1 (or ::1), remembers which role
each socket plays ("client", "server 2", "listener B"), runs helper processes and
threads, and records a timeline: after each call it polls the kernel (through
sockstat.collect, never a fixed sleep) until the states it expects appear, then notes
the state of every end. On exit it removes everything it made: sockets are closed with
SO_LINGER {on, 0}, which sends an RST and leaves no FIN_WAIT/TIME_WAIT behind (no root
needed), helper processes are stopped and reaped, and it waits until the kernel has
forgotten them. TIME_WAIT made on purpose cannot be removed without root; the clean-up
report counts it.

It does no printing: callers pass `on_step` to narrate while it runs, and `capture`
(see sockstat.demo.capture) to have its segments captured: the lab tells the capture
each port it listens on, before any connection is made to it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from sockstat.errors import SockstatError
from sockstat.model import STATE_ORDER, Socket, TcpState, Timer

if TYPE_CHECKING:
    from sockstat.collect.netlink import Pair  # (local, remote): an exact look-up's key

STATE_TIMEOUT = 5.0  # how long a demo waits for the kernel to show a state
CLEANUP_TIMEOUT = 3.0
# Polling for a state: most are there at the first look; the others mostly wait for a
# delayed ACK (40 ms on loopback). A look is a few exact look-ups (~0.2 ms, see
# Lab.exact_pairs), so polling often costs little and overshoots the state by < 10 ms.
POLL_FIRST = 0.001
POLL_MAX = 0.01
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
CLOSED = "CLOSED"  # what the lab calls an end the kernel no longer lists
NONE = "—"  # an end that does not exist yet

Addr = tuple[str, int]


class DemoError(SockstatError):
    """A demo could not make the kernel show what it promised (or could not run here)."""


def state_name(state: TcpState | None) -> str:
    """The name the lab shows: request sockets are SYN_RECV, absent/unconnected CLOSED."""
    if state is None or state in (TcpState.CLOSE, TcpState.BOUND_INACTIVE):
        return CLOSED
    return state.shown.name


@dataclass(frozen=True)
class Step:
    """One row of a timeline: who called what, what it returned, and then each end's state."""

    step: int
    who: str
    call: str
    result: str
    client_state: str
    server_state: str
    note: str = ""
    states: dict[str, str] = field(default_factory=dict)  # every role -> state

    def to_dict(self) -> dict:
        return {"step": self.step, "who": self.who, "call": self.call, "result": self.result,
                "client_state": self.client_state, "server_state": self.server_state,
                "note": self.note, "states": dict(self.states)}


class Row(NamedTuple):
    """A socket the kernel reports, with the role it plays in this demo."""

    role: str
    sock: Socket


@dataclass
class End:
    """One socket this lab made (or a helper process made and reported)."""

    role: str | None  # None: the server side of some client; named after that client
    local: Addr
    remote: Addr | None  # None for a listener
    sock: socket.socket | None = None  # None when another process holds it
    inode: int = 0
    peer_role: str | None = None  # clients: the role of this connection's server side


@dataclass
class Helper:
    """A child process running part of a demo (a forked server, a second listener)."""

    pid: int
    name: str
    channel: Channel
    role: str = ""


@dataclass
class Cleanup:
    """What `Lab.close` removed, and what the kernel still lists."""

    sockets_closed: int = 0
    processes_stopped: int = 0
    time_wait_left: int = 0
    leftovers: list[Row] = field(default_factory=list)  # should stay empty

    def to_dict(self) -> dict:
        return {"sockets_closed": self.sockets_closed,
                "processes_stopped": self.processes_stopped,
                "time_wait_left": self.time_wait_left,
                "leftovers": [{"role": r.role, "state": state_name(r.sock.state),
                               "local": str(r.sock.local), "remote": str(r.sock.remote)}
                              for r in self.leftovers]}


class Channel:
    """Line messages between the lab and a helper process, over a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, *words: object) -> None:
        self.sock.sendall((" ".join(str(w) for w in words) + "\n").encode())

    def recv(self, timeout: float | None = None) -> list[str] | None:
        """The next message as words; None when the other side is gone (EOF).
        Raises TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0)
            readable, _, _ = select.select([self.sock], [], [], wait)
            if not readable:
                raise TimeoutError("no message from the helper process")
            try:
                data = self.sock.recv(4096)
            except ConnectionError:
                data = b""
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().split()

    def close(self) -> None:
        self.sock.close()


def rst_close(sock: socket.socket) -> bool:
    """Close with SO_LINGER {on, 0}: an RST instead of a FIN, so nothing lingers in
    FIN_WAIT or TIME_WAIT. True if the socket was still open."""
    if sock.fileno() == -1:
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return True


def send_until_full(sock: socket.socket, chunk: int = 65536) -> int:
    """Send without blocking until the kernel takes no more (EAGAIN); bytes sent."""
    was_blocking = sock.getblocking()
    sock.setblocking(False)
    data = b"x" * chunk
    total = 0
    try:
        while True:
            total += sock.send(data)
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        sock.setblocking(was_blocking)
    return total


def _peer_role(role: str) -> str:
    """'client 3' -> 'server 3': the name of the other end of a client's connection."""
    words = role.split()
    if "client" in words:
        return " ".join("server" if w == "client" else w for w in words)
    return f"{role}'s peer"


class Observer(Protocol):
    """What the lab tells a packet capture (sockstat.demo.capture.Capture)."""

    def watch(self, port: int) -> None: ...
    def mark(self, phase: str) -> None: ...
    def start(self, sample: Callable[[], None]) -> object: ...
    def reading(self, began: float, ended: float, states: dict) -> None: ...


class Lab:
    """Sockets and helpers of one demo, their timeline, and their clean-up.

    Use as a context manager: leaving it (normally, on an error or on Ctrl-C) calls
    close(), which removes every socket and process the lab made.
    """

    def __init__(self, name: str, *, title: str = "", ipv6: bool = False,
                 on_step: Callable[[Step], None] | None = None,
                 timeout: float = STATE_TIMEOUT, capture: Observer | None = None) -> None:
        self.name = name
        self.title = title
        self.family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.host = LOOPBACK[self.family]
        self.on_step = on_step
        self.timeout = timeout
        self.topic: str | None = None  # what `sockstat explain` says more about
        self.target: TcpState | None = None  # the state a state demo promises
        self.highlight: set[TcpState] = set()  # states to mark in the final table
        self.highlight_roles: set[str] = set()  # or: role groups to mark ("server")
        self.timeline: list[Step] = []
        self.notes: list[str] = []  # what the run showed, in sentences
        self.facts: dict = {}  # measured numbers, for --json
        self.leaves_time_wait = False  # TIME_WAIT is the point of this demo
        self.processes: list[dict] = []  # helper processes: pid, name, role
        self.cleanup: Cleanup | None = None
        self.stopping = threading.Event()  # tells the lab's threads to finish
        self.ends: list[End] = []
        self.helpers: list[Helper] = []
        self.threads: list[threading.Thread] = []
        self.thread_errors: list[BaseException] = []
        self._owned: list[socket.socket] = []
        self._client_socks: set[int] = set()  # id() of client sockets: reset first
        self._order: dict[str, int] = {}  # role -> display order
        self._seen: dict[str, None] = {}  # roles the kernel has listed (ordered set)
        self._lock = threading.RLock()
        self.defer_accept = False  # a listener uses TCP_DEFER_ACCEPT (for the segments)
        self.capture = capture
        if capture is not None:
            import sockstat.collect  # noqa: F401  (imported now, not on the first segment)

            capture.start(self.read_states)

    # ---- context manager -------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- making sockets --------------------------------------------------------------

    def addr(self, port: int) -> str:
        """How an address is written in a call: 127.0.0.1:8080, [::1]:8080."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    def new_socket(self, *, rcvbuf: int | None = None, sndbuf: int | None = None,
                   reuseaddr: bool = False, reuseport: bool = False) -> socket.socket:
        """A TCP socket the lab will close at the end, options set as asked."""
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        with self._lock:
            self._owned.append(sock)
        if reuseaddr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        return sock

    def listen(self, role: str = "listener", *, port: int = 0, backlog: int = 8,
               defer_accept: int | None = None, **options) -> socket.socket:
        sock = self.new_socket(**options)
        if defer_accept is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
            self.defer_accept = True
        sock.bind((self.host, port))
        sock.listen(backlog)
        self.add_end(role, sock)
        return sock

    def connect(self, port: int, role: str = "client", *, blocking: bool = True,
                bind_port: int | None = None, syn_retries: int | None = None,
                **options) -> socket.socket:
        """A client connected (or connecting, blocking=False) to port on loopback."""
        sock = self.new_socket(**options)
        if syn_retries is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syn_retries)
        if bind_port is not None:
            sock.bind((self.host, bind_port))
        if blocking:
            sock.settimeout(self.timeout)
            sock.connect((self.host, port))
            sock.settimeout(None)
        else:
            sock.setblocking(False)
            err = sock.connect_ex((self.host, port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        with self._lock:
            self._client_socks.add(id(sock))
        self.add_end(role, sock, remote=(self.host, port), peer_role=_peer_role(role))
        return sock

    def accept(self, listener: socket.socket, role: str | None = None) -> socket.socket:
        """accept(); the new socket is named after its client ('server 2' for 'client 2')
        unless a role is given."""
        conn, peer = listener.accept()
        with self._lock:
            self._owned.append(conn)
        end = self.add_end(role, conn, remote=(peer[0], peer[1]))
        if role is None:  # name it now if its client is known (a server thread may be
            end.role = self._client_peer_role(end)  # faster than connect()'s bookkeeping)
        return conn

    def _client_peer_role(self, end: End) -> str | None:
        with self._lock:
            for client in self.ends:
                if client.peer_role and (client.remote, client.local) == (end.local,
                                                                           end.remote):
                    return client.peer_role
        return None

    def end(self, role: str) -> End | None:
        """The end playing `role` ('client', 'server 2', 'listener B')."""
        with self._lock:
            ends = list(self.ends)
        for end in ends:
            if (end.role or self._client_peer_role(end)) == role:
                return end
        return None

    def add_end(self, role: str | None, sock: socket.socket, *, remote: Addr | None = None,
                peer_role: str | None = None) -> End:
        """Remember a socket this process holds, under a role."""
        host, port = sock.getsockname()[:2]
        end = End(role=role, local=(host, port), remote=remote, sock=sock,
                  inode=os.fstat(sock.fileno()).st_ino, peer_role=peer_role)
        return self._add(end)

    def add_remote_end(self, role: str | None, local: Addr, remote: Addr | None,
                       inode: int = 0) -> End:
        """Remember a socket a helper process holds (it reported its addresses)."""
        return self._add(End(role=role, local=local, remote=remote, inode=inode))

    def _add(self, end: End) -> End:
        with self._lock:
            self.ends.append(end)
            base = 2 * len(self.ends)
            if end.role is not None:
                self._order.setdefault(end.role, base)
            if end.peer_role is not None:
                self._order.setdefault(end.peer_role, base + 1)
        if end.remote is None and self.capture is not None:
            self.capture.watch(end.local[1])  # before anyone connects to it
        return end

    @property
    def ports(self) -> list[int]:
        with self._lock:
            ports = {e.local[1] for e in self.ends}
            ports |= {e.remote[1] for e in self.ends if e.remote}
        return sorted(ports)

    # ---- looking at the kernel -------------------------------------------------------

    def _kernel_sockets(self, *, processes: bool = False,
                        tcp_info: bool = False) -> list[Socket]:
        from sockstat.collect import collect

        query = self.query()
        if query is None:
            return []
        began = time.time()
        sockets = collect(query, processes=processes, tcp_info=tcp_info).sockets
        if self.capture is not None:
            self.capture.reading(began, time.time(), {
                ((s.local.address, s.local.port), (s.remote.address, s.remote.port)):
                state_name(s.state) for s in sockets if s.state is not TcpState.LISTEN})
        return sockets

    def query(self):
        """What to ask the collector for this lab's sockets (None: it has none yet)."""
        return query_for([self])

    def exact_pairs(self) -> set[Pair] | None:
        """The (local, remote) addresses of every socket this lab can have: each end's,
        the server side of each client's connection (accepted or not, or a SYN_RECV
        request socket), each listener's with the wildcard remote. The kernel finds
        each by a hash look-up, where a dump of the lab's ports walks the whole table
        (on a busy host, ~30 ms each poll). None when a look-up could miss one: two
        listeners that may both be open on one address (SO_REUSEPORT), as a look-up
        finds only the one that would take a connection; or with a capture, whose
        readings, taken from its thread as segments pass, come before connect() has
        returned and the lab knows the new end (a dump of the ports sees it already)."""
        if self.capture is not None:
            return None
        from sockstat.collect.netlink import WILDCARD
        from sockstat.model import Family

        with self._lock:
            ends = list(self.ends)
        wildcard = (WILDCARD[Family.INET6 if self.family == socket.AF_INET6 else Family.INET],
                    0)
        pairs: set[Pair] = set()
        listening: set[Addr] = set()
        for end in ends:
            if end.remote is None:
                if end.sock is None or end.sock.fileno() != -1:  # may still listen
                    if end.local in listening:
                        return None
                    listening.add(end.local)
                pairs.add((end.local, wildcard))
                continue
            pairs.add((end.local, end.remote))
            if end.peer_role is not None:
                pairs.add((end.remote, end.local))
        return pairs

    def sockets(self, *, processes: bool = False, tcp_info: bool = False) -> list[Row]:
        """This lab's sockets as sockstat's collector sees them, each with its role."""
        return self.rows_from(self._kernel_sockets(processes=processes, tcp_info=tcp_info))

    def rows_from(self, sockets: Iterable[Socket]) -> list[Row]:
        """This lab's rows among `sockets` (others' sockets are left out)."""
        rows = self._identify(sockets)
        with self._lock:
            for row in rows:
                self._seen.setdefault(row.role)
        return rows

    def _identify(self, sockets: Iterable[Socket]) -> list[Row]:
        with self._lock:
            ends = list(self.ends)
            order = dict(self._order)
        clients = {(e.remote, e.local): e for e in ends if e.peer_role and e.remote}

        def role_of(end: End) -> str:
            if end.role is not None:
                return end.role
            # a server-side socket named after its client (found now: the client may
            # have been registered after the server thread accepted)
            client = clients.get((end.local, end.remote))
            return client.peer_role if client and client.peer_role else "server"

        by_inode = {e.inode: e for e in ends if e.inode}
        by_tuple = {(e.local, e.remote): e for e in ends if e.remote}
        listeners = {e.local: e for e in ends if e.remote is None}
        rows = []
        for sock in sockets:
            local = (sock.local.address, sock.local.port)
            remote = (sock.remote.address, sock.remote.port)
            end = by_inode.get(sock.inode) if sock.inode else None
            if end is not None:
                role = role_of(end)
            elif sock.state is TcpState.LISTEN:
                role = role_of(listeners[local]) if local in listeners else None
            elif (local, remote) in by_tuple:
                role = role_of(by_tuple[local, remote])
            elif (local, remote) in clients:
                # the server side of a connection nobody accepted (yet): queued, or a
                # SYN_RECV request socket
                role = clients[local, remote].peer_role
            else:
                role = None  # another program's socket on one of our port numbers
            if role is not None:
                rows.append(Row(role, sock))
        rows.sort(key=lambda r: (order.get(r.role, 10**6), r.role,
                                 STATE_ORDER.index(r.sock.state)))
        return rows

    def read_states(self) -> None:
        """A reading of the kernel for the capture (see Observer.reading)."""
        self._kernel_sockets()

    def role_at(self, local: Addr, remote: Addr) -> str | None:
        """The role of the end at `local` of the connection local-remote, or None."""
        with self._lock:
            ends = list(self.ends)
        for end in ends:
            if end.local == local and end.remote == remote:
                return end.role or self._client_peer_role(end)
        for end in ends:
            if end.peer_role and end.local == remote and end.remote == local:
                return end.peer_role  # the server side of a client's connection
        return None

    def states(self, rows: list[Row]) -> dict[str, str]:
        """Every role the lab knows -> its state now (CLOSED once the kernel forgot it)."""
        now: dict[str, str] = {}
        for row in rows:
            now.setdefault(row.role, state_name(row.sock.state))
        with self._lock:
            known = [r for r in sorted(self._seen, key=lambda r: self._order.get(r, 10**6))]
        return {role: now.get(role, CLOSED) for role in known}

    def row(self, rows: list[Row], role: str) -> Socket | None:
        for r in rows:
            if r.role == role:
                return r.sock
        return None

    def describe(self, states: dict[str, str], group: str) -> str:
        """The state of a group of ends ('client' = 'client', 'client 1', 'client 2' …)
        in one cell: 'ESTABLISHED', '#1 ESTABLISHED · #2 SYN_SENT', '3 ESTABLISHED · 3 …'."""
        members = [(role, state) for role, state in states.items()
                   if role.split()[0] == group]
        if not members:
            return NONE
        if len(members) == 1:
            return members[0][1]
        if len(members) <= 3:
            return " · ".join(f"#{role.split(maxsplit=1)[1] if ' ' in role else role} {state}"
                              for role, state in members)
        counts: dict[str, int] = {}
        for _, state in members:
            counts[state] = counts.get(state, 0) + 1
        rank = {s.name: i for i, s in enumerate(STATE_ORDER)}
        return " · ".join(f"{n} {state}" for state, n in
                          sorted(counts.items(), key=lambda kv: rank.get(kv[0], 99)))

    def wait_until(self, predicate: Callable[[list[Row]], object], what: str, *,
                   timeout: float | None = None, tcp_info: bool = False) -> list[Row]:
        """Poll the kernel until predicate(rows) holds; DemoError after the timeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = POLL_FIRST
        while True:
            rows = self.sockets(tcp_info=tcp_info)
            if predicate(rows):
                return rows
            if self.thread_errors:
                raise DemoError(f"{self.name}: a lab thread failed: {self.thread_errors[0]}")
            if time.monotonic() >= deadline:
                now = ", ".join(f"{role} {state}" for role, state in self.states(rows).items())
                raise DemoError(
                    f"{self.name}: {what} did not happen within {timeout:g} s "
                    f"(the kernel shows: {now or 'nothing'})",
                    hint="a kernel with other defaults may need another recipe")
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    def wait(self, expect: dict[str, TcpState | str | None | Iterable], what: str | None = None,
             **kwargs) -> list[Row]:
        """Wait until each role is in the state expected (None or 'CLOSED' = gone)."""
        wanted = {role: _state_set(want) for role, want in expect.items()}

        def reached(rows: list[Row]) -> bool:
            now = {}
            for row in rows:
                now.setdefault(row.role, state_name(row.sock.state))
            return all(now.get(role, CLOSED) in ok for role, ok in wanted.items())

        if what is None:
            what = " and ".join(f"{role} {' or '.join(sorted(ok))}"
                                for role, ok in wanted.items())
        return self.wait_until(reached, what, **kwargs)

    # ---- narrating -------------------------------------------------------------------

    def step(self, who: str, call: str, result: str = "", *,
             expect: dict | None = None,
             until: Callable[[list[Row]], object] | None = None, what: str | None = None,
             note: str | Callable[[list[Row]], str] = "", client: str | None = None,
             server: str | None = None, tcp_info: bool = False) -> Step:
        """Record one call: wait for the states it should produce, then note them all."""
        if expect:
            rows = self.wait(expect, what, tcp_info=tcp_info)
        elif until is not None:
            rows = self.wait_until(until, what or call, tcp_info=tcp_info)
        else:
            rows = self.sockets(tcp_info=tcp_info)
        states = self.states(rows)
        if callable(note):
            note = note(rows)
        server_cell = server
        if server_cell is None:
            server_cell = self.describe(states, "server")
            if server_cell == NONE:
                server_cell = self.describe(states, "listener")
        step = Step(step=len(self.timeline) + 1, who=who, call=call, result=result,
                    client_state=client or self.describe(states, "client"),
                    server_state=server_cell, note=note, states=states)
        self.timeline.append(step)
        if self.on_step is not None:
            self.on_step(step)
        return step

    # ---- helpers: threads and processes ----------------------------------------------

    def thread(self, name: str, body: Callable[[], None]) -> threading.Thread:
        """Run body in a daemon thread. It must return soon after `stopping` is set and
        must not block without a timeout (a blocked recv() would keep its socket alive
        past the clean-up's RST)."""
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # surfaced by wait_until in the main thread
                if not self.stopping.is_set():
                    self.thread_errors.append(exc)

        t = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(t)
        t.start()
        return t

    def spawn(self, name: str, body: Callable[[Channel], None], *,
              keep: Iterable[socket.socket] = (), role: str = "") -> Helper:
        """Run body(channel) in a forked child process called `name` (its comm).

        The child keeps only the sockets in `keep` (copies of every other lab socket
        would change what close() does), ignores Ctrl-C (the lab cleans up), dies with
        the lab (PR_SET_PDEATHSIG) and exits when the channel reaches EOF or body returns.
        """
        keep_ids = {id(s) for s in keep}
        parent_end, child_end = socket.socketpair()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                become_helper(name, parent)
                parent_end.close()
                for helper in self.helpers:
                    helper.channel.close()  # or their EOF would never come
                for sock in self._owned:
                    if id(sock) not in keep_ids:
                        sock.close()
                body(Channel(child_end))
                code = 0
            finally:
                os._exit(code)
        child_end.close()
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done in the child; whichever runs first
        helper = Helper(pid=pid, name=name, channel=Channel(parent_end), role=role)
        self.helpers.append(helper)
        self.processes.append({"pid": pid, "name": name, "role": role})
        return helper

    def expect_message(self, helper: Helper, word: str) -> list[str]:
        """The helper's next message, which must start with `word`."""
        try:
            msg = helper.channel.recv(timeout=self.timeout)
        except TimeoutError:
            msg = []
        if not msg or msg[0] != word:
            detail = " ".join(msg[1:]) if msg and msg[0] == "error" else \
                "it exited" if msg is None else "no answer"
            raise DemoError(f"{self.name}: helper process {helper.name} failed ({detail})")
        return msg[1:]

    # ---- clean-up --------------------------------------------------------------------

    def close(self) -> Cleanup:
        """Remove every socket and process of the lab; idempotent."""
        if self.cleanup is not None:
            return self.cleanup
        report = Cleanup()
        with _no_interrupts():
            if self.capture is not None:
                self.capture.mark("clean-up")
            self.stopping.set()
            for t in self.threads:
                t.join(timeout=2)
            with self._lock:
                owned = list(self._owned)
                clients = set(self._client_socks)
            # clients first: their RST also removes the server side's request sockets
            # and queued connections, which have no descriptor to close
            owned.sort(key=lambda s: 0 if id(s) in clients else 1)
            for sock in owned:
                if rst_close(sock):
                    report.sockets_closed += 1
            for helper in self.helpers:
                report.processes_stopped += stop_helper(helper)
            try:
                rows = self.wait_until(
                    lambda rows: all(r.sock.state is TcpState.TIME_WAIT for r in rows),
                    "clean-up", timeout=CLEANUP_TIMEOUT)
            except DemoError:
                rows = self.sockets()
            report.time_wait_left = sum(r.sock.state is TcpState.TIME_WAIT for r in rows)
            report.leftovers = [r for r in rows if r.sock.state is not TcpState.TIME_WAIT]
        self.cleanup = report
        return report


def _state_set(want) -> set[str]:
    if want is None or isinstance(want, (str, TcpState)):
        want = [want]
    return {w if isinstance(w, str) else state_name(w) for w in want}


@contextlib.contextmanager
def failures_explained(lab: Lab) -> Iterator[None]:
    """A socket call that fails while a demo is built becomes a DemoError naming the demo:
    one line for the user, not a traceback."""
    try:
        yield
    except OSError as exc:
        hint = None
        if ":" in lab.host and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            hint = "IPv6 loopback (::1) is not available here; try without -6"
        raise DemoError(f"{lab.name}: {exc.strerror or exc} while building the demo",
                        hint=hint) from exc


def timer_is_probe(sock: Socket | None) -> bool:
    """The zero-window probe ('persist') timer runs: unsent data, and a zero window."""
    return sock is not None and sock.timer is Timer.PROBE


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Clean-up must finish even if Ctrl-C is pressed again."""
    from sockstat.signals import ignored

    with ignored(signal.SIGINT, signal.SIGTERM):
        yield


def become_helper(name: str, parent: int) -> None:
    """Set up a freshly forked helper: own process group, Ctrl-C ignored (the lab cleans
    up), killed if the lab process dies, and named `name` in ps and sockstat."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, name.encode()[:15])  # PR_SET_NAME: what /proc/<pid>/comm shows
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the lab died before PDEATHSIG was set
        os._exit(0)


def stop_helper(helper: Helper, grace: float = 1.0) -> int:
    """EOF on its channel asks the helper to finish; SIGKILL its group if it does not.
    Returns 1 if a process was reaped."""
    with contextlib.suppress(OSError):
        helper.channel.close()
    deadline = time.monotonic() + grace
    delay = 0.002
    while True:
        try:
            pid, _ = os.waitpid(helper.pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid:
            return 1
        if time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    for kill in (lambda: os.killpg(helper.pid, signal.SIGKILL),
                 lambda: os.kill(helper.pid, signal.SIGKILL)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(helper.pid, 0)
    return 1


def rows_of_labs(labs: list[Lab], *, processes: bool = False) -> list[list[Row]]:
    """Every lab's rows from one look at the kernel (see query_for) and one owner scan,
    not one per lab."""
    from sockstat.collect import collect

    query = query_for(labs)
    if query is None:
        return [[] for _ in labs]
    sockets = collect(query, processes=processes).sockets
    return [lab.rows_from(sockets) for lab in labs]


def query_for(labs: list[Lab]):
    """The collector's query for these labs' sockets: their exact addresses (see
    Lab.exact_pairs), or a dump filtered to their ports when a look-up could miss one.
    None when they have no socket yet."""
    from sockstat.model import Family, Proto
    from sockstat.query import Query

    ports = sorted({port for lab in labs for port in lab.ports})
    if not ports:
        return None
    families = {lab.family for lab in labs}
    exact: set[Pair] = set()
    for lab in labs:
        pairs = lab.exact_pairs()
        if pairs is None:
            return Query.build(ports=ports, tcp=True, ipv4=families == {socket.AF_INET},
                               ipv6=families == {socket.AF_INET6})
        exact |= pairs
    return Query(protos=frozenset({Proto.TCP}), exact=frozenset(exact),
                 families=frozenset(Family.INET if f == socket.AF_INET else Family.INET6
                                    for f in families))
