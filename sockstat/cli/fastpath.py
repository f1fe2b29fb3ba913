"""A command line read without typer: `sockstat --port 8080`, `sockstat summary` start fast.

Importing typer and building its click command costs ~60 ms, more than the rest of a
small query. A command line made only of the main listing's options (or, after a
first-word `summary`, only summary's), in the forms click reads (`--name VALUE`,
`--name=VALUE`, `-n VALUE`, `-nVALUE`, short flags run together as `-xl`), is read here
into the keyword arguments typer would pass, from the same `Opt` declarations typer is
given (sockstat.cli.show.OPTIONS or summary.OPTIONS, and the filters). Anything else
returns None and typer reads the line, so every message about a bad command line stays
click's: a command or any other word, `--`, --help, an option this module does not know
or leaves to typer (one with a callback, such as --version), a flag given a value, a
missing value, a value that starts with `-`, a number that is not plain digits or is out
of range, a --source click would have to judge. tests/test_fastpath.py holds the two to
the same arguments over a corpus of command lines.

Hand-written rather than a library's parser because the point is not to import one;
what it accepts is deliberately narrow, what it declines costs only the time it saves.
"""

from __future__ import annotations

import enum
import os
import types

# the typer.Option settings this reader knows: shown in help only, or checked here
_SHOWN = frozenset({"help", "rich_help_panel", "show_default", "metavar"})
_CHECKED = frozenset({"min", "max", "case_sensitive"})
# click reads this variable for shell completion before it parses anything
_COMPLETE_VAR = "_SOCKSTAT_COMPLETE"


def parse(argv: list[str], options: dict) -> dict | None:
    """`argv` -> {parameter name: value} as typer passes them for `options` (name ->
    Opt), or None when typer must read this line."""
    if _COMPLETE_VAR in os.environ:
        return None
    by_name = {}
    for key, spec in options.items():
        if "envvar" in spec.settings:
            return None  # a value may come from the environment: typer's to read
        if spec.settings.keys() <= _SHOWN | _CHECKED and _kind(spec.type) is not None \
                and (spec.type is not bool or spec.default is False):  # flags turn on
            by_name.update(dict.fromkeys(spec.names, key))
    given: dict[str, list] = {}
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word.partition("=")
            key = by_name.get(name)
            if key is None:
                return None
            if _kind(options[key].type)[0] is bool:
                if eq:
                    return None
                value = True
            elif not eq:
                if i == len(words):
                    return None
                value = words[i]
                i += 1
            given.setdefault(key, []).append(value)
        elif word.startswith("-") and len(word) > 1 and "=" not in word:
            # short options run together, as click reads them: flags, then at most one
            # option that takes the rest of the word (or the next word) as its value
            for at, char in enumerate(word[1:], start=2):
                key = by_name.get(f"-{char}")
                if key is None:
                    return None
                if _kind(options[key].type)[0] is bool:
                    given.setdefault(key, []).append(True)
                    continue
                if at < len(word):
                    value = word[at:]
                elif i < len(words):
                    value = words[i]
                    i += 1
                else:
                    return None
                given.setdefault(key, []).append(value)
                break
        else:
            return None  # a command, an argument, "-" or "--"
    parsed = {}
    for key, spec in options.items():
        if key not in given:
            parsed[key] = spec.default
            continue
        base, many = _kind(spec.type)
        values = [_convert(v, base, spec.settings) for v in given[key]]
        if any(v is None for v in values):
            return None
        parsed[key] = values if many else values[-1]  # click keeps the last one
    return parsed


def _kind(tp) -> tuple[type, bool] | None:
    """(the value's type, whether the option repeats) for the types this reader
    converts: bool, int, str, a str enum, each alone or `| None`, and `list[...]` of
    str or int; None for any other."""
    if isinstance(tp, types.UnionType):
        args = [a for a in tp.__args__ if a is not type(None)]
        if len(args) != 1:
            return None
        tp = args[0]
    many = isinstance(tp, types.GenericAlias) and tp.__origin__ is list
    if many:
        (tp,) = tp.__args__
        if tp not in (str, int):
            return None
    if tp in (bool, int, str) or (isinstance(tp, type) and issubclass(tp, enum.StrEnum)):
        return tp, many
    return None


def _convert(value, base: type, settings: dict):
    """One value as typer would pass it, or None when click would have to judge it."""
    if base is bool:
        return value
    if not isinstance(value, str) or not value or value.startswith("-"):
        return None
    if base is str:
        return value
    if base is int:
        if not (value.isascii() and value.isdigit()):
            return None  # click's int() also reads "+5", " 5", "1_0": leave those to it
        number = int(value)
        low, high = settings.get("min"), settings.get("max")
        if (low is not None and number < low) or (high is not None and number > high):
            return None  # out of range: click says so
        return number
    # a str enum, matched as click's Choice matches (casefold unless case-sensitive)
    fold = not settings.get("case_sensitive", True)
    for member in base:
        if member.value == value or (fold and member.value.casefold() == value.casefold()):
            return member
    return None
