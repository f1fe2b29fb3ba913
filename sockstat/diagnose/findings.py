"""Finding and Severity: what every detector returns.

A finding says what is wrong (`kind`), how bad (`severity`), where (`subject`: a
process, a destination, a listener, or the host), the numbers that show it
(`evidence`), why it happens (`explanation`) and what to do (`remedy`). It carries the
sockets it is about, so that listings can mark them. No I/O, no UI here.
"""

from __future__ import annotations

import enum
from dataclasses import field

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.model import Socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (check's start-up)
if TYPE_CHECKING:
    from typing import Any


class Severity(enum.StrEnum):
    """ok < warning < critical; the values are what JSON and people see."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def worst(cls, severities) -> Severity:
        return max(severities, key=lambda s: s.rank, default=cls.OK)


_RANK = {Severity.OK: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class Scope(enum.StrEnum):
    """What a finding judges: sockets in the snapshot, or the whole host (kernel
    counters and limits). Host findings are left out when the check is filtered."""

    SOCKETS = "sockets"
    HOST = "host"


@dataclass(frozen=True, eq=False)
class Finding:
    kind: str  # stable identifier: close_wait_leak, time_wait_pileup, accept_queue ...
    severity: Severity
    subject: str  # for people: "python3/1234", "127.0.0.1 -> 10.0.0.5:5432", "host"
    summary: str  # one line, with the key numbers
    evidence: dict[str, Any]  # the numbers, JSON-ready; ids such as pid or port included
    explanation: str
    remedy: str
    sockets: tuple[Socket, ...] = ()
    scope: Scope = Scope.SOCKETS
    # orders findings of equal severity and kind: bigger problems first
    weight: float = field(default=0.0, repr=False)

    @property
    def socket_keys(self) -> frozenset:
        return frozenset(s.key for s in self.sockets)

    def to_dict(self, socket_limit: int | None = 50) -> dict:
        """The stable JSON shape (docs/check.md). At most `socket_limit`
        sockets are listed; evidence always has the full counts."""
        shown = self.sockets if socket_limit is None else self.sockets[:socket_limit]
        return {
            "kind": self.kind,
            "severity": self.severity.value,
            "scope": self.scope.value,
            "subject": self.subject,
            "summary": self.summary,
            "evidence": self.evidence,
            "explanation": self.explanation,
            "remedy": self.remedy,
            "sockets": [s.to_dict() for s in shown],
            "sockets_total": len(self.sockets),
        }
