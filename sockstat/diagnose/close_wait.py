"""CLOSE_WAIT leaks: a process that never calls close() after its peer hung up.

CLOSE_WAIT has no kernel timer: such a socket lives (and holds an fd) until the process
closes it or exits. The only age the kernel keeps is tcp_info's `lastrcv` (time since
data last arrived), an upper bound on the time spent in CLOSE_WAIT; that needs a
collection with tcp_info=True. Without it every CLOSE_WAIT socket counts.

Judged twice: per process, and per service and port (sockstat.model.Service: a master
and its forked children of the same executable). A fork-per-connection server that
leaves one CLOSE_WAIT in each of 30 children is one finding, "socat (30 processes) on
127.0.0.1:8080: 30 CLOSE_WAIT", though no single process passes the threshold. Sockets
a service finding covers are not reported again per process.
"""

from __future__ import annotations

from collections import defaultdict

from sockstat.diagnose.common import (
    human_seconds,
    kill_remedy,
    owner_evidence,
    owner_key,
    owner_label,
    percent,
    plural,
    seconds,
    see,
    state_intro,
    top,
)
from sockstat.diagnose.findings import Finding, Severity
from sockstat.diagnose.index import index
from sockstat.diagnose.services import (
    ServiceGroup,
    container_suffix,
    service_evidence,
    service_groups,
)
from sockstat.diagnose.thresholds import Thresholds
from sockstat.kernelmodel import KernelChange
from sockstat.model import Proto, Snapshot, Socket, TcpState

KIND = "close_wait_leak"
KINDS = (KIND,)
COUNTERS: tuple[str, ...] = ()
FD_LIST_LIMIT = 20

EXPLANATION = (
    "{owner} holds these sockets, each with a file descriptor and its buffers, until it "
    "closes them or exits. Recv-Q >= 1 (the FIN counts as one byte) means even the "
    "end-of-file is unread: the socket is not being read at all; Recv-Q 0 means read() "
    "returned 0 but close() never followed."
)
REMEDY = (
    "Fix {owner} so that it closes every connection once the peer hangs up (read() "
    "returns 0 / EOF, or an error): look for a missing close() in an error path, or a "
    "connection pool that never checks idle connections. Peers involved: {peers}. "
    "Restarting the process frees them now; no sysctl shortens CLOSE_WAIT."
)


def age_ms(sock: Socket) -> int | None:
    """Time since data last arrived: the only age a CLOSE_WAIT socket has."""
    info = sock.tcp_info
    return None if info is None else info.last_data_recv_ms


def detect(snapshot: Snapshot, kernel: KernelChange | None,
           thresholds: Thresholds) -> list[Finding]:
    found = index(snapshot)
    close_wait = [s for s in found.state(TcpState.CLOSE_WAIT) if s.proto is Proto.TCP]
    min_age_ms = thresholds.close_wait_min_age * 1000

    def aged_of(members: list[Socket]) -> list[Socket]:
        return [s for s in members if (age_ms(s) is None or age_ms(s) >= min_age_ms)]

    # connections whose client end is on this host too: both ends are one story
    other_end = found.close_wait_ends()
    findings = []
    covered: set[int] = set()  # id() of sockets a service finding tells about
    for group in service_groups(snapshot, close_wait):
        aged = aged_of(group.sockets)
        if len(aged) >= thresholds.close_wait_warn and len(group.pids(aged)) > 1:
            findings.append(_finding(aged, len(group.sockets), kernel, thresholds, group,
                                    other_end=other_end))
            covered.update(id(s) for s in group.sockets)
    groups: dict[tuple, list[Socket]] = defaultdict(list)
    for sock in close_wait:
        if id(sock) not in covered:
            groups[owner_key(sock)].append(sock)
    for members in groups.values():
        aged = aged_of(members)
        if len(aged) < thresholds.close_wait_warn or not aged:
            continue
        findings.append(_finding(aged, len(members), kernel, thresholds, snapshot=snapshot,
                                other_end=other_end))
    return findings


