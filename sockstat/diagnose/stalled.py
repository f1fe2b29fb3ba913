"""Stalled connections: data that does not move.

Two kinds, seen from either end of the same problem:
- send_stalled: bytes sit in our Send-Q because the peer advertises a zero window (its
  application stopped reading; the kernel sends window probes, the persist timer) or
  because nothing is acknowledged (retransmissions: the peer or the path is gone).
- recv_stalled: bytes sit in our Recv-Q and no new data has arrived for a while: our
  application stopped reading, and once the buffer fills the sender is blocked too.

Ages come from tcp_info (collect with tcp_info=True): for a zero window, time since
data was last sent (window probes carry no data); for retransmissions, time since the
last ACK; for Recv-Q, time since data last arrived. Without tcp_info, the persist
timer and the retransmit counter still show send stalls, and Recv-Q above
`stall_recv_bytes` stands in for a receive stall.
"""

from __future__ import annotations

from collections import defaultdict

from sockstat.diagnose.common import (
    human_seconds,
    kill_remedy,
    owner_evidence,
    plural,
    seconds,
    see,
    top,
)
from sockstat.diagnose.findings import Finding, Severity
from sockstat.diagnose.index import index
from sockstat.diagnose.services import PID_LIST_LIMIT, owners_label, service_key
from sockstat.diagnose.thresholds import Thresholds
from sockstat.kernelmodel import KernelChange
from sockstat.model import Proto, Snapshot, Socket, TcpState, Timer

KINDS = ("send_stalled", "recv_stalled")
COUNTERS = ("TcpExt.TCPToZeroWindowAdv", "TcpExt.TCPFromZeroWindowAdv",
            "TcpExt.TCPWinProbe", "TcpExt.TCPTimeouts", "Tcp.RetransSegs",
            "TcpExt.TCPRcvQDrop", "TcpExt.TCPZeroWindowDrop")

_SENDING = {TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT1,
            TcpState.CLOSING, TcpState.LAST_ACK}
_RECEIVING = {TcpState.ESTABLISHED, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2}

ZERO_WINDOW = "zero_window"
RETRANSMITTING = "retransmitting"

SEND_EXPLANATION = {
    ZERO_WINDOW: (
        "{owner} has data queued to send, but the peer advertises a zero receive window: "
        "the peer application stopped reading and its buffer is full. The kernel keeps "
        "the connection open and sends window probes (the persist timer) indefinitely; "
        "{owner}'s writes block or fail with EAGAIN."
    ),
    RETRANSMITTING: (
        "{owner} has data queued to send that the peer does not acknowledge: the kernel "
        "is retransmitting with exponential back-off. The peer is gone, unreachable, or a "
        "middlebox drops the traffic; after net.ipv4.tcp_retries2 (about 15 minutes by "
        "default) the connection is aborted."
    ),
}
SEND_REMEDY = {
    ZERO_WINDOW: (
        "Look at the reading side ({peers}): it is blocked, overloaded, or forgot to read "
        "(`sockstat check` there shows a recv_stalled finding). On this side, use write "
        "timeouts (SO_SNDTIMEO / application deadlines) and close connections whose peer "
        "does not read."
    ),
    RETRANSMITTING: (
        "Check the path and the peer ({peers}): is it up, is a firewall or NAT timing out "
        "the flow? Enable TCP keepalive or application heartbeats and set "
        "TCP_USER_TIMEOUT so dead peers are detected in seconds, not minutes."
    ),
}
RECV_EXPLANATION = (
    "{owner} has {bytes:,} bytes waiting unread in Recv-Q and no new data has arrived "
    "for {age}: the application stopped reading these connections (blocked, busy, or a "
    "lost event in its event loop). When the buffer is full the kernel advertises a zero "
    "window and the sender stalls too."
)
RECV_REMEDY = (
    "Find why {owner} does not read: a thread stuck on a lock or a slow call, an event "
    "loop that missed readiness, back-pressure from a downstream that is itself stuck. "
    "A stack dump of the process (py-spy, jstack, gdb) while it is stuck shows where."
)


def _zero_window(s: Socket) -> bool:
    info = s.tcp_info
    return s.timer is Timer.PROBE or (info is not None and info.snd_wnd == 0)


def _retransmitting(s: Socket, thresholds: Thresholds) -> bool:
    info = s.tcp_info
    count = max(s.retransmits, info.retransmits if info else 0)
    return s.timer is Timer.ON and count >= thresholds.stall_retrans


def _send_stall(s: Socket, thresholds: Thresholds) -> tuple[str, int | None] | None:
    """(reason, age in ms or None) when the socket's Send-Q is stuck."""
    if s.send_q <= 0:
        return None
    info = s.tcp_info
    if _zero_window(s):
        return ZERO_WINDOW, (info.last_data_sent_ms if info else None)
    if _retransmitting(s, thresholds):
        return RETRANSMITTING, (info.last_ack_recv_ms if info else None)
    return None


