"""`sockstat check` (placeholder: filled in by its issue)."""

from __future__ import annotations


def register(app) -> None:
    pass
