"""`fedcrm coordinator analytics RUN --superlink` on the deployment engine: a real SuperLink, three bundled
partners joining with `fedcrm client join`, every statistic and k-means step a SecAgg+ secure sum.

Kept short (k = 2, three Lloyd steps, five candidates per k): what it proves is the path — the plan's
analytics section reaches the ServerApp under the SuperLink, the partners' SuperNodes answer the secure
orders from their own configs (the coordinator never learns where their files are), the run is judged
finished by its results (there is no model), the report is written, and no process is left.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.paths import DATASETS
from tests.deploy.stack import deployment_stack, flower_processes
from tests.federation import copy_partners

TASK = DATASETS / "tasks" / "telco_segments.yaml"


@pytest.mark.slow
def test_analytics_run_on_the_deployment_engine_writes_the_consortium_report(tmp_path: Path) -> None:
    configs = copy_partners(tmp_path / "partners", task=TASK)
    with deployment_stack(tmp_path, configs) as stack:
        result = CliRunner().invoke(app, [
            "coordinator", "analytics", "deploy-seg", "--task", str(TASK), "--superlink", stack.link.address,
            "--partners", "3", "--insecure", "--k", "2", "--max-iter", "3", "--candidates", "5",
            "--runs-dir", str(tmp_path / "runs"), "--stage-timeout", "300"])
        assert result.exit_code == 0, result.output
        codes = stack.stop_joins()
    assert codes == [0, 0, 0]
    assert not stack.leftover
    assert not flower_processes(tmp_path), flower_processes(tmp_path)

    run_dir = tmp_path / "runs" / "deploy-seg"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["succeeded"] and status["outcome"] == "completed"
    report = json.loads((run_dir / "analytics" / "report.json").read_text())
    results = json.loads((run_dir / "analytics" / "results.json").read_text())
    assert report["segments"]["k"] == 2 and results["partners"] == ["A", "B", "C"]
    assert results["customers"] > 1000 and results["customers"] == sum(
        p["customers"] or 0 for p in results["segments"]["profiles"])
    # statistics, moments, candidates, Lloyd steps, profile: every one a secure sum
    assert results["secure_sums"] >= 5
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    stats = next(e for e in events if e["event"] == "statistics")
    assert stats["secure"] is True and "partner_rows" not in stats
    # each partner's ledger head for every k-means step and the profile (one per secure sum it answered)
    for name in ("A", "B", "C"):
        heads = [json.loads(x) for x in (run_dir / "heads" / f"{name}.jsonl").read_text().splitlines()]
        stages = [h["stage"] for h in heads]
        assert stages.count("segments") == results["secure_sums"] - 2 and stages.count("profile") == 1, stages
    # the coordinator never learnt where the partners' files are
    app_config = (run_dir / "flower_app" / "pyproject.toml").read_text()
    assert str(tmp_path / "partners") not in app_config
    assert (run_dir / "analytics" / "report.html").is_file()
