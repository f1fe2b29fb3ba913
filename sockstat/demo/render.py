"""How the lab looks: the live timeline, the kernel's view with the state highlighted,
the explanation, the `demo all` table, `explain` pages, and the JSON of a run.

Every function takes a rich Console (the CLI makes it: colour only on a terminal,
NO_COLOR honoured). The tables are short by nature (a demo makes a few dozen sockets at
most), so rich is affordable here.
"""

from __future__ import annotations

import os

from sockstat.demo.lab import Lab, Row, Step, state_name
from sockstat.model import Socket, TcpState, socket_to_dict
from sockstat.render import fmt
from sockstat.render.style import STATE_STYLE, use_colour

MAX_ROWS = 14  # longer tables keep the listeners and a few rows of each kind
ROWS_PER_GROUP = 3


UNBOUNDED = 1 << 20  # the console width for files and pipes: nothing wraps


def make_console(stream=None):
    """A rich Console on stdout (or `stream`): colour only on a terminal. Piped or to a
    file, the output is plain and unwrapped, one record a line: the width is unbounded,
    and the blanks rich pads lines with are dropped."""
    import sys

    from rich.console import Console

    stream = stream or sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    colour = use_colour(stream)
    console = Console(file=stream if colour and terminal else _Unpadded(stream),
                      no_color=not colour, highlight=False, emoji=False,
                      width=None if terminal else UNBOUNDED)
    console.unbounded = not terminal
    return console


def wrap_ratio(console) -> int | None:
    """ratio=1 for a column that takes the rest of a terminal's width and wraps; none
    when unbounded (piped), where a ratio would pad every line to the console width."""
    return None if getattr(console, "unbounded", False) else 1


