"""Half-open connections: SYN floods on listeners, unreachable peers for clients.

SYN_RECV (the kernel's NEW_SYN_RECV request sockets) are handshakes a listener
answered but the client never completed: a SYN flood (many sources that never reply),
or replies lost on the way back. SYN_SENT are our own connect()s the peer never
answered: the peer is down, a firewall drops the SYN silently, or the peer's accept
queue is full (a full queue drops SYNs without a reply).
"""

from __future__ import annotations

from collections import defaultdict

from sockstat.diagnose.common import host_port, interval_s, plural, see, state_intro, top
from sockstat.diagnose.findings import Finding, Severity
from sockstat.diagnose.index import index
from sockstat.diagnose.thresholds import Thresholds
from sockstat.kernelmodel import KernelChange, Sysctls
from sockstat.model import Proto, Snapshot, Socket, TcpState

KINDS = ("syn_flood", "syn_sent")
COUNTERS = ("TcpExt.SyncookiesSent", "TcpExt.SyncookiesRecv", "TcpExt.SyncookiesFailed",
            "TcpExt.TCPReqQFullDoCookies", "TcpExt.TCPReqQFullDrop", "TcpExt.TCPSynRetrans",
            "Tcp.AttemptFails")

_SYN_RECV = frozenset(s for s in TcpState if s.shown is TcpState.SYN_RECV)

RECV_EXPLANATION = (
    "{count:,} handshakes to {listener} are half-open: the server answered SYN-ACK and "
    "no final ACK came back. Many distinct sources that never complete is a SYN flood; "
    "a few sources points to a network path that loses the replies. Each waits in the "
    "listener's SYN queue, bounded (since Linux 4.4) by its listen() backlog; "
    "net.ipv4.tcp_max_syn_backlog (= {syn_backlog}) only counts with SYN cookies off. "
    "With tcp_syncookies = {cookies} the kernel {cookie_text}."
)
RECV_REMEDY = (
    "Keep net.ipv4.tcp_syncookies=1 (cookies answer SYNs without queueing them once the "
    "SYN queue is full). Against a flood: rate-limit or filter upstream (firewall, "
    "load balancer, SYN proxy). A larger listen() backlog (and net.core.somaxconn) buys "
    "room for real clients; `sockstat -s syn-recv --port {port}` lists the sources."
)
SENT_EXPLANATION = (
    "{count:,} connection attempts to {dest} have sent a SYN and had no answer: the peer "
    "is down or unreachable, a firewall drops the SYN silently (a closed port would have "
    "answered with RST, failing at once), or the peer's accept queue is full (a full "
    "queue drops SYNs without a reply)."
)
SENT_REMEDY = (
    "Check the peer: is it up, listening, reachable (`nc -vz {host} {port}`)? Is a "
    "firewall dropping traffic? If you run it, `sockstat check` there shows an accept "
    "queue overflow. In {who}, use a short connect timeout and back off instead of "
    "piling up attempts."
)


def detect(snapshot: Snapshot, kernel: KernelChange | None,
           thresholds: Thresholds) -> list[Finding]:
    sysctls = kernel.sysctls if kernel is not None else Sysctls()
    listeners: dict[tuple[str, int], Socket] = {}
    by_port: dict[int, Socket] = {}
    half_open: dict[tuple[str, int], list[Socket]] = defaultdict(list)
    connecting: dict[tuple[str, int], list[Socket]] = defaultdict(list)
    found = index(snapshot)
    tcp = Proto.TCP
    for s in found.state(TcpState.LISTEN):
        if s.proto is tcp:
            listeners[(s.local.address, s.local.port)] = s
            by_port.setdefault(s.local.port, s)
    for s in found.states(_SYN_RECV):
        if s.proto is tcp:
            half_open[(s.local.address, s.local.port)].append(s)
    for s in found.state(TcpState.SYN_SENT):
        if s.proto is tcp:
            connecting[(s.remote.address, s.remote.port)].append(s)

    findings = []
    for (address, port), members in half_open.items():
        listener = listeners.get((address, port)) or by_port.get(port)
        got = _recv_finding(address, port, members, listener, sysctls, kernel, thresholds)
        if got:
            findings.append(got)
    for (address, port), members in connecting.items():
        got = _sent_finding(address, port, members, kernel, thresholds)
        if got:
            findings.append(got)
    return findings


