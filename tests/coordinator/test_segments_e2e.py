"""`fedcrm coordinator analytics RUN` on the real simulation engine (Flower + Ray): one run, the bundled
overlap pair, segments through SecAgg+, the PSI overlap relayed by Flower messages, and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.paths import DATASETS
from tests.federation import approve_task, init_partner

pytestmark = pytest.mark.slow

PAIR = DATASETS / "examples" / "overlap_pair"
TASK = DATASETS / "tasks" / "telco_segments.yaml"


def test_analytics_run_on_flower_writes_the_consortium_report(tmp_path: Path) -> None:
    configs = []
    for name in ("P", "Q"):
        shutil.copytree(PAIR / name, tmp_path / name)
        config = tmp_path / name / "partner.toml"
        init_partner(config)
        approve_task(config, TASK)
        configs.append(config)
    args = ["coordinator", "analytics", "e2e", "--task", str(TASK), "--k", "2,3", "--overlap", "P:Q",
            "--runs-dir", str(tmp_path / "runs"), "--stage-timeout", "600"]
    for config in configs:
        args += ["--partner", str(config)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "e2e" / "analytics"
    report = json.loads((folder / "report.json").read_text())
    truth = json.loads((PAIR / "truth.json").read_text())
    assert {o["identifier"]: o["count"] for o in report["overlap"]} == {"email": truth["shared_email"],
                                                                       "phone": truth["shared_phone"]}
    assert report["segments"]["k"] in (2, 3)
    assert report["customers"] > 3000
    events = [json.loads(x) for x in (tmp_path / "runs" / "e2e" / "events.jsonl").read_text().splitlines()]
    stats = next(e for e in events if e["event"] == "statistics")
    assert stats["secure"] is True and "partner_rows" not in stats
    assert (folder / "report.html").is_file() and (folder / "segment_sizes.png").is_file()
