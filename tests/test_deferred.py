"""sockstat._deferred: a module bound in sys.modules, executed at its first use."""

import subprocess
import sys


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_deferred_module_loads_at_first_use_as_the_same_module():
    out = _run(
        "import sys\n"
        "from sockstat._deferred import defer\n"
        "bound = defer('inspect')\n"
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class Documented:\n"
        "    '''A docstring: dataclasses then has no use for inspect.'''\n"
        "    x: int = 0\n"
        "print('ast' in sys.modules, 'tokenize' in sys.modules)\n"
        "import inspect\n"
        "print(inspect is bound, str(inspect.signature(Documented)))\n"
        "print(type(inspect).__name__, 'ast' in sys.modules, inspect.isclass(Documented))\n"
        "from inspect import Parameter\n"
        "print(Parameter is inspect.Parameter, defer('inspect') is inspect)\n")
    assert out.split("\n") == ["False False", "True (x: int = 0) -> None",
                               "module True True", "True True", ""]


def test_a_dataclass_without_a_docstring_loads_it_and_still_works():
    out = _run(
        "import sys\n"
        "from sockstat._deferred import defer\n"
        "defer('inspect')\n"
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class Bare:\n"
        "    x: int = 0\n"
        "print('ast' in sys.modules, Bare.__doc__)\n")
    assert out == "True Bare(x: int = 0)\n"


def test_asdict_loads_a_deferred_copy():
    out = _run(
        "import sys\n"
        "from sockstat._deferred import defer\n"
        "defer('copy')\n"
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class Pair:\n"
        "    '''Two lists.'''\n"
        "    a: list\n"
        "    b: list\n"
        "print('weakref' in sys.modules)\n"
        "print(dataclasses.asdict(Pair([1], [2])), 'weakref' in sys.modules)\n")
    assert out == "False\n{'a': [1], 'b': [2]} True\n"


def test_what_no_finder_knows_or_is_imported_already_is_left_alone():
    out = _run(
        "import sys, os\n"
        "from sockstat._deferred import defer\n"
        "print(defer('no_such_module_here') is None, 'no_such_module_here' in sys.modules)\n"
        "print(defer('os') is os)\n")
    assert out == "True False\nTrue\n"


def test_threads_looking_up_names_at_once_all_wait_for_the_whole_module():
    # the listing dumps namespaces in threads: none may see the module half executed
    out = _run(
        "import threading\n"
        "from sockstat._deferred import defer\n"
        "defer('inspect')\n"
        "import inspect\n"
        "start = threading.Barrier(4)\n"
        "seen = []\n"
        "def look():\n"
        "    start.wait()\n"
        "    try:\n"
        "        seen.append(str(inspect.signature(divmod)))\n"
        "    except Exception as error:\n"
        "        seen.append(repr(error))\n"
        "threads = [threading.Thread(target=look) for _ in range(4)]\n"
        "for thread in threads: thread.start()\n"
        "for thread in threads: thread.join()\n"
        "print(sorted(seen))\n")
    assert out == "['(x, y, /)', '(x, y, /)', '(x, y, /)', '(x, y, /)']\n"
