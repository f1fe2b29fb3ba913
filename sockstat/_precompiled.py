"""`dataclass()` with its methods compiled once, into this package's bytecode.

CPython 3.11 creates a dataclass by writing the source text of each method it adds
(`__init__`, `__repr__`, `__eq__`, `__hash__`, a frozen class's `__setattr__` and
`__delattr__`) and compiling it, at every import: ~1M instructions a method, ~20M of a
small listing's start-up for the seven dataclasses on its path. Those texts, for the
classes made with this `dataclass()`, are in `sockstat/_dataclass_methods.py`, generated
by `python -m sockstat._precompiled --write` and compiled into its .pyc like any module.

This `dataclass()` is `dataclasses.dataclass` itself, run with one change: while it
runs, the function it builds each method with (`dataclasses._create_fn`) takes a method
whose text is found there from there instead of compiling the text. A text is found by
what it is made of (name, parameters, body and the names it is given), so what is taken
is the same function; a text not found (the class changed since the file was generated,
or another Python writes other texts) is compiled, as dataclasses always does. Either
way the class is the same; only its start-up cost differs. `tests/test_precompiled.py`
checks that the file is current. Where dataclasses builds methods otherwise (3.13 has
no `_create_fn`), this is plain `dataclasses.dataclass`.

The change lasts while the decorator runs, under a lock, and is undone after: a class
another thread creates meanwhile gets what dataclasses would give it (its texts are not
in the file, so they are compiled).
"""

from __future__ import annotations

import _thread
import dataclasses
import sys

# the modules whose dataclasses are made with dataclass() here, imported to regenerate
# the file (they are what a listing's start-up imports)
MODULES = ("sockstat.model", "sockstat.query", "sockstat.collect", "sockstat.collect.owners")
GENERATED = "sockstat._dataclass_methods"

_lock = _thread.RLock()


def dataclass(cls=None, /, **options):
    """`dataclasses.dataclass(cls, **options)`, its methods taken precompiled where found."""
    def wrap(cls):
        create = getattr(dataclasses, "_create_fn", None)
        if create is None:
            return dataclasses.dataclass(cls, **options)
        from sockstat._dataclass_methods import FACTORIES

        def precompiled(name, args, body, *, globals=None, locals=None,
                        return_type=dataclasses.MISSING):
            factory = FACTORIES.get(text_key(name, args, body, locals, return_type))
            if factory is None:
                return create(name, args, body, globals=globals, locals=locals,
                              return_type=return_type)
            return _made(factory, globals, locals, return_type)

        with _lock:
            dataclasses._create_fn = precompiled
            try:
                return dataclasses.dataclass(cls, **options)
            finally:
                dataclasses._create_fn = create

    return wrap if cls is None else wrap(cls)


def text_key(name, args, body, locals, return_type) -> tuple:
    """What a method's text is made of, as dataclasses._create_fn writes it: the method's
    name, parameters and body lines, and the names it is given (its `locals`, with
    `_return_type` when it has a return annotation)."""
    names = tuple(locals or ())
    if return_type is not dataclasses.MISSING:
        names += ("_return_type",)
    return name, tuple(args), tuple(body), names


def _made(factory, globals, locals, return_type):
    """The method, from its precompiled factory given what _create_fn would give it."""
    given = dict(locals or ())
    if return_type is not dataclasses.MISSING:
        given["_return_type"] = return_type
    method = factory(**given)
    if globals is not None and "__name__" in globals:
        method.__module__ = globals["__name__"]  # as if compiled in the class's module
    return method


def generate() -> str:
    """The text of sockstat/_dataclass_methods.py: every method text dataclasses writes
    for the dataclasses of MODULES, each in a factory named as dataclasses names its own
    (`__create_fn__`: a method's qualified name, which TypeErrors about its arguments
    show, is the same). In a fresh interpreter: MODULES are imported here."""
    if any(name in sys.modules for name in (*MODULES, GENERATED)):
        raise RuntimeError("generate() imports the modules itself: run it in a fresh process")
    create = dataclasses._create_fn
    keys: dict[tuple, None] = {}

    def recording(name, args, body, *, globals=None, locals=None,
                  return_type=dataclasses.MISSING):
        keys[text_key(name, args, body, locals, return_type)] = None
        return create(name, args, body, globals=globals, locals=locals,
                      return_type=return_type)

    nothing_found = type(sys)(GENERATED)  # the file as it is might hide texts
    nothing_found.FACTORIES = {}
    sys.modules[GENERATED] = nothing_found
    try:
        with _lock:
            dataclasses._create_fn = recording
            try:
                for name in MODULES:
                    __import__(name)
            finally:
                dataclasses._create_fn = create
    finally:
        del sys.modules[GENERATED]
    lines = [
        '"""Generated by `python -m sockstat._precompiled --write`: do not edit.',
        "",
        "The methods dataclasses writes for the dataclasses of sockstat._precompiled.MODULES,",
        "each in the factory it is compiled in (see sockstat/_precompiled.py).",
        '"""',
        "",
        "FACTORIES = {}",
    ]
    for name, args, body, names in keys:
        annotation = "->_return_type" if "_return_type" in names else ""
        lines += ["", "", f"def __create_fn__({', '.join(names)}):",
                  f"    def {name}({','.join(args)}){annotation}:"]
        for line in body:
            stripped = line.lstrip(" ")
            lines.append(" " * (8 + 4 * (len(line) - len(stripped))) + stripped)
        lines += [f"    return {name}", "",
                  f"FACTORIES[{(name, args, body, names)!r}] = __create_fn__"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from pathlib import Path

    path = Path(__file__).with_name("_dataclass_methods.py")
    text = generate()
    if argv == ["--write"]:
        path.write_text(text, encoding="utf-8")
        return 0
    if argv == ["--check"]:
        return 0 if path.read_text(encoding="utf-8") == text else 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
