"""sockstat: what are this machine's sockets doing, and which of them are a problem?

The library API (the CLI is a thin shell over it):

    from sockstat import collect, Query, TcpState
    snap = collect(Query.build(states=["close-wait"]), processes=True)
    for sock in snap.sockets:
        print(sock.local, sock.remote, sock.process)
"""

from __future__ import annotations

__version__ = "0.1.0"

# Nothing is imported until asked for (`import sockstat.model` or `sockstat --version`
# must not pay for the whole library). `collect` and `diagnose` are functions and
# subpackages at once: importing the subpackage binds the module here, so those two
# modules are themselves callable (sockstat._callable) and `sockstat.collect(...)` calls
# the function whichever way it was bound.
_LAZY = {
    "collect": "sockstat.collect", "diagnose": "sockstat.diagnose",
    "Endpoint": "sockstat.model", "Family": "sockstat.model",
    "ProcessRef": "sockstat.model", "Proto": "sockstat.model", "Snapshot": "sockstat.model",
    "Socket": "sockstat.model", "TcpInfo": "sockstat.tcpinfo", "TcpState": "sockstat.model",
    "Query": "sockstat.query",
}


def __getattr__(name: str):
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'sockstat' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(home)
    value = module if name in ("collect", "diagnose") else getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "Endpoint", "Family", "ProcessRef", "Proto", "Query", "Snapshot", "Socket", "TcpInfo",
    "TcpState", "collect", "diagnose", "__version__",
]
