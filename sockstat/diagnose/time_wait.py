"""TIME_WAIT pile-ups and ephemeral port exhaustion.

The side that closes first keeps the connection in TIME_WAIT for 60 s (fixed in Linux,
TCP_TIMEWAIT_LEN). On a client each one holds its ephemeral port for that destination:
a client can have at most `usable ports` connections open-or-recently-closed to one
(local ip, remote ip, remote port), which caps its rate of new connections at
usable / 60 per second. On a server TIME_WAIT costs no ports (all share the listening
port), only a bucket: the host total is capped by net.ipv4.tcp_max_tw_buckets, beyond
which the kernel destroys them early (TCPTimeWaitOverflow).

Client side = the local port is in the ephemeral range and is not a listening port;
server side = the local port is a listening port (TIME_WAIT attributed to its service).

The close rate ("connections closed/s") is measured, not assumed: every TIME_WAIT
socket starts with a 60 s timer and the kernel reports what is left of it, so
60 s - remaining is how long ago that connection closed. The rate is the number that
closed within a recent window divided by the window. TIME_WAIT count / 60 would assume
a steady rate over a full minute: a burst, or tcp_tw_reuse taking ports over before
their 60 s are up, made it wrong by up to 100x. Sockets only ever leave TIME_WAIT early
(taken over by tcp_tw_reuse, killed by an RST, tcp_max_tw_buckets), never join it late,
so each window's count is a lower bound of the connections closed in it; the last 1 s
and the last 10 s are measured and the busier one is reported, with its window. The 1 s
window is exact even under tcp_tw_reuse (it takes over only ports in TIME_WAIT for more
than 1 s); the 10 s one is steadier and still sees a burst that ended moments ago.
"""

from __future__ import annotations

from collections import defaultdict

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.diagnose.common import (
    host_port,
    interval_s,
    is_loopback,
    myths,
    percent,
    plural,
    see,
    state_intro,
    top,
)
from sockstat.diagnose.findings import Finding, Scope, Severity
from sockstat.diagnose.index import index
from sockstat.diagnose.thresholds import Thresholds
from sockstat.kernelmodel import TIME_WAIT_SECONDS, KernelChange, Sysctls
from sockstat.model import Snapshot, Socket, TcpState, Timer

KINDS = ("time_wait_pileup", "ephemeral_ports", "time_wait_buckets")
# the windows the close rate is measured over (seconds); see the module docstring
RATE_WINDOWS_S = (10, 1)
COUNTERS = ("TcpExt.TCPTimeWaitOverflow", "TcpExt.TW", "TcpExt.TWRecycled",
            "TcpExt.TWKilled")

