"""Reading a finished run directory: manifest, task schema, federated scaling, models, training settings.

A run directory travels from the coordinator to partners (who score with its model and
compare it with their own), so the code that *reads* one lives in the root package,
used by the coordinator's registry and by partners alike (the client never imports the
coordinator). Every model is loaded only after three checks: its format cannot execute
code when loaded (suffix *and* content), both its files match the SHA-256 the run's
manifest records, and it was trained for the run's task schema. Writing a run directory
stays the coordinator's job (``coordinator/registry.py``, ``coordinator/recorder.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.errors import ConfigError, ModelIntegrityError
from fedcrm.models.io import load_model_arrays, sha256_file
from fedcrm.protocol import TaskSchema

__all__ = [
    "MANIFEST", "SAFE_SUFFIX", "UNSAFE_SUFFIXES", "RunModel", "RunTraining", "check_safe_model_file",
    "find_model_file", "load_run_model", "manifest_hash", "read_run_model", "read_run_scaling", "read_run_task",
    "read_run_training",
]

MANIFEST = "manifest.json"
#: Suffixes of formats whose loaders run code (pickle and the formats built on it).
UNSAFE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".joblib", ".bin", ".ckpt", ".npy", ".npz"})
SAFE_SUFFIX = ".safetensors"

Scaling = dict[str, tuple[float, float]]


def manifest_hash(run_dir: Path, relative: str) -> str:
    """The SHA-256 the manifest records for one file."""
    try:
        files = json.loads((run_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError as exc:
        raise ModelIntegrityError(f"{run_dir}: no {MANIFEST}; refusing to trust its files") from exc
    if relative not in files:
        raise ModelIntegrityError(f"{run_dir}: {relative} is not in the manifest")
    return str(files[relative])


def load_run_model(run_dir: Path, label: str = "final") -> tuple[list[str], list[np.ndarray], dict[str, Any]]:
    """A model of a run, after checking both its files against the manifest."""
    model = run_dir / "model" / f"{label}.safetensors"
    sidecar = model.with_suffix(".json")
    if not model.exists():
        raise ModelIntegrityError(f"{model}: no such model (did the run succeed?)")
    side_expected = manifest_hash(run_dir, str(sidecar.relative_to(run_dir)))
    if sha256_file(sidecar) != side_expected:
        raise ModelIntegrityError(f"{sidecar}: sha256 does not match the manifest")
    return load_model_arrays(model, manifest_hash(run_dir, str(model.relative_to(run_dir))))


def check_safe_model_file(path: Path) -> None:
    """Refuse a model file whose format can execute code when loaded.

    Checked by suffix and by content: a pickle (protocol 2+) starts with ``0x80``, a
    ``torch.save`` zip with ``PK``; a safetensors file starts with an 8-byte little-endian
    header length followed by a JSON object.
    """
    if path.suffix.lower() in UNSAFE_SUFFIXES:
        raise ModelIntegrityError(
            f"{path}: refusing a '{path.suffix}' model: loading it can execute code; only {SAFE_SUFFIX} is accepted"
        )
    if path.suffix != SAFE_SUFFIX:
        raise ModelIntegrityError(f"{path}: refusing a '{path.suffix}' model; only {SAFE_SUFFIX} is accepted")
    with path.open("rb") as handle:
        head = handle.read(9)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise ModelIntegrityError(f"{path}: the content is a pickle/torch archive, not safetensors; refusing to load it")
    size = path.stat().st_size
    if len(head) < 9 or head[8:9] != b"{" or int.from_bytes(head[:8], "little") > size - 8:
        raise ModelIntegrityError(f"{path}: not a safetensors file (bad header); refusing to load it")


def find_model_file(run_dir: Path, label: str = "final") -> Path:
    """The run's model file for ``label``, refusing any unsafe format lying there instead."""
    model_dir = run_dir / "model"
    candidates = sorted(p for p in model_dir.glob(f"{label}.*") if p.suffix != ".json") if model_dir.is_dir() else []
    for candidate in candidates:
        check_safe_model_file(candidate)
    if not candidates:
        raise ModelIntegrityError(f"{model_dir / (label + SAFE_SUFFIX)}: no such model (did the run succeed?)")
    return model_dir / f"{label}{SAFE_SUFFIX}"


