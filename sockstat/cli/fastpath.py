"""A command line read without typer: `sockstat --port 8080`, `sockstat summary`,
`sockstat check` start fast.

Importing typer and building its click command costs ~60-100 ms, more than the rest of
a small query. A command line made only of the main listing's options (or, after a
first-word `summary` or `check`, only that command's), in the forms click reads
(`--name VALUE`, `--name=VALUE`, `-n VALUE`, `-nVALUE`, short flags run together as
`-xl`, `--on/--off` flags), is read here into the keyword arguments typer would pass,
from the same `Opt` declarations typer is given (sockstat.cli.show.OPTIONS,
summary.OPTIONS or check.OPTIONS, and the filters). Anything else returns None and typer
reads the line, so every message about a bad command line stays click's: a command or
any other word, `--`, --help, an option this module does not know or leaves to typer
(one with a callback other than options.finite, such as --version), a flag given a
value, a missing value, a value that starts with `-`, a number that is not plain digits
(with one `.` for a float), is not finite or is out of range, a --source click would
have to judge. tests/test_fastpath.py holds the two to the same arguments over a corpus
of command lines.

Hand-written rather than a library's parser because the point is not to import one;
what it accepts is deliberately narrow, what it declines costs only the time it saves.
"""

from __future__ import annotations

import enum
import os
import types

from sockstat.cli.options import finite

# the typer.Option settings this reader knows: shown in help only, or checked here
_SHOWN = frozenset({"help", "rich_help_panel", "show_default", "metavar"})
_CHECKED = frozenset({"min", "max", "case_sensitive", "callback"})
# click reads this variable for shell completion before it parses anything
_COMPLETE_VAR = "_SOCKSTAT_COMPLETE"


def parse(argv: list[str], options: dict) -> dict | None:
    """`argv` -> {parameter name: value} as typer passes them for `options` (name ->
    Opt), or None when typer must read this line."""
    if _COMPLETE_VAR in os.environ:
        return None
    by_name: dict[str, tuple[str, bool | None]] = {}  # name -> (key, a flag's value)
    for key, spec in options.items():
        if "envvar" in spec.settings:
            return None  # a value may come from the environment: typer's to read
        if _readable(spec):
            by_name.update(_names(key, spec))
    given: dict[str, list] = {}
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word.partition("=")
            key, flag = by_name.get(name, (None, None))
            if key is None:
                return None
            if flag is not None:
                if eq:
                    return None
                value = flag
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
                key, flag = by_name.get(f"-{char}", (None, None))
                if key is None:
                    return None
                if flag is not None:
                    given.setdefault(key, []).append(flag)
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


def _readable(spec) -> bool:
    """Whether this reader knows everything typer is told about the option `spec`: its
    settings, its type, and for a flag that it turns on (or has an off name too). A
    callback is known only if it is `options.finite`, which passes unchanged every
    number this reader accepts (finite ones)."""
    settings = spec.settings
    if not settings.keys() <= _SHOWN | _CHECKED or _kind(spec.type) is None:
        return False
    if settings.get("callback", finite) is not finite:
        return False
    if spec.type is bool and spec.default is not False:
        return any("/" in name for name in spec.names)
    return True


def _names(key: str, spec) -> dict[str, tuple[str, bool | None]]:
    """Each name of `spec` -> (key, the value it gives a flag; None for an option that
    takes a value). A flag's `--on/--off` name is two: True and False."""
    if _kind(spec.type)[0] is not bool:
        return dict.fromkeys(spec.names, (key, None))
    names = {}
    for name in spec.names:
        on, _, off = name.partition("/")
        names[on] = (key, True)
        if off:
            names[off] = (key, False)
    return names


def _kind(tp) -> tuple[type, bool] | None:
    """(the value's type, whether the option repeats) for the types this reader
    converts: bool, int, float, str, a str enum, each alone or `| None`, and `list[...]`
    of str or int; None for any other."""
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
    if tp in (bool, int, float, str) or (isinstance(tp, type) and issubclass(tp, enum.StrEnum)):
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
    if base in (int, float):
        # plain digits (a float: with at most one "."), which int() and float() read as
        # click does; click also reads "+5", " 5", "1_0", "1e3", "nan", "inf": leave
        # those to it, and with them every non-finite number ("1" and 400 zeros is inf)
        digits = value.replace(".", "", 1) if base is float else value
        if not (digits.isascii() and digits.isdigit()):
            return None
        try:
            number = base(value)
        except ValueError:
            return None  # more digits than int() reads (sys.get_int_max_str_digits)
        if base is float:
            import math  # only where a float is read: the listing's path has none

            if not math.isfinite(number):
                return None
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
