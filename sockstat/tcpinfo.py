"""TcpInfo: struct tcp_info as a socket carries it (`-i`, `check`, `watch`, the exporter).

A module of its own, imported only where tcp_info is read or judged: CPython creates a
dataclass by compiling its generated methods, ~7 ms for these 56 fields, which a plain
listing would otherwise pay at start-up. `sockstat.model.TcpInfo` names the same class.
"""

from __future__ import annotations

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once


@dataclass(slots=True, frozen=True)
class TcpInfo:
    """struct tcp_info (linux/tcp.h), named as there without `tcpi_`, in the units
    `ss -i` shows: times in milliseconds (`_ms`), sizes in bytes, rates in bytes per
    second. Fields with a None default arrived in later kernels: None means the running
    kernel does not send them (never zero)."""

    rtt_ms: float
    rttvar_ms: float
    snd_cwnd: int
    snd_mss: int
    rcv_mss: int
    retransmits: int  # consecutive retransmissions of the current segment
    total_retrans: int
    unacked: int
    lost: int
    last_data_sent_ms: int
    last_data_recv_ms: int
    last_ack_recv_ms: int
    snd_wnd: int | None = None  # peer's advertised window (kernel >= 5.4)
    rcv_wnd: int | None = None  # our advertised window (kernel >= 6.2)
    rcv_space: int = 0
    probes: int = 0  # unanswered zero-window / keepalive probes
    backoff: int = 0  # exponential backoff of the retransmission timer
    ca_state: int | None = None  # 0 open, 1 disorder, 2 CWR, 3 recovery, 4 loss
    rto_ms: float | None = None
    ato_ms: float | None = None
    sacked: int | None = None
    retrans: int | None = None  # segments retransmitted and not yet acknowledged
    pmtu: int | None = None
    rcv_ssthresh: int | None = None
    snd_ssthresh: int | None = None  # "ssthresh" in ss; huge while in slow start
    advmss: int | None = None
    reordering: int | None = None
    rcv_rtt_ms: float | None = None
    pacing_rate: int | None = None  # bytes/s; None also when unlimited (~0)
    max_pacing_rate: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None
    notsent_bytes: int | None = None  # written by the program, not yet sent
    min_rtt_ms: float | None = None
    data_segs_in: int | None = None
    data_segs_out: int | None = None
    delivery_rate: int | None = None  # bytes/s, of the latest delivered data
    delivery_rate_app_limited: bool | None = None
    busy_time_ms: float | None = None  # time with data to send (all limits included)
    rwnd_limited_ms: float | None = None  # ... of it, held back by the peer's window
    sndbuf_limited_ms: float | None = None  # ... of it, held back by the send buffer
    delivered: int | None = None
    delivered_ce: int | None = None
    bytes_sent: int | None = None
    bytes_retrans: int | None = None
    dsack_dups: int | None = None
    reord_seen: int | None = None
    rcv_ooopack: int | None = None
    rehash: int | None = None
    total_rto: int | None = None  # retransmission timeouts over the connection's life
    total_rto_recoveries: int | None = None
    total_rto_time_ms: int | None = None
    congestion: str | None = None  # congestion control algorithm (INET_DIAG_CONG)
