"""The messy-export generator: seeded, its truth file matches the file it wrote, and the report finds it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedcrm.client.config import load_partner_config
from fedcrm.client.messy import KINDS, make_messy
from fedcrm.client.pseudonymise import create_key
from fedcrm.client.quality import EXACT_DUPLICATE, MISSING, NEAR_DUPLICATE, OUT_OF_RANGE, THOUSANDS, assess
from fedcrm.errors import DataValidationError

DATA = Path(__file__).resolve().parents[2] / "datasets"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clean") / "clean.csv"
    pd.read_csv(DATA / "telco_churn.csv", dtype=str, keep_default_na=False).head(600).to_csv(path, index=False)
    return path


def test_same_seed_same_bytes_other_seed_other_file(clean: Path, tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_messy(clean, tmp_path / f"{name}.csv", tmp_path / f"{name}.json", seed=seed, per_kind=8)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()


def test_truth_file_describes_the_written_rows(clean: Path, tmp_path: Path) -> None:
    truth = make_messy(clean, tmp_path / "m.csv", tmp_path / "t.json", seed=1, per_kind=8)
    messy = pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False)
    source = pd.read_csv(clean, dtype=str, keep_default_na=False)
    assert json.loads((tmp_path / "t.json").read_text())["defects"] == [d.as_dict() for d in truth.defects]
    assert truth.id_column == "customerID" and truth.date_column in messy.columns
    assert len(messy) == len(source) + 16 == truth.rows
    assert {d.kind for d in truth.defects} == set(KINDS)
    assert all(sum(d.kind == k for d in truth.defects) == 8 for k in KINDS)

    def row(line: int) -> pd.Series:
        return messy.iloc[line - 2]  # line 1 is the header

    for d in truth.defects:
        if d.kind == EXACT_DUPLICATE:
            assert d.of_line is not None and d.of_line < d.line
            assert row(d.line).equals(row(d.of_line))
        elif d.kind == NEAR_DUPLICATE:
            a, b = row(d.line)["customerID"], row(d.of_line)["customerID"]  # type: ignore[index]
            assert a != b and "".join(c for c in a if c.isalnum()).upper() == b.replace("-", "")
        elif d.kind == MISSING:
            assert row(d.line)[d.column] == ""
        elif d.kind == THOUSANDS:
            assert "," in row(d.line)[d.column] and float(row(d.line)[d.column].replace(",", "")) >= 1000
        elif d.kind == OUT_OF_RANGE:
            assert float(row(d.line)[d.column]) < 0
    lines = [d.line for d in truth.defects]
    assert len(lines) == len(set(lines)), "one defect per row"


def test_report_finds_every_injected_defect(clean: Path, tmp_path: Path) -> None:
    truth = make_messy(clean, tmp_path / "customers.csv", tmp_path / "truth.json", seed=2, per_kind=8)
    template = (DATA / "telco" / "partner_template.toml").read_text().replace("{name}", "T")
    template = template.replace("max_reject_fraction = 0.05", "max_reject_fraction = 1.0")
    template += '\n[columns.record_date]\nrole = "ignore"\ntype = "date"\n'
    (tmp_path / "partner.toml").write_text(template)
    config = load_partner_config(tmp_path / "partner.toml")
    create_key(config.key_path)
    report = assess(config)
    for kind in KINDS:
        want = truth.lines(kind)
        if kind in (EXACT_DUPLICATE, NEAR_DUPLICATE):
            got = {(line, None) for line in report.lines(kind)}
        else:
            got = {(line, col) for (k, col), g in report.groups.items() if k == kind for line in g.lines}
        assert len(want & got) / len(want) >= 0.95, (kind, sorted(want - got))


def test_too_small_a_source_is_refused(clean: Path, tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="too few rows"):
        make_messy(clean, tmp_path / "m.csv", tmp_path / "t.json", seed=0, per_kind=100)
