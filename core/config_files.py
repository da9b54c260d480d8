"""Reading config files (TOML, YAML or JSON) into Pydantic models, with errors that name the file.

Every fedcrm config — partner config, merge config, task schema, partition spec, run config — goes
through here, so a missing file, a syntax error and an invalid field are reported the same way:
``<file>: <kind> not found``, ``<file>: cannot parse: …``, ``<file>: invalid <kind>: <field>: <problem>``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fedcrm.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def validation_summary(exc: ValidationError) -> str:
    """Short 'field: problem; …' text of a Pydantic error (first five problems)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def read_config(path: Path, kind: str) -> dict[str, Any]:
    """Parse a config file by its suffix (.toml, else YAML, which also reads JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: {kind} not found") from exc
    try:
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: invalid {kind}: expected a table of settings, found {type(raw).__name__}")
    return raw


def validate_config(model: type[M], raw: dict[str, Any], path: Path | str, kind: str) -> M:
    """Validate parsed settings; an invalid field is reported with the file it came from."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {kind}: {validation_summary(exc)}") from exc


def load_config(path: Path | str, model: type[M], kind: str) -> M:
    """Read and validate one config file."""
    path = Path(path)
    return validate_config(model, read_config(path, kind), path, kind)