class _Unpadded:
    """A text stream that drops the spaces before each newline (rich pads table cells)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.pending = ""
        self.encoding = getattr(stream, "encoding", "utf-8")

    def write(self, text: str) -> int:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self.stream.write(line.rstrip(" ") + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending.strip(" ") == "":
            pass  # keep it: more of the line may come
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


def _marker(console) -> str:
    encoding = (getattr(console.file, "encoding", None) or "").lower()
    return "▶" if encoding.startswith("utf") else ">"


def _state_style(label: str) -> str:
    try:
        return STATE_STYLE[TcpState[label]]
    except KeyError:  # CLOSED, —
        return "dim"


def state_cell(label: str):
    """'ESTABLISHED' or a group ('#1 ESTABLISHED · #2 SYN_SENT'), one line per member,
    each state in its colour."""
    from rich.text import Text

    text = Text()
    for i, part in enumerate(label.split(" · ")):
        if i:
            text.append("\n")
        prefix, _, state = part.rpartition(" ")
        if prefix:
            text.append(prefix + " ", style="dim")
        text.append(state, style=_state_style(state))
    return text


# ---- the timeline, printed while it happens ------------------------------------------

class TimelinePrinter:
    """Prints each Step as the lab records it, in columns that line up row after row."""

    STATE_WIDTH = 15

    def __init__(self, console) -> None:
        self.console = console
        self.first = True
        # what is left after #, who, client, server and the gaps between columns
        self.call_width = max(console.width - (2 + 10 + 2 * self.STATE_WIDTH + 8), 24)

    def _table(self):
        from rich.table import Table

        table = Table(box=None, padding=(0, 1), pad_edge=False, show_header=self.first,
                      header_style="dim", show_edge=False)
        table.add_column("#", width=2, justify="right", style="dim")
        table.add_column("who", width=10, style="bold")
        table.add_column("call → returned", width=self.call_width)
        table.add_column("client", width=self.STATE_WIDTH)
        table.add_column("server", width=self.STATE_WIDTH)
        return table

    def _line(self, step: Step) -> None:
        """Piped: the step as one line, its note included."""
        from rich.text import Text

        line = Text(f"{step.step}  {step.who}  {step.call}")
        if step.result:
            line.append(f"  → {step.result}")
        line.append(f"  client: {step.client_state}  server: {step.server_state}")
        if step.note:
            line.append(f"  note: {step.note}")
        self.console.print(line, soft_wrap=True)

    def __call__(self, step: Step) -> None:
        from rich.padding import Padding
        from rich.text import Text

        if self.first:
            self.console.print(Text("Step by step", style="bold underline"))
        if getattr(self.console, "unbounded", False):
            self.first = False
            self._line(step)
            return
        call = Text(step.call)
        if step.result:
            call.append("  → ", style="dim")
            call.append(step.result, style="bold")
        table = self._table()
        table.add_row(str(step.step), step.who, call, state_cell(step.client_state),
                      state_cell(step.server_state))
        self.console.print(table)
        self.first = False
        if step.note:
            self.console.print(Padding(Text(step.note, style="italic"), (0, 0, 0, 16)))


# ---- the kernel's view ---------------------------------------------------------------

def _highlighted(lab: Lab, row: Row) -> bool:
    if lab.highlight_roles:
        return row.role.split()[0] in lab.highlight_roles
    state = row.sock.state.shown
    return state in lab.highlight


def _where(lab: Lab, endpoint) -> str:
    if endpoint.port == 0:
        return "*"
    return f":{endpoint.port}" if endpoint.address == lab.host else str(endpoint)


def _holder(sock: Socket, shared_ports: set[int]) -> str:
    """Who holds the socket; for sockets no process holds, what they are instead."""
    if sock.inode:
        return fmt.process(sock) or "?"
    if sock.state is TcpState.TIME_WAIT:
        return "none: kernel only"
    if sock.state.shown is TcpState.SYN_RECV:
        return "none: request socket"
    if sock.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
        if sock.process and sock.local.port not in shared_ports:
            return f"accept queue of {sock.process.name}/{sock.process.pid}"
        return "an accept queue"
    return "none: orphan (closed)"


def _collapse(rows: list[Row]) -> tuple[list[Row], list[str]]:
    """Long tables: every listener, the first few rows of each kind, a summary of the rest."""
    if len(rows) <= MAX_ROWS:
        return rows, []
    kept: list[Row] = []
    seen: dict[str, int] = {}
    hidden: dict[str, dict[str, int]] = {}
    for row in rows:
        group = row.role.split()[0]
        if row.sock.state is TcpState.LISTEN or seen.get(group, 0) < ROWS_PER_GROUP:
            kept.append(row)
            seen[group] = seen.get(group, 0) + 1
        else:
            counts = hidden.setdefault(group, {})
            label = state_name(row.sock.state)
            counts[label] = counts.get(label, 0) + 1
    summary = [f"… {sum(c.values())} more {group} rows: " +
               ", ".join(f"{n} {state}" for state, n in c.items())
               for group, c in hidden.items()]
    return kept, summary


def _ports_text(lab: Lab) -> str:
    """'ports 41000, 52000' or, with many clients, 'port 41000 and 16 client ports'."""
    ports = lab.ports
    if len(ports) <= 6:
        return "ports " + ", ".join(str(p) for p in ports)
    servers = sorted({e.local[1] for e in lab.ends if e.remote is None})
    others = len(ports) - len(servers)
    return (f"port{'s' * (len(servers) != 1)} {', '.join(str(p) for p in servers)} and "
            f"{others} client ports")


def sockets_table(console, lab: Lab, rows: list[Row]) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print()
    console.print(Text.assemble(("In the kernel now", "bold underline"),
                                (f"  sockstat's view of {lab.host}, {_ports_text(lab)}",
                                 "dim")))
    if not rows:
        console.print("  (none)")
        return
    listeners: dict[int, int] = {}
    for row in rows:
        if row.sock.state is TcpState.LISTEN:
            listeners[row.sock.local.port] = listeners.get(row.sock.local.port, 0) + 1
    shared = {port for port, n in listeners.items() if n > 1}
    shown, summary = _collapse(rows)
    timers = any(r.sock.timer for r in shown)
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="dim")
    table.add_column("", width=1)
    table.add_column("end", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("Recv-Q", justify="right", no_wrap=True)
    table.add_column("Send-Q", justify="right", no_wrap=True)
    table.add_column("local", no_wrap=True)
    table.add_column("peer", no_wrap=True)
    table.add_column("process", min_width=12)
    if timers:
        table.add_column("timer")
    mark = _marker(console)
    for role, sock in shown:
        label = state_name(sock.state)
        hot = _highlighted(lab, Row(role, sock))
        cells = [
            Text(mark, style="bold") if hot else "",
            Text(role, style="bold" if hot else ""),
            Text(label, style=f"{_state_style(label)}{' bold reverse' if hot else ''}"),
            fmt.recv_q(sock), fmt.send_q(sock), _where(lab, sock.local),
            _where(lab, sock.remote), _holder(sock, shared),
        ]
        if timers:
            cells.append(fmt.timer(sock))
        table.add_row(*cells)
    console.print(table)
    for line in summary:
        console.print(Text("  " + line, style="dim"))


# ---- explanations --------------------------------------------------------------------

def explanation(console, exp, *, full: bool = False) -> None:
    """The explanation of a state or topic; the short form (full=False) is the one shown
    under a demo: which side, why, how long, and what many of them mean."""
    from rich.table import Table
    from rich.text import Text

    console.print()
    console.print(Text(exp.title, style="bold underline"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=wrap_ratio(console))
    fields = [("Which side", exp.side), ("What it means", exp.meaning)]
    if full:
        fields.append(("How you get there", exp.how_you_get_there))
    fields.append(("How long", exp.how_long))
    fields.append(("Many of them" if exp.is_state else "In production", exp.when_many))
    if full:
        fields.append(("What to do", exp.remedy))
    fields.extend(("Myth", myth) for myth in exp.myths)
    for label, value in fields:
        if value:
            grid.add_row(label, value)
    console.print(grid)
    if exp.fields:
        from sockstat.demo.diagram import header_fields

        console.print()
        header_fields(console, exp)
    more = []
    if exp.demo:
        more.append(f"sockstat demo {exp.demo}")
    if not full:
        more.append(f"sockstat explain {exp.topic}")
    if full and exp.see_also:
        more.append("sockstat explain " + ", ".join(exp.see_also))
    if more:
        console.print(Text("See: " + "  ·  ".join(more), style="dim"))


def lab_footer(console, lab: Lab) -> None:
    """What a run showed, and where to read more."""
    from rich.text import Text

    from sockstat import explain

    if lab.notes:
        from rich.table import Table

        console.print()
        bullets = Table.grid(padding=(0, 1))
        bullets.add_column(no_wrap=True)
        bullets.add_column(ratio=wrap_ratio(console))
        for note in lab.notes:
            bullets.add_row("•", note)
        console.print(bullets)
    if lab.target is not None:
        explanation(console, explain.text(lab.target))
        if lab.topic and lab.topic != explain.topic_name(lab.target):
            console.print(Text(f"See also: sockstat explain {lab.topic}", style="dim"))
    elif lab.topic:
        console.print()
        console.print(Text(f"More: sockstat explain {lab.topic}", style="dim"))


# ---- `sockstat demo all` -------------------------------------------------------------

def all_table(console, labs: list[Lab], rows_by_lab: list[list[Row]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="dim",
                  title="Every TCP state, on loopback, right now", title_style="bold",
                  title_justify="left")
    table.add_column("state", no_wrap=True)
    table.add_column("seen", no_wrap=True)
    table.add_column("end", no_wrap=True)
    table.add_column("local", no_wrap=True)
    table.add_column("peer", no_wrap=True)
    table.add_column("process")
    for lab, rows in zip(labs, rows_by_lab, strict=True):
        target = lab.target
        hits = [r for r in rows if target and state_name(r.sock.state) == target.name]
        name = target.name if target else lab.name
        if not hits:
            table.add_row(Text(name, style=_state_style(name)), Text("no", style="bold red"),
                          "", "", "", "")
            continue
        for i, (role, sock) in enumerate(hits):
            table.add_row(Text(name if not i else "", style=_state_style(name)),
                          Text("yes", style="green") if not i else "", role,
                          _where(lab, sock.local), _where(lab, sock.remote),
                          _holder(sock, set()))
    console.print(table)
    console.print(Text("CLOSED is not listed: it is the absence of a connection "
                       "(sockstat explain closed).", style="dim"))


# ---- lists and JSON ------------------------------------------------------------------

def demo_list(console, states: dict[str, str], scenarios: dict[str, str]) -> None:
    from rich.table import Table
    from rich.text import Text

    for title, names in (("States", states), ("Scenarios", scenarios)):
        table = Table(box=None, padding=(0, 1), pad_edge=False, show_header=False,
                      title=title, title_style="bold", title_justify="left")
        table.add_column(no_wrap=True)
        table.add_column()
        for name, summary in names.items():
            style = _state_style(name.upper().replace("-", "_")) if title == "States" else ""
            table.add_row(Text(name, style=style), summary)
        if title == "Scenarios":
            table.add_row("all", "every state above at once, and a table state → seen")
        console.print(table)
        console.print()
    console.print(Text("sockstat demo <name> [--hold SECONDS] [--json] [-6]   ·   "
                       "sockstat explain <state|topic>", style="dim"))


def topic_list(console, states: list, topics: list) -> None:
    from rich.table import Table
    from rich.text import Text

    for title, items in (("States", states), ("Topics", topics)):
        table = Table(box=None, padding=(0, 1), pad_edge=False, show_header=False,
                      title=title, title_style="bold", title_justify="left")
        table.add_column(no_wrap=True)
        table.add_column()
        for exp in items:
            label = exp.title.split(":", 1)
            table.add_row(Text(exp.topic, style=_state_style(label[0])),
                          label[-1].strip())
        console.print(table)
        console.print()


def lab_json(lab: Lab, rows: list[Row], kind: str) -> dict:
    target = lab.target
    return {
        "demo": lab.name,
        "kind": kind,
        "title": lab.title,
        "target": target.name if target else None,
        "reached": None if target is None else
        any(state_name(r.sock.state) == target.name for r in rows),
        "family": "ipv6" if ":" in lab.host else "ipv4",
        "host": lab.host,
        "ports": lab.ports,
        "pid": os.getpid(),
        "processes": lab.processes,
        "sockets": [{"role": r.role, "highlight": _highlighted(lab, r),
                     "state_name": state_name(r.sock.state), **socket_to_dict(r.sock)}
                    for r in rows],
        "timeline": [step.to_dict() for step in lab.timeline],
        "notes": lab.notes,
        "facts": lab.facts,
        "leaves_time_wait": lab.leaves_time_wait,
        "explain": lab.topic,
    }
