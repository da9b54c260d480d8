"""Split a transaction file (one row per purchase) into cohort partners, deterministically.

Driven by a spec (YAML, e.g. ``datasets/cdnow/partition.yaml``). Customers, not rows,
are assigned: first a stratified share of customers (stratified on the holdout label:
any purchase after ``calibration_end`` up to ``holdout_end``) is kept apart as the
common test set; the rest go to the partner of their first-purchase month (a natural
cohort). Each partner directory gets every purchase line of its customers, copied
byte for byte in the source's own format, its ``partner.toml`` and a deterministic
``consents.csv`` in the consent-import format (most customers opted in before the
label window opens, some never did, a few withdrew later).

Run it with ``python -m fedcrm.partition_transactions [--spec …] [--out …]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sklearn.model_selection import train_test_split

from fedcrm.errors import ConfigError, DataValidationError
from fedcrm.paths import DATASETS
from fedcrm.config_files import validation_summary

CONSENT_COLUMNS = ("receipt_id", "customer_id", "purpose", "category", "action", "legal_basis", "effective_at",
                   "recorded_at", "source", "notice_version")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReadSpec(_Strict):
    """How the source file is laid out."""

    whitespace_delimited: bool = False
    delimiter: str = ","
    header: bool = True


class ConsentSpec(_Strict):
    """How the synthetic consent records of each partner are drawn."""

    purpose: str
    category: str
    legal_basis: str
    notice_version: str
    source: str
    never_granted: float = Field(0.10, ge=0, lt=1)
    withdrawn: float = Field(0.02, ge=0, lt=1)
    grant_before: date
    withdraw_between: tuple[date, date]


class TransactionPartitionSpec(_Strict):
    """The whole spec file."""

    source: Path
    read: ReadSpec = ReadSpec()
    id_column: str
    date_column: str
    date_format: str = "%Y-%m-%d"
    calibration_end: date
    holdout_end: date
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    export_name: str = "transactions.csv"
    partner_template: Path
    cohorts: dict[str, str] = Field(min_length=2, description="First-purchase month YYYY-MM → partner name")
    consents: ConsentSpec | None = None


def load_spec(path: Path) -> tuple[TransactionPartitionSpec, Path]:
    """Read a spec; returns it with the directory its relative paths resolve against."""
    try:
        raw = yaml.safe_load(path.read_text())
        return TransactionPartitionSpec.model_validate(raw), path.parent
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: partition spec not found") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid partition spec: {validation_summary(exc)}") from exc


def read_lines(path: Path, spec: TransactionPartitionSpec) -> tuple[str | None, pd.DataFrame]:
    """(header line, frame of raw line, customer id, purchase day) for every data line."""
    text = path.read_text(encoding="utf-8").splitlines()
    header = text[0] if spec.read.header else None
    body = [line for line in (text[1:] if spec.read.header else text) if line.strip()]
    split = (lambda s: s.split()) if spec.read.whitespace_delimited else (lambda s: next(csv.reader([s], delimiter=spec.read.delimiter)))
    names = split(header) if header is not None else None
    if names is None or spec.id_column not in names or spec.date_column not in names:
        raise DataValidationError(f"{path}: needs a header naming '{spec.id_column}' and '{spec.date_column}'")
    i_id, i_date = names.index(spec.id_column), names.index(spec.date_column)
    fields = [split(line) for line in body]
    frame = pd.DataFrame({
        "line": body,
        "customer": [f[i_id] for f in fields],
        "day": pd.to_datetime([f[i_date] for f in fields], format=spec.date_format),
    })
    return header, frame


def customer_table(purchases: pd.DataFrame, spec: TransactionPartitionSpec) -> pd.DataFrame:
    """Per customer: first purchase day, cohort month and the holdout label (index: customer id)."""
    cal, hold = pd.Timestamp(spec.calibration_end), pd.Timestamp(spec.holdout_end)
    g = purchases.groupby("customer", sort=True)["day"]
    first = g.min()
    later = purchases[(purchases["day"] > cal) & (purchases["day"] <= hold)]
    out = pd.DataFrame({"first": first, "cohort": first.dt.strftime("%Y-%m")})
    out["label"] = out.index.isin(later["customer"].unique())
    unknown = sorted(set(out["cohort"]) - set(spec.cohorts))
    if unknown:
        raise DataValidationError(f"first-purchase month(s) {unknown} have no partner in the spec's 'cohorts'")
    return out


def _rng(seed: int, name: str) -> np.random.Generator:
    # Per-partner stream: adding or renaming one partner does not change the others' records.
    return np.random.default_rng([seed, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])


def _stamp(day: pd.Timestamp | date, seconds: int) -> str:
    moment = datetime.combine(pd.Timestamp(day).date(), time(), tzinfo=timezone.utc) + timedelta(seconds=seconds)
    return moment.isoformat().replace("+00:00", "Z")


def consent_rows(name: str, customers: pd.DataFrame, spec: ConsentSpec, seed: int) -> list[dict[str, str]]:
    """Deterministic opt-in records for one partner's customers (see the module docstring)."""
    rng = _rng(seed, name)
    rows: list[dict[str, str]] = []
    last_grant = pd.Timestamp(spec.grant_before) - pd.Timedelta(days=1)
    w_lo, w_hi = (pd.Timestamp(d) for d in spec.withdraw_between)
    base = {"purpose": spec.purpose, "category": spec.category, "legal_basis": spec.legal_basis,
            "source": spec.source, "notice_version": spec.notice_version}
    for customer, first in zip(customers.index, customers["first"], strict=True):
        never, withdraw = rng.random(), rng.random()
        span = max(int((last_grant - first).days), 0)
        grant_day = first + pd.Timedelta(days=int(rng.integers(0, span + 1)))
        seconds = int(rng.integers(8 * 3600, 20 * 3600))
        if never < spec.never_granted:
            continue
        stamp = _stamp(grant_day, seconds)
        rows.append({"receipt_id": f"{name}-{len(rows) + 1:06d}", "customer_id": str(customer), "action": "grant",
                     "effective_at": stamp, "recorded_at": stamp, **base})
        if withdraw < spec.withdrawn:
            off = pd.Timedelta(days=int(rng.integers(0, (w_hi - w_lo).days + 1)))
            stamp = _stamp(w_lo + off, seconds)
            rows.append({"receipt_id": f"{name}-{len(rows) + 1:06d}", "customer_id": str(customer),
                         "action": "withdraw", "effective_at": stamp, "recorded_at": stamp, **base})
    return rows


