"""`fedcrm coordinator check` and the preflight before `fedcrm coordinator run`: every partner's problems, one message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.coordinator.check import check_partners, parse_partner_arg, preflight_message
from fedcrm.paths import DATASETS

TASK = DATASETS / "tasks" / "telco_churn.yaml"
RUN = DATASETS / "telco" / "run.toml"


@pytest.fixture()
def partners(tmp_path: Path) -> dict[str, Path]:
    """Bundled Telco partners A, B, C, initialised and approving the task; B has a typo, C a forbidden category."""
    configs = {}
    for name in ("A", "B", "C"):
        shutil.copytree(DATASETS / "partners" / "telco" / "iid" / name, tmp_path / name)
        config = configs[name] = tmp_path / name / "partner.toml"
        assert CliRunner().invoke(app, ["client", "init", "--config", str(config)]).exit_code == 0
        result = CliRunner().invoke(app, ["client", "approve", "--config", str(config), "--task", str(TASK),
                                          "--by", "test"])
        assert result.exit_code == 0, result.output
    b, c = configs["B"], configs["C"]
    b.write_text(b.read_text().replace('feature = "tenure_months"', 'feature = "tenure_month"'))
    c.write_text(c.read_text().replace('category = "user.financial.billing"', 'category = "user.contact.email"'))
    return configs


def test_partner_arguments_may_name_the_partner() -> None:
    assert parse_partner_arg("north=/p/partner.toml") == ("north", Path("/p/partner.toml"))
    assert parse_partner_arg("/p/a=b/partner.toml") == (None, Path("/p/a=b/partner.toml"))


def test_every_partners_problems_are_in_one_message(partners: dict[str, Path]) -> None:
    results = check_partners(TASK, [(name, path) for name, path in partners.items()])
    assert [(r.name, r.ok) for r in results] == [("A", True), ("B", False), ("C", False)]
    message = preflight_message(results)
    assert "preflight failed for 2 of 3 partner(s)" in message
    assert "partner B" in message and "'tenure_months' is not mapped" in message
    assert "partner C" in message and "[columns.MonthlyCharges]" in message and "[columns.TotalCharges]" in message
    assert "partner A" not in message


def test_the_check_command_prints_json_and_exits_1(partners: dict[str, Path]) -> None:
    args = ["coordinator", "check", "--config", str(RUN), "--json"]
    for name, path in partners.items():
        args += ["--partner", f"{name}={path}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["ok"] is False
    assert {p["name"]: p["ok"] for p in data["partners"]} == {"A": True, "B": False, "C": False}


def test_coordinator_run_refuses_before_starting_flower_naming_every_partner(partners: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["coordinator", "run", "--config", str(RUN), "--runs-dir", str(runs), "--rounds", "1"]
    for path in partners.values():
        args += ["--partner", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "preflight failed for 2 of 3 partner(s); nothing was started" in text
    assert "partner B" in text and "partner C" in text
    assert not runs.exists() or not any(runs.iterdir())  # no run directory: nothing started
