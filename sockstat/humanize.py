"""Numbers as people read them: durations. Pure; shared by findings and renderers."""

from __future__ import annotations


def duration(ms: int) -> str:
    """Compact human duration: 850ms, 59s, 4m12s, 2h05m, 3d4h."""
    if ms < 1000:
        return f"{ms}ms"
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h}h"
