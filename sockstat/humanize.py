"""Values as people read them: durations, byte sizes, names safe to print. Pure; shared by findings
and renderers."""

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


def size(n: int | None) -> str:
    """Bytes in binary units: 512 B, 8 KiB, 7.3 KiB, 928 KiB, 1.4 MiB, 2.0 GiB; a whole or
    large KiB count without decimals; 'unknown' for None."""
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{n:,} B"
    if n < 1 << 20:
        return f"{n / 1024:.0f} KiB" if n % 1024 == 0 or n >= 10 * 1024 else \
            f"{n / 1024:.1f} KiB"
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):,.1f} GiB"


# control characters as the backslash escapes people know; others as \xNN / \uNNNN
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch.isprintable():
        return ch
    named = _NAMED_ESCAPES.get(ch)
    if named:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` safe to print to a terminal: control characters (C0, DEL, C1) and other
    unprintable ones (line separators…) as visible backslash escapes, so a socket or
    process name can neither send an escape sequence nor forge a line. Names under a
    program's control (socket paths, prctl names) can hold any byte. The common case,
    a printable name, costs one C-level str.isprintable() and is returned as it is."""
    if text.isprintable():
        return text
    return "".join(map(_escape, text))
