"""Slow connections: what limits each busy sender, from two tcp_info samples.

A sending connection is always held back by something. The kernel times three of the
reasons itself (tcp_info busy_time, rwnd_limited, sndbuf_limited, Linux 4.10+) and
counts the rest (retransmitted bytes, retransmission timeouts, the app-limited mark of
the last delivery-rate sample). Two samples `interval` apart turn those counters into
shares of that interval, and each busy connection gets one `limited_by`:

    receiver_window  the peer's window was full for most of the busy time
    send_buffer      the send buffer was (kernel's sndbuf_limited; or, on paths where
                     the kernel does not see it, the sender was busy all along, not
                     app-limited, with far less in flight than window and cwnd allow)
    network          retransmission timeouts, or busy with nothing acknowledged at all:
                     the path drops everything, or the peer left
    congestion       retransmissions (a share of the bytes sent), or cwnd-bound with the
                     RTT inflated over min_rtt
    application      the program had nothing more to send (app-limited, or mostly idle)

A connection that sent nothing in the interval is idle and never judged. `check` reports
the limits that are a problem (`slow_connection`, a warning); `sockstat why` shows every
busy connection. Needs Snapshot.previous (an earlier sample of the same sockets, with
tcp_info); without it there is nothing to compare and no finding. Pure: no I/O.
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import attrgetter, is_not

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.diagnose.common import owner_evidence, owner_label, see
from sockstat.diagnose.findings import Finding, Severity
from sockstat.diagnose.thresholds import Thresholds
from sockstat.kernelmodel import KernelChange
from sockstat.model import Proto, Snapshot, Socket, TcpState

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    # the 56-field dataclass costs ~22M instructions to create: only where tcp_info is
    # decoded (sockstat.collect.netlink), not for every diagnosis
    from sockstat.tcpinfo import TcpInfo

KIND = "slow_connection"
KINDS = (KIND,)
COUNTERS: tuple[str, ...] = ()
LIMITS = ("receiver_window", "send_buffer", "network", "congestion", "application")
SENDING_STATES = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
# the RTT is "inflated" when it is this many times the connection's minimum, and at
# least this many ms over it (below that, on loopback, it is the CPU scheduler)
RTT_INFLATION = 2.0
RTT_INFLATION_MIN_MS = 1.0
# in flight at this share of cwnd or more: the congestion window is the limit
CWND_BOUND = 0.8
_TCP_INFO = attrgetter("tcp_info")
_COOKIE = attrgetter("cookie")


@dataclass(frozen=True)
class Verdict:
    """What limited one connection over the interval, and the numbers behind it."""

    limited_by: str  # one of LIMITS
    problem: bool  # worth a finding in `check` (application limits and clean cwnd are not)
    evidence: dict  # JSON-ready numbers, limited_by first
    reason: str  # which explanation text: limited_by, or a variant (send_buffer_inferred)
    words: dict  # the numbers as the texts show them

    @property
    def explanation(self) -> str:
        from sockstat.explain import SLOW_EXPLANATION

        return SLOW_EXPLANATION[self.reason].format(**self.words)

    @property
    def remedy(self) -> str:
        from sockstat.explain import SLOW_REMEDY

        return SLOW_REMEDY[self.limited_by].format(**self.words)


def _delta(after, before) -> float | None:
    if after is None or before is None:
        return None
    return max(after - before, 0)


def _percent(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return round(min(100.0, 100.0 * part / whole), 1)


@dataclass(frozen=True)
class Interval:
    """What two tcp_info samples say about one connection over the time between."""

    before: TcpInfo
    after: TcpInfo
    seconds: float
    send_q: int
    busy: float | None  # ms with data to send (None: kernel before 4.10)
    acked: float | None  # bytes acknowledged
    sent: float | None  # bytes sent, retransmissions included
    rwnd_share: float | None  # % of the busy time held back by the peer's window
    sndbuf_share: float | None  # ... by the send buffer
    busy_share: float | None  # % of the interval with data to send
    retrans_bytes: float | None
    retrans_share: float | None  # % of the bytes sent that were retransmissions
    rtos: float | None  # retransmission timeouts
    in_flight: int  # bytes, the larger of the two moments
    allowed: int  # bytes the peer's window and cwnd let be in flight
    segment: int | None  # average data segment, bytes
    inflated: bool  # the RTT far over min_rtt: a queue on the path
    cwnd_bound: bool

    @classmethod
    def of(cls, before: TcpInfo, after: TcpInfo, seconds: float, send_q: int) -> Interval:
        busy = _delta(after.busy_time_ms, before.busy_time_ms)
        sent = _delta(after.bytes_sent, before.bytes_sent)
        data_segs = _delta(after.data_segs_out, before.data_segs_out)
        retrans_bytes = _delta(after.bytes_retrans, before.bytes_retrans)
        window = after.snd_wnd
        cwnd_bytes = after.snd_cwnd * after.snd_mss
        return cls(
            before=before, after=after, seconds=seconds, send_q=send_q, busy=busy,
            acked=_delta(after.bytes_acked, before.bytes_acked), sent=sent,
            rwnd_share=_percent(_delta(after.rwnd_limited_ms, before.rwnd_limited_ms), busy),
            sndbuf_share=_percent(_delta(after.sndbuf_limited_ms, before.sndbuf_limited_ms),
                                  busy),
            busy_share=_percent(busy, seconds * 1000),
            retrans_bytes=retrans_bytes,
            # a few tail-loss probes on a fast path are noise, not loss: a share counts
            retrans_share=_percent(retrans_bytes, sent or None) if retrans_bytes else None,
            rtos=_delta(after.total_rto, before.total_rto),
            # one sample can fall between an ACK and the next write: the larger moment
            in_flight=max(before.unacked, after.unacked) * after.snd_mss,
            allowed=min(cwnd_bytes, window) if window is not None else cwnd_bytes,
            segment=round(sent / data_segs) if sent and data_segs else None,
            # queueing on the path: the RTT well over its minimum, beyond scheduler noise
            inflated=bool(after.min_rtt_ms)
            and after.rtt_ms >= RTT_INFLATION * after.min_rtt_ms
            and after.rtt_ms - after.min_rtt_ms >= RTT_INFLATION_MIN_MS,
            # paced senders (BBR) keep in flight a little under cwnd, and shrink cwnd now
            # and then to probe the RTT: near it, at either moment, counts as bound
            cwnd_bound=any(s.unacked > 0 and s.unacked >= CWND_BOUND * s.snd_cwnd
                           for s in (before, after)),
        )

    @property
    def idle(self) -> bool:
        """Sent nothing and had nothing queued."""
        return _idle(self.busy, self.acked, self.send_q)


def _idle(busy: float | None, acked: float | None, send_q: int) -> bool:
    return not busy and not acked and not (busy is None and send_q)


def idle(before: TcpInfo, after: TcpInfo, send_q: int) -> bool:
    """What Interval.of(...).idle says, from the two fields it depends on: on a big host
    most connections are idle between two scrapes, and this is what screens them (two
    fields each, not the ~50 that judging a busy one reads)."""
    return _idle(_delta(after.busy_time_ms, before.busy_time_ms),
                 _delta(after.bytes_acked, before.bytes_acked), send_q)


def decide(m: Interval, thresholds: Thresholds) -> tuple[str, bool, str]:
    """(limited_by, a problem for `check`, which explanation) for a busy connection,
    the rules in the order docs/check.md lists them."""
    after, window = m.after, m.after.snd_wnd
    if m.rwnd_share is not None and m.rwnd_share >= thresholds.slow_limited_percent:
        return "receiver_window", True, "receiver_window"
    if m.rwnd_share is None and window is not None and (window == 0
                                                        or m.in_flight >= 0.8 * window):
        # before 4.10 there is no rwnd_limited clock: judge by the window itself
        return "receiver_window", True, "receiver_window_full"
    if m.sndbuf_share is not None and m.sndbuf_share >= thresholds.slow_limited_percent:
        return "send_buffer", True, "send_buffer"
    if m.rtos or after.retransmits >= thresholds.stall_retrans:
        return "network", True, "network"
    if m.busy_share is not None and m.busy_share < thresholds.slow_busy_percent:
        return "application", False, "application"
    if m.acked == 0:
        # data to send all along and not one byte acknowledged, with the peer's window
        # open: nothing gets through (a path or a device that drops it, a peer gone)
        return "network", True, "network_stuck"
    if m.segment is not None and m.segment >= after.snd_mss / 4 \
            and m.in_flight < m.allowed / 2:
        # busy most of the time, sending full segments (the program has data: it does
        # not dribble), yet far less in flight than the window and cwnd allow: writes
        # wait for room in the send buffer, whatever a few retransmissions did. The
        # kernel's sndbuf_limited clock counts whole jiffies, so on low-RTT paths, where
        # each wait lasts microseconds, it stays 0 (and the app-limited mark flickers).
        return "send_buffer", True, "send_buffer_inferred"
    if m.retrans_share is not None and m.retrans_share >= thresholds.slow_retrans_percent:
        return "congestion", True, "congestion"
    if m.cwnd_bound or m.inflated:
        # the congestion window, or a queue on the path, holds it back
        return "congestion", m.inflated, "congestion"
    if after.delivery_rate_app_limited:
        return "application", False, "application_limited"
    return "application", False, "application"


def classify(before: TcpInfo, after: TcpInfo, seconds: float, *, send_q: int = 0,
             thresholds: Thresholds | None = None, peer: str = "the peer") -> Verdict | None:
    """The limit of one connection between two samples `seconds` apart; None when it
    was idle (sent nothing and had nothing queued)."""
    m = Interval.of(before, after, seconds, send_q)
    if m.idle:
        return None
    limit, problem, reason = decide(m, thresholds or Thresholds())
    return Verdict(limited_by=limit, problem=problem, evidence=_evidence(m, limit),
                   reason=reason, words=_words(m, peer))


def _evidence(m: Interval, limit: str) -> dict:
    after = m.after
    return {
        "limited_by": limit,
        "interval_s": round(m.seconds, 3),
        "busy_ms": None if m.busy is None else round(m.busy, 1),
        "busy_percent": m.busy_share,
        "rwnd_limited_percent": m.rwnd_share,
        "sndbuf_limited_percent": m.sndbuf_share,
        "bytes_acked": None if m.acked is None else int(m.acked),
        "throughput_bytes_per_s": None if m.acked is None or not m.seconds
        else round(m.acked / m.seconds),
        "delivery_rate": after.delivery_rate,
        "app_limited": after.delivery_rate_app_limited,
        "snd_wnd": after.snd_wnd,
        "cwnd": after.snd_cwnd,
        "snd_ssthresh": after.snd_ssthresh,
        "in_flight_bytes": m.in_flight,
        "mss": after.snd_mss,
        "avg_segment_bytes": m.segment,
        "send_q_bytes": m.send_q,
        "notsent_bytes": after.notsent_bytes,
        "rtt_ms": round(after.rtt_ms, 3),
        "min_rtt_ms": None if after.min_rtt_ms is None else round(after.min_rtt_ms, 3),
        "bytes_retrans": None if m.retrans_bytes is None else int(m.retrans_bytes),
        "retrans_percent": m.retrans_share,
        "rtos": None if m.rtos is None else int(m.rtos),
        "retransmits": after.retransmits,
        "backoff": after.backoff,
        "congestion": after.congestion,
    }


def _words(m: Interval, peer: str) -> dict:
    """The numbers as the explanation texts show them."""
    after, window = m.after, m.after.snd_wnd
    return {
        "rwnd_share": m.rwnd_share, "sndbuf_share": m.sndbuf_share,
        "busy_share": m.busy_share, "peer": peer,
        "snd_wnd": "unknown" if window is None else f"{window:,}",
        "in_flight": f"{m.in_flight:,}", "allowed": f"{m.allowed:,}",
        "send_q": f"{m.send_q:,}", "cwnd": after.snd_cwnd, "ssthresh": after.snd_ssthresh,
        "rtt_ms": round(after.rtt_ms, 3),
        "min_rtt_ms": "unknown" if after.min_rtt_ms is None else round(after.min_rtt_ms, 3),
        "retrans_bytes": f"{int(m.retrans_bytes or 0):,}", "rtos": int(m.rtos or 0),
        "retransmits": after.retransmits, "backoff": after.backoff,
        "sent_bytes": f"{int(m.acked or 0):,}",
    }


def verdicts(snapshot: Snapshot, thresholds: Thresholds | None = None
             ) -> list[tuple[Socket, Verdict]]:
    """Every busy connection of the snapshot with its verdict (needs snapshot.previous)."""
    earlier = snapshot.previous
    if earlier is None:
        return []
    seconds = snapshot.taken_at - earlier.taken_at
    if seconds <= 0:
        return []
    # cookie -> earlier tcp_info, built in C (21k sockets a scrape at 30k)
    sampled = list(compress(earlier.sockets, map(is_not, map(_TCP_INFO, earlier.sockets),
                                                  repeat(None))))
    before = dict(zip(map(_COOKIE, sampled), map(_TCP_INFO, sampled), strict=True))
    before.pop(None, None)  # no cookie: nothing to match it by
    out = []
    tcp, sending, get = Proto.TCP, SENDING_STATES, before.get
    for sock in snapshot.sockets:  # every connection of a big table: kept lean
        info = sock.tcp_info
        if info is None or sock.state not in sending or sock.proto is not tcp:
            continue
        old = get(sock.cookie)
        if old is None:
            continue
        busy = info.busy_time_ms
        if busy is not None and busy == old.busy_time_ms \
                and info.bytes_acked == old.bytes_acked:
            continue  # idle() in short: its two counters known and unchanged
        if idle(old, info, sock.send_q):
            continue
        verdict = classify(old, info, seconds, send_q=sock.send_q,
                           thresholds=thresholds, peer=str(sock.remote))
        if verdict is not None:
            out.append((sock, verdict))
    return out


def detect(snapshot: Snapshot, kernel: KernelChange | None,
           thresholds: Thresholds) -> list[Finding]:
    findings = []
    for sock, verdict in verdicts(snapshot, thresholds):
        busy = verdict.evidence["busy_percent"]
        if not verdict.problem or (busy is not None and busy < thresholds.slow_busy_percent):
            continue
        owner = owner_label(sock)
        ev = verdict.evidence
        rate = ev["throughput_bytes_per_s"]
        summary = (f"{sock.local} -> {sock.remote} ({owner}) is limited by "
                   f"{verdict.limited_by.replace('_', ' ')}")
        if rate is not None:
            summary += f": {rate:,} bytes/s acknowledged"
        findings.append(Finding(
            kind=KIND, severity=Severity.WARNING, subject=f"{owner} -> {sock.remote}",
            summary=summary,
            evidence={**owner_evidence(sock), "local": str(sock.local),
                      "remote": str(sock.remote), **ev},
            explanation=verdict.explanation + see("slow"), remedy=verdict.remedy,
            sockets=(sock,), weight=busy or 0,
        ))
    return findings
