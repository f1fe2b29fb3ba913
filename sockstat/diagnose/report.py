"""Findings as data for people and machines: the verdict line, the JSON document, and
plain-text blocks. Returns strings and dicts; printing is the CLI's job.
"""

from __future__ import annotations

from dataclasses import asdict

from sockstat.diagnose import exit_status, relevant_counters
from sockstat.diagnose.findings import Finding, Severity
from sockstat.diagnose.thresholds import Thresholds
from sockstat.humanize import printable
from sockstat.kernelmodel import KernelChange

LABEL = {Severity.OK: "OK", Severity.WARNING: "WARNING", Severity.CRITICAL: "CRITICAL"}


def worst(findings: list[Finding]) -> Severity:
    return Severity.worst(f.severity for f in findings)


def verdict_line(findings: list[Finding], sockets: int) -> str:
    """'CRITICAL: 3 problems (1 critical, 2 warnings) in 1,234 sockets' or 'OK: ...'."""
    label = LABEL[worst(findings)]
    if not findings:
        return f"{label}: no problems found in {sockets:,} sockets"
    crit = sum(1 for f in findings if f.severity is Severity.CRITICAL)
    warn = sum(1 for f in findings if f.severity is Severity.WARNING)
    parts = []
    if crit:
        parts.append(f"{crit} critical")
    if warn:
        parts.append(f"{warn} warning{'s' if warn != 1 else ''}")
    n = len(findings)
    kinds = ", ".join(dict.fromkeys(f.kind for f in findings))
    return (f"{label}: {n} problem{'s' if n != 1 else ''} ({', '.join(parts)}) in "
            f"{sockets:,} sockets: {kinds}")


def kernel_dict(kernel: KernelChange | None) -> dict | None:
    if kernel is None:
        return None
    counters = {}
    for name in relevant_counters():
        value = kernel.after.counters.get(name)
        if value is not None:
            counters[name] = {"value": value, "delta": kernel.delta(name)}
    return {
        "interval_s": None if kernel.seconds is None else round(kernel.seconds, 3),
        "sysctls": kernel.sysctls.to_dict(),
        "sockstat": {k: v for k, v in kernel.after.sockstat.items()
                     if k.split(".")[0] in ("TCP", "TCP6", "sockets")},
        "counters": counters,
    }


def report_dict(findings: list[Finding], *, sockets: int, source: str,
                kernel: KernelChange | None, thresholds: Thresholds, host: bool,
                socket_limit: int | None = 50) -> dict:
    """The stable JSON document of `sockstat check --json` (schema in docs/check.md)."""
    return {
        "verdict": worst(findings).value,
        "exit_status": int(exit_status(findings)),
        "summary": verdict_line(findings, sockets),
        "findings": [f.to_dict(socket_limit) for f in findings],
        "checked": {"sockets": sockets, "source": source, "host_checks": host,
                    "thresholds": asdict(thresholds)},
        "kernel": kernel_dict(kernel),
    }


def evidence_text(evidence: dict) -> str:
    """'count=412 oldest_age_s=3600 peers=10.0.0.5 (300), 10.0.0.6 (112)'; None omitted."""
    parts = []
    for key, value in evidence.items():
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict) \
                and set(value[0]) == {"value", "count"}:
            value = ", ".join(f"{v['value']} ({v['count']})" for v in value)
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}:{v}" for k, v in value.items())
        parts.append(f"{key}={value}")
    return "  ".join(parts)


def plain_block(finding: Finding) -> list[str]:
    """A finding as indented text lines (the piped, colourless form of a panel)."""
    # a subject or evidence can quote a socket or process name: printed escaped
    return [printable(line) for line in (
        f"[{LABEL[finding.severity]}] {finding.kind}: {finding.subject}",
        f"  {finding.summary}",
        f"  evidence: {evidence_text(finding.evidence)}",
        f"  why: {finding.explanation}",
        f"  fix: {finding.remedy}",
    )]
