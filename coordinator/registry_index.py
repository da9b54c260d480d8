"""Index run directories into the SQL registry, query it, and move models through promotion stages.

The run directory is the artifact store and the truth: :func:`index_run` reads one
(plan, status, events, heads, models, promotions) and replaces that run's rows;
:func:`rebuild` re-indexes every run directory under a runs directory. Promotions are
written to the run directory too (``promotions.jsonl``, append-only) before the registry,
so a registry rebuilt from scratch gets them back.

Federated metrics here are example-weighted means of partners' metrics on their own
*local hold-outs* (``metric_source``); the ``final`` model is the best round's by
federated validation loss unless the run config says ``final_model = "last"``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from fedcrm.coordinator.registry import completed_rounds, read_events, rounds_from_events
from fedcrm.coordinator.model_choice import model_selection
from fedcrm.coordinator.registry_db import (
    LOCAL_HOLDOUT,
    DropoutRow,
    LedgerHeadRow,
    ModelRow,
    PromotionRow,
    RoundPartnerRow,
    RoundRow,
    RunRow,
)
from fedcrm.errors import PromotionRefused, RegistryError, RegistryNotFound
from fedcrm.models.io import sha256_file

STAGES = ("candidate", "staging", "production", "archived")
#: Which stage a model may be promoted to from which (no skipping staging).
NEXT_STAGE = {"staging": ("candidate", "archived"), "production": ("staging",), "archived": ("staging", "production")}
PROMOTIONS_FILE = "promotions.jsonl"
METRICS = ("roc_auc", "pr_auc", "top_decile_lift")


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone columns: they were stored as UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _round_timings(events: list[dict[str, Any]]) -> dict[int, tuple[float | None, float | None]]:
    """Start (round_start) and end (federated evaluation) times per round, resume-aware."""
    times: dict[int, list[float | None]] = {}
    for e in events:
        if e["event"] == "resume":
            times = {k: v for k, v in times.items() if k <= int(e["from_round"])}
        elif e["event"] == "round_start":
            times[int(e["round"])] = [e.get("time"), None]
        elif e["event"] == "evaluate" and int(e["round"]) in times:
            times[int(e["round"])][1] = e.get("time")
    return {k: (v[0], v[1]) for k, v in times.items()}


def _head_fields(note: str) -> tuple[str | None, int | None, str | None]:
    from fedcrm.consent.checkpoint import parse_checkpoint
    from fedcrm.errors import CheckpointError

    try:
        cp = parse_checkpoint(note)
    except CheckpointError:
        return None, None, None
    import base64

    return cp.origin, cp.size, base64.b64encode(cp.root_hash).decode()


def index_run(engine: Engine, run_dir: Path) -> str:
    """(Re-)index one run directory; returns its run id. Keeps a PID the API recorded."""
    run_dir = Path(run_dir).resolve()
    plan = _json(run_dir / "plan.json")
    if plan is None:
        raise RegistryError(f"{run_dir}: not a run directory (no plan.json)")
    cfg = plan["config"]
    task = json.loads(plan["task_schema_json"])
    from fedcrm.protocol import TaskSchema

    task_sha = TaskSchema.model_validate(task).sha256()
    status = _json(run_dir / "status.json")
    events = read_events(run_dir)
    rounds = rounds_from_events(events)
    timings = _round_timings(events)
    selection = model_selection(events, rounds)
    partners_event = next((e for e in reversed(events) if e["event"] == "partners"), None)
    partners = sorted(partners_event["partners"]) if partners_event else sorted(
        {p for r in rounds for p in (*r.get("fit", {}), *r.get("evaluate", {}))})
    outcome = (status or {}).get("outcome") or ("running" if status is None else
                                               "completed" if status.get("succeeded") else "failed")
    run_id = str(plan["run_id"])
    privacy = {k: v for k, v in cfg.items() if k == "dp" or k.startswith("dp_")}
    started = events[0]["time"] if events else (run_dir / "plan.json").stat().st_mtime
    ended = (run_dir / "status.json").stat().st_mtime if status is not None else None

    with Session(engine) as session, session.begin():
        old = session.get(RunRow, run_id)
        pid = old.pid if old is not None else None
        for table in (RoundRow, RoundPartnerRow, DropoutRow, LedgerHeadRow, ModelRow):
            session.execute(delete(table).where(table.run_id == run_id))
        if old is not None:
            session.delete(old)
            session.flush()
        session.add(RunRow(
            run_id=run_id, run_dir=str(run_dir), status=outcome, error=(status or {}).get("error"),
            task_name=str(task.get("name", "")), task_schema_sha256=task_sha, strategy=cfg["strategy"],
            aggregation=cfg["aggregation"], architecture=cfg["architecture"], rounds_planned=int(cfg["rounds"]),
            rounds_completed=len(completed_rounds(rounds)), num_partners=int(plan["num_partners"]), partners=partners,
            config=cfg, privacy=privacy, started_at=_when(started), ended_at=_when(ended),
            wall_s=(status or {}).get("wall_s"), resumed_from=list((status or {}).get("resumed_from", [])),
            pid=pid, indexed_at=datetime.now(UTC), **selection,
        ))
        session.flush()
        for r in rounds:
            k = int(r["round"])
            start, end = timings.get(k, (None, None))
            fed = dict(r.get("federated", {}))
            session.add(RoundRow(
                run_id=run_id, round=k, consent_as_of=r.get("consent_as_of"), started_at=_when(start),
                ended_at=_when(end), duration_s=round(end - start, 3) if start is not None and end is not None else None,
                fit_partners=sorted(r.get("fit", {})), evaluate_partners=sorted(r.get("evaluate", {})),
                secagg_stages=r.get("secagg_stages", {}), federated_loss=fed.pop("loss", None), federated=fed,
                metric_source=LOCAL_HOLDOUT, completed="federated" in r,
            ))
            for name in sorted({*r.get("fit", {}), *r.get("evaluate", {})}):
                fit, ev = r.get("fit", {}).get(name, {}), r.get("evaluate", {}).get(name, {})
                dp = fit.get("dp")
                session.add(RoundPartnerRow(
                    run_id=run_id, round=k, partner=name, fit_examples=fit.get("num_examples"),
                    fit_loss=fit.get("loss"), eval_examples=ev.get("num_examples"), eval_loss=ev.get("loss"),
                    roc_auc=ev.get("roc_auc"), pr_auc=ev.get("pr_auc"), top_decile_lift=ev.get("top_decile_lift"),
                    consent_as_of=ev.get("consent_as_of") or fit.get("consent_as_of"),
                    dp_epsilon=(dp or {}).get("epsilon"), dp_delta=(dp or {}).get("delta"),
                    dp_noise_multiplier=(dp or {}).get("noise_multiplier"), dp=dp,
                    last_seen=_when(end or start),
                ))
            for stage, missing in r.get("missing", {}).items():
                for name, reason in missing.items():
                    session.add(DropoutRow(run_id=run_id, round=k, stage=stage, partner=name, reason=str(reason)))
        for path in sorted((run_dir / "heads").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                if not line:
                    continue
                h = json.loads(line)
                origin, size, root = _head_fields(h["checkpoint"])
                session.add(LedgerHeadRow(run_id=run_id, partner=path.stem, round=int(h["round"]), stage=h["stage"],
                                          origin=origin, tree_size=size, root_hash=root, note=h["checkpoint"]))
        by_round = {int(r["round"]): r for r in rounds}
        for model in sorted((run_dir / "model").glob("*.safetensors")):
            label = model.stem
            sidecar = model.with_suffix(".json")
            meta = _json(sidecar) or {}
            if label == "final":
                k = meta.get("round", selection["final_round"])
            elif label.startswith("round-") and label[6:].isdigit():
                k = int(label[6:])
            else:
                k = None
            fed = dict(by_round.get(k, {}).get("federated", {})) if k is not None else {}
            session.add(ModelRow(
                model_id=f"{run_id}:{label}", run_id=run_id, label=label, round=k,
                file=str(model.relative_to(run_dir)), sha256=sha256_file(model),
                sidecar_sha256=sha256_file(sidecar) if sidecar.exists() else None, stage="candidate",
                task_name=str(task.get("name", "")), federated_loss=fed.pop("loss", None), federated=fed,
            ))
        session.flush()
        ids = [m for (m,) in session.execute(select(ModelRow.model_id).where(ModelRow.run_id == run_id))]
        session.execute(delete(PromotionRow).where(PromotionRow.model_id.in_(ids)))
        for p in _read_promotions(run_dir):
            if p["model_id"] not in ids:
                continue
            session.add(PromotionRow(model_id=p["model_id"], from_stage=p["from_stage"], to_stage=p["to_stage"],
                                     by=p["by"], at=datetime.fromisoformat(p["at"]), note=p.get("note")))
            row = session.get(ModelRow, p["model_id"])
            if row is not None:
                row.stage = p["to_stage"]
    return run_id


def _read_promotions(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / PROMOTIONS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def rebuild(engine: Engine, runs_dir: Path) -> list[str]:
    """Re-index every run directory under ``runs_dir``; drop rows of runs whose directory is gone."""
    runs_dir = Path(runs_dir).resolve()
    found = [index_run(engine, d) for d in sorted(p for p in runs_dir.glob("*") if (p / "plan.json").exists())]
    with Session(engine) as session, session.begin():
        for row in session.scalars(select(RunRow)):
            if row.run_id not in found and Path(row.run_dir).parent == runs_dir and not Path(row.run_dir).exists():
                if row.status != "starting":
                    session.delete(row)
    return found


def refresh_unfinished(engine: Engine) -> None:
    """Re-index runs still running (their directories change as they go)."""
    with Session(engine) as session:
        dirs = [Path(d) for (d,) in session.execute(select(RunRow.run_dir).where(RunRow.status.in_(("running",
                                                                                                     "starting"))))]
    for d in dirs:
        if (d / "plan.json").exists():
            index_run(engine, d)


# --- queries ----------------------------------------------------------------------------------


def _run_dict(row: RunRow) -> dict[str, Any]:
    return {
        "run_id": row.run_id, "status": row.status, "error": row.error, "task_name": row.task_name,
        "task_schema_sha256": row.task_schema_sha256, "strategy": row.strategy, "aggregation": row.aggregation,
        "architecture": row.architecture, "rounds_planned": row.rounds_planned,
        "rounds_completed": row.rounds_completed, "num_partners": row.num_partners, "partners": list(row.partners),
        "started_at": _aware(row.started_at), "ended_at": _aware(row.ended_at), "wall_s": row.wall_s,
        "resumed_from": list(row.resumed_from), "best_round": row.best_round, "final_round": row.final_round,
        "final_rule": row.final_rule, "stopped_early_after": row.stopped_early_after, "pid": row.pid,
        "privacy": dict(row.privacy or {}),
    }


def list_runs(engine: Engine) -> list[dict[str, Any]]:
    """Every run, newest first."""
    with Session(engine) as session:
        rows = session.scalars(select(RunRow).order_by(RunRow.started_at.desc(), RunRow.run_id.desc())).all()
        return [_run_dict(r) for r in rows]


def get_run(engine: Engine, run_id: str) -> dict[str, Any]:
    """One run, with its config."""
    with Session(engine) as session:
        row = session.get(RunRow, run_id)
        if row is None:
            raise RegistryNotFound(f"no run {run_id!r} in the registry")
        return {**_run_dict(row), "config": dict(row.config), "run_dir": row.run_dir}


def run_dir_of(engine: Engine, run_id: str) -> Path:
    """Where a run's artifacts are."""
    return Path(get_run(engine, run_id)["run_dir"])


