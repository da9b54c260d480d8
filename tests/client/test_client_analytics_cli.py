"""`fedcrm client analytics` on a bundled CDNOW cohort partner (transaction-level export)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedcrm.cli import app as fedcrm_app
from fedcrm.client.cli_analytics import register
from fedcrm.client.config import load_partner_config
from fedcrm.consent.events import UsageEvent
from fedcrm.consent.ledger import Ledger
from fedcrm.paths import DATASETS

pytestmark = pytest.mark.slow  # BG/NBD fit and k-means on ~6,000 customers: ~15 s on 2 cores

PARTNER = DATASETS / "partners" / "cdnow" / "M03"
MIN_COUNT = 300  # high enough that some RFM cells of this partner fall below it


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def client() -> None:
        """Stand-in for the `fedcrm client` group."""

    register(app)
    return app


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("analytics") / "M03"
    shutil.copytree(PARTNER, root)
    config = root / "partner.toml"
    config.write_text(config.read_text().replace("min_count = 10", f"min_count = {MIN_COUNT}"))
    init = CliRunner().invoke(fedcrm_app, ["client", "init", "--config", str(config)])
    assert init.exit_code == 0, init.output
    result = CliRunner().invoke(_app(), ["analytics", "--config", str(config), "--segments", "4"])
    assert result.exit_code == 0, result.output
    return root, result.output


def _export_ids(root: Path) -> set[str]:
    lines = (root / "transactions.txt").read_text().splitlines()[1:]
    return {line.split()[0] for line in lines if line.strip()}


def test_summary_and_report_are_written_with_small_cells_withheld(partner: tuple[Path, str]) -> None:
    root, _ = partner
    out = root / "work" / "analytics"
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert summary["purpose"] == "customer_segmentation"
    assert summary["min_count"] == MIN_COUNT
    assert summary["customers"] == len(_export_ids(root))
    assert summary["withheld_cells"] > 0
    cells = [c for part in summary["partitions"].values() for c in part]
    assert cells and all(c["customers"] >= MIN_COUNT for c in cells)


def test_per_customer_table_is_keyed_by_the_partners_own_ids(partner: tuple[Path, str]) -> None:
    root, _ = partner
    with (root / "work" / "analytics" / "customers.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames and reader.fieldnames[0] == "customer_id"
        ids = {row["customer_id"] for row in reader}
    assert ids == _export_ids(root)


def test_the_analytics_use_is_recorded_in_the_partners_ledger(partner: tuple[Path, str]) -> None:
    root, output = partner
    config = load_partner_config(root / "partner.toml")
    ledger = Ledger.open(config.ledger_url)
    try:
        uses = [s.event for s in ledger.events() if isinstance(s.event, UsageEvent)]
    finally:
        ledger.close()
    assert len(uses) == 1
    use = uses[0]
    assert use.stage == "analytics" and use.purpose == "customer_segmentation" and use.model_version == ""
    assert use.job_id.startswith("analytics-") and use.job_id in output
    assert use.partner == "M03"
    assert set(use.columns) == {"date", "amount", "quantity"}
    assert use.n_subjects == len(_export_ids(root))


def test_opt_in_purpose_without_any_consent_produces_no_analytics(partner: tuple[Path, str]) -> None:
    root, _ = partner
    out = root / "propensity-analytics"
    result = CliRunner().invoke(_app(), ["analytics", "--config", str(root / "partner.toml"),
                                         "--purpose", "purchase_propensity", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "error" in result.output
    assert not out.exists()
