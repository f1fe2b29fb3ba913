"""sockstat: what are this machine's sockets doing, and which of them are a problem?

The library API (the CLI is a thin shell over it):

    from sockstat import collect, Query, TcpState
    snap = collect(Query.build(states=["close-wait"]), processes=True)
    for sock in snap.sockets:
        print(sock.local, sock.remote, sock.process)
"""

from __future__ import annotations

__version__ = "0.1.0"

# Imported eagerly on purpose: `sockstat.collect` is also a subpackage, and a lazy wrapper
# would be replaced by the module the first time anything imports sockstat.collect.*.
# The package's __init__ is light (no netlink, psutil or rich until called).
from sockstat.collect import collect  # noqa: E402
from sockstat.diagnose import diagnose  # noqa: E402  (same reason: a subpackage too)
from sockstat.model import (  # noqa: E402
    Endpoint,
    Family,
    ProcessRef,
    Proto,
    Snapshot,
    Socket,
    TcpInfo,
    TcpState,
)
from sockstat.query import Query  # noqa: E402

__all__ = [
    "Endpoint", "Family", "ProcessRef", "Proto", "Query", "Snapshot", "Socket", "TcpInfo",
    "TcpState", "collect", "diagnose", "__version__",
]
