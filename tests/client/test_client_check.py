"""Preflight (`fedcrm client check`): every problem a run would hit, found in seconds, all at once."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.client.check import check_partner
from fedcrm.client.cli import app as client_app
from fedcrm.paths import DATASETS

TASK = DATASETS / "tasks" / "telco_churn.yaml"


@pytest.fixture()
def partner(tmp_path: Path) -> Path:
    """A fresh, initialised copy of bundled Telco partner A."""
    shutil.copytree(DATASETS / "partners" / "telco" / "iid" / "A", tmp_path / "A")
    config = tmp_path / "A" / "partner.toml"
    result = CliRunner().invoke(client_app, ["init", "--config", str(config)])
    assert result.exit_code == 0, result.output
    approve(config)
    return config


def approve(config: Path, task: Path = TASK) -> None:
    """`fedcrm client approve` of the task, as the partner's data team would."""
    result = CliRunner().invoke(client_app, ["approve", "--config", str(config), "--task", str(task), "--by", "t"])
    assert result.exit_code == 0, result.output


def _edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))


def _errors(report, kind: str) -> list[str]:  # noqa: ANN001
    return [f.message for f in report.errors if f.kind == kind]


def test_the_bundled_partner_passes_and_reports_its_consent_coverage(partner: Path) -> None:
    report = check_partner(partner, TASK)
    assert report.ok, report.summary()
    rows = len(pd.read_csv(partner.parent / "customers.csv"))
    assert report.customers_kept == rows  # churn is legitimate interest: nobody objected yet


def test_misspelt_features_are_each_caught_with_a_did_you_mean(partner: Path) -> None:
    _edit(partner, 'feature = "tenure_months"', 'feature = "tenure_month"')
    _edit(partner, 'feature = "contract"', 'feature = "contrat"')
    report = check_partner(partner, TASK)
    assert not report.ok
    errors = _errors(report, "feature_mapping")
    assert any("'tenure_months' is not mapped" in m and "did you mean 'tenure_month'" in m for m in errors)
    assert any("'contract' is not mapped" in m and "did you mean 'contrat'" in m for m in errors)
    assert any("'tenure_month' is not a feature" in m and "did you mean 'tenure_months'" in m for m in errors)


def test_a_feature_declared_not_held_passes_but_an_unknown_declaration_does_not(partner: Path) -> None:
    text = partner.read_text().replace("[columns.Contract]", "[columns.Contract_unused]", 1)
    partner.write_text('features_not_held = ["contract", "contracts_typo"]\n' + text)
    report = check_partner(partner, TASK)
    errors = [f.message for f in report.errors]
    assert not any("'contract' is not mapped" in m for m in errors)
    assert any("features_not_held names 'contracts_typo'" in m and "did you mean 'contract'" in m for m in errors)
    # The renamed section's column is also caught against the export's header.
    assert any("'Contract_unused' is declared in the config but not in the export" in m and "'Contract'" in m
               for m in _errors(report, "header"))


def test_a_gap_in_a_value_map_lists_every_unmapped_value_with_its_count(partner: Path) -> None:
    export = partner.parent / "customers.csv"
    frame = pd.read_csv(export, dtype=str, keep_default_na=False)
    frame["InternetService"] = frame["InternetService"].map({"Fiber optic": "Glasfaser", "DSL": "DSL", "No": "Kein"})
    frame.loc[:4, "InternetService"] = "Kabel"
    frame.to_csv(export, index=False)
    _edit(partner, 'feature = "internet_service"', 'feature = "internet_service"\n'
          'value_map = { Glasfaser = "Fiber optic", DSL = "DSL" }')
    report = check_partner(partner, TASK)
    (finding,) = [f for f in report.errors if f.kind == "values"]
    assert finding.column == "InternetService"
    assert finding.counts == {"Kein": int((frame["InternetService"] == "Kein").sum()), "Kabel": 5}
    assert "internet_service" in finding.message


def test_every_forbidden_category_is_listed_at_once(partner: Path) -> None:
    for column in ("tenure", "MonthlyCharges", "Contract"):
        text = partner.read_text()
        section = text.index(f"[columns.{column}]")
        start = text.index('category = "', section)
        end = text.index("\n", start)
        partner.write_text(text[:start] + 'category = "user.contact.email"' + text[end:])
    report = check_partner(partner, TASK)
    refused = {f.column for f in report.errors if f.kind == "category"}
    assert refused == {"tenure", "MonthlyCharges", "Contract"}


def test_the_check_command_exits_1_and_prints_every_problem_as_json(partner: Path) -> None:
    _edit(partner, 'feature = "tenure_months"', 'feature = "tenure_month"')
    _edit(partner, 'category = "user.financial.billing"', 'category = "user.financial.biling"')
    result = CliRunner().invoke(client_app, ["check", "--config", str(partner), "--task", str(TASK), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["ok"] is False
    kinds = {f["kind"] for f in data["partners"][0]["findings"] if f["severity"] == "error"}
    assert kinds == {"feature_mapping", "category"}
    assert any("did you mean 'user.financial.billing'" in f["message"] for f in data["partners"][0]["findings"])
    table = CliRunner().invoke(client_app, ["check", "--config", str(partner), "--task", str(TASK)])
    assert table.exit_code == 1 and "[columns.tenure]" in re.sub(r"\s+", " ", table.output)


def test_too_few_customers_for_the_minimum_count_is_an_error(partner: Path) -> None:
    report = check_partner(partner, TASK, min_count=5000)
    assert any("below the minimum count 5000" in m for m in _errors(report, "min_count"))


def test_the_preflight_imports_no_flower_ray_or_torch(partner: Path) -> None:
    code = (
        "import sys\n"
        "from fedcrm.client.check import check_partner\n"
        f"r = check_partner({str(partner)!r}, {str(TASK)!r})\n"
        "assert r.ok, r.summary()\n"
        "print(sorted(m for m in ('torch', 'flwr', 'ray', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_task_the_partner_has_not_approved_is_an_error_naming_the_command(tmp_path: Path) -> None:
    shutil.copytree(DATASETS / "partners" / "telco" / "iid" / "A", tmp_path / "A")
    config = tmp_path / "A" / "partner.toml"
    assert CliRunner().invoke(client_app, ["init", "--config", str(config)]).exit_code == 0
    report = check_partner(config, TASK)
    (finding,) = report.errors
    assert finding.kind == "approval" and "fedcrm client approve" in finding.message
    approve(config)
    assert check_partner(config, TASK).ok