CLIENT_EXPLANATION = (
    "This host closes its connections to {dest} first, so each closed connection keeps "
    "its local port for that destination for {tw_s} s. One "
    "(local ip, remote ip, remote port) can use at most {usable:,} ephemeral ports "
    "(net.ipv4.ip_local_port_range minus ip_local_reserved_ports), so new connections "
    "to it are capped at about {max_rate:,.0f}/s; past that, connect() fails with "
    "EADDRNOTAVAIL ('Cannot assign requested address')."
)
CLIENT_REUSE_EXPLANATION = (
    "This host closes its connections to {dest} first, so each closed connection sits "
    "in TIME_WAIT on its local port for up to {tw_s} s. With tcp_tw_reuse={reuse} a new "
    "connection to {dest} may take over a TIME_WAIT port once it is more than 1 s old, "
    "so TIME_WAIT alone does not cap the rate of new connections; connect() fails with "
    "EADDRNOTAVAIL only when the {usable:,} usable ephemeral ports are held by "
    "connections that are not in TIME_WAIT ({blocking_pct}% now)."
)
CLIENT_REMEDY = (
    "Reuse connections instead of opening one per request: HTTP keep-alive, a "
    "connection pool in the client/driver. {reuse} Add source addresses (more local "
    "IPs, each gets its own range) or widen ip_local_port_range."
)
SERVER_EXPLANATION = (
    "{service} closes connections before its clients do, so the TIME_WAIT sockets sit "
    "on the server: {rate:,.1f} closed connections/s over the last {window:g} s. "
    "They use no ephemeral ports (all share port {port}) but each takes a TIME_WAIT "
    "bucket; when the host reaches net.ipv4.tcp_max_tw_buckets the kernel destroys new "
    "ones early (TCPTimeWaitOverflow)."
)
SERVER_REMEDY = (
    "Let clients close first (keep-alive with a client-side idle timeout), or keep "
    "connections open longer. tcp_tw_reuse does not apply (it only affects outgoing "
    "connections)."
)
BUCKETS_EXPLANATION = (
    "The host has {tw:,} TIME_WAIT sockets against a limit of {limit:,} "
    "(net.ipv4.tcp_max_tw_buckets). Past the limit the kernel skips TIME_WAIT and "
    "destroys the socket at once (counted as TCPTimeWaitOverflow), losing the protection "
    "against stray old segments that TIME_WAIT exists for."
)
BUCKETS_REMEDY = (
    "Find who closes so many connections (the time_wait findings above, or "
    "`sockstat summary -s time-wait`) and make them reuse connections; raise "
    "tcp_max_tw_buckets only if memory allows (each bucket is a few hundred bytes)."
)
PORTS_EXPLANATION = (
    "{used:,} distinct local ports of {usable:,} usable ephemeral ports are in use on "
    "{ip}. connect() can still reuse a port towards a different destination, but "
    "bind() before connect() (without IP_BIND_ADDRESS_NO_PORT) needs a port free on "
    "the whole address, and the kernel's search for a free port gets slower as the "
    "range fills."
)
PORTS_REMEDY = (
    "Reuse connections (keep-alive, pools); set IP_BIND_ADDRESS_NO_PORT when binding a "
    "source address before connect(); add source addresses or widen "
    "ip_local_port_range."
)


def _myths() -> str:
    # the two beliefs people act on first: both from sockstat.explain
    return myths("time-wait", "tcp_fin_timeout", "tcp_tw_recycle") + see("time-wait")


@dataclass(frozen=True)
class CloseRate:
    """How many connections entered TIME_WAIT within the last `window_s` seconds."""

    per_s: float
    closed: int
    window_s: float
    measured: bool  # False: no timers (psutil), count / 60 s, a lower bound

    def evidence(self) -> dict:
        return {"closed_per_s": round(self.per_s, 1), "rate_window_s": self.window_s,
                "closed_in_window": self.closed, "rate_measured": self.measured}

    def phrase(self) -> str:
        if self.measured:
            return f"~{self.per_s:,.1f} connections closed/s over the last {self.window_s:g} s"
        return (f"at least ~{self.per_s:,.1f} connections closed/s (no TIME_WAIT timers: "
                f"count / {TIME_WAIT_SECONDS} s)")


def close_rate(time_wait: list[Socket], windows_s=RATE_WINDOWS_S) -> CloseRate:
    """The rate at which connections entered TIME_WAIT, over the busiest of `windows_s`
    (the first wins a tie), from each socket's timer: 60 s minus what is left of it is
    how long ago it closed."""
    timed = [s for s in time_wait if s.timer is Timer.TIMEWAIT]
    if not timed:  # a source without timers: all that is left is count / 60 s
        return CloseRate(len(time_wait) / TIME_WAIT_SECONDS, len(time_wait),
                         TIME_WAIT_SECONDS, measured=False)
    best = None
    for window_s in windows_s:
        # remaining >= 60 s - window  <=>  entered TIME_WAIT at most `window_s` ago
        youngest_remaining_ms = (TIME_WAIT_SECONDS - window_s) * 1000
        closed = sum(1 for s in timed if s.timer_ms >= youngest_remaining_ms)
        rate = CloseRate(closed / window_s, closed, window_s, measured=True)
        if best is None or rate.per_s > best.per_s:
            best = rate
    return best


