"""Run directories written the way the ServerApp writes them, without starting Flower (fast registry tests).

:func:`write_run` drives the real :class:`~fedcrm.coordinator.recorder.RunRecorder` with the
events, models and signed ledger heads a run records (the same calls
``coordinator/server_app.py`` and ``coordinator/rounds.py`` make), then closes the directory
with the real :func:`~fedcrm.coordinator.registry.finalise_run_dir`. Metrics are seeded
random numbers, so tests compare what the registry, API and dashboard show with these events,
never with constants.
"""

from __future__ import annotations

import hashlib
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcrm.consent.checkpoint import sign_checkpoint
from fedcrm.coordinator.recorder import RunRecorder
from fedcrm.coordinator.registry import finalise_run_dir
from fedcrm.coordinator.run_config import RunConfig, RunPlan
from fedcrm.paths import DATASETS
from fedcrm.protocol import load_task_schema

TASK = DATASETS / "tasks" / "telco_churn.yaml"
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


def write_run(runs_dir: Path, run_id: str, *, rounds: int = 4, partners: tuple[str, ...] = ("A", "B", "C"),
              seed: int = 0, dropout: tuple[int, str] | None = None, dp: bool = False, outcome: str = "completed",
              final_rule: str = "best") -> Path:
    """A finished run directory; ``dropout=(round, partner)`` drops that partner at evaluate in that round."""
    rng = random.Random(seed)
    task = load_task_schema(TASK)
    cfg = RunConfig(task=TASK, rounds=rounds, seed=seed, run_id=run_id)
    run_dir = (runs_dir / run_id).resolve()
    run_dir.mkdir(parents=True)
    (run_dir / "task_schema.json").write_text(task.canonical_json().decode())
    RunPlan(run_id=run_id, run_dir=run_dir, num_partners=len(partners), task_schema_json=task.canonical_json().decode(),
            config=cfg).save()
    names = ["w", "b"]
    rec = RunRecorder(run_dir, names, {"architecture": "mlp", "task": task.name, "task_schema_sha256": task.sha256()})
    keys = {p: Ed25519PrivateKey.generate() for p in partners}
    sizes = {p: 0 for p in partners}

    def head(p: str, k: int, stage: str) -> None:
        sizes[p] += rng.randint(1, 5)
        root = hashlib.sha256(f"{p}{sizes[p]}".encode()).digest()
        rec.head(p, k, stage, sign_checkpoint(f"fedcrm.test/{p}", sizes[p], root, keys[p]).note)

    rec.event("run_start", run_id=run_id, aggregation="secagg")
    rec.event("partners", partners=sorted(partners))
    rows = {p: rng.randint(900, 3000) for p in partners}
    for p in partners:
        head(p, 0, "stats")
    rec.event("statistics", partner_rows=rows, scaling={"tenure": [30.0, 20.0]}, max_weight=max(rows.values()) * 1.05)
    epsilon = {p: 0.0 for p in partners}
    for k in range(1, rounds + 1):
        at = datetime.now(UTC).isoformat()
        rec.event("round_start", round=k, at=at)
        for stage in STAGES:
            rec.event("secagg_stage", round=k, stage=stage, partners=sorted(partners))
        rec.model(f"round-{k}", [np.full((2, 2), k, np.float32), np.zeros(2, np.float32)], model_version=f"{run_id}:{k}")
        fit: dict[str, Any] = {}
        for p in partners:
            fit[p] = {"num_examples": int(rows[p] * 0.8), "loss": rng.uniform(0.3, 0.6), "consent_as_of": at}
            if dp:
                epsilon[p] += rng.uniform(0.2, 0.5)
                fit[p]["dp"] = {"epsilon": epsilon[p], "delta": 1e-5, "noise_multiplier": 1.1}
            head(p, k, "fit")
        rec.event("fit", round=k, partners=fit)
        time.sleep(0.01)
        evaluated = [p for p in partners if dropout != (k, p)]
        if dropout and dropout[0] == k:
            rec.event("dropout", round=k, stage="evaluate", partners={dropout[1]: "no reply within the stage timeout"})
        ev = {}
        for p in evaluated:
            ev[p] = {"num_examples": int(rows[p] * 0.2), "loss": rng.uniform(0.3, 0.6), "consent_as_of": at,
                     "roc_auc": rng.uniform(0.7, 0.9), "pr_auc": rng.uniform(0.4, 0.7),
                     "top_decile_lift": rng.uniform(2, 3)}
            head(p, k, "evaluate")
        n = sum(e["num_examples"] for e in ev.values())
        federated = {m: sum(e[m] * e["num_examples"] for e in ev.values()) / n
                     for m in ("roc_auc", "pr_auc", "top_decile_lift")}
        loss = sum(e["loss"] * e["num_examples"] for e in ev.values()) / n
        rec.event("evaluate", round=k, loss=loss, federated=federated, partners=ev)
        rec.event("checkpoint", round=k)
    losses = {int(e["round"]): e["loss"] for e in rec.events() if e["event"] == "evaluate"}
    best = min(losses, key=lambda k: (losses[k], k))
    chosen = best if final_rule == "best" else rounds
    rec.event("model_selected", round=chosen, rule=final_rule, best_round=best, loss=losses[chosen])
    rec.model("final", [np.full((2, 2), chosen, np.float32), np.zeros(2, np.float32)],
              model_version=f"{run_id}:final", round=chosen, rule=final_rule)
    rec.event("run_end", run_id=run_id)
    finalise_run_dir(run_dir, succeeded=outcome == "completed", error=None if outcome == "completed" else "boom",
                     wall_s=12.5, outcome=outcome)
    return run_dir
