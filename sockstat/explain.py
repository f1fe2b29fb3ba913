"""What each TCP state and socket topic means: the ONE home of these texts.

`sockstat explain`, the demo lab and `sockstat check`'s remedies all read them from here:

    from sockstat import explain
    e = explain.text("close-wait")  # or TcpState.CLOSE_WAIT, "CLOSE_WAIT", "tcp_fin_timeout"
    e.meaning, e.remedy, e.myths
    explain.state_text(TcpState.TIME_WAIT)  # the one-paragraph meaning

Every number here was checked on Linux 6.x (see the demo lab, which reproduces each
claim on loopback). Where the TCP notes this lab teaches from (tcp-notes.md) are wrong
about Linux, the `myths` say so and name the demo that shows what really happens.
Pure data: no I/O, no printing, nothing heavy imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sockstat.errors import UsageError
from sockstat.kernelmodel import TIME_WAIT_SECONDS
from sockstat.model import TcpState


@dataclass(frozen=True)
class Explanation:
    """One state or topic. Empty fields are simply not shown."""

    topic: str  # canonical name: "time-wait", "reuseaddr"
    title: str  # one line
    meaning: str  # what it is
    side: str = ""  # which end of a connection has it (states)
    how_you_get_there: str = ""
    how_long: str = ""
    when_many: str = ""  # what a pile of them means in production, and what to do
    remedy: str = ""  # the short, actionable version of when_many (for `sockstat check`)
    myths: tuple[str, ...] = ()  # common beliefs that are wrong, corrected
    demo: str | None = None  # `sockstat demo <demo>` shows it
    see_also: tuple[str, ...] = ()
    state: TcpState | None = field(default=None, compare=False)
    # header fields: (key in sockstat.packets.Segment, name, size, meaning)
    fields: tuple[tuple[str, str, str, str], ...] = ()

    @property
    def is_state(self) -> bool:
        return self.state is not None or self.topic == "closed"

    def to_dict(self) -> dict:
        return {
            "topic": self.topic, "title": self.title, "kind": "state" if self.is_state
            else "topic", "side": self.side, "meaning": self.meaning,
            "how_you_get_there": self.how_you_get_there, "how_long": self.how_long,
            "when_many": self.when_many, "remedy": self.remedy, "myths": list(self.myths),
            "demo": self.demo, "see_also": list(self.see_also),
            "fields": [{"field": key, "name": name, "size": size, "meaning": meaning}
                       for key, name, size, meaning in self.fields],
        }


TW = TIME_WAIT_SECONDS

_STATES: tuple[Explanation, ...] = (
    Explanation(
        topic="listen", state=TcpState.LISTEN, demo="listen",
        title="LISTEN: a server socket waiting for connections",
        side="The server. Only the passive side ever listens.",
        meaning=(
            "The socket takes new connections on its port. The kernel answers the "
            "handshake by itself and parks each finished connection in the accept queue "
            "until the program calls accept(). On a LISTEN socket the queue columns mean "
            "something else: Recv-Q is how many connections wait in the accept queue now, "
            "Send-Q is the queue's size (the listen() backlog, capped by "
            "net.core.somaxconn)."),
        how_you_get_there="socket() → bind(address, port) → listen(backlog).",
        how_long="Until the program closes the socket or exits. There is no timeout.",
        when_many=(
            "One per service and address is normal. Watch the queue, not the count: "
            "Linux lets backlog + 1 connections wait, so a listener whose Recv-Q is above "
            "its Send-Q is full, and the kernel silently drops new SYNs; clients "
            "retransmit them after about 1 s, then at growing intervals (the schedule "
            "depends on net.ipv4.tcp_syn_linear_timeouts), and users see those delays "
            "(sockstat explain backlog)."),
        remedy=(
            "If Recv-Q is above Send-Q: accept faster (more workers, no blocking in the "
            "accept loop), and raise the listen() backlog together with net.core.somaxconn."),
        myths=(
            "listen(backlog) does not cap how many clients a server can have at once (some "
            "texts call it 设置监听同时连接上限): it caps only the connections that finished "
            "the handshake and wait for accept().",),
        see_also=("backlog", "handshake"),
    ),
    Explanation(
        topic="syn-sent", state=TcpState.SYN_SENT, demo="syn-sent",
        title="SYN_SENT: connect() sent a SYN and waits for the answer",
        side="The client: the side that called connect().",
        meaning=(
            "The first packet of the three-way handshake went out and no SYN-ACK has come "
            "back yet. A non-blocking connect() returns EINPROGRESS here; a blocking one "
            "sleeps until the answer or the timeout."),
        how_you_get_there=(
            "connect() to something that does not answer: a host that is down, a firewall "
            "that drops SYNs, or (as in this lab) a listener whose accept queue is full, "
            "which drops SYNs without a word."),
        how_long=(
            "One round trip normally: microseconds on loopback. Unanswered, the SYN is "
            "sent again at growing intervals (doubling from 1 s; Linux 6.x first retries "
            "every second a few times, net.ipv4.tcp_syn_linear_timeouts) and connect() "
            "fails with ETIMEDOUT after about 130 s (net.ipv4.tcp_syn_retries = 6; "
            "measured on this lab's kernel: 134 s), unless the program's own connect "
            "timeout ends it sooner."),
        when_many=(
            "Something between you and the peer drops SYNs: the peer is down or "
            "firewalled, or its accept queue overflows (look at its ListenOverflows "
            "counter and `sockstat -l` there). Many SYN_SENT towards many different "
            "addresses from one process can also be a scanner."),
        remedy=(
            "Find where the SYNs are dropped: is the peer up, is a firewall dropping them, "
            "is the peer's accept queue full? Give clients a connect timeout well below "
            "the kernel's 130 s."),
        see_also=("handshake", "backlog"),
    ),
    Explanation(
        topic="syn-recv", state=TcpState.SYN_RECV, demo="syn-recv",
        title="SYN_RECV: the server answered a SYN and waits for the final ACK",
        side="The server (RFC 793 spells it SYN-RECEIVED, many texts SYN_RCVD).",
        meaning=(
            "The listener received a SYN and answered with SYN-ACK; the third packet, the "
            "client's ACK, has not been taken yet. Linux keeps these as small request "
            "sockets (NEW_SYN_RECV inside the kernel): no file descriptor and no process, "
            "so sockstat names the process through the listener on the same port. The "
            "client is already ESTABLISHED at this point."),
        how_you_get_there=(
            "A client that never sends the final ACK (a SYN flood with forged source "
            "addresses), an ACK lost on the way, or a listener with TCP_DEFER_ACCEPT, which "
            "ignores a bare ACK until data arrives (this lab's recipe). Also an accept "
            "queue that is full when the ACK arrives: Linux drops the ACK, so the server "
            "stays in SYN_RECV while the client believes it is connected "
            "(sockstat demo backlog)."),
        how_long=(
            "One round trip normally. Otherwise the SYN-ACK is sent again after 1, 2, 4, "
            "8 and 16 s (net.ipv4.tcp_synack_retries = 5) and the request is dropped after "
            "about 63 s; TCP_DEFER_ACCEPT keeps it for its own timeout instead."),
        when_many=(
            "Many source addresses: a SYN flood. With net.ipv4.tcp_syncookies = 1 (the "
            "default) the kernel answers with SYN cookies once the SYN queue is full, so "
            "real clients still get in. A few busy clients: look at the listener's accept "
            "queue (Recv-Q against Send-Q): a full queue makes the kernel drop final ACKs."),
        remedy=(
            "Many sources: a SYN flood; keep tcp_syncookies = 1 and filter upstream. One "
            "busy listener: its accept queue is full; accept faster or raise the backlog."),
        see_also=("handshake", "backlog"),
    ),
    Explanation(
        topic="established", state=TcpState.ESTABLISHED, demo="established",
        title="ESTABLISHED: the connection is open and data flows both ways",
        side="Both ends.",
        meaning=(
            "The handshake is done; each end may send and receive. Recv-Q is data that has "
            "arrived but the program has not read yet; Send-Q is data sent but not yet "
            "acknowledged by the peer."),
        how_you_get_there=(
            "Client: connect() returns. Server: the kernel finishes the handshake by "
            "itself; accept() then hands the program a socket that is already "
            "ESTABLISHED."),
        how_long=(
            "As long as both programs keep it. TCP has no idle timeout: when the peer "
            "vanishes silently the connection stays ESTABLISHED until a send fails or "
            "keepalive notices (SO_KEEPALIVE; first probe after net.ipv4.tcp_keepalive_time"
            " = 7200 s)."),
        when_many=(
            "Normal: that is the load. Look at the queues rather than the count: a Recv-Q "
            "that keeps growing means this program is not reading; a Send-Q that keeps "
            "growing means the peer or the network is not keeping up (sockstat explain "
            "window). Each connection is a file descriptor: mind the process's open-file "
            "limit."),
        remedy=(
            "Growing Recv-Q: this program reads too slowly. Growing Send-Q: the peer or the "
            "network is the bottleneck."),
        see_also=("handshake", "window"),
    ),
    Explanation(
        topic="fin-wait1", state=TcpState.FIN_WAIT1, demo="fin-wait1",
        title="FIN_WAIT1: sent a FIN, waiting for it to be acknowledged",
        side="The active closer: the side that called close() or shutdown() first.",
        meaning=(
            "The program said it will send nothing more. The kernel queued a FIN behind "
            "any data still unsent and waits for the peer to acknowledge it. Reading still "
            "works."),
        how_you_get_there=(
            "close() or shutdown(SHUT_WR) on an ESTABLISHED socket. It is seen for one "
            "round trip normally, and it stays when the FIN cannot leave: the peer stopped "
            "reading, its receive window is zero, and the FIN waits behind the data (this "
            "lab's recipe), or the peer is unreachable."),
        how_long=(
            "One round trip normally. Stuck behind a zero window, as long as the peer keeps "
            "answering the zero-window probes: indefinitely while the program still holds "
            "the socket. After close() the socket is an orphan and the kernel gives up "
            "after net.ipv4.tcp_orphan_retries probes (0 means the built-in 8), within "
            "minutes."),
        when_many=(
            "This side closes connections to peers that stopped reading or vanished: slow "
            "or dead clients, a lossy link. Each keeps its unsent data in kernel memory; "
            "orphans are counted in /proc/net/sockstat and capped by "
            "net.ipv4.tcp_max_orphans."),
        remedy=(
            "Find the peers that stopped reading or vanished; time out slow clients in the "
            "application; a lower net.ipv4.tcp_orphan_retries frees orphans sooner."),
        myths=(
            "Many TCP introductions say FIN_WAIT1 is hard to see because the peer ACKs at "
            "once: on a healthy link yes, but a peer that stops reading keeps you in it as "
            "long as it likes (sockstat demo fin-wait1).",),
        see_also=("teardown", "window", "fin-wait2"),
    ),
    Explanation(
        topic="fin-wait2", state=TcpState.FIN_WAIT2, demo="fin-wait2",
        title="FIN_WAIT2: my FIN was acknowledged; waiting for the peer's FIN",
        side="The active closer.",
        meaning=(
            "This side has finished sending and the peer knows it: the connection is "
            "half-closed. The peer may still send, and this side can still read. It ends "
            "when the peer closes too."),
        how_you_get_there=(
            "shutdown(SHUT_WR) or close(); the peer acknowledges the FIN but does not "
            "close its own side yet (it is in CLOSE_WAIT)."),
        how_long=(
            "If the program still holds the socket (after shutdown()), forever: until the "
            "peer closes. If the program called close() (an orphan that no process holds),"
            " net.ipv4.tcp_fin_timeout: 60 s by default. That is what tcp_fin_timeout is "
            "for."),
        when_many=(
            "The peers do not close their side: the other machine has a CLOSE_WAIT leak. "
            "Look there. The orphans on this side cost little and expire after "
            "tcp_fin_timeout."),
        remedy=(
            "Look at the peer: it is not closing (CLOSE_WAIT there). Orphaned FIN_WAIT2 "
            "expire after net.ipv4.tcp_fin_timeout."),
        myths=(
            "tcp_fin_timeout is the timeout of orphaned FIN_WAIT2 sockets, not the length "
            f"of TIME_WAIT (always {TW} s on Linux).",),
        see_also=("half-close", "close-wait", "2msl"),
    ),
    Explanation(
        topic="close-wait", state=TcpState.CLOSE_WAIT, demo="close-wait",
        title="CLOSE_WAIT: the peer closed; this program has not",
        side="The passive closer: the side that received the first FIN.",
        meaning=(
            "The peer sent a FIN: it will send nothing more. The kernel acknowledged it and "
            "now waits for this program to call close(); read() already returns 0 (end of "
            "file). The name means: waiting for the application to close."),
        how_you_get_there=(
            "The peer calls close() or shutdown(SHUT_WR), and this program never closes "
            "its socket: it does not read again, forgets the socket, or keeps it in a "
            "pool."),
        how_long="Forever. The kernel never times CLOSE_WAIT out: only close() or the "
                 "process exiting ends it.",
        when_many=(
            "A bug in this program: a socket leak. Some code path does not close: an "
            "exception before close(), a pool that never notices connections the peer "
            "closed, a worker that is stuck. They pile up until the process runs out of "
            "file descriptors. A restart frees them; fixing the close path stops them."),
        remedy=(
            "Fix the program: close the socket when read() returns 0 and on every error "
            "path; make connection pools drop connections the peer closed. Restart the "
            "process to free the ones it holds now."),
        see_also=("teardown", "half-close", "close-vs-shutdown"),
    ),
    Explanation(
        topic="closing", state=TcpState.CLOSING, demo="closing",
        title="CLOSING: both sides sent a FIN at the same time",
        side="Either end, or both: each is an active closer (a simultaneous close).",
        meaning=(
            "This side sent its FIN and then received the peer's FIN before its own FIN "
            "was acknowledged. Each side now waits for the ACK of its own FIN."),
        how_you_get_there=(
            "Both ends close at nearly the same moment and the FINs cross. This lab makes "
            "it last: both ends fill each other's buffers and shut down, so each FIN waits "
            "behind data; then one end reads everything, receives the other's FIN, and is "
            "in CLOSING while its own FIN is still stuck."),
        how_long=(
            f"One round trip normally. Then TIME_WAIT ({TW} s) on both sides, because both "
            "closed first."),
        when_many=(
            "Rare. Many of them mean lost acknowledgements, or peers that close at the "
            "same time and then stop reading."),
        remedy="Rare and short-lived; many of them point at packet loss.",
        myths=(
            "Many TCP introductions say only the side that closes first gets TIME_WAIT. After a "
            "simultaneous close both sides closed first, and both get TIME_WAIT.",),
        see_also=("teardown", "time-wait"),
    ),
    Explanation(
        topic="last-ack", state=TcpState.LAST_ACK, demo="last-ack",
        title="LAST_ACK: the passive closer sent its FIN and waits for the last ACK",
        side="The passive closer (it was in CLOSE_WAIT, then closed).",
        meaning=(
            "The peer closed first; this side has now closed too and waits for the peer to "
            "acknowledge its FIN. When the ACK comes the socket is gone (CLOSED): the "
            "passive closer never has a TIME_WAIT."),
        how_you_get_there=(
            "close() or shutdown(SHUT_WR) in CLOSE_WAIT. It stays visible when the FIN "
            "waits behind data the peer will not accept (this lab: the peer's receive "
            "window is zero) or when the last ACK is lost."),
        how_long=(
            "One round trip normally. Otherwise the FIN is sent again with growing "
            "intervals; an orphan is given up after net.ipv4.tcp_orphan_retries."),
        when_many=(
            "Peers that disappear right after closing, so their last ACK never comes, or "
            "peers that stopped reading before they closed."),
        remedy="Look for peers that vanish after closing, or that stop reading.",
        see_also=("teardown", "close-wait"),
    ),
    Explanation(
        topic="time-wait", state=TcpState.TIME_WAIT, demo="time-wait",
        title=f"TIME_WAIT: the connection is over; the kernel remembers it for {TW} s",
        side="The active closer: the side that sent the first FIN (both, after a "
             "simultaneous close).",
        meaning=(
            "Both FINs were sent and acknowledged. The kernel keeps a small record of the "
            "connection (no file descriptor, no process) for two reasons: if the last ACK "
            "is lost, the peer sends its FIN again and must get the ACK again; and stray "
            "delayed segments of this connection must die out before a new connection "
            "with the same four addresses and ports (a new incarnation) could take them "
            "for its own."),
        how_you_get_there="Close first: close() or shutdown(), then receive the peer's FIN.",
        how_long=(
            f"Exactly {TW} s on Linux (TCP_TIMEWAIT_LEN, fixed when the kernel is built). "
            "RFC 793 asks for 2 × MSL, 4 minutes; Linux chose 60 s. No sysctl changes "
            "it, tcp_fin_timeout included. Without root nothing removes one early (ss -K "
            "needs CAP_NET_ADMIN); a new SYN for the same four-tuple may replace it "
            "(sockstat demo restart)."),
        when_many=(
            "Normal on a busy machine for whichever side closes first: 1,000 connections "
            f"closed per second leave {TW * 1000:,} TIME_WAIT behind. Each costs a couple "
            "of hundred bytes, no process and no file descriptor. They hurt in two cases. "
            "A client that makes many short connections to one server address and port "
            "runs out of local ports (net.ipv4.ip_local_port_range, about 28,000 by "
            f"default: some {28232 // TW} new connections a second per destination). "
            "Past net.ipv4.tcp_max_tw_buckets the kernel drops them early "
            "(TCPTimeWaitOverflow)."),
        remedy=(
            "Reuse connections (HTTP keep-alive, connection pools); let the client close "
            "first; widen net.ipv4.ip_local_port_range; net.ipv4.tcp_tw_reuse = 1 lets "
            "outgoing connections reuse TIME_WAIT ports when TCP timestamps prove it safe "
            "(2, the default, does it for loopback only). Changing tcp_fin_timeout does "
            "nothing to TIME_WAIT, and tcp_tw_recycle no longer exists."),
        myths=(
            "tcp_fin_timeout is not the length of TIME_WAIT: it is the timeout of "
            f"orphaned FIN_WAIT2 sockets. TIME_WAIT is always {TW} s.",
            "tcp_tw_recycle is gone: it broke clients behind NAT and was removed in "
            "Linux 4.12.",
            "tcp_tw_reuse does not help a server's port: it only applies to outgoing "
            "connections made with connect().",
            "A TIME_WAIT on a server's port does not stop the server from restarting if "
            "it sets SO_REUSEADDR; on Linux the old server must have set it as well "
            "(sockstat demo restart measures both).",
            "A common claim: a new connection on the same four-tuple fails with "
            "'Address already in use' during TIME_WAIT. Linux accepts it when the SYN's "
            "sequence number or timestamp is newer, and the new connection replaces the "
            "TIME_WAIT (RFC 6191; sockstat demo restart shows it).",
        ),
        see_also=("2msl", "reuseaddr", "reuseport", "teardown"),
    ),
)

CLOSED = Explanation(
    topic="closed",
    title="CLOSED: no connection, the beginning and the end",
    side="Either.",
    meaning=(
        "CLOSED is the state diagram's name for no connection at all, so the kernel has "
        "nothing to list: a socket before connect() or listen(), and a connection torn "
        "down completely, are simply not in /proc/net/tcp. (sock_diag does list sockets "
        "that are bound but not connected, as CLOSE: UNCONN in sockstat's listings.) "
        "That is why the lab explains CLOSED instead of showing it."),
    how_you_get_there=(
        "Before connect() or listen(); when LAST_ACK gets its ACK; when TIME_WAIT expires;"
        " after an RST."),
    how_long="It is not a thing that lasts: it is the absence of a connection.",
    see_also=("teardown", "handshake"),
)

_TOPICS: tuple[Explanation, ...] = (
    Explanation(
        topic="handshake", demo="handshake",
        title="The three-way handshake: SYN, SYN-ACK, ACK",
        meaning=(
            "connect() sends a SYN (client in SYN_SENT). The listener answers SYN-ACK and "
            "keeps a request socket (SYN_RECV). The client's ACK completes it: the client "
            "is ESTABLISHED, and on the server the kernel creates the connection's socket, "
            "ESTABLISHED, in the listener's accept queue. accept() takes no part in the "
            "handshake: it only takes a finished connection off the queue. A client and "
            "server talking thus use three sockets: the client's, the server's listener, "
            "and the server's socket for this client."),
        how_long=(
            "One round trip: microseconds on loopback, which is why SYN_SENT and SYN_RECV "
            "are rarely seen. sockstat demo handshake freezes the last step with "
            "TCP_DEFER_ACCEPT so you can see the client ESTABLISHED while the server is "
            "still in SYN_RECV."),
        when_many=(
            "A connection the client thinks is open may not exist on the server yet: the "
            "server counts it only once the final ACK (or data) arrives."),
        see_also=("syn-sent", "syn-recv", "backlog"),
    ),
    Explanation(
        topic="teardown", demo="teardown",
        title="The four-way teardown: FIN, ACK, FIN, ACK",
        meaning=(
            "The side that closes first sends FIN (FIN_WAIT1). The peer ACKs it: the "
            "closer is in FIN_WAIT2, the peer in CLOSE_WAIT, and the peer's read() returns "
            "0. When the peer's program closes, its FIN goes out (LAST_ACK); the first "
            f"closer ACKs it and stays in TIME_WAIT for {TW} s, and the peer, on that ACK, "
            "is CLOSED. Each direction closes on its own, which is what makes a half-close "
            "possible."),
        how_long=(
            "FIN_WAIT1 and LAST_ACK last one round trip; FIN_WAIT2/CLOSE_WAIT last until "
            f"the peer's program closes; TIME_WAIT lasts {TW} s."),
        see_also=("half-close", "close-vs-shutdown", "time-wait"),
    ),
    Explanation(
        topic="reuseaddr", demo="restart",
        title="SO_REUSEADDR: restarting a server while its port is in TIME_WAIT",
        meaning=(
            "Without it, bind() refuses a port that any socket still uses, TIME_WAIT "
            "records included: EADDRINUSE, 'Address already in use'. With SO_REUSEADDR "
            "set, Linux lets bind() succeed when every other socket on that address and "
            "port is not listening and had SO_REUSEADDR set too. It never lets two sockets "
            "LISTEN on the same address and port: that is SO_REUSEPORT."),
        how_you_get_there=(
            "setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, 1) before bind(), on every server "
            "socket. Most server frameworks do it for you."),
        when_many=(
            "Set it on every listening socket. On Linux a TIME_WAIT record keeps the "
            "option of the listener its connection came from, so a restart works only if "
            "the old server had set it as well as the new one."),
        remedy="Set SO_REUSEADDR on every listening socket before bind().",
        myths=(
            "'The new server sets SO_REUSEADDR, so it can bind': on Linux the old "
            "server's TIME_WAIT must carry the flag too, so the old server must have set "
            "it (sockstat demo restart tries every combination).",
            "SO_REUSEADDR does not let two programs listen on one port on Linux; "
            "SO_REUSEPORT does.",
            f"SO_REUSEADDR does not shorten TIME_WAIT: the records stay their {TW} s next "
            "to the new listener.",
        ),
        see_also=("time-wait", "reuseport", "2msl"),
    ),
    Explanation(
        topic="reuseport", demo="reuseport",
        title="SO_REUSEPORT: several sockets on one port, the kernel shares the load",
        meaning=(
            "Since Linux 3.9, sockets that all set SO_REUSEPORT before bind() and belong "
            "to the same user (effective uid) may bind the same address and port. Each "
            "listener has its own accept queue, and the kernel spreads new connections "
            "over the listeners by a hash of each connection's addresses and ports."),
        how_you_get_there=(
            "setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, 1) before bind() on every socket "
            "that shares the port, in one process or in several."),
        when_many=(
            "It is how N worker processes each get their own listener (nginx reuseport, "
            "envoy) instead of contending on one accept queue. If one worker stops "
            "accepting, the connections hashed to its queue wait there: they are not "
            "moved to the others."),
        myths=(
            "A common claim: with port reuse two servers both start but 'only one can "
            "establish connections': on Linux the kernel spreads connections over all of "
            "them (sockstat demo reuseport counts them).",
            "It is often said that a server restarted over its own TIME_WAIT fails "
            "'whether or not port reuse is set'. It fails when only the new server set "
            "SO_REUSEPORT; when the old server had set it too, bind() succeeds (sockstat "
            "demo restart measures both).",
            "Another user cannot take over your port with SO_REUSEPORT: all the sockets "
            "must belong to the same effective uid.",
        ),
        see_also=("reuseaddr", "backlog"),
    ),
    Explanation(
        topic="2msl", demo="time-wait",
        title=f"2MSL: why TIME_WAIT exists, and why it lasts {TW} s on Linux",
        meaning=(
            "MSL, the maximum segment lifetime, is how long a packet may wander in the "
            "network (RFC 793 suggested 2 minutes). Waiting 2 × MSL in TIME_WAIT lets the "
            "last ACK be sent again if the peer repeats its FIN, and lets delayed "
            "duplicates of the old connection expire before the same four-tuple is used "
            "again, where a duplicate with a plausible sequence number would corrupt the "
            "new stream."),
        how_long=(
            f"Linux has no MSL setting: TIME_WAIT lasts TCP_TIMEWAIT_LEN = {TW} s, a "
            "constant compiled into the kernel."),
        when_many="See sockstat explain time-wait for what a pile of TIME_WAIT means.",
        myths=(
            "tcp_fin_timeout does not set the TIME_WAIT length (nor the MSL): it is how "
            "long an orphaned FIN_WAIT2 socket waits for the peer's FIN.",
            "tcp_tw_recycle was removed in Linux 4.12: it dropped connections from clients "
            "behind NAT.",
            "tcp_tw_reuse only lets outgoing connections (connect()) reuse a TIME_WAIT "
            "four-tuple when TCP timestamps show the new connection is newer; it does "
            "nothing for a server's listening port.",
            "A new connection on a four-tuple in TIME_WAIT is not always refused: Linux "
            "accepts a SYN whose sequence number or timestamp is newer (RFC 6191).",
        ),
        see_also=("time-wait", "reuseaddr", "fin-wait2"),
    ),
    Explanation(
        topic="backlog", demo="backlog",
        title="listen() backlog: the accept queue, and what happens when it is full",
        meaning=(
            "A listener has two queues. Half-open connections (SYN_RECV) wait in the SYN "
            "queue, which since Linux 4.4 is bounded by the same listen() backlog; "
            "net.ipv4.tcp_max_syn_backlog only matters with SYN cookies off, and with "
            "cookies on they answer SYNs once that queue is full. Connections whose "
            "handshake is complete wait in the accept queue "
            "until the program calls accept(). The backlog given to listen() sizes the "
            "accept queue, capped by net.core.somaxconn (4096 since Linux 5.4); Linux lets "
            "backlog + 1 connections wait. On a LISTEN socket `sockstat -l` shows Recv-Q "
            "= waiting now and Send-Q = the backlog."),
        how_you_get_there=(
            "A program that accepts more slowly than clients connect: too few workers, a "
            "blocked event loop, a long garbage-collection pause."),
        when_many=(
            "When the accept queue is full Linux silently drops new SYNs (counted as "
            "ListenOverflows and ListenDrops in /proc/net/netstat). Clients send the SYN "
            "again after about a second, then less and less often, so connections that "
            "should take a millisecond take seconds. A final ACK that arrives while the "
            "queue is full is dropped too: the "
            "client is ESTABLISHED and may already send, while the server still holds the "
            "connection in SYN_RECV. net.ipv4.tcp_abort_on_overflow = 1 answers with RST "
            "instead, so clients fail fast rather than wait."),
        remedy=(
            "Accept faster (more workers, nothing blocking the accept loop) and raise both "
            "the listen() backlog and net.core.somaxconn; the smaller of the two wins."),
        myths=(
            "listen(backlog) is not the maximum number of simultaneous connections (as "
            "some texts say, 设置监听同时连接上限): it only limits connections waiting for "
            "accept().",
            "Raising net.core.somaxconn does nothing while the program passes a small "
            "backlog to listen(): the smaller value wins.",
        ),
        see_also=("listen", "syn-recv", "syn-sent"),
    ),
    Explanation(
        topic="window", demo="zero-window",
        title="The receive window: flow control, zero windows, Recv-Q and Send-Q",
        meaning=(
            "Every ACK carries the receiver's window: how many more bytes it can take, the "
            "free space in its receive buffer. The sender may not have more unacknowledged"
            " data in flight than that. When the receiving program stops reading, its "
            "buffer fills, the window falls to 0 and the sender stops: what it still has "
            "to send waits in its Send-Q, and it sends a small zero-window probe now and "
            "then (the 'persist' timer in sockstat). When the program reads again, the "
            "window opens and the data flows. TCP is a byte stream: how the sender cut "
            "its writes says nothing about how the receiver's reads will be cut."),
        how_you_get_there="The receiver reads more slowly than the sender writes.",
        when_many=(
            "A large Recv-Q on one side: that program is not reading. A large Send-Q on "
            "the other side with a zero window: it is waiting for that reader, and the "
            "network is fine. A large Send-Q with an open window: the network (or "
            "congestion control) is the bottleneck."),
        remedy=(
            "Growing Recv-Q: the program does not read fast enough. Send-Q with a zero "
            "peer window: the peer does not read. Send-Q with an open window: network."),
        myths=(
            "The window is not limited to 65,535 bytes: the header field is 16 bits, but "
            "the window-scale option (RFC 7323) multiplies it, up to 1 GiB.",
            "The MSS is not a fixed 1024 bytes: each side announces in its SYN the largest "
            "segment it can receive, from its MTU (1460 bytes on Ethernet, about 64 KiB on "
            "loopback).",
        ),
        see_also=("established", "fin-wait1"),
    ),
    Explanation(
        topic="close-vs-shutdown", demo="close-vs-shutdown",
        title="close() vs shutdown(): letting go of a descriptor vs ending the connection",
        meaning=(
            "close(fd) releases one file descriptor. The connection is closed, and the FIN "
            "sent, only when the last descriptor that refers to the socket is closed: "
            "after fork() or dup() the other holders keep it open. shutdown(fd, SHUT_WR) "
            "acts on the connection itself, whoever else holds it: the FIN goes out now "
            "and every holder sees it. shutdown(SHUT_RD) sends nothing."),
        how_you_get_there=(
            "A forking server: the parent must close its copy of each accepted socket, or "
            "the child's close() sends no FIN; the child must close its copy of the "
            "listener."),
        when_many=(
            "The peer sits in CLOSE_WAIT or FIN_WAIT2 although your code called close()? "
            "Another process still holds the socket: a forked child, a leaked dup()."),
        myths=(
            "On Linux shutdown(SHUT_RD) does not discard data that arrives later (many "
            "texts say it is acknowledged and silently dropped): queued and new data can "
            "still be read. Once the sending side is shut down too, new data is answered "
            "with an RST, as after close() (sockstat demo close-vs-shutdown shows both).",
            "close() does not always send a FIN: closing a socket with unread data sends "
            "an RST instead (RFC 2525), and SO_LINGER {on, 0} makes close() send an RST "
            "on purpose, the abortive close this lab uses to clean up.",
        ),
        see_also=("half-close", "teardown", "close-wait"),
    ),
    Explanation(
        topic="half-close", demo="half-close",
        title="Half-close: shutdown(SHUT_WR) means 'I am done sending, you go on'",
        meaning=(
            "The two directions of a TCP connection close separately. After "
            "shutdown(SHUT_WR) this side sends a FIN (FIN_WAIT1, then FIN_WAIT2) but can "
            "still read. The peer reads end of file (read() returns 0), is in CLOSE_WAIT, "
            "and can still send its answer. The connection ends when the peer closes too. "
            "After close(), instead, this side can read nothing more: data that still "
            "arrives is answered with an RST."),
        how_you_get_there=(
            "Protocols that mark the end of a request by closing the write side: "
            "`nc -N`, rsh, some HTTP/1.0 clients. (ssh does not: it signals EOF inside its "
            "own protocol and keeps the TCP connection open both ways.)"),
        when_many=(
            "Long-lived FIN_WAIT2 / CLOSE_WAIT pairs: a half-close the peer never "
            "completes."),
        see_also=("close-vs-shutdown", "fin-wait2", "close-wait"),
    ),
)

# The header field by field: (key in sockstat.packets.Segment, name, size, meaning)
HEADER_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("src_port", "Source port", "16 bits", "the sender's port"),
    ("dst_port", "Destination port", "16 bits", "the receiver's port"),
    ("seq", "Sequence number", "32 bits",
     "the number of this segment's first byte; a SYN carries the ISN"),
    ("ack", "Acknowledgement number", "32 bits",
     "the next byte expected from the peer (valid with ACK)"),
    ("header_length", "Header length", "4 bits",
     "in 32-bit words: 5 to 15, so 20 to 60 bytes with the options"),
    ("flags", "Flags", "6 + 2 bits",
     "SYN open · ACK acknowledgement valid · FIN done sending · RST abort · PSH push · "
     "URG urgent; ECE, CWR for ECN"),
    ("window", "Window", "16 bits",
     "free space in the sender's receive buffer, shifted by the window scale after the "
     "SYNs"),
    ("checksum", "Checksum", "16 bits", "over the header, the data and the addresses"),
    ("urgent", "Urgent pointer", "16 bits", "with URG only; unused in practice"),
    ("options", "Options", "0-40 bytes",
     "on a SYN: MSS (largest segment it can receive), window scale, SACK permitted, "
     "timestamps"),
)

HEADER = Explanation(
    topic="header", demo="handshake",
    title="The TCP header, field by field",
    meaning=(
        "Every segment starts with a header of 20 to 60 bytes; its fields "
        "are listed below. The sequence number counts the bytes this side sends, starting from a "
        "random initial sequence number (ISN) chosen at the SYN; the acknowledgement number "
        "is the next byte expected from the peer. SYN and FIN each use one sequence number, "
        "which is why the answer to a SYN or a FIN acknowledges seq + 1. Options follow "
        "the fixed 20 bytes: the SYN announces the MSS, window scaling, SACK and "
        "timestamps. sockstat demo NAME --packets captures a demo's segments on loopback "
        "(root) and shows them decoded this way."),
    how_you_get_there="sockstat demo handshake --packets (as root) decodes the first SYN.",
    myths=(
        "Many introductions list six flags. The header has eight: ECE and CWR (RFC 3168) carry "
        "explicit congestion notification.",
        "The 16-bit window is not capped at 65,535 bytes: both SYNs announce a window "
        "scale, and every later window is shifted left by it (RFC 7323).",
        "The MSS is not a fixed 1024 bytes: each SYN announces the largest segment its "
        "sender can receive (65,495 on loopback, 1,460 on Ethernet).",
    ),
    see_also=("handshake", "teardown", "window"),
    fields=HEADER_FIELDS,
)

# What a captured segment shows, in words (sockstat.demo.sequence)
SEGMENT_NOTES: dict[str, str] = {
    "syn-acked": "ack = peer's seq + 1: the SYN counts as one byte",
    "fin-first": "FIN: this side is done sending (it closes first: the active closer)",
    "fin-second": "FIN: the other side is done sending too",
    "fin-acked": "ack = FIN's seq + 1: the FIN counts as one byte",
    "last-ack": f"last ACK of the teardown; the active closer now waits 2MSL ({TW} s in "
                "TIME_WAIT)",
    "window-zero": "window 0: the receiver's buffer is full",
    "window-still-zero": "window still 0",
    "window-open": "the window opens again: the receiver read",
    "probe": "zero-window probe: one byte behind, to ask for the window",
    "syn-retransmit": "SYN retransmitted, {after} after the first ({gap} since the last)",
    "syn-unanswered": "no answer: dropped (the accept queue is full)",
    "syn-ack-retransmit": "SYN-ACK retransmitted {after} after the first",
    "ack-ignored-defer": "bare ACK ignored (TCP_DEFER_ACCEPT waits for data): the server "
                         "stays SYN_RECV",
    "ack-dropped": "ACK dropped (the accept queue is full): the server stays SYN_RECV",
    "closing": "CLOSING: this end has the peer's FIN while its own FIN is not yet "
               "acknowledged (a simultaneous close)",
    "rst-linger": "RST: SO_LINGER 0 (the lab's clean-up): no FIN, no TIME_WAIT",
    "rst": "RST: the connection is aborted",
    "syn-schedule": "SYN of {who} retransmitted after {after}: {how}.",
    "time-wait-reused": "a new SYN on a four-tuple in TIME_WAIT: Linux accepts it (its "
                        "sequence number and timestamp are newer, RFC 6191)",
    "backoff": "exponential backoff, the gap doubles each time",
    "backoff-after-linear": "{linear} retries every {gap} first "
                            "(net.ipv4.tcp_syn_linear_timeouts), then exponential backoff, "
                            "the gap doubling",
    "backoff-linear": "every {gap} so far (net.ipv4.tcp_syn_linear_timeouts: the first "
                      "retries are linear; the gaps double after them)",
}

# Other names people type for a topic (normalised: lower case, '_' → '-').
_ALIASES = {
    "so-reuseaddr": "reuseaddr", "reuse-addr": "reuseaddr",
    "so-reuseport": "reuseport", "reuse-port": "reuseport",
    "msl": "2msl", "tcp-fin-timeout": "2msl", "fin-timeout": "2msl",
    "tcp-tw-reuse": "2msl", "tcp-tw-recycle": "2msl",
    "accept-queue": "backlog", "somaxconn": "backlog", "listen-backlog": "backlog",
    "syn-queue": "backlog",
    "zero-window": "window", "rwnd": "window", "flow-control": "window",
    "sliding-window": "window", "mss": "window",
    "shutdown": "close-vs-shutdown", "close": "close-vs-shutdown",
    "halfclose": "half-close", "three-way-handshake": "handshake",
    "four-way-handshake": "teardown", "close-sequence": "teardown",
    "tcp-header": "header", "segment": "header", "headers": "header",
    "sock-destroy": "kill", "reset": "kill", "ss-k": "kill",
    "slow-connection": "slow", "why": "slow", "limited-by": "slow",
}

# `sockstat kill` and `sockstat why`: what resetting frees, what limits a connection
_ACTION_TOPICS: tuple[Explanation, ...] = (
    Explanation(
        topic="kill",
        title="Resetting a socket (sockstat kill, ss -K): what it frees and what it does not",
        meaning=(
            "The kernel can abort a socket on request (SOCK_DESTROY over sock_diag, "
            "CONFIG_INET_DIAG_DESTROY, CAP_NET_ADMIN): a connection is sent an RST and "
            "removed from the socket table, so its port, its buffers and its four-tuple "
            "are free at once. The program that owns it is not told: its file descriptor "
            "stays open; the first read() or write() that notices fails with "
            "ECONNABORTED, later reads return end of file and writes fail with EPIPE. "
            "A TIME_WAIT or SYN_RECV entry has no owner, so nothing else is left "
            "behind."),
        when_many=(
            "A CLOSE_WAIT pile is a program bug: resetting the sockets frees the ports and "
            "the memory, but the process still holds one file descriptor per socket until "
            "it closes them, so the leak continues. Fix the missing close() or restart the "
            "program; kill buys time."),
        remedy="Preview with `sockstat kill FILTERS`, then add --yes.",
        myths=(
            "Killing a CLOSE_WAIT socket does not give its file descriptor back: only the "
            "program's close() (or its exit) does.",
        ),
        see_also=("close-wait", "close-vs-shutdown"),
    ),
    Explanation(
        topic="slow",
        title="Why is this connection slow? What limits a sender",
        meaning=(
            "A sending connection is always limited by something, and the kernel keeps "
            "the time it spent limited by each (tcp_info busy_time, rwnd_limited, "
            "sndbuf_limited). receiver_window: the peer's advertised window is full, the "
            "reading program is too slow. send_buffer: the socket's send buffer is full "
            "before the window or the network are (SO_SNDBUF, net.ipv4.tcp_wmem). "
            "congestion: the congestion window is small after losses, data is "
            "retransmitted and the RTT is inflated over min_rtt. network: "
            "retransmission timeouts, the path loses packets or the peer is gone. "
            "application: the program has nothing more to send, the network is waiting "
            "for it."),
        remedy="`sockstat why --port P` classifies each busy connection over an interval.",
        see_also=("window", "established"),
    ),
)

# What `sockstat kill` frees and keeps, by the kind of socket (placeholders: {owner},
# {fd}, {port}); `keeps` is empty when nothing stays behind.
KILL_FREES = {
    "close_wait": "the connection, its buffers and local port {port}",
    "connection": "the connection (the peer gets an RST), its buffers and local port {port}",
    "listener": "port {port}: new connections are refused",
    "mini": "the kernel's record of this connection and its four-tuple, at once",
    "udp": "port {port}: datagrams sent to it are no longer delivered, and another "
           "program may bind it",
}
KILL_KEEPS = {
    "close_wait": "{owner} still holds {fd} until it closes it: fix the missing close() "
                  "or restart the program",
    "connection": "{owner} keeps {fd}; its next read or write fails (ECONNABORTED)",
    "listener": "{owner} keeps {fd}; accept() on it fails",
    "mini": "",
    "udp": "{owner} keeps {fd}; its next call on it fails once (ECONNABORTED), then the "
           "socket is unbound (a later send picks a new port)",
}
# the owner of a socket whose holder could not be read (another user's /proc/PID/fd)
KILL_UNKNOWN_OWNER = ("the owning process (unknown: run as root, or with CAP_SYS_PTRACE "
                      "and CAP_DAC_READ_SEARCH, to see it)")

# `slow_connection` / `sockstat why`: per limit, what it means and what to do
SLOW_EXPLANATION = {
    "receiver_window": (
        "The peer's receive window was full for {rwnd_share}% of the time this connection "
        "had data to send (its window is now {snd_wnd} bytes): the program reading at "
        "{peer} does not read as fast as this side writes, or keeps a small receive "
        "buffer."),
    "receiver_window_full": (
        "The data in flight ({in_flight} bytes) fills the peer's receive window "
        "({snd_wnd} bytes): the program reading at {peer} does not read as fast as this "
        "side writes, or keeps a small receive buffer."),
    "send_buffer": (
        "The send buffer was full for {sndbuf_share}% of the time this connection had "
        "data to send, before the peer's window or the network limited it: the socket's "
        "SO_SNDBUF (or net.ipv4.tcp_wmem's maximum) is too small for this path."),
    "send_buffer_inferred": (
        "The program had data to send {busy_share}% of the interval and was not "
        "application-limited, yet only {in_flight} bytes were in flight where the peer's "
        "window and the congestion window allowed {allowed}: writes wait for room in a "
        "send buffer that is too small (SO_SNDBUF, net.ipv4.tcp_wmem)."),
    "congestion": (
        "Congestion control holds the sender back: {retrans_bytes} bytes retransmitted "
        "in the interval, congestion window {cwnd} segments (ssthresh {ssthresh}), RTT "
        "{rtt_ms} ms against a minimum of {min_rtt_ms} ms."),
    "network": (
        "The path loses packets or the peer stopped answering: {rtos} retransmission "
        "timeout(s) in the interval, {retransmits} retransmission(s) of the current "
        "segment, backoff {backoff}."),
    "network_stuck": (
        "Nothing was acknowledged in the interval although the connection had data to "
        "send {busy_share}% of it ({send_q} bytes queued, the peer's window open): the "
        "data does not get through. A path or a device drops it, or the peer is gone."),
    "application": (
        "The network and the peer could take more: the program had data to send only "
        "{busy_share}% of the interval ({sent_bytes} bytes acknowledged); the rest of the "
        "time it had nothing to send."),
    "application_limited": (
        "The kernel marks this connection application-limited: whatever the program "
        "wrote was sent at once, with room left in the windows ({sent_bytes} bytes "
        "acknowledged in the interval). The program writes less than the network and "
        "the peer could carry."),
}
SLOW_REMEDY = {
    "receiver_window": (
        "Look at the receiver ({peer}): make it read faster or in bigger chunks, and let "
        "its receive buffer grow (do not pin a small SO_RCVBUF; net.ipv4.tcp_rmem)."),
    "send_buffer": (
        "Raise SO_SNDBUF in the program, or stop setting it so autotuning can grow it up "
        "to net.ipv4.tcp_wmem's maximum."),
    "congestion": (
        "Find the loss: a saturated link or queue on the path (compare with other "
        "connections to the same peer); a different congestion control (BBR) copes "
        "better with random loss."),
    "network": (
        "Check the path and the peer: is it up, does a firewall or NAT drop the flow? "
        "TCP_USER_TIMEOUT and keepalives end connections to dead peers sooner."),
    "application": (
        "Nothing to tune in TCP: look at the program (what it waits for before writing: "
        "a database, a lock, its own reads)."),
}

TOPICS: dict[str, Explanation] = {e.topic: e for e in (*_STATES, CLOSED, *_TOPICS, HEADER,
                                                       *_ACTION_TOPICS)}
STATE_TOPICS: tuple[str, ...] = tuple(e.topic for e in _STATES) + ("closed",)
OTHER_TOPICS: tuple[str, ...] = (*(e.topic for e in _TOPICS), HEADER.topic,
                                 *(e.topic for e in _ACTION_TOPICS))
_BY_STATE: dict[TcpState, Explanation] = {e.state: e for e in _STATES if e.state}


def topic_name(state: TcpState) -> str:
    """TcpState.FIN_WAIT1 -> 'fin-wait1' (the spelling used for topics and demos)."""
    if state is TcpState.CLOSE:
        return "closed"  # the topic covers TCP's CLOSED as well as UDP's UNCONN
    return state.slug


def resolve(name: str | TcpState) -> str:
    """Any spelling of a state or topic -> its canonical topic name; UsageError if unknown."""
    if isinstance(name, TcpState):
        return topic_name(name)
    key = name.strip().lower().replace("_", "-")
    if key in TOPICS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    try:
        state = TcpState.parse(key)
    except ValueError:
        state = None
    if state is not None and topic_name(state) in TOPICS:
        return topic_name(state)
    raise UsageError(f"nothing to explain about {name!r} (topics: {', '.join(TOPICS)})")


def text(topic: str | TcpState) -> Explanation:
    """The explanation of a state or topic, in any spelling. Raises UsageError if unknown."""
    return TOPICS[resolve(topic)]


def state_text(state: TcpState | str) -> str:
    """The one-paragraph meaning of a state (what `sockstat check` quotes)."""
    return text(state).meaning


def remedy(topic: str | TcpState) -> str:
    """The short remedy for a pile of sockets in a state (or a topic); may be empty."""
    e = text(topic)
    return e.remedy or e.when_many


# The drops detector (sockstat.diagnose.drops): a socket that dropped datagrams or
# packets, and the host counters that rose with no socket in view to blame.
DROPS_UDP_EXPLANATION = (
    "The kernel dropped {drops:,} datagrams addressed to this socket because its receive "
    "buffer was full: {owner} does not read them as fast as they arrive. The receive "
    "buffer holds {rcvbuf} (rcvbuf; now {rmem} in use); every datagram that arrives while "
    "it is full is lost, counted here and in the host's Udp RcvbufErrors."
)
DROPS_UDP_REMEDY = (
    "Read faster: more reader threads or processes on the port (SO_REUSEPORT spreads "
    "datagrams over them), less work per datagram before the next recv(). Absorb bursts "
    "with a bigger receive buffer: setsockopt(SO_RCVBUF) in the program (the kernel "
    "doubles the value and caps it at net.core.rmem_max{rmem_max}; root may exceed it with "
    "SO_RCVBUFFORCE), or raise net.core.rmem_default{rmem_default} for programs that never "
    "ask."
)
DROPS_TCP_EXPLANATION = (
    "The kernel dropped {drops:,} packets for this listener: SYNs and handshake ACKs "
    "refused because its accept queue or SYN queue was full, or memory ran short. "
    "Clients see connects that take seconds (SYN retransmissions) or fail."
)
DROPS_TCP_REMEDY = (
    "Make {owner} accept() faster (more workers, no blocking work in the accept loop) "
    "and give it a larger listen() backlog (capped by net.core.somaxconn); `sockstat -l` "
    "shows queued/backlog."
)
DROPS_HOST_EXPLANATION = (
    "The host's UDP counters rose (RcvbufErrors +{rcvbuf:,}, InErrors +{inerrors:,} in "
    "{seconds:.1f} s): datagrams were dropped because a socket's receive buffer was full, "
    "but no UDP socket in view dropped any. The dropping socket is outside this check "
    "(filters, another network namespace or container), or lived only briefly."
)
DROPS_HOST_REMEDY = (
    "Find it while it happens: `sockstat -um` (the Drops column) on the host and in each "
    "container's network namespace (nsenter -n -t PID sockstat -um). Then make it read "
    "faster or give it a bigger SO_RCVBUF (capped by net.core.rmem_max); raising "
    "net.core.rmem_default helps programs that never set one."
)
