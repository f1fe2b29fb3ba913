"""`sockstat demo` (real sockets in every TCP state, classic scenarios) and
`sockstat explain` (what a state or topic means).

flags -> sockstat.demo (states / scenarios / explain) -> sockstat.demo.render -> exit code.
A demo holds its sockets until Ctrl-C (on a terminal) or for --hold seconds, then the
lab resets them; Ctrl-C while holding is the normal way to end and exits 0.
"""

from __future__ import annotations

import contextlib
import enum
import signal
import sys
import threading
from typing import Annotated

import typer

from sockstat.cli import options as opt
from sockstat.status import ExitStatus

DEMO_EPILOG = opt.examples(
    ("sockstat demo --list", "the states and scenarios"),
    ("sockstat demo close-wait", "a CLOSE_WAIT, held until Ctrl-C"),
    ("sockstat demo time-wait", "a TIME_WAIT: the server closed first"),
    ("sockstat demo restart", "restart a server over its TIME_WAIT"),
    ("sockstat demo echo --model fork", "the echo server, one process per client"),
    ("sockstat demo all --hold 30", "every state at once, for 30 s"),
    ("sockstat demo syn-recv --json --hold 0", "for scripts"),
    ("sudo sockstat demo handshake --packets", "the segments, as a sequence diagram"),
)

EXPLAIN_EPILOG = opt.examples(
    ("sockstat explain time-wait", "a state"),
    ("sockstat explain reuseaddr", "a topic"),
    ("sockstat explain header", "the TCP header, field by field"),
    ("sockstat explain --list", "every state and topic"),
)


class EchoModel(enum.StrEnum):
    iterative = "iterative"
    thread = "thread"
    fork = "fork"


def register(app: typer.Typer) -> None:
    app.command("demo", epilog=DEMO_EPILOG,
                short_help="Real sockets in any TCP state, or a classic scenario, on "
                           "loopback (no root).")(demo)
    app.command("explain", epilog=EXPLAIN_EPILOG,
                short_help="What a TCP state or topic means, and its myths, "
                           "corrected.")(explain_command)


def demo(
    name: Annotated[str | None, typer.Argument(
        help="A state (close-wait, FIN_WAIT1 …), a scenario (handshake, teardown, "
             "restart, reuseport, half-close, close-vs-shutdown, backlog, zero-window, "
             "echo) or 'all'.", show_default=False)] = None,
    hold: Annotated[float | None, typer.Option(
        "--hold", min=0, metavar="SECONDS", callback=opt.finite,
        help="Keep the sockets this long, then clean up. Default: until Ctrl-C on a "
             "terminal; 0 (and the default when stdin is not a terminal) shows once and "
             "exits.", show_default=False)] = None,
    list_demos: Annotated[bool, typer.Option("--list", help="List the demos.")] = False,
    json: Annotated[bool, typer.Option(
        "--json", help="One JSON object (sockets seen, timeline), printed as soon as the "
                       "demo is ready.")] = False,
    model: Annotated[EchoModel | None, typer.Option(
        "--model", case_sensitive=False,
        help="echo only: how the server serves clients.", show_default=False)] = None,
    ipv6: Annotated[bool, typer.Option("-6", "--ipv6",
                                       help="Use ::1 instead of 127.0.0.1.")] = False,
    packets: Annotated[bool, typer.Option(
        "--packets", help="Also capture the demo's own segments on lo and show them as a "
                          "sequence diagram (needs root: CAP_NET_RAW).")] = False,
    absolute: Annotated[bool, typer.Option(
        "--absolute", help="With --packets: absolute sequence numbers, not relative to "
                           "each side's ISN.")] = False,
) -> int:
    """Make real sockets in a TCP state (or run a classic scenario) on loopback, show
    both ends through sockstat with the state highlighted, explain it, hold it, then
    remove everything. No root needed."""
    from sockstat.demo import resolve, scenario_names, state_demo_names
    from sockstat.errors import UsageError

    _list_or_name(list_demos, name, "demo")
    if list_demos or name is None:
        if json:
            from sockstat.render.jsonout import dumps

            print(dumps({"states": state_demo_names(), "scenarios": scenario_names()}))
        else:
            from sockstat.demo.render import demo_list, make_console

            demo_list(make_console(), state_demo_names(), scenario_names())
        return ExitStatus.OK
    target = resolve(name)
    if model is not None and target.name != "echo":
        raise UsageError("--model applies to the echo demo only")
    if packets and target.kind == "all":
        raise UsageError("--packets shows one demo at a time, not 'all'")
    if absolute and not packets:
        raise UsageError("--absolute applies with --packets only")
    if hold is None:
        hold = float("inf") if sys.stdin.isatty() else 0.0
    try:
        with _Interrupts() as interrupts:
            if target.kind == "all":
                return _run_all(interrupts, hold=hold, json=json, ipv6=ipv6)
            return _run_one(interrupts, target, hold=hold, json=json, ipv6=ipv6,
                            model=model.value if model else None, packets=packets,
                            absolute=absolute)
    except KeyboardInterrupt:
        _say("\nInterrupted before the demo was ready; what it had made is removed.")
        return ExitStatus.INTERRUPTED