def _level(count: int, warn: int, crit: int) -> Severity | None:
    if count >= crit:
        return Severity.CRITICAL
    if count >= warn:
        return Severity.WARNING
    return None


def _deltas(kernel: KernelChange | None, names: tuple[str, ...]) -> dict:
    if kernel is None:
        return {}
    return {name.split(".", 1)[1] + "_delta": kernel.delta(name) for name in names}


def _recv_finding(address: str, port: int, members: list[Socket], listener: Socket | None,
                  sysctls: Sysctls, kernel: KernelChange | None,
                  thresholds: Thresholds) -> Finding | None:
    count = len(members)
    severity = _level(count, thresholds.syn_recv_warn, thresholds.syn_recv_crit)
    if severity is None:
        return None
    proc = listener.process if listener is not None else None
    where = host_port(address, port)
    name = f"{proc.name}/{proc.pid} {where}" if proc else where
    sources = {s.remote.address for s in members}
    cookies = sysctls.tcp_syncookies
    cookie_text = {0: "never sends cookies: a full SYN queue drops new SYNs",
                   1: "sends cookies once the SYN queue overflows",
                   2: "always sends cookies"}.get(cookies, "(setting unknown)")
    evidence = {
        "local_address": address, "local_port": port,
        "pid": proc.pid if proc else None, "process": proc.name if proc else None,
        "syn_recv": count, "distinct_sources": len(sources),
        "sources": top((s.remote.address for s in members), 5),
        "backlog": listener.send_q if listener is not None else None,
        "tcp_syncookies": cookies, "tcp_max_syn_backlog": sysctls.tcp_max_syn_backlog,
        **_deltas(kernel, ("TcpExt.SyncookiesSent", "TcpExt.TCPReqQFullDrop",
                           "TcpExt.TCPReqQFullDoCookies")),
        "interval_s": interval_s(kernel),
    }
    return Finding(
        kind="syn_flood", severity=severity, subject=name,
        summary=f"{plural(count, 'half-open connection')} (SYN_RECV) on {name} from "
                f"{plural(len(sources), 'source')}; tcp_syncookies={cookies}",
        evidence=evidence,
        explanation=state_intro(TcpState.SYN_RECV) + RECV_EXPLANATION.format(
            count=count, listener=name, syn_backlog=sysctls.tcp_max_syn_backlog,
            cookies=cookies, cookie_text=cookie_text) + see("syn-recv"),
        remedy=RECV_REMEDY.format(port=port), sockets=tuple(members), weight=count,
    )


def _sent_finding(address: str, port: int, members: list[Socket],
                  kernel: KernelChange | None, thresholds: Thresholds) -> Finding | None:
    count = len(members)
    severity = _level(count, thresholds.syn_sent_warn, thresholds.syn_sent_crit)
    if severity is None:
        return None
    dest = host_port(address, port)
    owners = top((f"{s.process.name}/{s.process.pid}" for s in members
                  if s.process is not None), 5)
    who = owners[0]["value"] if owners else "the connecting application"
    evidence = {
        "remote_address": address, "remote_port": port, "syn_sent": count,
        "max_syn_retransmits": max((s.retransmits for s in members), default=0),
        "processes": owners,
        **_deltas(kernel, ("TcpExt.TCPSynRetrans", "Tcp.AttemptFails")),
        "interval_s": interval_s(kernel),
    }
    return Finding(
        kind="syn_sent", severity=severity, subject=dest,
        summary=f"{plural(count, 'connection attempt')} to {dest} unanswered (SYN_SENT)"
                + (f" from {who}" if owners else ""),
        evidence=evidence,
        explanation=SENT_EXPLANATION.format(count=count, dest=dest) + " "
        + state_intro(TcpState.SYN_SENT, how_long=True).strip() + see("syn-sent"),
        remedy=SENT_REMEDY.format(host=address, port=port, who=who),
        sockets=tuple(members), weight=count,
    )
