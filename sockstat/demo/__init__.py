"""The demo lab: every TCP state and the classic socket scenarios, made for real.

    lab.py        the bench: loopback sockets, helper processes, polling the kernel
                  through sockstat's collector, the timeline, clean-up by RST
    states.py     one recipe (a context manager) per observable TCP state
    scenarios.py  handshake, teardown, restart, reuseport, half-close,
                  close-vs-shutdown, backlog, zero-window, echo
    render.py     how the CLI shows a run (rich) and its JSON
    capture.py    --packets: the demo's own segments, read on lo (AF_PACKET + BPF)
    sequence.py   --packets: segments -> the annotated sequence diagram (pure)
    diagram.py    --packets: how the diagram and a header field by field look
(what every state and topic means is sockstat.explain, shared with `sockstat check`)

This module only names the demos; nothing here opens a socket.
"""

from __future__ import annotations

from dataclasses import dataclass

from sockstat.errors import UsageError
from sockstat.model import TcpState


@dataclass(frozen=True)
class DemoName:
    """What a name given to `sockstat demo` refers to."""

    name: str  # canonical: "fin-wait1", "half-close", "all"
    kind: str  # "state", "scenario" or "all"
    state: TcpState | None = None


def state_demo_names() -> dict[str, str]:
    """Canonical name -> one-line summary, for every state demo (in the order of a
    connection's life)."""
    from sockstat import explain
    from sockstat.demo import states

    return {explain.topic_name(state): recipe.summary
            for state, recipe in states.RECIPES.items()}


def scenario_names() -> dict[str, str]:
    from sockstat.demo.scenarios import SCENARIOS

    return {name: s.summary for name, s in SCENARIOS.items()}


def resolve(name: str) -> DemoName:
    """'FIN_WAIT1', 'fin-wait-1', 'syn_rcvd', 'Half_Close', 'all' … -> DemoName.

    Every state has its own demo under its own name (time-wait is the state; restarting
    a server over it is the `restart` scenario). Raises UsageError naming the demos for
    anything else.
    """
    from sockstat import explain
    from sockstat.demo import states
    from sockstat.demo.scenarios import SCENARIOS

    key = name.strip().lower().replace("_", "-")
    if key == "all":
        return DemoName("all", "all")
    if key in SCENARIOS:
        return DemoName(key, "scenario")
    try:
        state = TcpState.parse(key)
    except ValueError:
        state = None
    state = state.shown if state is not None else None
    if state in states.RECIPES:
        return DemoName(explain.topic_name(state), "state", state)
    if state is TcpState.CLOSE:
        raise UsageError("CLOSED cannot be shown: it is the absence of a connection, so the "
                         "kernel lists nothing (see 'sockstat explain closed')")
    names = [*state_demo_names(), *SCENARIOS, "all"]
    raise UsageError(f"unknown demo {name!r} (choose from {', '.join(names)})")
