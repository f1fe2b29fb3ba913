"""The man page sockstat(1), generated from the command line itself.

The command tree comes from sockstat.completions.build() (the walk of the Typer app the
completion scripts use), so every command, option, default and example in `--help` is in
the page; the sections no --help has (DESCRIPTION, EXIT STATUS, FILES, SEE ALSO) are
written here, the file list from the collectors' own path tables. Output is plain man(7)
macros, ASCII only and deterministic (no date), so `groff -man -ww` and `man -l` take it
without a warning and `tests/test_manpage.py` can tell when man/ is stale. Regenerate with

    python -m sockstat.manpage --write man/

Hand-written rather than a help2man-style tool: those need a build dependency and parse
--help's rich boxes back into text, losing the option/panel structure we already have.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sockstat.completions import PROG, Node, Param, build

FILE_NAME = "sockstat.1"
SECTION = "1"

NAME_LINE = "list TCP, UDP and UNIX sockets with their processes, and diagnose socket problems"
DESCRIPTION = """\
`sockstat` lists TCP, UDP and UNIX sockets like ss(8) and netstat(8), with the process that
holds each one, and says which of them are a problem. Without a command it lists the
sockets, grouped by state; the commands below summarize them, diagnose them (and say
what limits a slow connection), show them live, export them to Prometheus, reset them,
and make real sockets in every TCP state on loopback to learn from.

Sockets come from the kernel's sock_diag netlink interface (the source ss(8) uses), from
/proc/net, or from psutil elsewhere. Naming other users' processes needs root, or the
capabilities CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE; without them sockstat says once what
is hidden and shows the rest.

Output is coloured only on a terminal (NO_COLOR turns colour off, FORCE_COLOR on); piped
output is plain and unwrapped. Errors are one line on standard error, starting with
`sockstat: error:`."""

EXIT_STATUS = (
    ("0", "Success; `check`: nothing to report."),
    ("1", "A runtime failure (no socket source, an I/O error); `check`: warnings."),
    ("2", "Bad input (an unknown state, a port out of range, a bad CIDR, a pid that does "
          "not exist); `check`: a critical finding."),
    ("3", "`check` only: it could not run (bad input or no source), the monitoring "
          "plugin convention for UNKNOWN."),
    ("130", "Interrupted with Ctrl-C while working (ending a live view or a held demo "
            "with Ctrl-C exits 0)."),
    ("143, 129", "`watch` ended by SIGTERM or SIGHUP; `export` treats SIGTERM as a normal "
                 "stop (0)."),
)

ENVIRONMENT = (
    ("NO_COLOR", "When set (to anything), no colour, even on a terminal."),
    ("FORCE_COLOR", "When set to a true value, colour even when not on a terminal."),
    ("TERM", "When `dumb`, no colour."),
    ("XDG_DATA_HOME, XDG_CONFIG_HOME",
     "Where `completions --install` writes (default ~/.local/share and ~/.config)."),
)

SEE_ALSO = ("ss(8)", "netstat(8)", "lsof(8)", "ip(8)", "tcp(7)", "proc(5)",
            "systemd.exec(5)")


def files() -> list[tuple[str, str]]:
    """The files sockstat reads, from the collectors' own path tables."""
    from sockstat.collect.kernel import COUNTER_FILES, SOCKSTAT_FILES, SYSCTLS
    from sockstat.collect.procfs import TABLES

    tables = sorted(set(TABLES.values()))
    return [
        (", ".join(f"/proc/{t}" for t in tables),
         "The socket tables, with --source proc (and where netlink is not available)."),
        (", ".join(f"/proc/{f}" for f in COUNTER_FILES),
         "Kernel counters since boot: ListenOverflows, retransmissions, resets, UDP "
         "buffer errors (summary, check, watch, export)."),
        (", ".join(f"/proc/{f}" for f in SOCKSTAT_FILES),
         "The kernel's socket totals: orphans, TIME_WAIT buckets, memory."),
        ("/proc/sys/net/ipv4/*, /proc/sys/net/core/somaxconn",
         "The sysctls: " + ", ".join(sorted(SYSCTLS)) + "."),
        ("/proc/PID/fd/",
         "Which process holds each socket (its inode); other users' processes need "
         "CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE."),
        ("/proc/PID/comm, /proc/PID/limits",
         "Process names, and the open-file limit for descriptor exhaustion checks."),
    ]


# -- roff ---------------------------------------------------------------------------------

ASCII = {"\u2192": "->", "\u2190": "<-", "\u2194": "<->", "\u2013": "-", "\u2014": "--",
         "\u2026": "...", "\u00d7": "x", "\u2265": ">=", "\u2264": "<=", "\u2018": "'",
         "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00b5": "u", "\u00a0": " "}


def _plain(text: str) -> str:
    """Text with roff's escape character escaped, in ASCII (typographic characters
    spelled out, others as groff's \\[uXXXX])."""
    text = "".join(ASCII.get(c, c) for c in text.replace("\\", "\\e"))
    return "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)


def _code(text: str) -> str:
    """A literal: hyphens as \\- (so copied options work) in bold."""
    return "\\fB" + _plain(text).replace("-", "\\-") + "\\fR"


