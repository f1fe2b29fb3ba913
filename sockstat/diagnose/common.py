"""Small helpers the detectors share: naming owners, counting peers, formatting numbers.

Pure functions over model objects; no I/O, no UI.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sockstat.humanize import duration
from sockstat.model import Endpoint, Socket


def owner_key(sock: Socket) -> tuple:
    """Group key for 'the process behind this socket': its pid, else its uid."""
    if sock.process is not None:
        return ("pid", sock.process.pid)
    return ("uid", sock.uid)


def owner_label(sock: Socket) -> str:
    """'nginx/812', or 'unknown process (uid 33)' when attribution failed or was skipped."""
    proc = sock.process
    if proc is not None:
        return f"{proc.name}/{proc.pid}"
    return f"unknown process (uid {sock.uid})"


def owner_evidence(sock: Socket) -> dict:
    proc = sock.process
    if proc is None:
        return {"pid": None, "process": None, "uid": sock.uid}
    return {"pid": proc.pid, "process": proc.name, "user": proc.user, "uid": sock.uid}


def top(items: Iterable, n: int = 5) -> list[dict]:
    """The n most common values with their counts: [{"value": ..., "count": n}, ...]."""
    return [{"value": value, "count": count} for value, count in Counter(items).most_common(n)]


def endpoint(ep: Endpoint) -> str:
    return str(ep)


def host_port(address: str, port: int) -> str:
    return str(Endpoint(address, port))


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def seconds(ms: int | float | None) -> float | None:
    return None if ms is None else round(ms / 1000.0, 1)


def human_seconds(s: float | None) -> str:
    """Compact duration for summaries: 850ms, 59s, 4m12s, 2h05m, 3d4h."""
    if s is None:
        return "unknown"
    return duration(int(s * 1000))


def percent(part: float, whole: float | None) -> float | None:
    if not whole:
        return None
    return round(100.0 * part / whole, 1)


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


# -- the shared texts (sockstat.explain is their one home) --------------------------

def _explanation(topic):
    from sockstat import explain

    return explain.text(topic)


def state_intro(topic, *, how_long: bool = False) -> str:
    """The state's one-line title from sockstat.explain ('CLOSE_WAIT: the peer
    closed; this program has not.'), optionally with how long the state lasts."""
    e = _explanation(topic)
    text = e.title.rstrip(".") + "."
    if how_long and e.how_long:
        text += " How long: " + e.how_long
    return text + " "


def myths(topic, *keywords: str) -> str:
    """The explain module's myths about a topic that mention any of `keywords`."""
    e = _explanation(topic)
    chosen = [m for m in e.myths if any(k in m for k in keywords)]
    return (" Myths: " + " ".join(chosen)) if chosen else ""


def see(topic: str) -> str:
    """A pointer to the longer text: ' More: sockstat explain close-wait.'"""
    _explanation(topic)  # an unknown topic is a bug: it raises here, in the tests
    return f" More: `sockstat explain {topic}`."


def interval_s(kernel) -> float | None:
    """Seconds between the two kernel samples, for evidence; None with one sample."""
    if kernel is None or kernel.seconds is None:
        return None
    return round(kernel.seconds, 3)


def kill_command(sockets) -> str:
    """The `sockstat kill` command that selects these sockets (a preview: it changes
    nothing without --yes), narrowed by state, owner and the peer or port they share."""
    states = sorted({s.state.slug for s in sockets})
    parts = ["sockstat kill"] + [f"-s {state}" for state in states]
    first = sockets[0]
    proc = first.process
    if proc is not None and not proc.via_listener \
            and all(s.process is not None and s.process.pid == proc.pid for s in sockets):
        parts.append(f"--pid {proc.pid}")
    elif all(s.inode and s.uid == first.uid for s in sockets):
        # the uid of a socket with a file; TIME_WAIT and other mini-sockets have no owner
        parts.append(f"--user {first.uid}")
    remotes = {s.remote.address for s in sockets}
    if len(remotes) == 1:
        parts.append(f"--remote {first.remote.address}")
    if len({s.remote.port for s in sockets}) == 1:
        parts.append(f"--dport {first.remote.port}")
    elif len({s.local.port for s in sockets}) == 1:
        parts.append(f"--sport {first.local.port}")
    return " ".join(parts)


def kill_remedy(sockets) -> str:
    """The remedy sentence offering `sockstat kill` for these sockets."""
    return (f" To free them now without a restart: `{kill_command(sockets)}` lists them, "
            "--yes resets them (the ports and buffers are freed; the process keeps its "
            "file descriptors until it closes them).")
