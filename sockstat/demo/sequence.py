"""From captured segments to the story the notes draw: a sequence diagram, annotated.

Pure: takes what the capture read (bytes, kernel timestamps, the kernel's states after
each batch) and who is who (a function naming the end at an address pair), and returns
rows with sequence and acknowledgement numbers relative to each side's initial sequence
number, windows scaled by the sender's window-scale option, and notes where a segment
shows something tcp-notes.md teaches (the SYN and the FIN count as one byte, the last
ACK of the teardown, window 0 and its probes, SYN retransmissions, the RST of an
abortive close). The note texts live in the explain catalogue.

    story = sequence.build(capture.packets, role_of=lab.role_at, server_ports={port})
    for row in story.rows: row.to_dict()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sockstat.demo.capture import Captured
from sockstat.packets import ACK, FIN, RST, SYN, DecodeError, Segment, decode

MOD = 1 << 32
ABSENT = "—"  # an end the kernel does not list (yet)
GONE = "CLOSED"  # an end the kernel listed before and no longer does

Endpoint = tuple[str, int]


@dataclass
class Side:
    """What one end of a connection has sent so far."""

    isn: int | None = None
    wscale: int | None = None  # from its SYN
    sent_syn: bool = False
    last_ack: int | None = None  # the last ack number it sent
    window: int | None = None  # the last window it advertised (scaled)
    fin_end: int | None = None  # absolute seq just past its FIN
    fin_acked: bool = False
    syn_times: list[float] = field(default_factory=list)


@dataclass
class Connection:
    sides: dict[Endpoint, Side] = field(default_factory=dict)
    first_fin: Endpoint | None = None  # the active closer

    def side(self, endpoint: Endpoint) -> Side:
        return self.sides.setdefault(endpoint, Side())

    @property
    def scaling(self) -> bool:
        """Window scaling is on only if both SYNs carried the option (RFC 7323)."""
        return len(self.sides) == 2 and all(s.wscale is not None for s in self.sides.values())


@dataclass
class Row:
    """One segment of the diagram."""

    time: float  # seconds since the first segment
    src_role: str
    dst_role: str
    segment: Segment
    seq: int  # relative to the sender's ISN
    ack: int | None  # relative to the receiver's ISN; None without the ACK flag
    window: int  # scaled
    notes: list[str] = field(default_factory=list)
    states: tuple[str, str] | None = None  # sender's, receiver's, read after this segment
    client_to_server: bool = True  # the direction the diagram draws
    repeat: bool = False  # a SYN (or SYN-ACK) sent again: its options are the first one's

    def to_dict(self) -> dict:
        seg = self.segment
        return {
            "time": round(self.time, 6), "src_port": seg.src_port, "dst_port": seg.dst_port,
            "flags": seg.flag_names, "seq": self.seq, "ack": self.ack, "len": seg.length,
            "window": self.window, "options": seg.options.to_dict(),
            "src": self.src_role, "dst": self.dst_role,
            "seq_absolute": seg.seq, "ack_absolute": seg.ack if seg.has(ACK) else None,
            "window_field": seg.window, "retransmission": self.repeat,
            "notes": list(self.notes),
            "states": None if self.states is None else
            {"src": self.states[0], "dst": self.states[1]},
        }


@dataclass
class Story:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the whole capture
    undecodable: int = 0
    foreign: int = 0  # segments of other addresses on the demo's ports

    def first(self, flags: str) -> Row | None:
        """The first row whose flags are exactly `flags` ('SYN')."""
        return next((r for r in self.rows if r.segment.flag_names == flags), None)


def build(packets: Iterable[Captured], *, role_of: Callable[[Endpoint, Endpoint], str | None],
          server_ports: set[int], cleanup_from: float | None = None,
          defer_accept: bool = False, host: str | None = None) -> Story:
    """The diagram of `packets`. role_of(local, remote) names the end at `local` of the
    connection local-remote ('client 2'), or None; server_ports decide which end a
    diagram draws on the right; segments after `cleanup_from` belong to the lab's
    clean-up (its RSTs); with `host`, segments between other addresses (another program
    on one of the ports, on 127.0.0.2 say) are left out and counted."""
    from sockstat import explain

    story = Story()
    connections: dict[frozenset, Connection] = {}
    states_seen: set[tuple[Endpoint, Endpoint]] = set()  # ends the kernel has listed
    last_state: dict[tuple[Endpoint, Endpoint], str] = {}  # the last reading of each end
    finished: list[Connection] = []  # earlier incarnations of a four-tuple
    last_syn: dict[tuple, Row] = {}  # the last SYN row of each end
    start = None
    for captured in packets:
        try:
            seg = decode(captured.data)
        except DecodeError:
            story.undecodable += 1
            continue
        if host is not None and not seg.src == seg.dst == host:
            story.foreign += 1
            continue
        if start is None:
            start = captured.time
        src, dst = seg.source, seg.destination
        key = frozenset((src, dst))
        conn = connections.setdefault(key, Connection())
        reused = ""
        if (seg.has(SYN) and not seg.has(ACK) and conn.side(src).sent_syn
                and seg.seq != conn.side(src).isn):
            # a new connection on the same four-tuple (a new incarnation)
            if last_state.get((dst, src)) == "TIME_WAIT":
                reused = explain.SEGMENT_NOTES["time-wait-reused"]
            finished.append(conn)
            conn = connections[key] = Connection()
        me, peer = conn.side(src), conn.side(dst)
        row = Row(time=captured.time - start,
                  src_role=role_of(src, dst) or f":{seg.src_port}",
                  dst_role=role_of(dst, src) or f":{seg.dst_port}", segment=seg, seq=0,
                  ack=None, window=seg.window,
                  client_to_server=seg.dst_port in server_ports
                  or seg.src_port not in server_ports)
        row.repeat = seg.has(SYN) and me.sent_syn and seg.seq == me.isn
        if row.repeat and not seg.has(ACK) and (key, src) in last_syn:
            # sent again: the one before got no answer
            last_syn[key, src].notes.append(explain.SEGMENT_NOTES["syn-unanswered"])
        if seg.has(SYN) and not seg.has(ACK):
            last_syn[key, src] = row
        if reused:
            row.notes.append(reused)
        row.notes.extend(_annotate(seg, captured.time - start, me, peer, conn, src,
                                   explain.SEGMENT_NOTES, in_cleanup=cleanup_from is not None
                                   and captured.time >= cleanup_from))
        row.seq = (seg.seq - (me.isn if me.isn is not None else seg.seq)) % MOD
        if seg.has(ACK):
            if peer.isn is None:  # the peer's SYN was not seen: count from here
                peer.isn = seg.ack
            row.ack = (seg.ack - peer.isn) % MOD
        if not seg.has(SYN) and conn.scaling and me.wscale is not None:
            row.window = seg.window << me.wscale
        me.window = row.window
        if captured.states is not None:
            before = dict(last_state)
            states_seen.update(captured.states)
            last_state = {end: captured.states.get(end, GONE) for end in states_seen}
            row.states = tuple(captured.states.get(end)
                               or (GONE if end in states_seen else ABSENT)
                               for end in ((src, dst), (dst, src)))
            row.notes.extend(_state_notes(row, before, peer_sent_syn=peer.sent_syn,
                                          defer_accept=defer_accept))
        story.rows.append(row)
    # ends whose SYNs were retransmitted on the same schedule share one note
    schedules: dict[tuple[str, ...], tuple[list[str], list[float]]] = {}
    for conn in (*finished, *connections.values()):
        for endpoint, side in conn.sides.items():
            if len(side.syn_times) > 1:
                who = next((r.src_role for r in story.rows
                            if r.segment.source == endpoint), f":{endpoint[1]}")
                after = tuple(_seconds(t - side.syn_times[0]) for t in side.syn_times[1:])
                schedules.setdefault(after, ([], side.syn_times))[0].append(who)
    for names, times in schedules.values():
        story.notes.append(_syn_schedule(_names(names), times, explain.SEGMENT_NOTES))
    return story


def _state_notes(row: Row, before: dict, *, peer_sent_syn: bool,
                 defer_accept: bool) -> list[str]:
    """What the kernel's states after the segment show: an end now CLOSING; a bare
    final ACK after which the server is still SYN_RECV."""
    from sockstat import explain

    seg = row.segment
    src, dst = seg.source, seg.destination
    notes = []
    ends = ((src, dst), (dst, src))
    if any(now == "CLOSING" and before.get(end) != "CLOSING"
           for end, now in zip(ends, row.states or (), strict=False)):
        notes.append(explain.SEGMENT_NOTES["closing"])
    if (seg.flags & (SYN | FIN) == 0 and seg.has(ACK) and not seg.length and peer_sent_syn
            and row.states and row.states[1] == "SYN_RECV"):
        notes.append(explain.SEGMENT_NOTES["ack-ignored-defer" if defer_accept
                                           else "ack-dropped"])
    return notes


def _names(names: list[str]) -> str:
    """['client 4', 'client 5', 'client 6'] -> 'client 4, client 5 and client 6'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _annotate(seg: Segment, now: float, me: Side, peer: Side, conn: Connection,
              src: Endpoint, texts: dict[str, str], *, in_cleanup: bool) -> list[str]:
    """What this segment shows, in the notes' words; updates the sides' bookkeeping."""
    notes: list[str] = []
    seq_end = (seg.seq + seg.sequence_space) % MOD
    if seg.has(RST):
        return [texts["rst-linger" if in_cleanup else "rst"]]
    if seg.has(SYN):
        if me.sent_syn and seg.seq == me.isn:
            gap = now - me.syn_times[-1]
            key = "syn-ack-retransmit" if seg.has(ACK) else "syn-retransmit"
            notes.append(texts[key].format(after=_seconds(now - me.syn_times[0]),
                                           gap=_seconds(gap)))
        else:
            me.isn, me.wscale, me.sent_syn = seg.seq, seg.options.wscale, True
        me.syn_times.append(now)
    elif me.isn is None:
        me.isn = seg.seq  # the SYN was not seen: count from the first segment
    if seg.has(ACK):
        acked_syn = peer.sent_syn and peer.isn is not None and seg.ack == (peer.isn + 1) % MOD
        if acked_syn and me.last_ack != seg.ack and (seg.has(SYN) or me.sent_syn):
            notes.append(texts["syn-acked"])
        if peer.fin_end is not None and seg.ack == peer.fin_end and not peer.fin_acked:
            peer.fin_acked = True
            if me.fin_end is not None and conn.first_fin == src and not seg.has(FIN):
                notes.append(texts["last-ack"])
            else:
                notes.append(texts["fin-acked"])
        if (not seg.has(SYN) and peer.window == 0 and not seg.length and not seg.has(FIN)
                and peer.last_ack is not None and seg.seq == (peer.last_ack - 1) % MOD):
            notes.append(texts["probe"])
        me.last_ack = seg.ack
    if seg.has(FIN) and me.fin_end is None:
        me.fin_end = seq_end
        if conn.first_fin is None:
            conn.first_fin = src
            notes.append(texts["fin-first"])
        else:
            notes.append(texts["fin-second"])
    if not seg.has(SYN) and not seg.has(RST):
        scaled = seg.window << me.wscale if conn.scaling and me.wscale is not None \
            else seg.window
        if scaled == 0:
            notes.append(texts["window-zero" if me.window != 0 else "window-still-zero"])
        elif me.window == 0:
            notes.append(texts["window-open"])
    return notes


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def _syn_schedule(who: str, times: list[float], texts: dict[str, str]) -> str:
    """'client 2's SYN was retransmitted after 1.0 s, 2.0 s, 3.0 s, 5.0 s: …' with how the
    gaps grew."""
    after = [t - times[0] for t in times[1:]]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    linear = 1
    while linear < len(gaps) and gaps[linear] < gaps[0] * 1.25:
        linear += 1
    grows = any(b > a * 1.5 for a, b in zip(gaps, gaps[1:], strict=False))
    if grows and linear > 1:
        how = texts["backoff-after-linear"].format(linear=linear, gap=_seconds(gaps[0]))
    elif grows:
        how = texts["backoff"]
    else:
        how = texts["backoff-linear"].format(gap=_seconds(gaps[0]))
    return texts["syn-schedule"].format(
        who=who, after=", ".join(_seconds(a) for a in after), how=how)


