"""Accept queue overflow: listeners whose application does not accept() fast enough.

On a LISTEN socket the kernel reports the accept queue in the queue columns: Recv-Q is
the number of connections waiting for accept(), Send-Q the backlog (what listen() asked
for, silently capped at net.core.somaxconn). The queue is full when it holds more than
the backlog; then new SYNs (and handshake-completing ACKs) are dropped and counted in
TcpExt ListenOverflows / ListenDrops, which are host-wide. Only the netlink source
reports the backlog of a listener (/proc/net/tcp shows 0 there).

UNIX stream and seqpacket listeners (php-fpm, gunicorn, databases behind a socket file)
have the same queue, reported the same way by unix_diag, and the same rule (full when it
holds more than the backlog). No counter records their overflows: a non-blocking
client's connect() fails with EAGAIN ("Resource temporarily unavailable" in nginx's
log), a blocking one waits.
"""

from __future__ import annotations

from sockstat.diagnose.common import interval_s, myths, percent, see
from sockstat.diagnose.findings import Finding, Scope, Severity
from sockstat.diagnose.index import index
from sockstat.diagnose.thresholds import Thresholds
from sockstat.kernelmodel import KernelChange, Sysctls
from sockstat.model import Proto, Snapshot, Socket, TcpState

KINDS = ("accept_queue", "listen_overflows")
COUNTERS = ("TcpExt.ListenOverflows", "TcpExt.ListenDrops")

EXPLANATION = (
    "{queued:,} connections have completed the handshake and wait for {owner} to call "
    "accept(); the backlog is {backlog:,}. When the queue is full the kernel drops new "
    "SYNs and the clients' final ACKs (ListenOverflows/ListenDrops); clients see "
    "connects that take seconds, or time out, while the server looks idle."
)
REMEDY = (
    "Make {owner} accept faster: more accept threads/workers, no blocking work in the "
    "accept loop, check it is not stuck. A larger backlog only absorbs bursts: raise the "
    "listen() backlog in the application{capped}."
)
UNIX_EXPLANATION = (
    "{queued:,} connections wait for {owner} to call accept() on the UNIX socket "
    "{path}; the backlog is {backlog:,}. While the queue is full, further connect()s "
    "fail at once with EAGAIN when non-blocking (nginx logs \"connect() to unix:{path} "
    "failed (11: Resource temporarily unavailable)\") or block until a slot frees up. "
    "The kernel counts none of it."
)
UNIX_REMEDY = (
    "Make {owner} accept faster: more workers (php-fpm pm.max_children, gunicorn "
    "--workers), no blocking work before accept(), check it is not stuck. For bursts, "
    "raise its listen() backlog (php-fpm listen.backlog, gunicorn --backlog, "
    "uwsgi --listen){capped}."
)
HOST_EXPLANATION = (
    "The kernel dropped connection attempts because an accept queue was full "
    "(ListenOverflows +{overflows:,}, ListenDrops +{drops:,} in {seconds:.1f} s), but no "
    "listener in view has a full queue now: the overflow comes in bursts, or belongs to "
    "a listener outside this check."
)
HOST_REMEDY = (
    "Watch the listeners' queues (`sockstat -l`, Recv-Q shows queued/backlog) during "
    "the bursts; then make the busiest one accept faster or give it a larger backlog "
    "(the listen() argument, capped by net.core.somaxconn)."
)


def _owner(sock: Socket) -> str:
    proc = sock.process
    return f"{proc.name}/{proc.pid}" if proc else \
        f"the process listening on {sock.local_label}"


