"""`sockstat watch` as a library: follow the socket table over time.

    from sockstat import Query
    from sockstat.watch import Watcher
    with Watcher(Query.build(ports=[8080]), interval=2) as watcher:  # or .close()
        refresh = watcher.refresh()      # call again every interval
        refresh.counts, refresh.delta, refresh.opened_per_s, refresh.findings

Modules: tracker (pure: identity across refreshes, deltas, rates, ages), incremental
(a collector that reuses unchanged sockets), owners (the process map kept between
refreshes), session (Watcher: one refresh end to end, and the schedule), terminal (the
keyboard and signals of the full-screen view). Drawing is sockstat.render.live.
"""

from __future__ import annotations

from sockstat.watch.tracker import Refresh, Tracker

__all__ = ["Refresh", "Tracker", "Watcher"]


def __getattr__(name: str):
    # Watcher pulls in the collectors; the pure tracker should not have to
    if name == "Watcher":
        from sockstat.watch.session import Watcher

        return Watcher
    raise AttributeError(name)