def read_run_task(run_dir: Path) -> TaskSchema:
    """The task schema the run trained for (``task_schema.json``)."""
    path = run_dir / "task_schema.json"
    try:
        return TaskSchema.model_validate_json(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not a run directory (no task schema)") from exc


def read_run_scaling(run_dir: Path) -> Scaling:
    """Federated mean/std of numeric features from the run's statistics round."""
    path = run_dir / "metrics" / "statistics.json"
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: the run has no federated statistics; was it finalised?") from exc
    return {name: (float(v[0]), float(v[1])) for name, v in stats["scaling"].items()}


@dataclass(frozen=True)
class RunModel:
    """A run's model: architecture, named arrays and its sidecar metadata."""

    label: str
    architecture: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def read_run_model(run_dir: Path, task: TaskSchema, label: str = "final") -> RunModel:
    """A run's model after the format, manifest-hash and task-schema checks."""
    find_model_file(run_dir, label)
    names, arrays, meta = load_run_model(run_dir, label)
    sidecar = run_dir / "model" / f"{label}.json"
    if meta.get("task_schema_sha256") != task.sha256():
        raise ModelIntegrityError(
            f"{sidecar}: model was trained for task schema "
            f"{str(meta.get('task_schema_sha256'))[:12]}…, not the run's {task.sha256()[:12]}…"
        )
    if int(meta["n_features"]) != task.width:
        raise ModelIntegrityError(f"{sidecar}: {meta['n_features']} inputs, the task has {task.width}")
    return RunModel(label, str(meta["architecture"]), dict(zip(names, arrays, strict=True)), meta)


@dataclass(frozen=True)
class RunTraining:
    """How a run trained its model: what a partner needs to train a local-only twin the same way.

    ``rounds`` is the number of training rounds behind the run's ``final`` model (the
    best round's number when the run kept its best round, else the last completed round).
    ``proximal_mu`` is the FedProx term partners applied (0 for other strategies) and
    ``param_bound`` the projection bound of SecAgg+ runs (``None``: no projection).
    """

    architecture: str
    rounds: int
    local_epochs: int
    learning_rate: float
    batch_size: int
    optimizer: str
    seed: int
    proximal_mu: float
    param_bound: float | None
    strategy: str
    aggregation: str
    #: The run's differential-privacy settings, if any. A local-only twin trains without DP: training
    #: that never leaves the partner releases nothing, so that is what the partner would have done alone.
    federated_dp: dict[str, Any] | None = None


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: the run has no {what}; is this a finished run directory?") from exc


def read_run_training(run_dir: Path, model: RunModel | None = None) -> RunTraining:
    """The training settings of a run, from its plan (``plan.json``) and status (``status.json``).

    Read as plain JSON, not through the coordinator's run-config model: a partner reads
    only the settings that shape local training, and the plan is checked against the
    manifest first (a plan edited after the run would make the local twin differ).
    """
    plan_path = run_dir / "plan.json"
    if not plan_path.exists():
        raise ConfigError(f"{plan_path}: the run has no plan; is this a finished run directory?")
    if sha256_file(plan_path) != manifest_hash(run_dir, "plan.json"):
        raise ModelIntegrityError(f"{plan_path}: sha256 does not match the manifest")
    cfg = _json(plan_path, "plan").get("config", {})
    status = _json(run_dir / "status.json", "status") if (run_dir / "status.json").exists() else {}
    meta = model.meta if model is not None else {}
    rounds = meta.get("round") or meta.get("best_round") or status.get("after_round") or cfg.get("rounds")
    if not rounds:
        raise ConfigError(f"{run_dir}: cannot tell how many rounds trained the final model (no status.json)")
    try:
        secagg = cfg.get("aggregation", "secagg") == "secagg"
        strategy = str(cfg.get("strategy", "fedavg"))
        return RunTraining(
            architecture=str(model.architecture if model is not None else cfg.get("architecture", "mlp")),
            rounds=int(rounds),
            local_epochs=int(cfg.get("local_epochs", 2)),
            learning_rate=float(cfg.get("learning_rate", 0.01)),
            batch_size=int(cfg.get("batch_size", 64)),
            optimizer=str(cfg.get("optimizer", "adam")),
            seed=int(cfg.get("seed", 0)),
            proximal_mu=float(cfg.get("proximal_mu", 0.0)) if strategy == "fedprox" else 0.0,
            param_bound=float(cfg["clipping_range"]) if secagg and cfg.get("project_params", True) and
            "clipping_range" in cfg else None,
            strategy=strategy,
            aggregation=str(cfg.get("aggregation", "secagg")),
            federated_dp=dict(cfg["dp"]) if isinstance(cfg.get("dp"), dict) and cfg["dp"].get("mode", "off") != "off"
            else None,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{plan_path}: unreadable training settings ({exc})") from exc
