"""Model files that cannot execute code when loaded: safetensors plus a JSON sidecar.

Never pickle (``torch.save``/``joblib``): loading a pickle runs arbitrary code, and a
model file travels between organisations. ``load_model_arrays`` refuses any other format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedcrm.errors import ModelIntegrityError

SAFE_SUFFIX = ".safetensors"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model_arrays(path: Path, names: list[str], arrays: list[np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and ``path.json`` (architecture, names, task hash, …)."""
    if path.suffix != SAFE_SUFFIX:
        raise ValueError(f"{path}: model files must end in {SAFE_SUFFIX}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: np.ascontiguousarray(a) for n, a in zip(names, arrays, strict=True)}, str(path))
    path.with_suffix(".json").write_text(json.dumps({**meta, "parameter_names": names}, indent=2, sort_keys=True))
    return path


def load_model_arrays(path: Path, expected_sha256: str | None = None) -> tuple[list[str], list[np.ndarray], dict[str, Any]]:
    """Read a model saved by :func:`save_model_arrays`, checking its hash when given."""
    if path.suffix != SAFE_SUFFIX:
        raise ModelIntegrityError(f"{path}: refusing to load a '{path.suffix}' model; only {SAFE_SUFFIX} is accepted")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ModelIntegrityError(f"{path}: sha256 {actual} does not match the manifest's {expected_sha256}")
    meta = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path))
    names = list(meta["parameter_names"])
    return names, [tensors[n] for n in names], meta
