"""Split one data set into partner organisations, deterministically.

Driven by a partition spec (YAML, e.g. ``datasets/telco/partition.yaml``): first a
stratified common test set is kept apart from every partner, then the remaining rows
are split IID, skewed by a column (each value's rows go mostly to its "home" partner),
or into partners of unequal size. Each partner gets its own directory with its own CSV
export and partner config, as a real partner would hold them. Works on raw export rows:
the rows are copied byte-for-byte in the source's column order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.model_selection import train_test_split

from fedcrm.errors import ConfigError
from fedcrm.config_files import load_config


class SplitSpec(BaseModel):
    """One way of splitting the training rows into partners."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["iid", "skewed", "unequal"]
    partners: list[str] = Field(default_factory=list)
    column: str | None = None
    home_share: float = 0.8
    homes: dict[str, str] = Field(default_factory=dict)
    shares: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> SplitSpec:
        if self.kind == "skewed" and (not self.column or not self.homes):
            raise ValueError("a skewed split needs 'column' and 'homes'")
        if self.kind == "unequal" and abs(sum(self.shares.values()) - 1.0) > 1e-9:
            raise ValueError(f"unequal split shares must sum to 1, got {sum(self.shares.values())}")
        if self.kind == "iid" and len(self.partners) < 2:
            raise ValueError("an iid split needs at least two partners")
        return self

    def partner_names(self) -> list[str]:
        """Partners of this split, in a stable order."""
        if self.kind == "skewed":
            return sorted(set(self.homes.values()))
        if self.kind == "unequal":
            return list(self.shares)
        return list(self.partners)


class PartitionSpec(BaseModel):
    """The whole partition spec file."""

    model_config = ConfigDict(extra="forbid")

    source: Path
    id_column: str
    label_column: str
    partner_template: Path
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    splits: dict[str, SplitSpec]
    read_options: dict[str, str] = Field(default_factory=dict)


def load_partition_spec(path: Path) -> tuple[PartitionSpec, Path]:
    """Read a partition spec; returns it with the directory its relative paths resolve against."""
    return load_config(path, PartitionSpec, "partition spec"), path.parent


def common_test_split(frame: pd.DataFrame, label: str, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified (train, test) split; the test rows never reach a partner."""
    train, test = train_test_split(frame, test_size=fraction, stratify=frame[label], random_state=seed)
    return train.sort_index(), test.sort_index()


def assign_partners(train: pd.DataFrame, split: SplitSpec, seed: int) -> dict[str, pd.DataFrame]:
    """Assign every training row to exactly one partner."""
    rng = np.random.default_rng(seed)
    names = split.partner_names()
    owner = pd.Series("", index=train.index, dtype=object)
    if split.kind == "iid":
        order = rng.permutation(train.index.to_numpy())
        for i, chunk in enumerate(np.array_split(order, len(names))):
            owner[chunk] = names[i]
    elif split.kind == "unequal":
        order = rng.permutation(train.index.to_numpy())
        bounds = np.round(np.cumsum([0.0, *split.shares.values()]) * len(order)).astype(int)
        for i, name in enumerate(names):
            owner[order[bounds[i] : bounds[i + 1]]] = name
    else:
        assert split.column is not None
        unknown = sorted(set(train[split.column]) - set(split.homes))
        if unknown:
            raise ConfigError(f"skewed split: values {unknown} of column '{split.column}' have no home partner")
        for value in sorted(split.homes):
            home = split.homes[value]
            others = [n for n in names if n != home]
            rows = rng.permutation(train.index[train[split.column] == value].to_numpy())
            n_home = int(round(split.home_share * len(rows)))
            owner[rows[:n_home]] = home
            for i, chunk in enumerate(np.array_split(rows[n_home:], len(others))):
                owner[chunk] = others[i]
    return {name: train[owner == name] for name in names}


def write_partner(directory: Path, name: str, rows: pd.DataFrame, template: str) -> Path:
    """Write one partner's export and config; returns the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    rows.to_csv(directory / "customers.csv", index=False)
    config = directory / "partner.toml"
    config.write_text(template.replace("{name}", name))
    return config


def partition(spec_path: Path, out_dir: Path, splits: list[str] | None = None) -> dict[str, object]:
    """Write the common test set and every requested split under ``out_dir``; returns a manifest."""
    spec, base = load_partition_spec(spec_path)
    frame = pd.read_csv(base / spec.source, dtype=str, keep_default_na=False, **spec.read_options)
    template = (base / spec.partner_template).read_text()
    train, test = common_test_split(frame, spec.label_column, spec.test_fraction, spec.seed)
    manifest: dict[str, object] = {"source": str(spec.source), "seed": spec.seed, "rows": len(frame)}
    write_partner(out_dir / "common_test", "common_test", test, template)
    manifest["common_test"] = {"rows": len(test)}
    for split_name, split in spec.splits.items():
        if splits and split_name not in splits:
            continue
        parts = assign_partners(train, split, spec.seed)
        summary = {}
        for name, rows in parts.items():
            write_partner(out_dir / split_name / name, name, rows, template)
            summary[name] = {
                "rows": len(rows),
                "share": round(len(rows) / len(train), 4),
                "positives": int((rows[spec.label_column] == _positive(template)).sum()),
            }
        manifest[split_name] = summary
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _positive(template: str) -> str:
    # The manifest reports positives using the template's first positive label value.
    for line in template.splitlines():
        if line.strip().startswith("positive"):
            return str(json.loads(line.split("=", 1)[1].strip())[0])
    return ""