def get_rounds(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """Per round: participants, dropouts, SecAgg+ stages, timings, federated and per-partner metrics."""
    get_run(engine, run_id)
    with Session(engine) as session:
        rounds = session.scalars(select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.round)).all()
        partners = session.scalars(select(RoundPartnerRow).where(RoundPartnerRow.run_id == run_id)
                                   .order_by(RoundPartnerRow.round, RoundPartnerRow.partner)).all()
        drops = session.scalars(select(DropoutRow).where(DropoutRow.run_id == run_id)
                                .order_by(DropoutRow.round, DropoutRow.stage, DropoutRow.partner)).all()
        out = []
        for r in rounds:
            out.append({
                "round": r.round, "completed": r.completed, "consent_as_of": r.consent_as_of,
                "started_at": _aware(r.started_at), "ended_at": _aware(r.ended_at), "duration_s": r.duration_s,
                "fit_partners": list(r.fit_partners), "evaluate_partners": list(r.evaluate_partners),
                "secagg_stages": dict(r.secagg_stages), "federated_loss": r.federated_loss,
                "federated": dict(r.federated), "metric_source": r.metric_source,
                "dropouts": [{"stage": d.stage, "partner": d.partner, "reason": d.reason}
                             for d in drops if d.round == r.round],
                "partners": [_partner_round(p) for p in partners if p.round == r.round],
            })
        return out