def probe_seen(packets: list[Captured]) -> bool:
    """A zero-window probe was captured (the zero-window demo's story is told)."""
    from sockstat import explain

    probe = explain.SEGMENT_NOTES["probe"]
    story = build(packets, role_of=lambda local, remote: None, server_ports=set())
    return any(probe in row.notes for row in story.rows)


def backoff_seen(packets: list[Captured]) -> bool:
    """Some end's SYN was retransmitted with a gap clearly longer than the first one."""
    times: dict[tuple, list[float]] = {}
    for captured in packets:
        try:
            seg = decode(captured.data)
        except DecodeError:
            continue
        if seg.has(SYN) and not seg.has(ACK):
            times.setdefault((seg.source, seg.seq), []).append(captured.time)
    for sent in times.values():
        gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
        if len(gaps) >= 2 and gaps[-1] > gaps[0] * 1.5:
            return True
    return False


# what a demo waits for, with --packets, before it shows its segments: (until, at most s)
STORY_WAITS: dict[str, tuple[Callable[[list[Captured]], bool], float]] = {
    "zero-window": (probe_seen, 5.0),
    "syn-sent": (backoff_seen, 12.0),
}


def told(capture, lab, demo: str | None = None) -> Story:
    """The diagram of what `capture` (a sockstat.demo.capture.Capture) has read so far
    for `lab`; first, for a demo whose story takes time (STORY_WAITS), wait for it."""
    if demo in STORY_WAITS:
        until, at_most = STORY_WAITS[demo]
        capture.wait_for(until, at_most)
    packets = capture.snapshot()
    cleanup = next((t for t, phase in capture.phases if phase == "clean-up"), None)
    return build(packets, role_of=lab.role_at, server_ports=set(capture.ports),
                 cleanup_from=cleanup, defer_accept=lab.defer_accept, host=lab.host)


def capture_json(capture, story: Story | None, refused: str | None = None) -> dict:
    """`packets` and `capture` for a demo's JSON (docs/demo.md); `refused`: why there
    is no capture."""
    from sockstat.demo.capture import MAX_PACKETS

    if capture is None or story is None:
        return {"packets": None, "capture": {"error": f"--packets {refused}"}}
    return {"packets": [row.to_dict() for row in story.rows],
            "capture": {"interface": "lo", "ports": list(capture.ports),
                        "max_packets": MAX_PACKETS, "over_cap": capture.over_cap,
                        "kernel_drops": capture.kernel_drops,
                        "undecodable": story.undecodable, "foreign": story.foreign,
                        "notes": story.notes}}
