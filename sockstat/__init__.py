"""sockstat: what are this machine's sockets doing, and which of them are a problem?

The library API (the CLI is a thin shell over it):

    from sockstat import collect, Query, TcpState
    snap = collect(Query.build(states=["close-wait"]), processes=True)
    for sock in snap.sockets:
        print(sock.local, sock.remote, sock.process)
"""

from __future__ import annotations

__version__ = "0.1.0"

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


def collect(*args, **kwargs) -> Snapshot:
    """See sockstat.collect.collect (imported on first use to keep start-up lean)."""
    from sockstat.collect import collect as _collect

    return _collect(*args, **kwargs)


def diagnose(*args, **kwargs):
    """See sockstat.diagnose.diagnose."""
    from sockstat.diagnose import diagnose as _diagnose

    return _diagnose(*args, **kwargs)


__all__ = [
    "Endpoint", "Family", "ProcessRef", "Proto", "Query", "Snapshot", "Socket", "TcpInfo",
    "TcpState", "collect", "diagnose", "__version__",
]
