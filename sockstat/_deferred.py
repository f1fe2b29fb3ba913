"""Standard-library modules bound now and loaded at first use: the CLI's start-up.

`dataclasses` imports `inspect` (which imports ast, dis, tokenize and linecache: ~37M
instructions, a fifth of a small listing's whole run) for one thing only: a dataclass
without a docstring gets its signature as one. Every dataclass on the listing's and
summary's paths has a docstring, so a run that never calls into `inspect` need not load
it; nor `copy` (with weakref: ~3.5M), which dataclasses needs for asdict(). `defer(name)`
puts a module object in sys.modules whose first attribute look-up executes the real
module into that same object (so `import inspect` anywhere later gets the one module,
loaded, and identity holds); threads that use it at once wait for one whole execution.

Hand-written rather than `importlib.util.LazyLoader` because in Python 3.11 an `import`
statement of a lazily loaded module reads its `__spec__`, which makes LazyLoader load
it at once, and importing importlib.util costs more than this whole module. Only the
command's own run calls it (sockstat.cli.main, once cli.start_up() has said the process
is the command's): neither importing the library nor a program calling cli.main()
changes its sys.modules.
"""

from __future__ import annotations

import _thread  # built in, loaded already: free
import sys
from types import ModuleType

# one load at a time, re-entrant: a thread that looks a name up while another executes
# the module waits for the whole module instead of seeing it half executed
_loading = _thread.RLock()


class _Deferred(ModuleType):
    """A module not executed yet: the first look-up of a name it lacks executes it."""

    def __getattr__(self, name: str):
        with _loading:
            if type(self) is _Deferred:  # not loaded by the thread that held the lock
                if self.__dict__.get("_deferred_running"):
                    # a circular import during its execution sees a partly executed
                    # module, as an ordinary import would
                    raise AttributeError(
                        f"partially initialized module {self.__name__!r} has no "
                        f"attribute {name!r}")
                self._deferred_running = True
                try:
                    self.__spec__.loader.exec_module(self)
                finally:
                    del self._deferred_running
                # an ordinary module only once executed: a failed execution (Ctrl-C
                # inside it) is retried at the next look-up
                self.__class__ = ModuleType
        return getattr(self, name)


def defer(name: str) -> ModuleType | None:
    """Bind the top-level module `name` in sys.modules without executing it. Nothing
    happens when it is imported already or no finder knows it (it then imports as
    usual). Returns the module bound, or None."""
    if name in sys.modules:
        return sys.modules[name]
    for finder in sys.meta_path:  # as the import system looks (importlib._bootstrap)
        find = getattr(finder, "find_spec", None)
        spec = find(name, None) if find is not None else None
        if spec is not None:
            break
    else:
        return None
    if spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return None  # a namespace package or an old-style loader: import it as usual
    module = _Deferred(name)
    module.__spec__, module.__loader__ = spec, spec.loader
    module.__package__ = spec.parent
    if spec.has_location:
        module.__file__, module.__cached__ = spec.origin, spec.cached
    sys.modules[name] = module
    return module