def _partner_round(p: RoundPartnerRow) -> dict[str, Any]:
    return {"partner": p.partner, "fit_examples": p.fit_examples, "fit_loss": p.fit_loss,
            "eval_examples": p.eval_examples, "eval_loss": p.eval_loss, "roc_auc": p.roc_auc, "pr_auc": p.pr_auc,
            "top_decile_lift": p.top_decile_lift, "consent_as_of": p.consent_as_of, "dp_epsilon": p.dp_epsilon,
            "dp_delta": p.dp_delta, "dp_noise_multiplier": p.dp_noise_multiplier}


def list_partners(engine: Engine) -> list[dict[str, Any]]:
    """Every partner seen in any run: runs, rounds taken part in, last seen, and whether it is connected now.

    *Connected* means: taking part in a run that is still running, and not recorded as a dropout
    in that run's latest round.
    """
    with Session(engine) as session:
        runs = {r.run_id: r for r in session.scalars(select(RunRow))}
        seen: dict[str, dict[str, Any]] = {}
        for run in runs.values():
            for name in run.partners:
                seen.setdefault(name, {"partner": name, "runs": set(), "rounds_taken_part": 0, "last_seen": None,
                                       "connected": False, "dropouts": 0})["runs"].add(run.run_id)
        for p in session.scalars(select(RoundPartnerRow)):
            entry = seen.setdefault(p.partner, {"partner": p.partner, "runs": set(), "rounds_taken_part": 0,
                                                "last_seen": None, "connected": False, "dropouts": 0})
            entry["runs"].add(p.run_id)
            if p.fit_examples is not None or p.eval_examples is not None:
                entry["rounds_taken_part"] += 1
            last = _aware(p.last_seen)
            if last is not None and (entry["last_seen"] is None or last > entry["last_seen"]):
                entry["last_seen"] = last
        drops = list(session.scalars(select(DropoutRow)))
        for d in drops:
            if d.partner in seen:
                seen[d.partner]["dropouts"] += 1
        latest: dict[str, int] = {}
        for rid, k in session.execute(select(RoundRow.run_id, RoundRow.round)):
            latest[rid] = max(latest.get(rid, 0), k)
        for run in runs.values():
            if run.status not in ("running", "starting"):
                continue
            dropped = {d.partner for d in drops if d.run_id == run.run_id and d.round == latest.get(run.run_id, 0)}
            for name in run.partners:
                if name not in dropped:
                    seen[name]["connected"] = True
    return [{**v, "runs": sorted(v["runs"])} for _, v in sorted(seen.items())]