def _tw_reuse_applies(sysctls: Sysctls, remote_address: str) -> bool:
    # tcp_tw_reuse: 1 = for all outgoing connections, 2 = loopback only (default >= 4.19)
    reuse = sysctls.tcp_tw_reuse
    return reuse == 1 or (reuse == 2 and is_loopback(remote_address))


def detect(snapshot: Snapshot, kernel: KernelChange | None,
           thresholds: Thresholds) -> list[Finding]:
    sysctls = kernel.sysctls if kernel is not None else Sysctls()
    split = index(snapshot).sides(sysctls)
    listeners, clients, servers = split.listeners, split.clients, split.servers
    # each local address's destination groups, in table order: the per-address port
    # counts below walk the sockets of an address only where a finding can need them
    by_address: dict[str, list[tuple[str, list[Socket]]]] = defaultdict(list)
    for (local, remote, _), members in clients.items():
        by_address[local].append((remote, members))
    ports_in_use: dict[str, int] = {}

    def ports_of(ip: str) -> int:
        """Distinct local ports of the client sockets on `ip`."""
        if ip not in ports_in_use:
            ports_in_use[ip] = len({s.local.port for _, members in by_address[ip]
                                    for s in members})
        return ports_in_use[ip]

    findings = []
    recycled = _recycled_per_s(kernel)
    usable = sysctls.usable_ports
    # a group smaller than both thresholds cannot produce a finding: skip it cheaply
    least = thresholds.time_wait_warn
    if usable:
        least = min(least, int(usable * thresholds.port_usage_warn / 100))
    for (local_ip, remote_ip, remote_port), members in clients.items():
        if len(members) < least:
            continue
        got = _client_finding(local_ip, remote_ip, remote_port, members, sysctls,
                              lambda ip=local_ip: ports_of(ip), thresholds, recycled)
        if got:
            findings.append(got)
    for port, members in servers.items():
        got = _server_finding(port, members, listeners.get(port), thresholds)
        if got:
            findings.append(got)
    covered = {f.evidence.get("local_address") for f in findings}
    for ip, groups in by_address.items():
        if ip in covered:  # a destination finding already tells this address's story
            continue
        # an address with fewer client sockets than the warning share of the range
        # cannot have that many distinct ports in use: no walk over its sockets
        share = percent(sum(len(members) for _, members in groups), usable)
        if share is None or share < thresholds.port_usage_warn:
            continue
        got = _address_finding(ip, _blocking(groups, sysctls), sysctls, thresholds)
        if got:
            findings.append(got)
    buckets = _buckets_finding(kernel, thresholds)
    if buckets:
        findings.append(buckets)
    return findings


def _blocking(groups: list[tuple[str, list[Socket]]], sysctls: Sysctls) -> dict[int, Socket]:
    """Local port -> the first socket holding it that no new connection can take over
    (a TIME_WAIT one can, where tcp_tw_reuse applies), over one address's groups."""
    held: dict[int, Socket] = {}
    time_wait = TcpState.TIME_WAIT
    reusable: dict[str, bool] = {}
    for remote, members in groups:
        reuse = reusable.get(remote)
        if reuse is None:
            reuse = reusable[remote] = _tw_reuse_applies(sysctls, remote)
        for s in members:
            if s.state is time_wait and reuse:
                continue
            held.setdefault(s.local.port, s)
    return held


def _address_finding(ip: str, ports: dict[int, Socket], sysctls: Sysctls,
                     thresholds: Thresholds) -> Finding | None:
    usable = sysctls.usable_ports
    share = percent(len(ports), usable)
    if share is None or share < thresholds.port_usage_warn:
        return None
    return Finding(
        kind="ephemeral_ports", severity=Severity.WARNING, subject=ip,
        summary=f"{len(ports):,} of {usable:,} ephemeral ports ({share}%) in use on {ip}, "
                "across many destinations",
        evidence={"local_address": ip, "ports_in_use": len(ports), "usable_ports": usable,
                  "percent_used": share,
                  "destinations": len({s.remote for s in ports.values()})},
        explanation=PORTS_EXPLANATION.format(used=len(ports), usable=usable, ip=ip),
        remedy=PORTS_REMEDY + _myths(), sockets=tuple(ports.values()), weight=share,
    )