def _run_one(interrupts: _Interrupts, target, *, hold: float, json: bool, ipv6: bool,
             model: str | None, packets: bool = False, absolute: bool = False) -> int:
    from sockstat.demo import diagram, render, scenarios, sequence, states

    console = render.make_console()
    printer = None if json else render.TimelinePrinter(console)
    if not json:
        console.print(_heading(target))
    with contextlib.ExitStack() as stack:
        capture, refused = _open_capture(packets)
        if capture is not None:
            stack.enter_context(capture)  # stopped and closed on every way out
        if target.kind == "state":
            context = states.produce(target.state, ipv6=ipv6, on_step=printer,
                                     capture=capture)
        else:
            context = scenarios.run(target.name, ipv6=ipv6, on_step=printer, model=model,
                                    capture=capture)
        with context as lab:
            # not ready until the segments have told their story (Ctrl-C cleans up)
            story = None if capture is None else sequence.told(capture, lab, target.name)
            interrupts.ready = True
            rows = lab.sockets(processes=True, tcp_info=True)
            if json:
                data = render.lab_json(lab, rows, target.kind)
                if packets:
                    data.update(sequence.capture_json(capture, story, refused))
                _print_json(data)
                if capture is not None:
                    capture.stop()  # what it shows is out: nothing more to read
            else:
                render.sockets_table(console, lab, rows)
                if story is not None:
                    diagram.show(console, story, absolute=absolute)
                render.lab_footer(console, lab)
            if refused:
                from sockstat.cli.errors import say_note

                sys.stdout.flush()  # what was shown comes before what is said about it
                say_note(f"--packets {refused}; the demo ran without the segments.")
            _hold(interrupts, hold, lab.ports)
        if story is not None and not json:
            capture.stop()
            diagram.show_later(console, sequence.told(capture, lab), len(story.rows),
                               absolute=absolute)
    _report_cleanup([lab], json)
    return ExitStatus.OK


def _open_capture(wanted: bool):
    """(the capture, None), or (None, why it cannot run) — never an exception."""
    if not wanted:
        return None, None
    from sockstat.demo.capture import CaptureDenied, open_capture

    try:
        return open_capture(), None
    except CaptureDenied as exc:
        return None, str(exc)


def _run_all(interrupts: _Interrupts, *, hold: float, json: bool, ipv6: bool) -> int:
    from sockstat.demo import lab as lab_mod
    from sockstat.demo import render, states
    from sockstat.demo.lab import state_name

    console = render.make_console()
    with states.produce_all(ipv6=ipv6) as labs:
        interrupts.ready = True
        rows_by_lab = lab_mod.rows_of_labs(labs, processes=True)
        if json:
            seen = {lab.target.name: any(state_name(r.sock.state) == lab.target.name
                                         for r in rows)
                    for lab, rows in zip(labs, rows_by_lab, strict=True)}
            _print_json({"demo": "all", "kind": "all", "seen": seen,
                         "demos": [render.lab_json(lab, rows, "state")
                                   for lab, rows in zip(labs, rows_by_lab, strict=True)]})
        else:
            render.all_table(console, labs, rows_by_lab)
        _hold(interrupts, hold, sorted({p for lab in labs for p in lab.ports}))
    _report_cleanup(labs, json)
    return ExitStatus.OK


def _heading(target):
    from rich.text import Text

    from sockstat.demo import states
    from sockstat.demo.scenarios import SCENARIOS

    if target.kind == "state":
        summary = states.RECIPES[target.state].summary
    else:
        summary = SCENARIOS[target.name].summary
    return Text.assemble(("sockstat demo ", "dim"), (target.name, "bold"), ": ", summary, "\n")


def _print_json(obj) -> None:
    import json

    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()  # readers act on it while the sockets are held