def inline(text: str) -> str:
    """Help text (Typer markdown) -> one roff text line: `code` in bold, **x** bold."""
    text = " ".join(text.split())
    parts = re.split(r"(`[^`]+`|\*\*[^*]+\*\*)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`"):
            out.append(_code(part[1:-1]))
        elif part.startswith("**") and part.endswith("**"):
            out.append("\\fB" + _plain(part[2:-2]) + "\\fR")
        else:
            out.append(_plain(part))
    return _line("".join(out))


def _line(text: str) -> str:
    # a text line that starts with . or ' would be read as a request
    return "\\&" + text if text.startswith((".", "'")) else text


def paragraphs(text: str) -> list[str]:
    """Help text split at blank lines, each paragraph one roff line after .PP."""
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        if para.strip():
            out += [".PP", inline(para)]
    return out


def option_lines(param: Param) -> list[str]:
    names = ", ".join(_code(n) for n in param.names)
    if param.metavar:
        names += " \\fI" + _plain(param.metavar) + "\\fR"
    lines = [".TP", names]
    doc = param.doc.strip() or param.help
    if param.default:
        doc += f" (default: `{param.default}`)"
    lines.append(inline(doc) if doc else "\\&")
    return lines


def option_block(node: Node) -> list[str]:
    """The options of a command, under their --help panel names."""
    out: list[str] = []
    panel = None
    for param in node.options:
        if param.panel != panel and any(p.panel for p in node.options):
            panel = param.panel
            out += [".PP", f"\\fI{_plain(panel or 'Options')}:\\fR"]
        out += option_lines(param)
    return out


def usage(node: Node) -> str:
    words = [_code(" ".join((PROG, *node.path)))]
    if node.options:
        words.append("[\\fIOPTIONS\\fR]")
    for arg in node.arguments:
        metavar = f"\\fI{_plain(arg.metavar)}\\fR" + (" ..." if arg.nargs == -1 else "")
        words.append(metavar if arg.required else f"[{metavar}]")
    if node.children:
        words.append("[\\fICOMMAND\\fR]")
    return " ".join(words)


def examples(node: Node) -> list[tuple[str, str]]:
    """(command line, what it does) from a command's `Examples:` epilog
    (sockstat.cli.options.examples: the two columns are two or more spaces apart)."""
    _, sep, rows = node.epilog.partition("Examples:")
    out = []
    for row in rows.splitlines() if sep else ():
        if row.strip():
            parts = re.split(r"\s{2,}", row.strip(), maxsplit=1)
            out.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return out


def render(root: Node | None = None) -> str:
    from sockstat import __version__

    root = root or build()
    commands = [n for n in root.walk() if n.path]
    out = [
        f'.\\" {FILE_NAME}: generated from the command line by `python -m sockstat.manpage '
        "--write man/`; do not edit.",
        f'.TH SOCKSTAT {SECTION} "" "{PROG} {__version__}" "User Commands"',
        ".nh",  # no hyphenation: option names and paths must not be split
        ".ad l",
        ".SH NAME",
        f"{PROG} \\- {_plain(NAME_LINE)}",
        ".SH SYNOPSIS",
    ]
    for i, node in enumerate(root.walk()):
        if i:
            out.append(".br")
        out.append(usage(node))
    out.append(".SH DESCRIPTION")
    out += paragraphs(DESCRIPTION)
    out += [".SH OPTIONS", ".PP",
            "Without a command, sockstat lists sockets; these options filter and format "
            "the listing (several filters must all match)."]
    out += option_block(root)
    out.append(".SH COMMANDS")
    for node in commands:
        out += [".SS " + '"' + _plain(" ".join(node.path)) + '"', usage(node)]
        out += paragraphs(node.doc)
        for arg in node.arguments:
            if arg.doc:
                out += [".TP", f"\\fI{_plain(arg.metavar)}\\fR", inline(arg.doc)]
        out += option_block(node)
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", inline(meaning)]
    out.append(".SH ENVIRONMENT")
    for name, meaning in ENVIRONMENT:
        out += [".TP", f"\\fB{_plain(name)}\\fR", inline(meaning)]
    out.append(".SH FILES")
    for path, meaning in files():
        out += [".TP", f"\\fI{_plain(path)}\\fR", inline(meaning)]
    out.append(".SH EXAMPLES")
    seen = set()
    for node in root.walk():
        for command, what in examples(node):
            if command not in seen:  # the overview repeats some commands' own examples
                seen.add(command)
                out += [".TP", _code(command), inline(what) if what else "\\&"]
    out += [".SH SEE ALSO",
            ", ".join(f"\\fB{name.split('(')[0]}\\fR({name.split('(')[1]}"
                      for name in SEE_ALSO)]
    out += [".PP", inline("The reference, with every JSON field and metric, is in the "
                          "docs/ directory of the source distribution.")]
    return "\n".join(out) + "\n"


def write(directory: Path, root: Node | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE_NAME
    path.write_text(render(root), encoding="ascii")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sockstat.manpage",
        description="Print the sockstat(1) man page (roff), or write it into a directory.")
    parser.add_argument("--write", metavar="DIR", type=Path,
                        help=f"write {FILE_NAME} into DIR (the repository's man/)")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(render())
    else:
        print(f"wrote {write(args.write)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
