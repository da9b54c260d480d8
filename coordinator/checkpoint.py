"""Per-round checkpoints inside the run directory, and reading them back to resume a run.

After round k's training and federated evaluation the ServerApp writes
``checkpoint/round-<k>.safetensors`` (the global model's named parameters, plus the
strategy's own arrays under ``strategy/<attribute>/<i>``: FedAdam/FedYogi ``m_t``,
``v_t``, ``current_weights``; FedAvgM ``momentum_vector``) and then
``checkpoint/round-<k>.json``: the round, the SHA-256 of the arrays file, the server's
RNG state (Python's ``random``, which Flower uses to sample partners and to shuffle the
SecAgg+ neighbour order), the federated scaling, SecAgg+ ``max_weight`` and the
node → partner names. The JSON is written last, atomically, so a checkpoint exists only
once it is complete. The run directory's manifest covers both files (the engine writes
the manifest however the run ends, also when its coordinator is killed), and
:func:`load_checkpoint` refuses a checkpoint whose files do not match it.

Flower has nothing for resume (``server-round`` restarts at 1): a resumed run starts
Flower afresh with these parameters and state, skips the statistics round (scaling and
``max_weight`` come from the checkpoint), maps the partners' new node ids to names by the
handshake and continues at round k + 1 (see :class:`fedcrm.coordinator.workflows.RoundsWorkflow`).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedcrm.coordinator.registry import manifest_hash
from fedcrm.errors import CoordinatorError, ModelIntegrityError
from fedcrm.models.io import sha256_file

CHECKPOINT_DIR = "checkpoint"
STRATEGY_ATTRS = ("m_t", "v_t", "momentum_vector", "current_weights")


@dataclass
class Checkpoint:
    """Everything needed to continue a run after ``server_round``."""

    server_round: int
    parameter_names: list[str]
    parameters: list[np.ndarray]
    strategy_state: dict[str, list[np.ndarray]]
    random_state: Any
    scaling: dict[str, tuple[float, float]]
    max_weight: float
    node_names: dict[int, str]


def checkpoint_paths(run_dir: Path, server_round: int) -> tuple[Path, Path]:
    """The arrays file and the JSON of one round's checkpoint."""
    base = run_dir / CHECKPOINT_DIR / f"round-{server_round}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def strategy_state(strategy: object) -> dict[str, list[np.ndarray]]:
    """The strategy's own arrays that a resumed run needs (empty for FedAvg and FedProx)."""
    state = {}
    for attr in STRATEGY_ATTRS:
        value = getattr(strategy, attr, None)
        if value:
            state[attr] = [np.asarray(a) for a in value]
    return state


def restore_strategy_state(strategy: object, state: dict[str, list[np.ndarray]]) -> None:
    """Put saved strategy arrays back (the strategy was built from the checkpoint's parameters)."""
    for attr, arrays in state.items():
        if attr not in STRATEGY_ATTRS:
            raise CoordinatorError(f"checkpoint holds unknown strategy state {attr!r}")
        setattr(strategy, attr, [a.copy() for a in arrays])


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write one round's checkpoint (arrays, then the JSON that completes it); returns the JSON path."""
    arrays_path, json_path = checkpoint_paths(run_dir, checkpoint.server_round)
    arrays_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(a) for name, a in zip(checkpoint.parameter_names, checkpoint.parameters,
                                                                strict=True)}
    for attr, values in checkpoint.strategy_state.items():
        tensors.update({f"strategy/{attr}/{i}": np.ascontiguousarray(a) for i, a in enumerate(values)})
    tmp = arrays_path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, arrays_path)
    version, internal, gauss = checkpoint.random_state
    meta = {
        "round": checkpoint.server_round,
        "arrays_sha256": sha256_file(arrays_path),
        "parameter_names": checkpoint.parameter_names,
        "strategy_state": {attr: len(v) for attr, v in checkpoint.strategy_state.items()},
        "random_state": [version, list(internal), gauss],
        "scaling": checkpoint.scaling,
        "max_weight": checkpoint.max_weight,
        "node_names": {str(k): v for k, v in checkpoint.node_names.items()},
    }
    tmp_json = json_path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_json, json_path)
    return json_path


def latest_round(run_dir: Path) -> int:
    """The newest complete checkpoint's round (0 if none)."""
    rounds = [int(p.stem.split("-", 1)[1]) for p in (run_dir / CHECKPOINT_DIR).glob("round-*.json")
              if p.stem.split("-", 1)[1].isdigit()]
    return max(rounds, default=0)


def prepare_resume(run_dir: Path, plan: Any) -> tuple[Any, Path]:
    """The plan of a resume from the newest checkpoint, written beside the run's own; both engines use it.

    Refuses (``load_checkpoint``) a missing checkpoint or one that does not match the manifest
    before anything changes; then discards the models of rounds after it (those rounds run
    again) and writes ``plan-resume-<round>.json``. ``plan`` is the run's ``RunPlan``.
    """
    done = latest_round(run_dir)
    load_checkpoint(run_dir, done)
    for model in (run_dir / "model").glob("round-*.safetensors"):
        label = model.stem.split("-", 1)[1]
        if label.isdigit() and int(label) > done:
            model.unlink()
            model.with_suffix(".json").unlink(missing_ok=True)
    resumed = plan.model_copy(update={"resume_from_round": done})
    path = run_dir / f"plan-resume-{done}.json"
    path.write_text(resumed.model_dump_json(indent=2))
    return resumed, path


def load_checkpoint(run_dir: Path, server_round: int | None = None) -> Checkpoint:
    """Read a checkpoint (default: the newest) after checking both files against the run's manifest."""
    server_round = latest_round(run_dir) if server_round is None else server_round
    if server_round == 0:
        raise CoordinatorError(f"{run_dir}: no checkpoint (the run did not complete a round); start a new run")
    arrays_path, json_path = checkpoint_paths(run_dir, server_round)
    for path in (json_path, arrays_path):
        if sha256_file(path) != manifest_hash(run_dir, str(path.relative_to(run_dir))):
            raise ModelIntegrityError(f"{path}: sha256 does not match the run's manifest; refusing to resume from it")
    meta = json.loads(json_path.read_text())
    tensors = load_file(str(arrays_path))
    names = list(meta["parameter_names"])
    state = {attr: [tensors[f"strategy/{attr}/{i}"] for i in range(count)]
             for attr, count in meta["strategy_state"].items()}
    version, internal, gauss = meta["random_state"]
    return Checkpoint(
        server_round=int(meta["round"]),
        parameter_names=names,
        parameters=[tensors[n] for n in names],
        strategy_state=state,
        random_state=(version, tuple(internal), gauss),
        scaling={k: (float(v[0]), float(v[1])) for k, v in meta["scaling"].items()},
        max_weight=float(meta["max_weight"]),
        node_names={int(k): v for k, v in meta["node_names"].items()},
    )


def current_random_state() -> Any:
    """The server's Python RNG state (what Flower samples and shuffles with)."""
    return random.getstate()


def restore_random_state(state: Any) -> None:
    """Restore the server's Python RNG state from a checkpoint."""
    random.setstate(state)
