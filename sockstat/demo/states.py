"""One recipe per observable TCP state: real loopback sockets held in that state.

Each state has a context manager that builds the sockets, waits until the kernel reports
the state (polling, see lab.Lab.wait) and yields the Lab: its ends, ports and the
timeline of calls that led there. Leaving the block resets everything (RST: no root
needed, nothing lingers), except TIME_WAIT, which is the point of its demo.

    with states.fin_wait1() as lab:
        print(lab.ports, [step.call for step in lab.timeline])

The recipes, proven on Linux 6.x (nothing needs root):
  SYN_SENT     listen(0), one connection left unaccepted fills the accept queue, so the
               next SYN is dropped
  SYN_RECV     TCP_DEFER_ACCEPT: the server ignores the client's bare final ACK
  FIN_WAIT1    the receiver has a tiny buffer and never reads; the FIN waits behind data
  FIN_WAIT2 /  shutdown(SHUT_WR) (FIN_WAIT2, held by the process) or close() (CLOSE_WAIT,
  CLOSE_WAIT   the peer becomes an orphan); the other side never closes
  LAST_ACK     FIN_WAIT1's recipe on the passive side, after the client's FIN
  CLOSING      both sides fill each other's buffers and shut down; one reads to EOF
  TIME_WAIT    the server closes first
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sockstat.demo.lab import (
    STATE_TIMEOUT,
    DemoError,
    Lab,
    failures_explained,
    send_until_full,
    timer_is_probe,
)
from sockstat.model import TcpState

SMALL_BUFFER = 4096  # the kernel doubles it and applies its minimum: a pipe of a few KiB
DEFER_SECONDS = 3600  # TCP_DEFER_ACCEPT: how long the SYN_RECV recipe can be held
SYN_RETRIES = 127  # TCP_SYNCNT's maximum: SYN_SENT is held for hours, not ~130 s

S = TcpState


@dataclass(frozen=True)
class Recipe:
    state: TcpState
    summary: str  # one line for `sockstat demo --list`
    run: Callable[[Lab], None]


# ---- building blocks -----------------------------------------------------------------

def open_pair(lab: Lab, *, listener_opts: dict | None = None, client_opts: dict | None = None,
              call_note: str = "") -> tuple[socket.socket, socket.socket, socket.socket]:
    """listener, then a client connected and accepted: (listener, client, server)."""
    listener_opts = listener_opts or {}
    client_opts = client_opts or {}
    listener = lab.listen(**listener_opts)
    port = listener.getsockname()[1]
    lab.step("server", f"socket();{_opts_call(listener_opts)} bind({lab.addr(0)}); listen(8)",
             f"port {port}", expect={"listener": S.LISTEN})
    client = lab.connect(port, **client_opts)
    server = lab.accept(listener)
    lab.step("both", f"client:{_opts_call(client_opts)} connect(); server: accept()",
             "connected", expect={"client": S.ESTABLISHED, "server": S.ESTABLISHED},
             note=call_note)
    return listener, client, server


def _opts_call(opts: dict) -> str:
    names = {"rcvbuf": "SO_RCVBUF", "sndbuf": "SO_SNDBUF", "reuseaddr": "SO_REUSEADDR",
             "reuseport": "SO_REUSEPORT"}
    calls = [f" setsockopt({names[k]}, {v if not isinstance(v, bool) else 1});"
             for k, v in opts.items() if k in names and v]
    return "".join(calls)


def fill_until_stuck(lab: Lab, sock: socket.socket, role: str) -> int:
    """Send until the peer's window is zero and data waits in our Send-Q (the kernel's
    zero-window probe timer is running). Returns the bytes sent."""
    sent = 0

    def stuck(rows) -> bool:
        nonlocal sent
        sent += send_until_full(sock)
        return timer_is_probe(lab.row(rows, role))

    lab.wait_until(stuck, f"the {role}'s peer window to fall to zero")
    return sent + send_until_full(sock)


def read_to_eof(lab: Lab, sock: socket.socket) -> int:
    """recv() until it returns b'' (the peer's FIN); bytes read."""
    total = 0
    sock.settimeout(lab.timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return total
            total += len(data)
    except TimeoutError:
        raise DemoError(f"{lab.name}: the peer's FIN did not arrive within "
                        f"{lab.timeout:g} s") from None
    finally:
        sock.settimeout(None)


def fin_timeout() -> str:
    """This machine's net.ipv4.tcp_fin_timeout, for the narration."""
    from sockstat.collect.kernel import read_sysctls

    value = read_sysctls().tcp_fin_timeout
    return f"{value} s" if value is not None else "60 s by default"


# ---- the recipes ---------------------------------------------------------------------

def _listen(lab: Lab) -> None:
    listener = lab.listen(backlog=8)
    port = listener.getsockname()[1]
    lab.step("server", f"socket(); bind({lab.addr(0)}); listen(8)", f"port {port}",
             expect={"listener": S.LISTEN},
             note="On a LISTEN socket Recv-Q counts connections waiting for accept() (0) and "
                  "Send-Q shows the backlog (8).")


def _syn_sent(lab: Lab) -> None:
    listener = lab.listen(backlog=0)
    port = listener.getsockname()[1]
    lab.step("server", f"socket(); bind({lab.addr(0)}); listen(0)", f"port {port}",
             expect={"listener": S.LISTEN},
             note="Backlog 0: Linux lets backlog + 1 = 1 connection wait for accept().")
    lab.connect(port, "client 1")
    lab.step("client 1", "connect()", "0", expect={"client 1": S.ESTABLISHED,
                                                  "server 1": S.ESTABLISHED},
             note="Nobody calls accept(): this connection fills the accept queue "
                  "(listener Recv-Q 1, backlog 0).")
    lab.connect(port, "client 2", blocking=False, syn_retries=SYN_RETRIES)
    lab.step("client 2", f"setsockopt(TCP_SYNCNT, {SYN_RETRIES}); connect() without "
                         "blocking", "EINPROGRESS",
             expect={"client 2": S.SYN_SENT},
             note="The queue is full, so the listener drops client 2's SYN without a word. "
                  "The client sends it again every second or so, then less and less often. "
                  "By default it gives up after about 130 s; TCP_SYNCNT lets this demo keep "
                  "trying for hours.")


def _syn_recv(lab: Lab) -> None:
    listener = lab.listen(defer_accept=DEFER_SECONDS)
    port = listener.getsockname()[1]
    lab.step("server", f"socket(); setsockopt(TCP_DEFER_ACCEPT, {DEFER_SECONDS}); "
                       f"bind({lab.addr(0)}); listen(8)", f"port {port}",
             expect={"listener": S.LISTEN})
    lab.connect(port)
    lab.step("client", "connect(), then send nothing", "0",
             expect={"client": S.ESTABLISHED, "server": S.SYN_RECV},
             note="connect() returned as soon as the SYN-ACK came: the client is "
                  "ESTABLISHED. Its final ACK carried no data and TCP_DEFER_ACCEPT makes "
                  "the server ignore it, so the server side is still a request socket (no "
                  "descriptor, no process), waiting up to an hour here for data.")


def _established(lab: Lab) -> None:
    listener = lab.listen()
    port = listener.getsockname()[1]
    lab.step("server", f"socket(); bind({lab.addr(0)}); listen(8)", f"port {port}",
             expect={"listener": S.LISTEN})
    lab.connect(port)
    lab.step("client", f"socket(); connect({lab.addr(port)})", "0",
             expect={"client": S.ESTABLISHED, "server": S.ESTABLISHED},
             note="The two kernels did the handshake during connect(). The server side "
                  "already exists, ESTABLISHED, waiting in the accept queue.")
    lab.accept(listener)
    lab.step("server", "accept()", "a new socket for this client",
             expect={"server": S.ESTABLISHED},
             note="accept() only took the finished connection off the queue.")


def _fin_wait1(lab: Lab) -> None:
    _, client, _ = open_pair(lab, listener_opts={"rcvbuf": SMALL_BUFFER},
                             client_opts={"sndbuf": SMALL_BUFFER},
                             call_note="The server's receive buffer is tiny and it never "
                                       "calls recv().")
    sent = fill_until_stuck(lab, client, "client")
    lab.step("client", "send() until EAGAIN", f"{sent:,} bytes",
             note="The server's buffer is full and its window is 0; the rest waits in the "
                  "client's Send-Q.")
    client.shutdown(socket.SHUT_WR)
    lab.step("client", "shutdown(SHUT_WR)", "0",
             expect={"client": S.FIN_WAIT1, "server": S.ESTABLISHED},
             note="The FIN is queued behind the unsent data and cannot leave while the "
                  "window is 0: it is never acknowledged.")


def _fin_wait2(lab: Lab) -> None:
    _, client, _ = open_pair(lab)
    client.shutdown(socket.SHUT_WR)
    lab.step("client", "shutdown(SHUT_WR)", "0",
             expect={"client": S.FIN_WAIT2, "server": S.CLOSE_WAIT},
             note="The server's kernel acknowledged the FIN; the server program never "
                  "closes. The client still holds its socket, so no timer runs: FIN_WAIT2 "
                  "lasts until the server closes. (After close() it would be an orphan, "
                  f"gone after tcp_fin_timeout = {fin_timeout()}.)")


def _close_wait(lab: Lab) -> None:
    _, client, server = open_pair(lab)
    client.close()
    lab.step("client", "close()", "0", expect={"client": S.FIN_WAIT2,
                                               "server": S.CLOSE_WAIT},
             note="No process holds the client's socket any more (an orphan): it waits "
                  f"tcp_fin_timeout = {fin_timeout()} for the server's FIN, then goes.")
    data = server.recv(1)
    lab.step("server", "recv()", repr(data) + " (end of file)",
             expect={"server": S.CLOSE_WAIT},
             note="The server program now knows the client is gone, and never calls "
                  "close(): CLOSE_WAIT stays until it does, or until the process exits.")


def _closing(lab: Lab) -> None:
    _, client, server = open_pair(
        lab, listener_opts={"rcvbuf": SMALL_BUFFER},
        client_opts={"rcvbuf": SMALL_BUFFER, "sndbuf": SMALL_BUFFER})
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    client_sent = fill_until_stuck(lab, client, "client")
    server_sent = fill_until_stuck(lab, server, "server")
    lab.step("both", "send() until EAGAIN; nobody reads",
             f"{client_sent:,} B and {server_sent:,} B",
             note="Both windows are 0: each side has data waiting in its Send-Q.")
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    lab.step("both", "shutdown(SHUT_WR)", "0",
             expect={"client": S.FIN_WAIT1, "server": S.FIN_WAIT1},
             note="Each FIN waits behind data the other side does not read.")
    received = read_to_eof(lab, server)
    lab.step("server", "recv() until b''", f"{received:,} bytes, then b''",
             expect={"server": S.CLOSING, "client": S.FIN_WAIT2},
             note="Reading opened the server's window: the client's data and FIN arrived "
                  "and were acknowledged (client: FIN_WAIT2). The server has the client's "
                  "FIN while its own FIN is still stuck behind data: CLOSING.")


def _last_ack(lab: Lab) -> None:
    _, client, server = open_pair(lab, client_opts={"rcvbuf": SMALL_BUFFER},
                                  call_note="The client's receive buffer is tiny.")
    client.shutdown(socket.SHUT_WR)
    lab.step("client", "shutdown(SHUT_WR)", "0",
             expect={"client": S.FIN_WAIT2, "server": S.CLOSE_WAIT})
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sent = fill_until_stuck(lab, server, "server")
    lab.step("server", "send() until EAGAIN", f"{sent:,} bytes",
             note="The half-closed client could still read, but it does not: its window "
                  "is 0.")
    server.shutdown(socket.SHUT_WR)
    lab.step("server", "shutdown(SHUT_WR)", "0",
             expect={"server": S.LAST_ACK, "client": S.FIN_WAIT2},
             note="The server's FIN waits behind the data, so the last ACK never comes.")


def _time_wait(lab: Lab) -> None:
    _, client, server = open_pair(lab)
    server.close()
    lab.step("server", "close()", "0", expect={"server": S.FIN_WAIT2,
                                               "client": S.CLOSE_WAIT},
             note="The server closes first, as an HTTP server ending a response does: it "
                  "is the active closer.")
    data = client.recv(1)
    client.close()
    lab.step("client", "recv(); close()", f"{data!r}; 0",
             expect={"server": S.TIME_WAIT, "client": None},
             note="The server acknowledged the client's FIN and entered TIME_WAIT on its "
                  "own port for 60 s. The client, the passive closer, is gone: its "
                  "LAST_ACK lasted one round trip.")
    lab.leaves_time_wait = True


RECIPES: dict[TcpState, Recipe] = {r.state: r for r in (
    Recipe(S.LISTEN, "a server socket waiting for connections", _listen),
    Recipe(S.SYN_SENT, "a SYN nobody answers (the accept queue is full)", _syn_sent),
    Recipe(S.SYN_RECV, "the server waits for a final ACK (TCP_DEFER_ACCEPT)", _syn_recv),
    Recipe(S.ESTABLISHED, "a connection, both ends", _established),
    Recipe(S.FIN_WAIT1, "a FIN stuck behind data the peer does not read", _fin_wait1),
    Recipe(S.FIN_WAIT2, "half-closed: shutdown(SHUT_WR), the peer never closes", _fin_wait2),
    Recipe(S.CLOSE_WAIT, "the peer closed, this program never does (a leak)", _close_wait),
    Recipe(S.CLOSING, "a simultaneous close, FINs crossing", _closing),
    Recipe(S.LAST_ACK, "the passive closer's FIN is never acknowledged", _last_ack),
    Recipe(S.TIME_WAIT, "the server closed first; the port remembers it for 60 s",
           _time_wait),
)}


@contextlib.contextmanager
def produce(state: TcpState, *, ipv6: bool = False, on_step=None,
            timeout: float = STATE_TIMEOUT, capture=None) -> Iterator[Lab]:
    """Hold real sockets in `state` on loopback; everything is reset on exit. `capture`:
    see Lab."""
    from sockstat import explain

    state = state.shown
    recipe = RECIPES.get(state)
    if recipe is None:
        raise DemoError(f"no demo makes {state.name}: it is not a state a connection shows",
                        hint="try `sockstat explain " + explain.topic_name(state) + "`")
    topic = explain.topic_name(state)
    with Lab(topic, title=explain.text(state).title, ipv6=ipv6, on_step=on_step,
             timeout=timeout, capture=capture) as lab:
        lab.topic = topic
        lab.target = state
        lab.highlight = {state}
        with failures_explained(lab):
            recipe.run(lab)
        yield lab


def produce_all(*, ipv6: bool = False, timeout: float = STATE_TIMEOUT) -> \
        contextlib.AbstractContextManager[list[Lab]]:
    """Every state at once: one Lab per state, all held until the block ends."""

    @contextlib.contextmanager
    def all_labs() -> Iterator[list[Lab]]:
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(produce(state, ipv6=ipv6, timeout=timeout))
                   for state in RECIPES]

    return all_labs()


# One context manager per state: `with states.fin_wait1() as lab: ...`
listen = functools.partial(produce, S.LISTEN)
syn_sent = functools.partial(produce, S.SYN_SENT)
syn_recv = functools.partial(produce, S.SYN_RECV)
established = functools.partial(produce, S.ESTABLISHED)
fin_wait1 = functools.partial(produce, S.FIN_WAIT1)
fin_wait2 = functools.partial(produce, S.FIN_WAIT2)
close_wait = functools.partial(produce, S.CLOSE_WAIT)
closing = functools.partial(produce, S.CLOSING)
last_ack = functools.partial(produce, S.LAST_ACK)
time_wait = functools.partial(produce, S.TIME_WAIT)
