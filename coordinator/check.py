"""`fedcrm coordinator check`: every partner's preflight, reported in one message before a run starts.

The coordinator never opens a partner's config or data: it only passes paths to each
partner's own ``fedcrm client check --json`` (run as a separate process, the command a
partner runs itself in a real deployment) and gathers the answers. All partners are checked
in one process (on a small machine an interpreter start costs more than a partner's check).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcrm.errors import PreflightFailed

__all__ = ["PartnerCheck", "check_partners", "parse_partner_arg", "preflight_message", "require_preflight"]


@dataclass
class PartnerCheck:
    """One partner's preflight answer (or why there is none)."""

    name: str
    config: Path
    ok: bool
    findings: list[dict[str, Any]] = field(default_factory=list)
    customers_kept: int | None = None
    failure: str | None = None  # the check itself could not run

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Findings that stop a run."""
        return [f for f in self.findings if f.get("severity") == "error"]


def parse_partner_arg(value: str) -> tuple[str | None, Path]:
    """``NAME=CONFIG`` or just ``CONFIG``."""
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name:
        return name, Path(path)
    return None, Path(value)


def check_partners(task: Path, partners: list[tuple[str | None, Path]], *, timeout_s: float = 300.0,
                   dp: Any = None) -> list[PartnerCheck]:
    """Run ``fedcrm client check --json`` for the partners; one result per partner, in order.

    One process checks every partner in turn (an interpreter start costs more than a check).
    """
    cmd = [sys.executable, "-m", "fedcrm.cli", "client", "check", "--task", str(task), "--json"]
    for _, config in partners:
        cmd += ["--config", str(config)]
    if dp is not None and dp.mode != "off":  # the run's DP plan, checked against each partner's budget
        cmd += ["--dp-mode", dp.mode] + (["--dp-epsilon", str(dp.target_epsilon)] if dp.target_epsilon else [])
    if dp is not None and getattr(dp, "statistics", False):  # a noised statistics round spends ε too
        cmd += ["--dp-statistics"]
    labels = [name or config.parent.name for name, config in partners]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"), check=False)
    except subprocess.TimeoutExpired:
        why = f"check did not finish in {timeout_s:.0f} s"
        return [PartnerCheck(label, config, False, failure=why) for label, (_, config) in zip(labels, partners, strict=True)]
    try:
        reports = json.loads(proc.stdout)["partners"]
        assert len(reports) == len(partners)
    except (ValueError, KeyError, TypeError, AssertionError):
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        why = f"check failed (exit {proc.returncode}): {tail}"
        return [PartnerCheck(label, config, False, failure=why) for label, (_, config) in zip(labels, partners, strict=True)]
    return [PartnerCheck(name or report["partner"], config, bool(report["ok"]), report["findings"],
                         report.get("customers_kept"))
            for (name, config), report in zip(partners, reports, strict=True)]


def preflight_message(results: list[PartnerCheck]) -> str:
    """Every partner's problems in one message (empty when all are ready)."""
    lines = []
    for r in results:
        if r.failure:
            lines.append(f"partner {r.name} ({r.config}): {r.failure}")
        elif r.errors:
            lines.append(f"partner {r.name} ({r.config}): {len(r.errors)} problem(s)")
            lines += [f"  - [{f['kind']}] {f['message']}" for f in r.errors]
    if not lines:
        return ""
    failing = sum(1 for r in results if r.failure or r.errors)
    head = f"preflight failed for {failing} of {len(results)} partner(s); nothing was started:"
    return "\n".join([head, *lines])


def require_preflight(task: Path, partner_configs: list[Path], *, dp: Any = None) -> list[PartnerCheck]:
    """Check every partner before a run; raise ``PreflightFailed`` listing every partner's problems."""
    results = check_partners(task, [(None, Path(p)) for p in partner_configs], dp=dp)
    message = preflight_message(results)
    if message:
        raise PreflightFailed(message)
    return results
