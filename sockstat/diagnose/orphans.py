"""Orphans and FIN_WAIT2.

An orphan is a TCP socket no process holds any more (closed, but the kernel still has
data to send or a FIN to finish); the host total, in /proc/net/sockstat, is capped by
net.ipv4.tcp_max_orphans, past which the kernel resets them ("too many orphaned
sockets"). FIN_WAIT2 means we sent our FIN, the peer acknowledged it, and the peer has
not closed its side: it is the mirror image of the peer's CLOSE_WAIT. Orphaned FIN_WAIT2
sockets (no owner, inode 0) are reaped after net.ipv4.tcp_fin_timeout; owned ones (the
application called shutdown() but not close()) wait for the peer indefinitely.
"""

from __future__ import annotations

from collections import defaultdict

from sockstat.diagnose.common import (
    host_port,
    interval_s,
    kill_remedy,
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
from sockstat.kernelmodel import KernelChange, Sysctls
from sockstat.model import Proto, Snapshot, Socket, TcpState

KINDS = ("orphans", "fin_wait2")
COUNTERS = ("TcpExt.TCPAbortOnMemory", "TcpExt.TCPAbortOnClose", "TcpExt.TCPAbortOnLinger")

ORPHANS_EXPLANATION = (
    "{orphans:,} TCP sockets are orphans: their process closed them but the kernel is "
    "still finishing the close (unsent data, FIN_WAIT1/FIN_WAIT2/CLOSING/LAST_ACK). The "
    "limit is net.ipv4.tcp_max_orphans = {limit:,}; past it the kernel resets orphans at "
    "once (\"too many orphaned sockets\" in dmesg, TCPAbortOnMemory)."
)
ORPHANS_REMEDY = (
    "Find the peers that stop reading or never close (FIN_WAIT1 with Send-Q, FIN_WAIT2 "
    "findings); lowering net.ipv4.tcp_fin_timeout frees orphaned FIN_WAIT2 sooner. "
    "Raise tcp_max_orphans only with the memory to back it (up to ~64 KiB each)."
)
FIN_WAIT2_EXPLANATION = (
    "{count:,} connections {where} wait for the peer to close its side: the mirror image "
    "of a CLOSE_WAIT leak in the peer application. {orphaned:,} are orphans (no process; "
    "dropped after net.ipv4.tcp_fin_timeout = {fin_timeout} s), {owned:,} are held by a "
    "process (shutdown() without close()) and wait with no time limit."
)
FIN_WAIT2_REMEDY = (
    "Look at the peer ({peer}): `sockstat check` there will show a CLOSE_WAIT leak if its "
    "application forgets close(). For owned sockets, close() them after a timeout "
    "instead of waiting for the peer; lowering net.ipv4.tcp_fin_timeout frees orphaned "
    "FIN_WAIT2 sooner."
)


def detect(snapshot: Snapshot, kernel: KernelChange | None,
           thresholds: Thresholds) -> list[Finding]:
    findings = []
    got = _orphans_finding(kernel, thresholds)
    if got:
        findings.append(got)
    sysctls = kernel.sysctls if kernel is not None else Sysctls()
    found = index(snapshot)
    listen_ports = {s.local.port for s in found.state(TcpState.LISTEN)
                    if s.proto is Proto.TCP}
    # a FIN_WAIT2 whose other end is a CLOSE_WAIT on this host is that CLOSE_WAIT's
    # story (the close_wait detector tells both ends): not a second finding
    other_end = found.close_wait_ends()
    groups: dict[tuple, list[Socket]] = defaultdict(list)
    for s in found.state(TcpState.FIN_WAIT2):
        if s.proto is not Proto.TCP:
            continue
        peer = other_end.get(id(s))
        if peer is not None and peer.state is TcpState.CLOSE_WAIT:
            continue
        # server side: group by the service; client side: by the destination
        if s.local.port in listen_ports:
            groups[("service", s.local.address, s.local.port)].append(s)
        else:
            groups[("peer", s.remote.address, s.remote.port)].append(s)
    for (side, address, port), members in groups.items():
        if len(members) < thresholds.fin_wait2_warn:
            continue
        findings.append(_fin_wait2_finding(side, address, port, members, sysctls))
    return findings


def _orphans_finding(kernel: KernelChange | None, thresholds: Thresholds) -> Finding | None:
    if kernel is None:
        return None
    orphans = kernel.value("TCP.orphan")
    limit = kernel.sysctls.tcp_max_orphans
    share = percent(orphans, limit) if orphans is not None else None
    if share is None:
        return None
    if share >= thresholds.orphans_crit:
        severity = Severity.CRITICAL
    elif share >= thresholds.orphans_warn:
        severity = Severity.WARNING
    else:
        return None
    return Finding(
        kind="orphans", severity=severity, subject="host",
        summary=f"{orphans:,} orphaned TCP sockets, {share}% of tcp_max_orphans ({limit:,})",
        evidence={"orphans": orphans, "tcp_max_orphans": limit, "percent_used": share,
                  "TCPAbortOnMemory_delta": kernel.delta("TcpExt.TCPAbortOnMemory"),
                  "interval_s": interval_s(kernel)},
        explanation=ORPHANS_EXPLANATION.format(orphans=orphans, limit=limit),
        remedy=ORPHANS_REMEDY + myths("fin-wait2", "tcp_fin_timeout"), scope=Scope.HOST,
        weight=share,
    )


def _fin_wait2_finding(side: str, address: str, port: int, members: list[Socket],
                       sysctls: Sysctls) -> Finding:
    # An orphan has no inode: no file (and so no process) refers to it any more
    orphaned = sum(1 for s in members if s.inode == 0)
    owned = len(members) - orphaned
    endpoint = host_port(address, port)
    if side == "service":
        where = f"on service port {endpoint}"
        peer = ", ".join(p["value"] for p in top((s.remote.address for s in members), 3))
    else:
        where = f"to {endpoint}"
        peer = endpoint
    owners = top((f"{s.process.name}/{s.process.pid}" for s in members
                  if s.process is not None), 5)
    return Finding(
        kind="fin_wait2", severity=Severity.WARNING, subject=endpoint,
        summary=f"{plural(len(members), 'FIN_WAIT2 socket')} {where}: {orphaned:,} "
                f"orphaned, {owned:,} held by a process",
        evidence={"side": side, "address": address, "port": port,
                  "fin_wait2": len(members), "orphaned": orphaned, "owned": owned,
                  "tcp_fin_timeout": sysctls.tcp_fin_timeout, "processes": owners,
                  "peers": top((s.remote.address for s in members), 5)},
        explanation=state_intro(TcpState.FIN_WAIT2) + FIN_WAIT2_EXPLANATION.format(
            count=len(members), where=where, orphaned=orphaned, owned=owned,
            fin_timeout=sysctls.tcp_fin_timeout) + see("fin-wait2"),
        remedy=FIN_WAIT2_REMEDY.format(peer=peer) + myths("fin-wait2", "tcp_fin_timeout")
        + kill_remedy(members),
        sockets=tuple(members),
        weight=len(members),
    )
