"""The partner commands the README shows, run on the bundled data as a data team would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.paths import DATASETS


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"fedcrm {' '.join(args)}\n{result.output}"
    return result.output


def test_init_ingest_quality_analytics_status_on_a_bundled_partner(tmp_path: Path) -> None:
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "B", tmp_path / "B")
    config = str(tmp_path / "B" / "partner.toml")
    _ok("client", "init", "--config", config)
    _ok("client", "ingest", "--config", config)
    _ok("client", "quality", "--config", config)
    _ok("client", "analytics", "--config", config)
    status = _ok("client", "status", "--config", config)
    work = tmp_path / "B" / "work"
    for name in ("customers.parquet", "rejects.csv", "quality.json", "quality.html"):
        assert (work / name).exists(), name
    assert "verifies: yes" in " ".join(status.split())
    assert json.loads((work / "quality.json").read_text())


def test_two_systems_merge_then_ingest(tmp_path: Path) -> None:
    example = tmp_path / "two"
    shutil.copytree(DATASETS / "examples" / "two_systems", example)
    _ok("client", "init", "--config", str(example / "partner.toml"))
    merged = _ok("client", "merge", "--merge-config", str(example / "merge.toml"))
    assert "matched in two or more sources: 2500" in merged
    report = json.loads((example / "unified.merge.json").read_text())
    assert report["conflicts_per_column"] == {"MonthlyCharges": 5}
    _ok("client", "ingest", "--config", str(example / "partner.toml"))
    rejects = (example / "work" / "rejects.csv").read_text().splitlines()
    assert len(rejects) == 1 + 100 and all(",Churn," in line for line in rejects[1:])