def _model_dict(m: ModelRow) -> dict[str, Any]:
    return {"model_id": m.model_id, "run_id": m.run_id, "label": m.label, "round": m.round, "file": m.file,
            "sha256": m.sha256, "stage": m.stage, "task_name": m.task_name, "federated_loss": m.federated_loss,
            "federated": dict(m.federated), "metric_source": LOCAL_HOLDOUT}


def list_models(engine: Engine, *, run_id: str | None = None, include_rounds: bool = False) -> list[dict[str, Any]]:
    """Models in the registry (``final`` models only unless ``include_rounds``)."""
    with Session(engine) as session:
        q = select(ModelRow).order_by(ModelRow.run_id.desc(), ModelRow.label)
        if run_id is not None:
            q = q.where(ModelRow.run_id == run_id)
        if not include_rounds:
            q = q.where(ModelRow.label == "final")
        return [_model_dict(m) for m in session.scalars(q)]


def get_model(engine: Engine, model_id: str) -> dict[str, Any]:
    """One model, with its promotion history."""
    with Session(engine) as session:
        m = session.get(ModelRow, model_id)
        if m is None:
            raise RegistryNotFound(f"no model {model_id!r} in the registry (ids look like '<run id>:final')")
        history = session.scalars(select(PromotionRow).where(PromotionRow.model_id == model_id)
                                  .order_by(PromotionRow.at, PromotionRow.id)).all()
        return {**_model_dict(m), "promotions": [
            {"from_stage": p.from_stage, "to_stage": p.to_stage, "by": p.by, "at": _aware(p.at), "note": p.note}
            for p in history]}


