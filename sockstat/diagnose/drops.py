"""Packet drops: UDP sockets and TCP listeners that the kernel drops packets for.

Each socket counts what the kernel dropped for it (sk_drops, the `d` of ss -m's skmem):
for a UDP socket mostly datagrams that arrived while its receive buffer was full
(rmem_alloc reached rcvbuf) because the program reads too slowly; for a TCP listener
SYNs and handshakes dropped on overflow. The counter runs since the socket was made,
so what matters is how much it grew: between the drops baseline (Snapshot.drops_before:
the start of `check --interval`, the previous watch refresh or scrape) and now.

The host counters Udp.RcvbufErrors / Udp.InErrors rising while no socket in view
dropped anything is its own finding: the dropping socket is in another network
namespace, was short-lived, or is outside the check's filters.
"""

from __future__ import annotations

from sockstat.diagnose.common import interval_s, owner_evidence, owner_label
from sockstat.diagnose.findings import Finding, Scope, Severity
from sockstat.diagnose.index import index
from sockstat.diagnose.thresholds import Thresholds
from sockstat.humanize import size
from sockstat.kernelmodel import KernelChange, Sysctls
from sockstat.model import Proto, Snapshot, Socket, TcpState

KINDS = ("socket_drops", "udp_drops_host")
COUNTERS = ("Udp.RcvbufErrors", "Udp.InErrors")

# the receive buffer counts as full from this share of rcvbuf on (the kernel refuses a
# datagram that does not fit, so a buffer rarely reads exactly 100%)
FULL_SHARE = 0.8



def watched(sock: Socket) -> bool:
    """The sockets whose drops this detector judges: UDP, and TCP listeners."""
    return sock.proto is Proto.UDP or (sock.proto is Proto.TCP
                                        and sock.state is TcpState.LISTEN)


def detect(snapshot: Snapshot, kernel: KernelChange | None,
           thresholds: Thresholds) -> list[Finding]:
    sysctls = kernel.sysctls if kernel is not None else Sysctls()
    findings: list[Finding] = []
    base = snapshot.drops_before
    if base is not None:
        seconds = max(snapshot.taken_at - base.taken_at, 0.0)
        for sock in index(snapshot).with_memory:
            m = sock.memory
            if m is None or m.drops is None or not watched(sock):
                continue
            before = base.drops.get(sock.key)
            if before is None:  # not seen at the first look: its count starts elsewhere
                continue
            dropped = m.drops - before
            if dropped >= max(thresholds.drops_warn, 1):
                findings.append(_socket_finding(sock, dropped, seconds, sysctls, thresholds))
    udp_found = any(f.evidence.get("proto") == "udp" for f in findings)
    rcvbuf_errors = kernel.delta("Udp.RcvbufErrors") if kernel is not None else None
    in_errors = kernel.delta("Udp.InErrors") if kernel is not None else None
    if not udp_found and (rcvbuf_errors or 0) > 0:
        from sockstat import explain  # the texts, only for a finding (9M instructions)

        findings.append(Finding(
            kind="udp_drops_host", severity=Severity.WARNING, subject="host",
            summary=f"{rcvbuf_errors:,} UDP datagrams dropped on full receive buffers in "
                    f"{kernel.seconds:.1f}s (Udp RcvbufErrors), no socket in view dropped any",
            evidence={"udp_rcvbuf_errors_delta": rcvbuf_errors,
                      "udp_in_errors_delta": in_errors, "interval_s": interval_s(kernel),
                      "rmem_max": sysctls.rmem_max, "rmem_default": sysctls.rmem_default},
            explanation=explain.DROPS_HOST_EXPLANATION.format(
                rcvbuf=rcvbuf_errors, inerrors=in_errors or 0, seconds=kernel.seconds or 0.0),
            remedy=explain.DROPS_HOST_REMEDY, scope=Scope.HOST, weight=rcvbuf_errors,
        ))
    return findings


def _socket_finding(sock: Socket, dropped: int, seconds: float, sysctls: Sysctls,
                    thresholds: Thresholds) -> Finding:
    from sockstat import explain  # the texts, only for a finding

    m = sock.memory
    rate = dropped / seconds if seconds > 0 else None
    severity = Severity.CRITICAL if rate is not None and rate >= thresholds.drops_crit_rate \
        else Severity.WARNING
    owner = owner_label(sock)
    udp = sock.proto is Proto.UDP
    took = f" in {seconds:.1f} s" if seconds > 0 else ""
    if udp:
        full = m.rcvbuf and m.rmem_alloc >= FULL_SHARE * m.rcvbuf
        why = (f"its receive buffer ({size(m.rcvbuf)}) is full, the program reads too slowly"
               if full else f"its receive buffer ({size(m.rcvbuf)}) overflowed, the program "
                            "reads too slowly for the bursts")
        summary = (f"udp {sock.local} ({owner}) dropped {dropped:,} datagram"
                   f"{'s' if dropped != 1 else ''}{took}: {why}")
        explanation = explain.DROPS_UDP_EXPLANATION.format(
            drops=dropped, owner=owner, rcvbuf=size(m.rcvbuf), rmem=size(m.rmem_alloc))
        remedy = explain.DROPS_UDP_REMEDY.format(
            rmem_max=f" = {sysctls.rmem_max:,}" if sysctls.rmem_max else "",
            rmem_default=f" = {sysctls.rmem_default:,}" if sysctls.rmem_default else "")
    else:
        summary = (f"tcp listener {sock.local} ({owner}) dropped {dropped:,} packet"
                   f"{'s' if dropped != 1 else ''}{took}: SYNs or handshakes refused")
        explanation = explain.DROPS_TCP_EXPLANATION.format(drops=dropped)
        remedy = explain.DROPS_TCP_REMEDY.format(owner=owner)
    evidence = {
        "proto": sock.proto.value, "local_address": sock.local.address,
        "local_port": sock.local.port, **owner_evidence(sock),
        "drops": dropped, "drops_total": m.drops, "interval_s": round(seconds, 3),
        "rate_per_s": None if rate is None else round(rate, 1),
        "rcvbuf": m.rcvbuf, "rmem_alloc": m.rmem_alloc,
        "rmem_max": sysctls.rmem_max, "rmem_default": sysctls.rmem_default,
    }
    return Finding(
        kind="socket_drops", severity=severity,
        subject=f"{owner} {sock.proto.value} {sock.local}", summary=summary,
        evidence=evidence, explanation=explanation, remedy=remedy, sockets=(sock,),
        weight=dropped,
    )
