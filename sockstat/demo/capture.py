"""Capture a demo's own TCP segments on the loopback interface (`demo --packets`).

An AF_PACKET socket (SOCK_DGRAM: the IP header first, no link-layer header) bound to
`lo` with a classic BPF program attached (SO_ATTACH_FILTER): the kernel hands this
process only TCP segments from or to the ports the demo listens on, cut to their headers.
Everything else on the machine stays unread. Needs CAP_NET_RAW (root); without it
`open_capture` raises CaptureDenied and the demo runs without segments.

The BPF program is assembled here by hand (struct sock_filter, 8 bytes an instruction)
because nothing in the stdlib compiles filter expressions, and the tools that do
(libpcap, tcpdump -dd) are not dependencies we may have; the program is ~20 fixed
instructions plus two compares per port.

Loopback shows every segment twice on AF_PACKET: once leaving (PACKET_OUTGOING) and once
arriving (PACKET_HOST). Only the outgoing copy is kept. The socket is created with
protocol 0, so it receives nothing before the filter is attached and it is bound.

A thread reads the segments while the demo runs and, after each batch, calls the
caller's `sample()`, which reads the kernel's states and reports them with reading()
(so does the lab whenever it polls); at the end each segment gets the first reading
taken after it, if no other segment was sent while it was taken. Bounded:
at most MAX_PACKETS are kept (the rest counted), the thread stops with the demo, and
the socket is closed on every exit path (use it as a context manager).
"""

from __future__ import annotations

import array
import bisect
import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35  # and SCM_TIMESTAMPNS: the kernel's receive time of each packet
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SNAP_LENGTH = 160  # IPv4 60 + TCP 60 (or IPv6 40 + TCP 60), with room to spare
MAX_PACKETS = 2000
MAX_PORTS = 32  # the filter's jumps are 8-bit: this keeps every jump in range
RECEIVE_BUFFER = 4 << 20
POLL = 0.05

# classic BPF opcodes (linux/bpf_common.h, linux/filter.h)
LD_B_ABS, LD_H_ABS, LD_H_IND = 0x30, 0x28, 0x48
LDX_B_MSH = 0xB1  # X = 4 * (packet[k] & 0x0f): the IPv4 header length
ALU_AND_K = 0x54
JEQ_K, JSET_K = 0x15, 0x45
RET_K = 0x06

ACCEPT, DROP = "accept", "drop"


class CaptureDenied(Exception):
    """The capture cannot run here (no CAP_NET_RAW, no AF_PACKET)."""


@dataclass
class Captured:
    """One segment as read: the kernel's timestamp, the packet bytes (cut at the snap
    length), and the first reading of the kernel's states taken after it, if one can be
    told to belong to it (see Capture.assign_states): (local, remote) -> state."""

    time: float
    data: bytes
    states: dict | None = None


