"""Shell completion scripts (bash, zsh, fish), generated from the command line itself.

The Typer app is walked (typer.main.get_command) for its commands, options and
arguments, so the scripts follow the CLI as it changes; `tests/test_completions.py`
regenerates them and fails when completions/ is stale. Regenerate with

    python -m sockstat.completions --write completions/

Values complete by name: TCP states and state groups (from sockstat.model), choices
(--source), files (--textfile), explain topics and demo names (from sockstat.demo).
The scripts are static (no Python runs on <Tab>) and the output is deterministic: same
CLI, same bytes. Nothing here runs at sockstat start-up.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROG = "sockstat"
SHELLS = ("bash", "zsh", "fish")
FILE_NAMES = {"bash": "sockstat.bash", "zsh": "_sockstat", "fish": "sockstat.fish"}
FILES = "@files"  # a value list meaning "complete file names"
HEADER = "Generated from the command line by `python -m sockstat.completions`; do not edit."


@dataclass
class Param:
    """An option (names start with -) or a positional argument (no names)."""

    name: str
    names: tuple[str, ...] = ()
    help: str = ""
    takes_value: bool = False
    repeatable: bool = False
    values: tuple[str, ...] = ()  # words to offer, or (FILES,)
    nargs: int = 1  # arguments: -1 = any number
    # for the man page (sockstat.manpage): the whole help, the value's placeholder,
    # the default worth showing, the --help panel, whether an argument is required
    doc: str = ""
    metavar: str = ""
    default: str = ""
    panel: str = ""
    required: bool = False


@dataclass
class Node:
    """A command: the root (path ()) or a subcommand, with its options and children."""

    path: tuple[str, ...]
    help: str = ""
    doc: str = ""  # the whole help text, and the examples epilog (for the man page)
    epilog: str = ""
    options: list[Param] = field(default_factory=list)
    arguments: list[Param] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    @property
    def key(self) -> str:
        return " ".join(self.path)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    @property
    def value_options(self) -> list[str]:
        return [n for p in self.options if p.takes_value for n in p.names]

    @property
    def option_names(self) -> list[str]:
        return [n for p in self.options for n in p.names]


# -- value lists --------------------------------------------------------------------------

def state_words() -> tuple[str, ...]:
    """Every state (as people type them: time-wait) and state group, in listing order."""
    from sockstat.model import STATE_GROUPS, STATE_ORDER

    states = tuple(s.name.lower().replace("_", "-") for s in STATE_ORDER)  # kernel names
    return states + tuple(g for g in STATE_GROUPS if g not in states)


def explain_topics() -> tuple[str, ...]:
    from sockstat import explain

    return tuple(sorted(explain.TOPICS))


def demo_names() -> tuple[str, ...]:
    """`sockstat demo` names: state demos (in the order of a connection's life), then
    scenarios, then 'all' (sockstat.demo's own lists)."""
    from sockstat.demo import scenario_names, state_demo_names

    names = [*state_demo_names(), *scenario_names(), "all"]
    return tuple(dict.fromkeys(names))


def _fallback_values(path: tuple[str, ...], param_name: str) -> tuple[str, ...]:
    """Values for parameters that do not declare them (no Choice, no autocompletion)."""
    if param_name in ("state", "states"):
        return state_words()
    if path[:1] == ("explain",) and param_name in ("topic", "topics", "name", "state"):
        return explain_topics()
    if path[:1] == ("demo",) and param_name in ("name", "names", "demo", "demos",
                                                "scenario", "scenarios"):
        return demo_names()
    return ()


# -- walking the click tree ---------------------------------------------------------------

def _short_help(text: str | None) -> str:
    """The first sentence, on one line, at most 80 characters."""
    text = " ".join((text or "").split())
    text = re.sub(r"`([^`]*)`", r"\1", text)
    end = re.search(r"\.(?=\s+[A-Z`(]|$)", text)  # a sentence end, not "e.g. x"
    if end:
        text = text[:end.start()]
    if len(text) > 80:
        text = text[:77].rsplit(" ", 1)[0] + "..."
    return text


def _values(param, ctx, path: tuple[str, ...]) -> tuple[str, ...]:
    ptype = param.type
    if getattr(ptype, "name", "") == "path" or type(ptype).__name__.endswith("Path"):
        return (FILES,)
    choices = getattr(ptype, "choices", None)
    if choices:
        return tuple(str(getattr(c, "value", c)) for c in choices)
    if getattr(param, "_custom_shell_complete", None) is not None:
        items = param.shell_complete(ctx, "")
        words = tuple(str(getattr(i, "value", i)) for i in items)
        if words:
            return words
    return _fallback_values(path, param.name or "")


def _metavar(param) -> str:
    """The placeholder of an option's value, as --help shows it (HOST:PORT, N, a|b)."""
    if param.metavar:
        return param.metavar
    choices = getattr(param.type, "choices", None)
    if choices:
        return "|".join(str(getattr(c, "value", c)) for c in choices)
    kind = getattr(param.type, "name", "")
    if kind in ("int", "int range", "integer"):
        return "N"
    if kind in ("float", "float range"):
        return "NUMBER"
    if kind in ("path", "file"):
        return "PATH"
    return (param.name or "value").upper()  # a string: --port PORT, --state STATE


def _default(param, is_flag: bool) -> str:
    """The default worth printing: shown in --help and not an empty/false value."""
    if is_flag or param.show_default is False or param.default in (None, (), [], ""):
        return ""
    return str(getattr(param.default, "value", param.default))


def build(app=None) -> Node:
    """The command tree of the Typer app as Nodes (root first, children sorted)."""
    import typer.main

    if app is None:
        from sockstat.cli import app
    command = typer.main.get_command(app)
    return _node(command, (), None)


def _node(command, path: tuple[str, ...], parent_ctx) -> Node:
    ctx = command.make_context(path[-1] if path else PROG, [], parent=parent_ctx,
                               resilient_parsing=True)
    node = Node(path=path, help=_short_help(command.help or command.short_help),
                doc=command.help or command.short_help or "", epilog=command.epilog or "")
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            node.arguments.append(Param(
                name=param.name or "arg", help=_short_help(getattr(param, "help", "")),
                values=_values(param, ctx, path), nargs=param.nargs,
                doc=getattr(param, "help", "") or "",
                metavar=(param.metavar or param.name or "arg").upper(),
                required=bool(param.required)))
            continue
        is_flag = bool(getattr(param, "is_flag", False)) or bool(getattr(param, "count",
                                                                         False))
        names = tuple(sorted((*param.opts, *param.secondary_opts),
                             key=lambda n: (not n.startswith("--"), n)))
        node.options.append(Param(
            name=param.name or names[0].lstrip("-"), names=names,
            help=_short_help(param.help), takes_value=not is_flag,
            repeatable=bool(getattr(param, "multiple", False)) or
            bool(getattr(param, "count", False)),
            values=() if is_flag else _values(param, ctx, path),
            doc=param.help or "", metavar="" if is_flag else _metavar(param),
            default=_default(param, is_flag), panel=getattr(param, "rich_help_panel", "")
            or ""))
    subcommands = getattr(command, "commands", {}) or {}
    for name in sorted(subcommands):
        sub = subcommands[name]
        if getattr(sub, "hidden", False):
            continue
        node.children.append(_node(sub, (*path, name), ctx))
    return node


# -- bash ---------------------------------------------------------------------------------

def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def bash(root: Node) -> str:
    nodes = list(root.walk())
    out = [
        f"# bash completion for {PROG}                              -*- shell-script -*-",
        f"# {HEADER}",
        "# Install: source it from ~/.bashrc, or copy it to",
        f"# /usr/share/bash-completion/completions/{PROG} (or ~/.local/share/bash-completion/"
        f"completions/{PROG}).",
        "",
        "# _sockstat_node NODE: set opts (all options), vopts (the ones taking a value,",
        "# space-padded) and subs (subcommands) of the command NODE ('' is sockstat itself).",
        "_sockstat_node() {",
        '    case "$1" in',
    ]
    for node in nodes:
        subs = " ".join(c.path[-1] for c in node.children)
        out.append(f"        {_sh_quote(node.key)})")
        out.append(f"            opts={_sh_quote(' '.join(node.option_names))}")
        out.append(f"            vopts={_sh_quote(' ' + ' '.join(node.value_options) + ' ')}")
        out.append(f"            subs={_sh_quote(subs)} ;;")
    out += [
        '        *) opts=""; vopts=" "; subs="" ;;',
        "    esac",
        "}",
        "",
        "# _sockstat_values NODE WHAT: the words for option WHAT of NODE, or for its",
        "# positional argument #N; @files means file names.",
        "_sockstat_values() {",
        '    case "$1|$2" in',
    ]
    lists: dict[tuple[str, ...], list[str]] = {}
    for node in nodes:
        for p in node.options:
            if p.takes_value and p.values:
                lists.setdefault(p.values, []).extend(f"{node.key}|{n}" for n in p.names)
        for i, a in enumerate(node.arguments, 1):
            if a.values:
                key = f"{node.key}|#*" if a.nargs == -1 else f"{node.key}|#{i}"
                lists.setdefault(a.values, []).append(key)
    for values, keys in lists.items():
        out.append("        " + "|".join(_sh_quote(k) for k in keys) + ")")
        out.append(f"            echo {_sh_quote(' '.join(values))} ;;")
    out += [
        "    esac",
        "}",
        "",
        "_sockstat() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" node="" word opts vopts subs',
        "    local i positional=0 words",
        "    COMPREPLY=()",
        "    # Walk the words before the cursor: descend into subcommands, skip option values.",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        word="${COMP_WORDS[i]}"',
        '        _sockstat_node "$node"',
        '        case "$word" in',
        "            --*=*) ;;",
        "            -*)",
        '                if [[ "$vopts" == *" $word "* ]]; then',
        "                    # the value, also when bash split --opt=value at the '='",
        '                    [[ "${COMP_WORDS[i+1]}" == "=" ]] && ((i++))',
        "                    ((i++))",
        "                fi ;;",
        "            *)",
        '                if [[ " $subs " == *" $word "* ]]; then',
        '                    node="${node:+$node }$word"; positional=0',
        "                else",
        "                    ((positional++))",
        "                fi ;;",
        "        esac",
        "    done",
        '    _sockstat_node "$node"',
        "    # The option whose value is being completed, if any.",
        '    local opt="" prefix=""',
        "    if ((COMP_CWORD >= 2)); then",
        '        prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '        if [[ "$prev" == "=" ]]; then',
        '            prev="${COMP_WORDS[COMP_CWORD-2]}"',
        '            [[ "$prev" == -* ]] && opt="$prev"',
        '        elif [[ "$cur" == "=" && "$prev" == -* ]]; then',
        '            opt="$prev"; cur=""',
        '        elif [[ "$prev" == -* && "$vopts" == *" $prev "* ]]; then',
        '            opt="$prev"',
        "        fi",
        '    elif ((COMP_CWORD == 1)); then prev=""; fi',
        '    if [[ -z "$opt" && "$cur" == --*=* ]]; then',
        '        opt="${cur%%=*}"; prefix="$opt="; cur="${cur#*=}"',
        "    fi",
        '    if [[ -n "$opt" ]]; then',
        '        [[ "$vopts" == *" $opt "* ]] || return 0',
        '        words="$(_sockstat_values "$node" "$opt")"',
        '        if [[ "$words" == "@files" ]]; then',
        '            COMPREPLY=($(compgen -f -- "$cur"))',
        "            compopt -o filenames 2>/dev/null",
        '        elif [[ -n "$words" ]]; then',
        '            COMPREPLY=($(compgen -P "$prefix" -W "$words" -- "$cur"))',
        "        fi",
        "        return 0",
        "    fi",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "        return 0",
        "    fi",
        '    words="$(_sockstat_values "$node" "#$((positional + 1))")"',
        '    [[ -z "$words" ]] && words="$(_sockstat_values "$node" "#*")"',
        '    if [[ "$words" == "@files" ]]; then',
        '        COMPREPLY=($(compgen -f -- "$cur"))',
        "        compopt -o filenames 2>/dev/null",
        "        return 0",
        "    fi",
        '    COMPREPLY=($(compgen -W "$subs $words" -- "$cur"))',
        "}",
        "",
        f"complete -F _sockstat {PROG}",
        "",
    ]
    return "\n".join(out)


# -- zsh ----------------------------------------------------------------------------------

def _zsh_help(text: str) -> str:
    # brackets end the description in an _arguments spec; colons split _describe items
    return text.replace("[", "(").replace("]", ")").replace("\\", "")


def _zsh_action(values: tuple[str, ...]) -> str:
    if not values:
        return " "  # a value is expected, but there is nothing to offer
    if values == (FILES,):
        return "_files"
    return "(" + " ".join(values) + ")"


def _zsh_fn(node: Node) -> str:
    return "_sockstat" + "".join("_" + re.sub(r"\W", "_", p) for p in node.path)


def zsh(root: Node) -> str:
    out = [
        f"#compdef {PROG}",
        f"# zsh completion for {PROG}. {HEADER}",
        "# Install: put this file (named _sockstat) in a directory on $fpath before",
        "# running compinit, e.g. ~/.zsh/completions with fpath=(~/.zsh/completions $fpath).",
        "",
    ]
    for node in root.walk():
        out.append(f"{_zsh_fn(node)}() {{")
        out.append('  local curcontext="$curcontext" state state_descr line ret=1')
        out.append("  typeset -A opt_args")
        specs: list[str] = []
        for p in node.options:
            names = p.names
            exclusive = "" if p.repeatable else "(" + " ".join(names) + ")"
            if p.repeatable:
                exclusive = "*"
            if any(n in ("-h", "--help", "--version", "-V") for n in names):
                exclusive = "(- *)"  # nothing else makes sense after these
            for name in names:
                suffix = ""
                if p.takes_value:
                    suffix = "=" if name.startswith("--") else "+"
                spec = f"{exclusive}{name}{suffix}[{_zsh_help(p.help)}]"
                if p.takes_value:
                    spec += f":{p.name.replace('_', '-')}:{_zsh_action(p.values)}"
                specs.append(_sh_quote(spec))
        if node.children:
            specs.append(_sh_quote(": :->command"))
            specs.append(_sh_quote("*:: :->args"))
        else:
            for a in node.arguments:
                position = "*" if a.nargs == -1 else ""
                specs.append(_sh_quote(f"{position}:{a.name}:{_zsh_action(a.values)}"))
        out.append("  _arguments -s -S -C \\")
        out.extend(f"    {spec} \\" for spec in specs)
        out.append("    && ret=0")
        if node.children:
            out.append("  case $state in")
            out.append("    command)")
            out.append("      local -a commands")
            out.append("      commands=(")
            for child in node.children:
                out.append("        " + _sh_quote(f"{child.path[-1]}:{_zsh_help(child.help)}"))
            out.append("      )")
            out.append(f"      _describe -t commands {_sh_quote(PROG + ' command')} commands "
                       "&& ret=0 ;;")
            out.append("    args)")
            out.append('      curcontext="${curcontext%:*:*}:' + PROG + '-$words[1]:"')
            out.append("      case $words[1] in")
            for child in node.children:
                out.append(f"        {child.path[-1]}) {_zsh_fn(child)} && ret=0 ;;")
            out.append("      esac ;;")
            out.append("  esac")
        out.append("  return ret")
        out.append("}")
        out.append("")
    out.append('if [[ "$funcstack[1]" == "_sockstat" ]]; then')
    out.append('  _sockstat "$@"')
    out.append("else")
    out.append(f"  compdef _sockstat {PROG}")
    out.append("fi")
    out.append("")
    return "\n".join(out)


# -- fish ---------------------------------------------------------------------------------

def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_words(values: tuple[str, ...], what: str) -> str:
    # "word\tdescription": fish evaluates -a, turning \t into the separator; without it
    # every value would repeat the option's whole help text
    what = what.replace("_", " ")
    return " ".join(f"{v}\\t{what}" for v in values)


def fish(root: Node) -> str:
    nodes = list(root.walk())
    out = [
        f"# fish completion for {PROG}. {HEADER}",
        f"# Install: copy it to ~/.config/fish/completions/{PROG}.fish",
        "",
        "# The (sub)command the cursor is in: walks the tokens, skipping option values.",
        "function __sockstat_node",
        "    set -l tokens (commandline -opc)",
        "    set -e tokens[1]",
        "    set -l node ''",
        "    set -l skip 0",
        "    for token in $tokens",
        "        if test $skip -eq 1",
        "            set skip 0",
        "            continue",
        "        end",
        '        switch "$node|$token"',
    ]
    for node in nodes:
        if node.value_options:
            patterns = " ".join(_fish_quote(f"{node.key}|{n}") for n in node.value_options)
            out.append(f"            case {patterns}")
            out.append("                set skip 1")
        for child in node.children:
            out.append(f"            case {_fish_quote(node.key + '|' + child.path[-1])}")
            out.append(f"                set node {_fish_quote(child.key)}")
    out += [
        "        end",
        "    end",
        '    echo "$node"',
        "end",
        "",
        "function __sockstat_in",
        "    set -l node (__sockstat_node)",
        '    test "$node" = "$argv[1]"',
        "end",
        "",
        f"complete -c {PROG} -f",
    ]
    for node in nodes:
        cond = f"-n {_fish_quote('__sockstat_in ' + _fish_quote(node.key))}"
        for child in node.children:
            out.append(f"complete -c {PROG} {cond} -a {_fish_quote(child.path[-1])} "
                       f"-d {_fish_quote(child.help)}")
        for p in node.options:
            parts = [f"complete -c {PROG} {cond}"]
            for name in p.names:
                if name.startswith("--"):
                    parts.append(f"-l {name[2:]}")
                elif len(name) == 2:
                    parts.append(f"-s {name[1:]}")
                else:
                    parts.append(f"-o {name[1:]}")
            if p.takes_value:
                if p.values == (FILES,):
                    parts.append("-r -F")
                else:
                    parts.append("-x")
                    if p.values:
                        parts.append(f"-a {_fish_quote(_fish_words(p.values, p.name))}")
            if p.help:
                parts.append(f"-d {_fish_quote(p.help)}")
            out.append(" ".join(parts))
        for a in node.arguments:
            if a.values == (FILES,):
                out.append(f"complete -c {PROG} {cond} -F")
            elif a.values:
                what = node.path[-1] if a.name == "name" and node.path else a.name
                out.append(f"complete -c {PROG} {cond} -a "
                           f"{_fish_quote(_fish_words(a.values, what))}")
    out.append("")
    return "\n".join(out)


GENERATORS = {"bash": bash, "zsh": zsh, "fish": fish}


def generate(shell: str, root: Node | None = None) -> str:
    return GENERATORS[shell](root or build())


def write(directory: Path, root: Node | None = None) -> list[Path]:
    """Write all three scripts into `directory`; returns the paths written."""
    root = root or build()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for shell in SHELLS:
        path = directory / FILE_NAMES[shell]
        path.write_text(generate(shell, root), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sockstat.completions",
        description="Print a completion script for sockstat, or write all of them.")
    parser.add_argument("shell", nargs="?", choices=SHELLS,
                        help="print this shell's script on stdout")
    parser.add_argument("--write", metavar="DIR", type=Path,
                        help="write sockstat.bash, _sockstat and sockstat.fish into DIR")
    args = parser.parse_args(argv)
    if args.write is None and args.shell is None:
        parser.error("name a shell, or give --write DIR")
    if args.write is not None:
        for path in write(args.write):
            print(f"wrote {path}", file=sys.stderr)
    if args.shell is not None:
        sys.stdout.write(generate(args.shell))
    return 0


if __name__ == "__main__":
    sys.exit(main())