def _recycled_per_s(kernel: KernelChange | None) -> float | None:
    """TIME_WAIT ports tcp_tw_reuse took over per second, host-wide (TcpExt.TWRecycled
    between the two samples): closes the TIME_WAIT count can no longer show."""
    if kernel is None or not kernel.seconds:
        return None
    delta = kernel.delta("TcpExt.TWRecycled")
    return None if delta is None else round(delta / kernel.seconds, 1)


def _client_finding(local_ip: str, remote_ip: str, remote_port: int, members: list[Socket],
                    sysctls: Sysctls, local_ip_ports, thresholds: Thresholds,
                    recycled_per_s: float | None = None) -> Finding | None:
    """local_ip_ports: () -> how many distinct local ports the address uses (asked
    only when this is a finding)."""
    tw = [s for s in members if s.state is TcpState.TIME_WAIT]
    held = len(members) - len(tw)
    usable = sysctls.usable_ports
    reuse = _tw_reuse_applies(sysctls, remote_ip)
    # With tcp_tw_reuse a TIME_WAIT port older than 1 s can be taken by a new outgoing
    # connection, so only the non-TIME_WAIT ones really block the range.
    blocking = held if reuse else len(members)
    used_pct = percent(len(members), usable)
    blocking_pct = percent(blocking, usable)

    pct = blocking_pct if blocking_pct is not None else -1.0
    severity = None
    if pct >= thresholds.port_usage_crit:
        severity = Severity.CRITICAL
    elif pct >= thresholds.port_usage_warn or len(tw) >= thresholds.time_wait_warn:
        severity = Severity.WARNING
    if severity is None:
        return None

    dest = host_port(remote_ip, remote_port)
    subject = f"{local_ip} -> {dest}"
    rate = close_rate(tw)
    # with tcp_tw_reuse TIME_WAIT ports are taken over: there is no fixed cap to state
    max_rate = (usable / TIME_WAIT_SECONDS) if usable and not reuse else None
    owners = top((f"{s.process.name}/{s.process.pid}" for s in members
                  if s.process is not None), 5)
    evidence = {
        "local_address": local_ip, "remote_address": remote_ip, "remote_port": remote_port,
        "time_wait": len(tw), "open": held,
        "states": dict(sorted(_count_states(members).items())),
        "usable_ports": usable, "percent_used": used_pct,
        "tcp_tw_reuse": sysctls.tcp_tw_reuse, "tw_reuse_applies": reuse,
        "percent_blocking": blocking_pct,
        **rate.evidence(),
        "tw_recycled_per_s": recycled_per_s if reuse else None,
        "max_new_per_s": None if max_rate is None else round(max_rate, 1),
        "local_address_ports_in_use": local_ip_ports(),
        "processes": owners,
    }
    summary = f"{len(tw):,} in TIME_WAIT and {held:,} open from {local_ip} to {dest}"
    if used_pct is not None:
        summary += f": {used_pct}% of {usable:,} ephemeral ports"
        if reuse:
            summary += (f" (tcp_tw_reuse={sysctls.tcp_tw_reuse}: only {blocking_pct}% "
                        "block new connections)")
    summary += f"; {rate.phrase()}"
    if reuse and recycled_per_s:
        summary += (f", and tcp_tw_reuse took over ~{recycled_per_s:,.1f} TIME_WAIT "
                    "ports/s host-wide")
    if usable and reuse:
        explanation = state_intro(TcpState.TIME_WAIT) + CLIENT_REUSE_EXPLANATION.format(
            dest=dest, tw_s=TIME_WAIT_SECONDS, usable=usable, reuse=sysctls.tcp_tw_reuse,
            blocking_pct=blocking_pct)
    elif usable:
        explanation = state_intro(TcpState.TIME_WAIT) + CLIENT_EXPLANATION.format(
            dest=dest, tw_s=TIME_WAIT_SECONDS, usable=usable, max_rate=max_rate)
    else:
        explanation = (f"This host closes its connections to {dest} first, so each stays in "
                       f"TIME_WAIT for {TIME_WAIT_SECONDS} s holding its local port. (The "
                       "ephemeral port range is unknown: no kernel sample.)")
    if reuse:
        reuse_text = (f"tcp_tw_reuse={sysctls.tcp_tw_reuse} already lets new outgoing "
                      "connections take over TIME_WAIT ports (with TCP timestamps on).")
    else:
        reuse_text = ("net.ipv4.tcp_tw_reuse=1 lets new outgoing connections take over "
                      "TIME_WAIT ports safely (it needs TCP timestamps, and only helps the "
                      "connecting side).")
    return Finding(
        kind="time_wait_pileup", severity=severity, subject=subject, summary=summary,
        evidence=evidence, explanation=explanation,
        remedy=CLIENT_REMEDY.format(reuse=reuse_text) + _myths(), sockets=tuple(members),
        weight=blocking_pct if blocking_pct is not None else len(tw),
    )


