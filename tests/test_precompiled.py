"""sockstat._precompiled: the dataclasses of the small queries' start-up take their methods
from sockstat/_methods/, each the function dataclasses would have compiled."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from conftest import REPO

from sockstat._precompiled import PYTHON

# the files hold the texts of PYTHON's dataclasses: another writes other texts for some
# methods (3.12, whose classes compile those) or builds methods otherwise (3.13)
pytestmark = pytest.mark.skipif(sys.version_info[:2] != PYTHON,
                                reason=f"the generated methods are Python {PYTHON}'s")


def test_the_generated_methods_are_current():
    """What `python -m sockstat._precompiled --write` would write now (in a fresh process:
    it imports the modules itself) is there: regenerate after changing a dataclass."""
    done = subprocess.run([sys.executable, "-m", "sockstat._precompiled", "--check"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, "run: python -m sockstat._precompiled --write\n" + done.stderr


def _every_factory():
    from sockstat._precompiled import MODULES, factories

    for module in MODULES:
        __import__(module)
        found = factories(module)
        assert found, module  # generated, and its classes found it
        yield from found.items()


def test_each_precompiled_method_is_what_dataclasses_compiles():
    compile_it = dataclasses._create_fn
    for (name, args, body, names), factory in _every_factory():
        assert compile_it.__module__ == "dataclasses"  # importing sockstat left it as it was
        given = {n: None for n in names if n != "_return_type"}
        ours = factory(**given, **({"_return_type": None} if "_return_type" in names else {}))
        theirs = compile_it(name, list(args), list(body), locals=dict(given),
                            return_type=None if "_return_type" in names else dataclasses.MISSING)
        for attr in ("co_code", "co_consts", "co_names", "co_varnames", "co_freevars",
                     "co_argcount", "co_kwonlyargcount", "co_flags", "co_qualname"):
            assert getattr(ours.__code__, attr) == getattr(theirs.__code__, attr), (name, attr)
        assert ours.__annotations__ == theirs.__annotations__
        assert [c.cell_contents for c in ours.__closure__ or ()] == \
            [c.cell_contents for c in theirs.__closure__ or ()]
        assert ours.__defaults__ == theirs.__defaults__


def test_the_dataclasses_of_the_listed_modules_take_their_methods_precompiled():
    from sockstat._precompiled import MODULES

    checked = set()
    for module_name in MODULES:
        module = sys.modules.get(module_name) or __import__(module_name, fromlist=["_"])
        for cls in vars(module).values():
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)
                    and cls.__module__ == module_name):
                continue
            for name in ("__init__", "__repr__", "__eq__"):
                method = cls.__dict__.get(name)
                if method is None:  # not generated (eq=False, a method of its own)
                    continue
                assert method.__qualname__ == f"{cls.__qualname__}.{name}"
                method = getattr(method, "__wrapped__", method)  # __repr__ guards recursion
                assert "_methods" in method.__code__.co_filename, (cls, name)
                assert method.__module__ == cls.__module__  # as if compiled there
            checked.add(cls.__qualname__)
    assert {"Socket", "ProcessRef", "Snapshot", "Attribution", "Query", "OwnerRequest",
            "OwnerMap", "TcpInfo", "Finding", "Summary"} <= checked


def test_a_precompiled_class_behaves_as_a_dataclass():
    from sockstat.model import ProcessRef

    a, b = ProcessRef(1, "nginx", fd=3), ProcessRef(pid=1, name="nginx", fd=3)
    assert a == b and hash(a) == hash(b) and a != ProcessRef(2, "nginx")
    assert repr(a) == "ProcessRef(pid=1, name='nginx', fd=3, user=None, via_listener=False)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.pid = 2
    assert dataclasses.replace(a, pid=2).pid == 2
    with pytest.raises(TypeError, match=r"__init__\(\) missing 1 required positional"):
        ProcessRef(1)


def test_a_class_whose_texts_are_not_there_is_compiled_as_usual():
    from sockstat._precompiled import dataclass

    @dataclass(frozen=True)
    class Unlisted:
        """Not in the generated file."""

        width: int
        name: str = "x"
        tags: list = dataclasses.field(default_factory=list)

    u = Unlisted(3)
    assert (u.width, u.name, u.tags) == (3, "x", [])
    assert repr(u).endswith("Unlisted(width=3, name='x', tags=[])")
    assert Unlisted.__init__.__code__.co_filename == "<string>"
    assert dataclasses._create_fn.__module__ == "dataclasses"


def test_the_files_are_written_and_checked_on_their_python_only(monkeypatch, capsys, tmp_path):
    """On another Python (its dataclasses write other texts) --write would rewrite the
    files with texts CI's Python does not write, and --check would call them stale:
    both refuse, naming the Python to use, and write nothing."""
    from sockstat import _precompiled

    monkeypatch.setattr(_precompiled, "PYTHON", (3, 99))
    monkeypatch.setattr(_precompiled, "generate", lambda: pytest.fail("generated"))
    for argv in (["--write"], ["--check"]):
        assert _precompiled.main(argv) == 2
        assert "Python 3.99" in capsys.readouterr().err