def verified_model_path(engine: Engine, model_id: str) -> Path:
    """The model file, after checking it against the registry's hash and the run's manifest."""
    from fedcrm.coordinator.registry import manifest_hash
    from fedcrm.errors import ModelIntegrityError

    model = get_model(engine, model_id)
    run_dir = run_dir_of(engine, model["run_id"])
    path = run_dir / model["file"]
    if not path.exists():
        raise ModelIntegrityError(f"{path}: the model file is gone")
    actual = sha256_file(path)
    if actual != model["sha256"] or actual != manifest_hash(run_dir, model["file"]):
        raise ModelIntegrityError(f"{path}: sha256 does not match the registry and the run's manifest")
    return path


def promote(engine: Engine, model_id: str, to: str, *, by: str, note: str | None = None) -> dict[str, Any]:
    """Move a model to ``staging``, ``production`` or ``archived``; the previous holder of that stage is archived.

    Only ``final`` models of completed runs whose file matches the manifest can be promoted,
    and production only from staging. The change is appended to the run directory's
    ``promotions.jsonl`` first, then to the registry.
    """
    if to not in NEXT_STAGE:
        raise PromotionRefused(f"cannot promote to {to!r}: stages are staging, production, archived")
    model = get_model(engine, model_id)
    run = get_run(engine, model["run_id"])
    if model["label"] != "final":
        raise PromotionRefused(f"{model_id}: only a run's final model can be promoted (this is {model['label']})")
    if run["status"] != "completed":
        raise PromotionRefused(f"{model_id}: run {run['run_id']} is {run['status']}, not completed")
    if model["stage"] not in NEXT_STAGE[to]:
        raise PromotionRefused(f"{model_id} is in {model['stage']}; {to} is reached only from "
                               + " or ".join(NEXT_STAGE[to]))
    verified_model_path(engine, model_id)
    now = datetime.now(UTC)
    changes = [(model_id, model["stage"], to)]
    if to in ("staging", "production"):
        with Session(engine) as session:
            holders = session.scalars(select(ModelRow).where(ModelRow.task_name == model["task_name"],
                                                             ModelRow.stage == to,
                                                             ModelRow.model_id != model_id)).all()
            changes += [(h.model_id, to, "archived") for h in holders]
    for mid, old, new in changes:
        run_dir = run_dir_of(engine, mid.rsplit(":", 1)[0])
        record = {"model_id": mid, "from_stage": old, "to_stage": new, "by": by, "at": now.isoformat(),
                  "note": note if mid == model_id else f"replaced by {model_id}"}
        with (run_dir / PROMOTIONS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    with Session(engine) as session, session.begin():
        for mid, old, new in changes:
            row = session.get(ModelRow, mid)
            assert row is not None
            row.stage = new
            session.add(PromotionRow(model_id=mid, from_stage=old, to_stage=new, by=by, at=now,
                                     note=note if mid == model_id else f"replaced by {model_id}"))
    return get_model(engine, model_id)


def lineage(engine: Engine, model_id: str) -> dict[str, Any]:
    """What a model is made of: partners, rounds, consent-ledger heads, task schema, privacy budget, selection."""
    model = get_model(engine, model_id)
    run = get_run(engine, model["run_id"])
    upto = model["round"] or 0
    rounds = [r for r in get_rounds(engine, model["run_id"]) if r["round"] <= upto]
    with Session(engine) as session:
        heads = session.scalars(select(LedgerHeadRow).where(LedgerHeadRow.run_id == model["run_id"],
                                                            LedgerHeadRow.round <= upto)
                                .order_by(LedgerHeadRow.partner, LedgerHeadRow.round, LedgerHeadRow.id)).all()
        head_list = [{"partner": h.partner, "round": h.round, "stage": h.stage, "origin": h.origin,
                      "tree_size": h.tree_size, "root_hash": h.root_hash} for h in heads]
    last_head = {h["partner"]: h for h in head_list}
    contributors = sorted({p for r in rounds for p in r["fit_partners"]})
    privacy: dict[str, Any] = {"run_settings": run["privacy"], "partners": {}}
    for r in rounds:
        for p in r["partners"]:
            if p["dp_epsilon"] is not None:
                privacy["partners"][p["partner"]] = {"epsilon": p["dp_epsilon"], "delta": p["dp_delta"],
                                                     "noise_multiplier": p["dp_noise_multiplier"],
                                                     "as_of_round": r["round"]}
    privacy["differential_privacy"] = bool(privacy["partners"])
    return {
        "model": model,
        "run": {k: run[k] for k in ("run_id", "status", "strategy", "aggregation", "architecture", "rounds_planned",
                                    "rounds_completed", "best_round", "final_round", "final_rule",
                                    "stopped_early_after", "resumed_from")},
        "task": {"name": run["task_name"], "schema_sha256": run["task_schema_sha256"]},
        "partners": contributors,
        "rounds": [{"round": r["round"], "fit_partners": r["fit_partners"], "evaluate_partners": r["evaluate_partners"],
                    "dropouts": r["dropouts"], "secagg_stages": sorted(r["secagg_stages"]),
                    "federated_loss": r["federated_loss"], "federated": r["federated"]} for r in rounds],
        "ledger_heads": list(last_head.values()),
        "all_ledger_heads": head_list,
        "privacy": privacy,
        "metric_source": LOCAL_HOLDOUT,
    }


def record_started(engine: Engine, run_id: str, run_dir: Path, pid: int, cfg: dict[str, Any], num_partners: int,
                   task_name: str, task_sha: str) -> None:
    """A run the API has just started (before its directory has a plan): status ``starting`` with its PID."""
    with Session(engine) as session, session.begin():
        session.add(RunRow(
            run_id=run_id, run_dir=str(run_dir), status="starting", task_name=task_name, task_schema_sha256=task_sha,
            strategy=cfg["strategy"], aggregation=cfg["aggregation"], architecture=cfg["architecture"],
            rounds_planned=int(cfg["rounds"]), num_partners=num_partners, partners=[], config=cfg, privacy={},
            started_at=datetime.now(UTC), pid=pid, indexed_at=datetime.now(UTC), resumed_from=[],
        ))


def set_pid(engine: Engine, run_id: str, pid: int | None, status: str | None = None) -> None:
    """Record the PID supervising a run (and optionally a status)."""
    with Session(engine) as session, session.begin():
        row = session.get(RunRow, run_id)
        if row is None:
            raise RegistryNotFound(f"no run {run_id!r} in the registry")
        row.pid = pid
        if status is not None:
            row.status = status


def partner_summaries(engine: Engine) -> dict[str, dict[str, Any]]:
    """Per partner, from its latest run: customers trained on and held out (latest round), consent-ledger size."""
    out: dict[str, dict[str, Any]] = {}
    with Session(engine) as session:
        runs = {r.run_id: r for r in session.scalars(select(RunRow))}
        order = sorted(runs, key=lambda rid: (_aware(runs[rid].started_at) or datetime.min.replace(tzinfo=UTC), rid))
        rank = {rid: i for i, rid in enumerate(order)}
        for p in session.scalars(select(RoundPartnerRow)):
            key = (rank.get(p.run_id, -1), p.round)
            current = out.get(p.partner)
            if current is None or key > current["_key"]:
                out[p.partner] = {"_key": key, "run_id": p.run_id, "round": p.round, "fit_examples": p.fit_examples,
                                  "eval_examples": p.eval_examples, "consent_as_of": p.consent_as_of}
        for name, s in out.items():
            sizes = [h for (h,) in session.execute(select(LedgerHeadRow.tree_size).where(
                LedgerHeadRow.run_id == s["run_id"], LedgerHeadRow.partner == name).order_by(LedgerHeadRow.id))
                if h is not None]
            s["ledger_size"] = sizes[-1] if sizes else None
            s["ledger_growth"] = sizes[-1] - sizes[0] if sizes else None
            s.pop("_key")
    return out