def detect(snapshot: Snapshot, kernel: KernelChange | None,
           thresholds: Thresholds) -> list[Finding]:
    sysctls = kernel.sysctls if kernel is not None else Sysctls()
    overflows = kernel.delta("TcpExt.ListenOverflows") if kernel else None
    drops = kernel.delta("TcpExt.ListenDrops") if kernel else None
    # Only netlink reports a listener's backlog; elsewhere Send-Q 0 means "unknown"
    backlog_known = snapshot.source.can.backlog
    findings = []
    for s in index(snapshot).state(TcpState.LISTEN):
        if s.proto is Proto.UDP:
            continue
        if not backlog_known and s.send_q == 0:
            continue
        got = _listener_finding(s, sysctls, overflows, drops, kernel, thresholds)
        if got:
            findings.append(got)
    if not findings and (overflows or drops):
        findings.append(Finding(
            kind="listen_overflows", severity=Severity.WARNING, subject="host",
            summary=f"{(overflows or 0):,} accept-queue overflows, {(drops or 0):,} listen "
                    f"drops in {kernel.seconds:.1f}s, no full queue in view",
            evidence={"listen_overflows_delta": overflows, "listen_drops_delta": drops,
                      "interval_s": interval_s(kernel)},
            explanation=HOST_EXPLANATION.format(overflows=overflows or 0, drops=drops or 0,
                                                seconds=kernel.seconds),
            remedy=HOST_REMEDY + myths("backlog", "somaxconn"), scope=Scope.HOST,
            weight=overflows or drops or 0,
        ))
    return findings


def _listener_finding(s: Socket, sysctls: Sysctls, overflows: int | None,
                      drops: int | None, kernel: KernelChange | None,
                      thresholds: Thresholds) -> Finding | None:
    queued, backlog = s.recv_q, s.send_q
    if queued == 0:
        return None
    # The kernel calls a queue full when it holds MORE than the backlog
    full = queued > backlog
    share = percent(queued, backlog) if backlog else 100.0
    if full:
        severity = Severity.CRITICAL
    elif share is not None and share >= thresholds.queue_warn:
        severity = Severity.WARNING
    else:
        return None
    owner = _owner(s)
    capped = sysctls.somaxconn is not None and backlog == sysctls.somaxconn
    proc = s.process
    is_unix = s.unix is not None
    if is_unix:  # no kernel counter tells UNIX overflows: leave TCP's out of the evidence
        overflows = drops = None
    evidence = {
        "local_address": s.local.address, "local_port": s.local.port,
        **({"proto": "unix", "path": s.unix.display_name} if is_unix else {}),
        "pid": proc.pid if proc else None, "process": proc.name if proc else None,
        "queued": queued, "backlog": backlog, "percent": share, "full": full,
        "somaxconn": sysctls.somaxconn, "backlog_is_somaxconn": capped,
        "listen_overflows_delta": overflows, "listen_drops_delta": drops,
        "interval_s": interval_s(kernel),
    }
    summary = f"accept queue of {s.local_label} " + ("is full" if full else f"at {share}%") + \
        f": {queued:,} waiting, backlog {backlog:,}"
    if proc:
        summary += f" ({proc.name}/{proc.pid})"
    if overflows:
        summary += f"; host ListenOverflows +{overflows:,} in {kernel.seconds:.1f}s"
    if capped:
        capped_text = (f"; the backlog equals net.core.somaxconn ({sysctls.somaxconn}), so "
                       "the application may have asked for more and been capped: raise "
                       "somaxconn too")
    else:
        capped_text = (" (values above net.core.somaxconn"
                       + (f" = {sysctls.somaxconn}" if sysctls.somaxconn else "")
                       + " are silently capped)")
    if is_unix:
        explanation = UNIX_EXPLANATION.format(queued=queued, owner=owner, backlog=backlog,
                                              path=s.unix.display_name)
        remedy = UNIX_REMEDY.format(owner=owner, capped=capped_text)
    else:
        explanation = EXPLANATION.format(queued=queued, owner=owner, backlog=backlog)
        remedy = REMEDY.format(owner=owner, capped=capped_text)
    return Finding(
        kind="accept_queue", severity=severity,
        subject=f"{owner} {s.local_label}" if proc else s.local_label, summary=summary,
        evidence=evidence,
        explanation=explanation + see("backlog"),
        remedy=remedy + myths("backlog", "somaxconn"), sockets=(s,),
        weight=share or 0,
    )