def _hold(interrupts: _Interrupts, seconds: float, ports: list[int]) -> None:
    """Keep the sockets until the time is up or Ctrl-C (the normal way to end a demo)."""
    if seconds <= 0:
        return
    from sockstat.numbers import wait_timeout

    # beyond what Event.wait() can time (~292 years) a hold means "until a signal"
    timeout = wait_timeout(seconds)
    look = " ".join(f"-p {p}" for p in ports[:6])
    until = "Ctrl-C" if timeout is None else f"{seconds:g} s pass (or Ctrl-C)"
    _say(f"Holding these sockets until {until}. From another terminal: sockstat {look}")
    if interrupts.stop.wait(timeout):
        _say("")


def _report_cleanup(labs, json: bool) -> None:
    """What the clean-up did (stderr: talk). With --json only a warning, if any."""
    leftovers = [row for lab in labs if lab.cleanup for row in lab.cleanup.leftovers]
    if leftovers:
        from sockstat.demo.lab import state_name

        listed = ", ".join(f"{r.role} {state_name(r.sock.state)}" for r in leftovers)
        _say(f"warning: still in the kernel after clean-up: {listed}")
    if json:
        return
    closed = sum(lab.cleanup.sockets_closed for lab in labs if lab.cleanup)
    stopped = sum(lab.cleanup.processes_stopped for lab in labs if lab.cleanup)
    time_wait = sum(lab.cleanup.time_wait_left for lab in labs if lab.cleanup)
    text = f"Cleaned up: {closed} socket{'s' * (closed != 1)} closed with an RST"
    if stopped:
        text += f", {stopped} helper process{'es' * (stopped != 1)} stopped"
    text += "."
    if time_wait:
        many = time_wait != 1
        text += (f" {time_wait} TIME_WAIT socket{'s stay' if many else ' stays'} in the "
                 f"kernel for up to 60 s (only root could remove {'them' if many else 'it'} "
                 "early, with ss -K; waiting is what TIME_WAIT is for).")
    _say(text)


def _say(text: str) -> None:
    sys.stdout.flush()  # what was shown comes before what is said about it
    print(text, file=sys.stderr, flush=True)


class _Interrupts:
    """Ctrl-C, SIGTERM and SIGHUP. While a demo is being built they interrupt it (the lab
    cleans up as the exception unwinds, and the exit code says interrupted). Once it is
    ready they only end the hold: the clean-up then runs in the normal flow, never cut
    short by a second signal, and the demo exits 0."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.ready = False
        self.stop = threading.Event()

    def _handle(self, signum, frame) -> None:
        if not self.ready:
            raise KeyboardInterrupt
        self.stop.set()

    def __enter__(self) -> _Interrupts:
        from sockstat.signals import Handlers

        self._handlers = Handlers(dict.fromkeys(self.SIGNALS, self._handle)).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._handlers.__exit__(*exc)


def _list_or_name(listing: bool, name: str | None, what: str) -> None:
    """--list and a name ask for two different things: neither is dropped silently."""
    if listing and name is not None:
        from sockstat.errors import UsageError

        raise UsageError(f"--list takes no {what} name (got {name!r}): give one or the "
                         "other")


def explain_command(
    topic: Annotated[str | None, typer.Argument(
        help="A TCP state (time-wait, CLOSE_WAIT …) or a topic: reuseaddr, reuseport, "
             "2msl, backlog, window, close-vs-shutdown, half-close, handshake, teardown.",
        show_default=False)] = None,
    list_topics: Annotated[bool, typer.Option("--list", help="List what can be "
                                                             "explained.")] = False,
    json: Annotated[bool, typer.Option("--json", help="The text as JSON.")] = False,
) -> int:
    """What a TCP state or socket topic means, how you get there, how long it lasts, what
    to do when there are many, and the common myths, corrected."""
    from sockstat import explain
    from sockstat.demo import render

    _list_or_name(list_topics, topic, "topic")
    if list_topics or topic is None:
        states = [explain.TOPICS[t] for t in explain.STATE_TOPICS]
        others = [explain.TOPICS[t] for t in explain.OTHER_TOPICS]
        if json:
            _print_json({"states": [e.to_dict() for e in states],
                         "topics": [e.to_dict() for e in others]})
        else:
            render.topic_list(render.make_console(), states, others)
        return ExitStatus.OK
    exp = explain.text(topic)
    if json:
        _print_json(exp.to_dict())
    else:
        render.explanation(render.make_console(), exp, full=True)
    return ExitStatus.OK