def detect(snapshot: Snapshot, kernel: KernelChange | None,
           thresholds: Thresholds) -> list[Finding]:
    min_ms = thresholds.stall_min_age * 1000
    services = snapshot.services  # a forking server's stalls are one finding
    sending: dict[tuple, list[tuple[Socket, int | None]]] = defaultdict(list)
    receiving: dict[tuple, list[tuple[Socket, int | None]]] = defaultdict(list)
    # a stall is data queued: only those sockets (in table order) are looked at
    for s in index(snapshot).queued:
        if s.proto is not Proto.TCP:
            continue
        if s.state in _SENDING:
            stall = _send_stall(s, thresholds)
            if stall is not None:
                reason, age = stall
                if age is None or age >= min_ms:
                    sending[(service_key(s, services), reason)].append((s, age))
        if s.state in _RECEIVING and s.recv_q > 0:
            info = s.tcp_info
            if info is not None:
                if info.last_data_recv_ms >= min_ms:
                    receiving[service_key(s, services)].append((s, info.last_data_recv_ms))
            elif s.recv_q >= thresholds.stall_recv_bytes:
                receiving[service_key(s, services)].append((s, None))
    findings = [_send_finding(reason, members, thresholds, snapshot)
                for (_, reason), members in sending.items()]
    findings += [_recv_finding(members, thresholds, snapshot)
                 for members in receiving.values()]
    return findings


def _pids(sockets: list[Socket]) -> dict:
    """The processes of a service's finding (one pid for a single process)."""
    pids = sorted({s.process.pid for s in sockets if s.process is not None})
    return {"pids": pids[:PID_LIST_LIMIT], "processes": len(pids)}


def _severity(ages: list[int], thresholds: Thresholds) -> Severity:
    if ages and max(ages) >= thresholds.stall_crit_age * 1000:
        return Severity.CRITICAL
    return Severity.WARNING


def _peers(sockets: list[Socket]) -> list[dict]:
    return top((str(s.remote) for s in sockets), 5)


def _send_finding(reason: str, members: list[tuple[Socket, int | None]],
                  thresholds: Thresholds, snapshot: Snapshot) -> Finding:
    sockets = [s for s, _ in members]
    ages = [a for _, a in members if a is not None]
    owner = owners_label(sockets, snapshot)
    peers = _peers(sockets)
    peer_text = ", ".join(p["value"] for p in peers)
    oldest = seconds(max(ages)) if ages else None
    stuck = sum(s.send_q for s in sockets)
    what = "zero window from the peer" if reason == ZERO_WINDOW else "retransmitting"
    summary = (f"{plural(len(sockets), 'connection')} of {owner} cannot send "
               f"({what}): {stuck:,} bytes stuck in Send-Q")
    if oldest is not None:
        summary += f", for {human_seconds(oldest)}"
    subject = f"{owner} -> {peers[0]['value']}" if len(peers) == 1 else \
        f"{owner} -> {len({s.remote for s in sockets})} peers"
    return Finding(
        kind="send_stalled", severity=_severity(ages, thresholds), subject=subject,
        summary=summary,
        evidence={
            **owner_evidence(sockets[0]), **_pids(sockets), "reason": reason,
            "sockets": len(sockets),
            "send_q_bytes": stuck, "oldest_stall_s": oldest,
            "zero_window": sum(1 for s in sockets if _zero_window(s)),
            "max_retransmits": max(max(s.retransmits, s.tcp_info.retransmits
                                       if s.tcp_info else 0) for s in sockets),
            "peers": peers,
        },
        explanation=SEND_EXPLANATION[reason].format(owner=owner) + see("window"),
        remedy=SEND_REMEDY[reason].format(peers=peer_text) + kill_remedy(sockets),
        sockets=tuple(sockets),
        weight=stuck,
    )


def _recv_finding(members: list[tuple[Socket, int | None]],
                  thresholds: Thresholds, snapshot: Snapshot) -> Finding:
    sockets = [s for s, _ in members]
    ages = [a for _, a in members if a is not None]
    owner = owners_label(sockets, snapshot)
    unread = sum(s.recv_q for s in sockets)
    oldest = seconds(max(ages)) if ages else None
    age_text = human_seconds(oldest) if oldest is not None else "an unknown time"
    zero = sum(1 for s in sockets if s.tcp_info is not None and s.tcp_info.rcv_wnd == 0)
    summary = (f"{owner} stopped reading {plural(len(sockets), 'connection')}: "
               f"{unread:,} bytes unread in Recv-Q")
    if oldest is not None:
        summary += f", nothing new for {human_seconds(oldest)}"
    return Finding(
        kind="recv_stalled", severity=_severity(ages, thresholds), subject=owner,
        summary=summary,
        evidence={
            **owner_evidence(sockets[0]), **_pids(sockets), "sockets": len(sockets),
            "recv_q_bytes": unread,
            "oldest_stall_s": oldest, "our_window_zero": zero,
            "local_ports": top((s.local.port for s in sockets), 5),
            "peers": _peers(sockets),
        },
        explanation=RECV_EXPLANATION.format(owner=owner, bytes=unread, age=age_text)
        + see("window"),
        remedy=RECV_REMEDY.format(owner=owner) + kill_remedy(sockets), sockets=tuple(sockets),
        weight=unread,
    )
