"""Cell formatting shared by the plain and rich renderers (one place per fact)."""

from __future__ import annotations

from sockstat.humanize import duration  # noqa: F401  (a cell format too)
from sockstat.model import UNNAMED, Socket, TcpState, Timer


def timer(sock: Socket) -> str:
    if sock.timer is Timer.OFF:
        return ""
    text = f"{sock.timer.label} {duration(sock.timer_ms)}"
    if sock.retransmits:
        text += f" ({sock.retransmits} retrans)"
    return text


def recv_q(sock: Socket) -> str:
    # On a LISTEN socket the kernel reports the accept queue: queued / backlog. Only
    # netlink (the sockets with a cookie) knows the backlog: /proc and psutil say 0.
    if sock.state is TcpState.LISTEN:
        backlog = "?" if sock.cookie is None and not sock.send_q else sock.send_q
        return f"{sock.recv_q}/{backlog}"
    return str(sock.recv_q)


def send_q(sock: Socket) -> str:
    return "" if sock.state is TcpState.LISTEN else str(sock.send_q)


def proto(sock: Socket) -> str:
    """tcp, udp, or a UNIX socket's type as ss names it (u_str, u_dgr, u_seq)."""
    return sock.unix.type.netid if sock.unix is not None else sock.proto.value


def local(sock: Socket) -> str:
    """127.0.0.1:8080; a UNIX socket's name and inode: '/run/php.sock 4711' (as ss)."""
    u = sock.unix
    return str(sock.local) if u is None else f"{u.display_name} {sock.inode}"


def peer(sock: Socket) -> str:
    """The remote end; for a UNIX socket the peer's name, inode and holder when known:
    '(unnamed) 4712 nginx/77', '*' when it has no peer."""
    u = sock.unix
    if u is None:
        return str(sock.remote)
    if not u.peer_inode:
        return "*"
    text = f"{u.peer_name or UNNAMED} {u.peer_inode}"
    if u.peer_process is not None:
        text += f" {u.peer_process.name}/{u.peer_process.pid}"
    return text


def process(sock: Socket) -> str:
    p = sock.process
    if p is None:
        return ""
    return f"{p.name}/{p.pid}" + (" (listener)" if p.via_listener else "")


_USER_NAMES: dict[int, str] = {}


def user(sock: Socket) -> str:
    """The process owner when known, else the socket's uid as a name (mini-sockets such
    as TIME_WAIT have no owner at all)."""
    p = sock.process
    if p is not None and p.user:
        return p.user
    if not sock.inode:
        return ""
    name = _USER_NAMES.get(sock.uid)
    if name is None:
        import pwd

        try:
            name = pwd.getpwuid(sock.uid).pw_name
        except KeyError:
            name = str(sock.uid)
        _USER_NAMES[sock.uid] = name
    return name


def thousands(n: int) -> str:
    return f"{n:,}"


INFO_COLUMNS = ("RTT", "Cwnd", "Unacked", "Retrans", "Last send", "Last recv", "Peer wnd")


def info_cells(sock: Socket) -> tuple[str, ...]:
    """tcp_info columns (`--info`): rtt/rttvar, congestion window, data in flight,
    retransmissions (current/total), time since the last data each way, peer window."""
    i = sock.tcp_info
    if i is None or sock.state is TcpState.LISTEN:  # a listener has no connection to time
        return ("",) * len(INFO_COLUMNS)
    return (
        f"{i.rtt_ms:.2f}/{i.rttvar_ms:.2f}ms",
        str(i.snd_cwnd),
        str(i.unacked),
        f"{i.retransmits}/{i.total_retrans}",
        duration(i.last_data_sent_ms),
        duration(i.last_data_recv_ms),
        "" if i.snd_wnd is None else str(i.snd_wnd),
    )


MEMORY_COLUMNS = ("Rmem/Rcvbuf", "Wmem/Sndbuf", "Fwd", "Wqueued", "Optmem", "Backlog",
                  "Drops")


def memory_cells(sock: Socket) -> tuple[str, ...]:
    """Socket memory columns (`--memory`, ss -m's skmem): bytes queued to read / the
    receive buffer, sent-not-freed / the send buffer, reserved, queued to send, options,
    backlog, and the packets dropped since the socket was made."""
    m = sock.memory
    if m is None:
        return ("",) * len(MEMORY_COLUMNS)
    return (
        f"{m.rmem_alloc}/{m.rcvbuf}", f"{m.wmem_alloc}/{m.sndbuf}", str(m.fwd_alloc),
        str(m.wmem_queued), str(m.optmem), "" if m.backlog is None else str(m.backlog),
        "" if m.drops is None else str(m.drops),
    )