def _finding(aged: list[Socket], total: int, kernel: KernelChange | None,
             thresholds: Thresholds, group: ServiceGroup | None = None,
             snapshot: Snapshot | None = None,
             other_end: dict[int, Socket] | None = None) -> Finding:
    first = aged[0]
    owner = group.label(aged) if group is not None else owner_label(first) + (
        container_suffix(first, snapshot) if snapshot is not None else "")
    count = len(aged)
    ages = [a for a in (age_ms(s) for s in aged) if a is not None]
    oldest = seconds(max(ages)) if ages else None
    fin_unread = sum(1 for s in aged if s.recv_q >= 1)
    limits = None
    # fd limits are per process: a service's busiest process is the one to run out
    busiest = first.process if group is None else group.busiest(aged)
    if kernel is not None and busiest is not None:
        limits = kernel.limits.get(busiest.pid)
    nofile = limits.nofile_soft if limits else None
    open_fds = limits.open_fds if limits else None
    # a limit is one process's: compare it with that process's own CLOSE_WAIT sockets,
    # not with the whole service's (30 children of one fork server are 30 limits)
    held = count if group is None else sum(1 for s in aged if s.process is busiest)
    fd_share = percent(held, nofile)
    fds = sorted(s.process.fd for s in aged if s.process is not None
                 and s.process.fd is not None and (group is None or s.process is busiest))

    severity = Severity.WARNING
    reasons = []
    if count >= thresholds.close_wait_crit:
        severity = Severity.CRITICAL
        reasons.append(f"at least {thresholds.close_wait_crit:,} sockets")
    if fd_share is not None and fd_share >= thresholds.close_wait_fd_crit_percent:
        severity = Severity.CRITICAL
        reasons.append(f"{fd_share}% of its fd limit")

    peers = top((str(s.remote.address) for s in aged), 5)
    evidence = {
        **owner_evidence(first),
        "close_wait": count,
        "close_wait_total": total,  # including ones younger than the minimum age
        "min_age_s": thresholds.close_wait_min_age if ages else None,
        "oldest_age_s": oldest,  # since data last arrived (tcp_info lastrcv)
        "ages_known": len(ages),
        "fin_unread": fin_unread,
        "recv_q_bytes": sum(max(s.recv_q - 1, 0) for s in aged),
        "fd_pid": busiest.pid if busiest is not None else None,  # whose limit and fds
        "fd_pid_close_wait": held,
        "nofile_soft_limit": nofile,
        "open_fds": open_fds,
        "fd_limit_percent": fd_share,
        "fds": fds[:FD_LIST_LIMIT],
        "fds_total": len(fds),
        "peers": peers,
        "local_ports": top((s.local.port for s in aged), 5),
    }
    # the client ends on this host: the same connections, seen from the other side
    local = [other_end[id(s)] for s in aged if other_end and id(s) in other_end]
    clients = top((f"{p.process.name}/{p.process.pid}" for p in local
                   if p.process is not None), 5)
    client_fin_wait2 = sum(1 for p in local if p.state is TcpState.FIN_WAIT2)
    evidence.update({"local_clients": len(local), "client_fin_wait2": client_fin_wait2,
                     "client_processes": clients})
    if group is not None:
        evidence.update(group.evidence(aged))
        summary = f"{owner}: {count:,} CLOSE_WAIT"
    else:
        evidence.update(service_evidence(first, snapshot))
        summary = f"{plural(count, 'socket')} in CLOSE_WAIT held by {owner}"
    if clients:  # one story: who leaks, from whom, and what the other side shows
        who = " and ".join(c["value"] for c in clients[:2])
        if len(clients) > 2:
            who += f" and {len(clients) - 2} more"
        same = (f"; the client side's {client_fin_wait2:,} FIN_WAIT2 are the same "
                "connections" if client_fin_wait2 else "")
        summary = f"{owner} never closes connections from {who} ({count:,} CLOSE_WAIT{same})"
    elif client_fin_wait2:
        summary += (f" (the {client_fin_wait2:,} FIN_WAIT2 client ends on this host are the "
                    "same connections)")
    if oldest is not None:
        summary += f", oldest idle {human_seconds(oldest)}"
    if fin_unread:
        summary += f"; {fin_unread:,} with the peer's FIN still unread"
    if fd_share is not None:
        summary += f"; {fd_share}% of its fd limit ({nofile:,})"
    peer_text = ", ".join(f"{p['value']} ({p['count']})" for p in peers) or "unknown"
    explanation = state_intro(TcpState.CLOSE_WAIT, how_long=True) \
        + EXPLANATION.format(owner=owner)
    if reasons:
        explanation += " Critical: " + " and ".join(reasons) + "."
    explanation += see("close-wait")
    return Finding(
        kind=KIND, severity=severity, subject=owner, summary=summary, evidence=evidence,
        explanation=explanation,
        remedy=REMEDY.format(owner=owner, peers=peer_text) + kill_remedy(aged),
        sockets=tuple(aged), weight=count,
    )
