"""Thresholds: every default limit of every detector, in one place.

`sockstat check` exposes flags for the main ones; library callers build a Thresholds
with `dataclasses.replace(Thresholds(), close_wait_warn=1)`. Percentages are 0-100.
"""

from __future__ import annotations

from dataclasses import fields

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.errors import UsageError
from sockstat.numbers import finite


@dataclass(frozen=True, slots=True)
class Thresholds:
    # CLOSE_WAIT, per process. Younger sockets are in-flight closes, not leaks: the app
    # has not had time to call close() yet. (Without tcp_info ages are unknown and every
    # CLOSE_WAIT socket counts.)
    close_wait_warn: int = 10
    close_wait_crit: int = 100
    close_wait_min_age: float = 10.0  # seconds
    # CLOSE_WAIT sockets as a share of the process's RLIMIT_NOFILE: critical, because
    # at 100% accept()/open() fail with EMFILE
    close_wait_fd_crit_percent: float = 50.0

    # TIME_WAIT count per destination (client side) or per listening service
    time_wait_warn: int = 5000
    # ports in use per (local ip, remote ip, remote port) as % of the usable range
    port_usage_warn: float = 50.0
    port_usage_crit: float = 80.0
    # TIME_WAIT total as % of net.ipv4.tcp_max_tw_buckets
    tw_buckets_warn: float = 50.0
    tw_buckets_crit: float = 90.0

    # accept queue length as % of the listen() backlog; a full queue is critical
    queue_warn: float = 80.0

    # half-open connections per listener, SYN_SENT per destination
    syn_recv_warn: int = 100
    syn_recv_crit: int = 1000
    syn_sent_warn: int = 20
    syn_sent_crit: int = 200

    # orphans as % of net.ipv4.tcp_max_orphans; FIN_WAIT2 per peer
    orphans_warn: float = 50.0
    orphans_crit: float = 80.0
    fin_wait2_warn: int = 100

    # a socket is stalled when data has not moved for this long (seconds)
    stall_min_age: float = 10.0
    stall_crit_age: float = 120.0
    # retransmissions of the same segment before "retransmitting" counts as a stall
    stall_retrans: int = 3
    # without tcp_info (no ages): unread bytes in Recv-Q that count as a stall
    stall_recv_bytes: int = 1 << 20

    # slow connections: judged only when busy (data to send) this % of the interval;
    # a limit counts when it held the sender back this % of its busy time
    slow_busy_percent: float = 50.0
    slow_limited_percent: float = 50.0
    # retransmitted share of the bytes sent that counts as loss (below: probes, noise)
    slow_retrans_percent: float = 1.0

    # packets a UDP socket or TCP listener dropped between two looks: a warning from
    # drops_warn on, critical from drops_crit_rate per second
    drops_warn: int = 1
    drops_crit_rate: float = 100.0

    def with_overrides(self, **given) -> Thresholds:
        """These thresholds with the given ones replaced (None = not given), validated.
        Raising a warn level above its crit level lifts that crit level along, unless
        crit was given too: `--close-wait-warn 50` alone must not be an error."""
        from dataclasses import replace

        overrides = {name: value for name, value in given.items() if value is not None}
        for warn, crit in PAIRS:
            if warn in overrides and crit not in overrides:
                overrides[crit] = max(overrides[warn], getattr(self, crit))
        return replace(self, **overrides).validate()

    def validate(self) -> Thresholds:
        """Raise UsageError for negative limits, warn above crit, or percent above 100."""
        for f in fields(self):
            value = finite(getattr(self, f.name), f"threshold {_flag(f.name)}")
            if value < 0:
                raise UsageError(f"threshold {_flag(f.name)} must not be negative "
                                 f"(got {value})")
            if (f.name.endswith("_percent") or f.name in _PERCENTS) and value > 100:
                raise UsageError(f"threshold {_flag(f.name)} is a percentage "
                                 f"(0-100, got {value})")
        for warn, crit in PAIRS:
            if getattr(self, warn) > getattr(self, crit):
                raise UsageError(f"{_flag(warn)} ({getattr(self, warn)}) is above "
                                 f"{_flag(crit)} ({getattr(self, crit)})")
        return self


_PERCENTS = {"port_usage_warn", "port_usage_crit", "tw_buckets_warn", "tw_buckets_crit",
             "queue_warn", "orphans_warn", "orphans_crit"}
# (warning level, critical level): a warning level may not exceed its critical level
PAIRS = (("close_wait_warn", "close_wait_crit"), ("port_usage_warn", "port_usage_crit"),
          ("tw_buckets_warn", "tw_buckets_crit"), ("syn_recv_warn", "syn_recv_crit"),
          ("syn_sent_warn", "syn_sent_crit"), ("orphans_warn", "orphans_crit"),
          ("stall_min_age", "stall_crit_age"))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
