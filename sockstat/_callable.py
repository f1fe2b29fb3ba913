"""A package that is also its own main function: `sockstat.collect` and
`sockstat.diagnose` are subpackages and, for the library API, functions.

Python binds a subpackage as an attribute of its parent when it is imported, so the
name `sockstat.collect` ends up naming the module whatever the parent's __init__ did;
giving that module a class with `__call__` (module `__class__` assignment, allowed
since Python 3.5) makes both readings work without importing it eagerly.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function_name: str) -> None:
    """Calling the module `module_name` calls its function `function_name`."""
    module = sys.modules[module_name]

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    CallableModule.__name__ = f"{module_name} (callable module)"
    module.__class__ = CallableModule
