"""The model registry: run directories, their manifests, and verified model loading.

One run directory per run holds everything it produced (plan, task schema, events,
per-round metrics, models, partner heads, report, Ray logs) plus ``manifest.json`` with
the SHA-256 of every file, so a run can be inspected, compared and audited from its
files alone, and a model is only ever loaded after its hash checks out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedcrm.models.io import sha256_file
# Reading a run directory's models is shared with partners (who may not import the coordinator):
# fedcrm.run_artifacts. Re-exported here for the coordinator's own callers.
from fedcrm.run_artifacts import MANIFEST, load_run_model, manifest_hash  # noqa: F401
SKIP_IN_MANIFEST = {MANIFEST}


def rounds_from_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-round metrics (fit and federated evaluation) from a run's event stream.

    A ``resume`` event discards what the killed coordinator recorded after the round it
    resumed from (that round is run again). A round records who took part (``fit``,
    ``evaluate``) and who did not, with the reason (``missing``: stage → partner → reason).
    """
    rounds: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["event"] == "resume":
            rounds = {k: v for k, v in rounds.items() if k <= int(e["from_round"])}
            continue
        if e["event"] in ("round_start", "fit", "evaluate", "secagg_stage", "dropout"):
            r = rounds.setdefault(int(e["round"]), {"round": int(e["round"]), "secagg_stages": {}})
            if e["event"] == "round_start":
                r["consent_as_of"] = e["at"]
            elif e["event"] == "fit":
                r["fit"] = e["partners"]
            elif e["event"] == "evaluate":
                r["federated"] = {"loss": e["loss"], **e["federated"]}
                r["evaluate"] = e["partners"]
            elif e["event"] == "dropout":
                r.setdefault("missing", {}).setdefault(e["stage"], {}).update(e["partners"])
            else:
                r["secagg_stages"][e["stage"]] = e["partners"]
    return [rounds[k] for k in sorted(rounds)]


def completed_rounds(rounds: list[dict[str, Any]]) -> list[int]:
    """Rounds that finished training and federated evaluation."""
    return [int(r["round"]) for r in rounds if "federated" in r]


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's event stream."""
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def finalise_run_dir(run_dir: Path, *, succeeded: bool, error: str | None, wall_s: float,
                     outcome: str | None = None) -> list[dict[str, Any]]:
    """Write per-round metrics, status, the report and the manifest; returns the rounds.

    ``outcome`` is how the run ended: ``completed``, ``killed`` or ``failed`` (default:
    from ``succeeded``). The status records it with the last completed round.
    """
    from fedcrm.coordinator.reports import write_report

    events = read_events(run_dir)
    rounds = rounds_from_events(events)
    metrics = run_dir / "metrics"
    metrics.mkdir(exist_ok=True)
    (metrics / "rounds.json").write_text(json.dumps(rounds, indent=2))
    stats = next((e for e in events if e["event"] == "statistics"), None)
    if stats:
        (metrics / "statistics.json").write_text(json.dumps(stats, indent=2))
    done = completed_rounds(rounds)
    outcome = outcome or ("completed" if succeeded else "failed")
    status = {"succeeded": succeeded, "outcome": outcome, "error": error, "wall_s": round(wall_s, 2),
              "rounds_completed": len(done), "after_round": max(done, default=0),
              "resumed_from": [e["from_round"] for e in events if e["event"] == "resume"]}
    (run_dir / "status.json").write_text(json.dumps(status, indent=2))
    write_report(run_dir, rounds, status)
    write_manifest(run_dir)
    return rounds


def write_manifest(run_dir: Path) -> Path:
    """SHA-256 of every file in the run directory."""
    files = {
        str(p.relative_to(run_dir)): sha256_file(p)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name not in SKIP_IN_MANIFEST and p.suffix != ".sock"
    }
    path = run_dir / MANIFEST
    path.write_text(json.dumps({"files": files}, indent=2, sort_keys=True))
    return path


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Summary of every run directory under ``runs_dir`` (newest first)."""
    out = []
    for run_dir in sorted((p for p in runs_dir.glob("*") if (p / "plan.json").exists()), reverse=True):
        status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
        rounds = json.loads((run_dir / "metrics" / "rounds.json").read_text()) if (
            run_dir / "metrics" / "rounds.json").exists() else []
        done = [r for r in rounds if "federated" in r]
        last = done[-1]["federated"] if done else {}
        outcome = status.get("outcome") or ("running" if not status else
                                            "completed" if status.get("succeeded") else "failed")
        out.append({"run_id": run_dir.name, "succeeded": status.get("succeeded"), "outcome": outcome,
                    "rounds": len(done), "after_round": status.get("after_round", max(
                        (r["round"] for r in done), default=0)),
                    "roc_auc": last.get("roc_auc"), "error": status.get("error")})
    return out


def partner_heads(run_dir: Path, partner: str) -> list[dict[str, Any]]:
    """Every signed consent-log head a partner reported during a run, in order received."""
    path = run_dir / "heads" / f"{partner}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