def _server_finding(port: int, tw: list[Socket], listener: Socket | None,
                    thresholds: Thresholds) -> Finding | None:
    if len(tw) < thresholds.time_wait_warn:
        return None
    proc = listener.process if listener is not None else None
    if proc is None:
        proc = next((s.process for s in tw if s.process is not None), None)
    service = f"{proc.name}/{proc.pid} on port {port}" if proc else f"the service on port {port}"
    rate = close_rate(tw)
    evidence = {
        "local_port": port, "pid": proc.pid if proc else None,
        "process": proc.name if proc else None, "listening": listener is not None,
        "time_wait": len(tw), **rate.evidence(),
        "clients": top((s.remote.address for s in tw), 5),
    }
    return Finding(
        kind="time_wait_pileup", severity=Severity.WARNING,
        subject=f"{proc.name}/{proc.pid} :{port}" if proc else f":{port}",
        summary=f"{plural(len(tw), 'TIME_WAIT socket')} on server port {port} "
                f"({service}); {rate.phrase()}",
        evidence=evidence,
        explanation=state_intro(TcpState.TIME_WAIT) + SERVER_EXPLANATION.format(
            service=service, rate=rate.per_s, window=rate.window_s, port=port),
        remedy=SERVER_REMEDY + _myths(), sockets=tuple(tw), weight=len(tw),
    )


def _buckets_finding(kernel: KernelChange | None, thresholds: Thresholds) -> Finding | None:
    if kernel is None:
        return None
    limit = kernel.sysctls.tcp_max_tw_buckets
    tw = kernel.value("TCP.tw")  # the kernel's own count, whatever the query fetched
    overflow = kernel.delta("TcpExt.TCPTimeWaitOverflow")
    if tw is None:
        return None
    share = percent(tw, limit)
    pct = share if share is not None else -1.0
    severity = None
    # TCPTimeWaitOverflow rising: the limit is being hit right now
    if overflow or pct >= thresholds.tw_buckets_crit:
        severity = Severity.CRITICAL
    elif pct >= thresholds.tw_buckets_warn:
        severity = Severity.WARNING
    if severity is None:
        return None
    summary = f"{tw:,} TIME_WAIT sockets on the host"
    if share is not None:
        summary += f", {share}% of tcp_max_tw_buckets ({limit:,})"
    if overflow:
        summary += f"; {overflow:,} destroyed early in {kernel.seconds:.1f}s " \
                   "(TCPTimeWaitOverflow)"
    return Finding(
        kind="time_wait_buckets", severity=severity, subject="host", summary=summary,
        evidence={"time_wait": tw, "tcp_max_tw_buckets": limit, "percent_used": share,
                  "overflow_delta": overflow, "interval_s": interval_s(kernel)},
        explanation=BUCKETS_EXPLANATION.format(tw=tw, limit=limit or 0),
        remedy=BUCKETS_REMEDY + _myths(), scope=Scope.HOST, weight=share or 0,
    )


def _count_states(members: list[Socket]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for s in members:
        counts[s.state.label] += 1
    return counts
