"""Cell formatting shared by the plain and rich renderers (one place per fact)."""

from __future__ import annotations

from sockstat.humanize import (
    duration,  # noqa: F401  (a cell format too)
    printable,
)
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
    return str(sock.local) if u is None else f"{printable(u.display_name)} {sock.inode}"


def remote(sock: Socket) -> str:
    """The remote end; for a UNIX socket the peer's name, inode and holder when known:
    '(unnamed) 4712 nginx/77', '*' when it has no peer."""
    u = sock.unix
    if u is None:
        return str(sock.remote)
    if not u.peer_inode:
        return "*"
    text = f"{u.peer_name or UNNAMED} {u.peer_inode}"
    if sock.peer_process is not None:
        text += f" {sock.peer_process.name}/{sock.peer_process.pid}"
    return printable(text)


HOLDERS_SHOWN = 2  # pids named before "+N more"


def process(sock: Socket) -> str:
    """'nginx/812', 'nginx/812,813,+2' (four holders: fork shares sockets),
    'a/1,b/2' (holders of different names), 'nginx/812 (listener)' (no file of its own:
    named by the listener on its port)."""
    p = sock.process
    if p is None:
        return ""
    if sock.others:
        return holders(p, sock.others)
    name = p.name if p.name.isprintable() else printable(p.name)  # inline: 100k rows
    return f"{name}/{p.pid}" + (" (listener)" if p.via_listener else "")


def holders(primary, others) -> str:
    parts = [f"{primary.name}/{primary.pid}"]
    for ref in others[:HOLDERS_SHOWN - 1]:
        parts.append(str(ref.pid) if ref.name == primary.name else f"{ref.name}/{ref.pid}")
    rest = len(others) - (HOLDERS_SHOWN - 1)
    if rest > 0:
        parts.append(f"+{rest}")
    return printable(",".join(parts))


def peer(sock: Socket) -> str:
    """The process holding the other end of a local connection (`--peer`)."""
    p = sock.peer_process
    return "" if p is None else printable(f"{p.name}/{p.pid}")


_USER_NAMES: dict[int, str] = {}


def user(sock: Socket) -> str:
    """The process owner when known, else the socket's uid as a name (mini-sockets such
    as TIME_WAIT have no owner at all)."""
    p = sock.process
    if p is not None and p.user:
        return p.user if p.user.isprintable() else printable(p.user)
    if not sock.inode:
        return ""
    name = _USER_NAMES.get(sock.uid)
    if name is None:
        from sockstat.users import user_name

        name = _USER_NAMES[sock.uid] = user_name(sock.uid)
    return name


def thousands(n: int) -> str:
    return f"{n:,}"


INFO_COLUMNS = ("RTT", "Cwnd", "Unacked", "Retrans", "Last send", "Last recv", "Peer wnd",
                "Rate", "Limited", "CC")


def bit_rate(bytes_per_second: int | None) -> str:
    """A rate as `ss -i` shows it, in bits per second: 950Mbps, 12.5Kbps; empty when
    unknown or 0 (no sample yet: ss leaves it out too)."""
    if not bytes_per_second:
        return ""
    bits = bytes_per_second * 8
    for unit, scale in (("Gbps", 1e9), ("Mbps", 1e6), ("Kbps", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.3g}{unit}"
    return f"{bits}bps"


def limited(info) -> str:
    """What held the sender back most, as a share of its busy time: `rwnd 98%`."""
    busy = info.busy_time_ms
    if not busy:
        return ""
    shares = (("rwnd", info.rwnd_limited_ms), ("sndbuf", info.sndbuf_limited_ms))
    name, value = max(shares, key=lambda pair: pair[1] or 0)
    share = round(100 * (value or 0) / busy)
    return f"{name} {share}%" if share else ""


def info_cells(sock: Socket) -> tuple[str, ...]:
    """tcp_info columns (`--info`): rtt/rttvar, congestion window, data in flight,
    retransmissions (current/total), time since the last data each way, peer window,
    delivery rate, what limited the sender (share of busy time), congestion control."""
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
        bit_rate(i.delivery_rate),
        limited(i),
        i.congestion or "",
    )


def netns(sock: Socket) -> str:
    ns = sock.netns
    return "" if ns is None else ns.label


def container(sock: Socket) -> str:
    c = sock.container
    return "" if c is None else printable(c.name)


# optional columns: name -> cell
EXTRA_COLUMNS = {"Netns": netns, "Container": container, "Peer": peer}

# `--memory` (ss -m's skmem): bytes queued to read / the receive buffer, sent-not-freed /
# the send buffer, reserved, queued to send, options, backlog, and the packets dropped
# since the socket was made; a kernel that does not send a value leaves its cell empty
MEMORY_CELLS = {
    "Rmem/Rcvbuf": lambda m: f"{m.rmem_alloc}/{m.rcvbuf}",
    "Wmem/Sndbuf": lambda m: f"{m.wmem_alloc}/{m.sndbuf}",
    "Fwd": lambda m: m.fwd_alloc, "Wqueued": lambda m: m.wmem_queued,
    "Optmem": lambda m: m.optmem, "Backlog": lambda m: m.backlog, "Drops": lambda m: m.drops,
}
MEMORY_COLUMNS = tuple(MEMORY_CELLS)


def _memory_cell(pick):
    def cell(sock: Socket) -> str:
        m = sock.memory
        value = None if m is None else pick(m)
        return "" if value is None else str(value)
    return cell


EXTRA_COLUMNS.update({name: _memory_cell(pick) for name, pick in MEMORY_CELLS.items()})
