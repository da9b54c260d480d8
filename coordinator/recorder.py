"""Writes what happens in a run into its run directory as it happens.

Events go to ``events.jsonl`` (the CLI tails it for progress); per-round models go to
``model/round-<k>.safetensors``; each partner's signed ledger head, as reported with every
reply, goes to ``heads/<partner>.jsonl`` so an auditor can later prove the partner's log
only grew (consistency with these heads).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.models.io import save_model_arrays


class RunRecorder:
    """Append-only recorder of one run's events, models and partner heads."""

    def __init__(self, run_dir: Path, parameter_names: list[str], model_meta: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.parameter_names = parameter_names
        self.model_meta = model_meta
        self._lock = threading.Lock()
        for sub in ("model", "heads", "metrics"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)

    def event(self, kind: str, **fields: Any) -> None:
        """Append one event line."""
        line = json.dumps({"event": kind, "time": time.time(), **fields}, default=_jsonable)
        with self._lock, (self.run_dir / "events.jsonl").open("a") as handle:
            handle.write(line + "\n")

    def head(self, partner: str, server_round: int, stage: str, note: str) -> None:
        """Record a partner's signed ledger head as received."""
        line = json.dumps({"round": server_round, "stage": stage, "checkpoint": note})
        with self._lock, (self.run_dir / "heads" / f"{partner}.jsonl").open("a") as handle:
            handle.write(line + "\n")

    def model(self, label: str, arrays: list[np.ndarray], **meta: Any) -> Path:
        """Save a model snapshot (safetensors + JSON) under ``model/<label>.safetensors``."""
        return save_model_arrays(
            self.run_dir / "model" / f"{label}.safetensors",
            self.parameter_names,
            arrays,
            {**self.model_meta, **meta},
        )

    def events(self) -> list[dict[str, Any]]:
        """All events so far."""
        path = self.run_dir / "events.jsonl"
        return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