@dataclass
class Capture:
    """The capture socket and its reader thread. `watch(port)` adds a port to the kernel
    filter (do it before any segment to that port is sent)."""

    sock: socket.socket
    sample: Callable[[], None] | None = None
    packets: list[Captured] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    over_cap: int = 0  # segments seen after MAX_PACKETS were kept
    kernel_drops: int = 0  # segments the kernel dropped (our buffer was full)
    phases: list[tuple[float, str]] = field(default_factory=list)
    readings: list[tuple[float, float, dict]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reading: threading.Lock = field(default_factory=threading.Lock)  # the socket's reader

    # ---- the filter ------------------------------------------------------------------

    def watch(self, port: int) -> None:
        with self._lock:
            if port in self.ports or len(self.ports) >= MAX_PORTS or self.sock.fileno() < 0:
                return
            self.ports.append(port)
            attach_filter(self.sock, self.ports)

    # ---- reading ---------------------------------------------------------------------

    def start(self, sample: Callable[[], None] | None = None) -> Capture:
        self.sample = sample
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()
        return self

    def mark(self, phase: str) -> None:
        """Note that the demo entered a phase ('clean-up'): segments after it belong to it."""
        self.phases.append((time.time(), phase))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self.sock], [], [], POLL)
            except (OSError, ValueError):
                return
            if readable:
                with self._reading:
                    self._drain()

    def _read_queued(self) -> int:
        """Read what the kernel has queued; how many segments were kept."""
        got = 0
        while True:
            try:
                data, ancillary, _, address = self.sock.recvmsg(
                    SNAP_LENGTH, socket.CMSG_SPACE(16), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError:
                return got
            if address[2] != PACKET_OUTGOING:
                continue  # loopback's second copy, as it arrives
            if len(self.packets) >= MAX_PACKETS:
                self.over_cap += 1
                continue
            self.packets.append(Captured(_timestamp(ancillary), data))
            got += 1

    def _drain(self) -> None:
        """Read what is queued, then have the kernel's states read (see reading())."""
        if self._read_queued() and self.sample is not None:
            with contextlib.suppress(Exception):  # narration only: never stop the demo
                self.sample()
            self._read_queued()

    def snapshot(self) -> list[Captured]:
        """Everything captured so far (what is queued read now), states assigned."""
        with self._reading:
            if self.sock.fileno() >= 0:
                self._read_queued()
            self.assign_states()
            return list(self.packets)

    def reading(self, began: float, ended: float, states: dict) -> None:
        """The kernel's states, read between `began` and `ended` (time.time()), by the
        reader thread after a batch or by the lab while it polls. Matched to segments by
        assign_states()."""
        with self._lock:
            self.readings.append((began, ended, states))

    def assign_states(self) -> None:
        """Give each reading to the last segment sent before it began, unless a segment
        was sent while it ran (then it is unclear which one it shows). A segment keeps
        its first reading: the closest to 'just after'."""
        in_time = sorted(self.packets, key=lambda p: p.time)  # CPUs may stamp out of order
        times = [p.time for p in in_time]
        with self._lock:
            readings = sorted(self.readings, key=lambda r: r[0])
        for began, ended, states in readings:
            after = bisect.bisect_left(times, began)  # in_time[after:] were sent later
            if after == 0 or (after < len(times) and times[after] <= ended):
                continue
            if in_time[after - 1].states is None:
                in_time[after - 1].states = states

    def stop(self) -> None:
        """Stop the thread, read what is left, close the socket. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        if self.sock.fileno() >= 0:
            with self._reading:
                self._read_queued()
            with contextlib.suppress(OSError):
                stats = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
                self.kernel_drops += struct.unpack("II", stats)[1]
            self.sock.close()
            self.assign_states()

    def wait_for(self, predicate: Callable[[list[Captured]], bool], timeout: float) -> bool:
        """Poll the captured segments until predicate holds (True) or timeout (False)."""
        deadline = time.monotonic() + timeout
        while not predicate(list(self.packets)):
            if time.monotonic() >= deadline or self._stop.is_set():
                return False
            time.sleep(POLL)
        return True

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _timestamp(ancillary) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return seconds + nanoseconds / 1e9
    return time.time()


def open_capture(interface: str = "lo") -> Capture:
    """The capture socket on `interface`, filter attached (no port yet: drops all).
    CaptureDenied without CAP_NET_RAW."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    except PermissionError as exc:
        raise CaptureDenied("needs root (CAP_NET_RAW)") from exc
    except (OSError, AttributeError) as exc:
        raise CaptureDenied(f"no AF_PACKET socket here ({exc})") from exc
    try:
        attach_filter(sock, [])
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((interface, ETH_P_ALL))
    except OSError as exc:
        sock.close()
        raise CaptureDenied(f"cannot capture on {interface}: {exc.strerror or exc}") from exc
    return Capture(sock)


# ---- the BPF program -----------------------------------------------------------------

Instruction = tuple[int, object, object, int]  # opcode, jump if true, if false, k


def filter_program(ports: list[int]) -> list[tuple[int, int, int, int]]:
    """Classic BPF: accept (cut at SNAP_LENGTH) a TCP segment over IPv4 or IPv6 whose
    source or destination port is in `ports`; drop everything else (and IPv4 fragments,
    IPv6 with extension headers). No ports: drop all. Offsets count from the IP header
    (SOCK_DGRAM)."""
    if not ports:
        return [(RET_K, 0, 0, 0)]
    code: list[Instruction | str] = [
        (LD_B_ABS, 0, 0, 0), (ALU_AND_K, 0, 0, 0xF0),
        (JEQ_K, 0, "ipv6", 0x40),
        (LD_B_ABS, 0, 0, 9), (JEQ_K, 0, DROP, 6),  # protocol TCP
        (LD_H_ABS, 0, 0, 6), (JSET_K, DROP, 0, 0x1FFF),  # not a fragment
        (LDX_B_MSH, 0, 0, 0),
        (LD_H_IND, 0, 0, 0), *_any_port(ports, "ipv4 dst"),
        "ipv4 dst", (LD_H_IND, 0, 0, 2), *_any_port(ports, DROP),
        "ipv6", (JEQ_K, 0, DROP, 0x60),
        (LD_B_ABS, 0, 0, 6), (JEQ_K, 0, DROP, 6),  # next header TCP
        (LD_H_ABS, 0, 0, 40), *_any_port(ports, "ipv6 dst"),
        "ipv6 dst", (LD_H_ABS, 0, 0, 42), *_any_port(ports, DROP),
        DROP, (RET_K, 0, 0, 0),
        ACCEPT, (RET_K, 0, 0, SNAP_LENGTH),
    ]
    return _assemble(code)


def _any_port(ports: list[int], otherwise: str) -> list[Instruction]:
    """Jump to ACCEPT if the loaded port is one of `ports`, else to `otherwise`."""
    compares: list[Instruction] = [(JEQ_K, ACCEPT, 0, p) for p in ports[:-1]]
    return [*compares, (JEQ_K, ACCEPT, otherwise, ports[-1])]


def _assemble(code: list) -> list[tuple[int, int, int, int]]:
    """Resolve labels (strings in the list; jump targets naming them) to the relative
    offsets BPF jumps use."""
    labels: dict[str, int] = {}
    instructions: list[Instruction] = []
    for item in code:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)
    out = []
    for at, (op, jt, jf, k) in enumerate(instructions):
        def offset(target, at=at) -> int:
            if isinstance(target, int):
                return target
            jump = labels[target] - at - 1
            if not 0 <= jump <= 255:
                raise ValueError(f"BPF jump to {target} out of range ({jump})")
            return jump
        out.append((op, offset(jt), offset(jf), k))
    return out


def attach_filter(sock: socket.socket, ports: list[int]) -> None:
    """Attach (or atomically replace) the socket's filter: struct sock_fprog
    {unsigned short len; struct sock_filter *filter;}, the array's address from
    array.buffer_info (the kernel copies the program during the call)."""
    program = filter_program(ports)
    raw = array.array("B", b"".join(struct.pack("HBBI", *ins) for ins in program))
    address, _ = raw.buffer_info()
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HP", len(program), address))
