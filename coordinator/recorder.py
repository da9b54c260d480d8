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

# One lock for every write into a run directory: when a killed run is abandoned,
# :func:`stop_writes` takes it and sets the flag, so no model or event lands after the
# manifest that closes the run directory.
_WRITE_LOCK = threading.Lock()
_STOPPED = threading.Event()


class WritesStopped(RuntimeError):
    """The run is being abandoned; nothing more may be written into its directory."""


def stop_writes() -> None:
    """Refuse every later write of this process into run directories (waits for one in progress)."""
    with _WRITE_LOCK:
        _STOPPED.set()


def _check_open() -> None:
    if _STOPPED.is_set():
        raise WritesStopped("the run is being abandoned")


class RunRecorder:
    """Append-only recorder of one run's events, models and partner heads."""

    def __init__(self, run_dir: Path, parameter_names: list[str], model_meta: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.parameter_names = parameter_names
        self.model_meta = model_meta
        self._lock = _WRITE_LOCK
        for sub in ("model", "heads", "metrics"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)

    def event(self, kind: str, **fields: Any) -> None:
        """Append one event line."""
        line = json.dumps({"event": kind, "time": time.time(), **fields}, default=_jsonable)
        with self._lock:
            _check_open()
            with (self.run_dir / "events.jsonl").open("a") as handle:
                handle.write(line + "\n")

    def head(self, partner: str, server_round: int, stage: str, note: str) -> None:
        """Record a partner's signed ledger head as received."""
        line = json.dumps({"round": server_round, "stage": stage, "checkpoint": note})
        with self._lock:
            _check_open()
            with (self.run_dir / "heads" / f"{partner}.jsonl").open("a") as handle:
                handle.write(line + "\n")

    def model(self, label: str, arrays: list[np.ndarray], **meta: Any) -> Path:
        """Save a model snapshot (safetensors + JSON) under ``model/<label>.safetensors``."""
        with self._lock:
            _check_open()
            return save_model_arrays(
                self.run_dir / "model" / f"{label}.safetensors",
                self.parameter_names,
                arrays,
                {**self.model_meta, **meta},
            )

    def guarded(self) -> threading.Lock:
        """The write lock, for writers outside this class (checkpoints); call :meth:`check_open` inside."""
        return self._lock

    @staticmethod
    def check_open() -> None:
        """Raise :class:`WritesStopped` if the run is being abandoned."""
        _check_open()

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