def _write_partner(directory: Path, name: str, header: str | None, lines: list[str], template: str,
                   export_name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    body = ([header] if header is not None else []) + lines
    (directory / export_name).write_text("\n".join(body) + "\n", encoding="utf-8")
    (directory / "partner.toml").write_text(template.replace("{name}", name).replace("{export}", export_name))


def _write_consents(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CONSENT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def partition_transactions(spec_path: Path, out_dir: Path) -> dict[str, object]:
    """Write ``common_test`` and one directory per cohort partner under ``out_dir``; returns a manifest."""
    spec, base = load_spec(spec_path)
    header, purchases = read_lines(base / spec.source, spec)
    customers = customer_table(purchases, spec)
    template = (base / spec.partner_template).read_text()
    train_ids, test_ids = train_test_split(
        customers.index.to_numpy(), test_size=spec.test_fraction, stratify=customers["label"], random_state=spec.seed
    )
    test_set = set(test_ids)
    manifest: dict[str, object] = {
        "source": str(spec.source), "seed": spec.seed, "purchases": len(purchases), "customers": len(customers),
        "calibration_end": str(spec.calibration_end), "holdout_end": str(spec.holdout_end),
    }

    def summary(ids: pd.Index, lines: int) -> dict[str, object]:
        labels = customers.loc[ids, "label"]
        return {"customers": len(ids), "purchases": lines, "positives": int(labels.sum()),
                "positive_rate": round(float(labels.mean()), 4)}

    in_test = purchases["customer"].isin(test_set)
    test_lines = purchases.loc[in_test, "line"].tolist()
    _write_partner(out_dir / "common_test", "common_test", header, test_lines, template, spec.export_name)
    manifest["common_test"] = summary(pd.Index(sorted(test_set)), len(test_lines))
    partners: dict[str, object] = {}
    train = customers.loc[sorted(set(train_ids))]
    for month, name in sorted(spec.cohorts.items()):
        ids = train.index[train["cohort"] == month]
        mine = purchases["customer"].isin(set(ids))
        lines = purchases.loc[mine, "line"].tolist()
        directory = out_dir / name
        _write_partner(directory, name, header, lines, template, spec.export_name)
        info = summary(ids, len(lines))
        if spec.consents is not None:
            rows = consent_rows(name, train.loc[ids], spec.consents, spec.seed)
            _write_consents(directory / "consents.csv", rows)
            info["consent_records"] = len(rows)
            info["never_granted"] = len(ids) - sum(r["action"] == "grant" for r in rows)
            info["withdrawn"] = sum(r["action"] == "withdraw" for r in rows)
        partners[name] = {"first_purchase_month": month, **info}
    manifest["partners"] = partners
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m fedcrm.partition_transactions [--spec PATH] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m fedcrm.partition_transactions", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=DATASETS / "cdnow" / "partition.yaml", help="partition spec (YAML)")
    parser.add_argument("--out", type=Path, default=DATASETS / "partners" / "cdnow", help="output directory")
    args = parser.parse_args(argv)
    manifest = partition_transactions(args.spec, args.out)
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
