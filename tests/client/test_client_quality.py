"""The data-quality report finds every defect kind at its file line, and exports only big-enough cells."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.client.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import REJECTS_FILE, ingest
from fedcrm.client.pseudonymise import create_key
from fedcrm.client.quality import (
    BAD_DATE, DATE_FORMAT, EXACT_DUPLICATE, ID_CONFLICT, MISSING, NEAR_DUPLICATE, NOT_A_BOOLEAN, NOT_A_NUMBER,
    NOT_AN_INTEGER, OUT_OF_RANGE, ROW, SPELLING, THOUSANDS, UNKNOWN_LABEL, QualityReport, assess,
)
from fedcrm.client.quality_report import render_html, report_json, withhold

HEADER = "cust_id,plan,active,spend,visits,joined,churned"

CONFIG = """
name = "Q"
[source]
path = "export.csv"
chunk_rows = 7
max_reject_fraction = 1.0
[privacy]
min_count = {min_count}
[columns.cust_id]
role = "customer_id"
category = "user.unique_id"
[columns.plan]
role = "feature"
type = "categorical"
category = "user.behavior.service_subscription"
[columns.active]
role = "feature"
type = "boolean"
category = "user.behavior.service_subscription"
[columns.spend]
role = "feature"
type = "numeric"
min = 0
category = "user.financial.billing"
[columns.visits]
role = "feature"
type = "integer"
min = 0
max = 100
category = "user.behavior.service_subscription"
[columns.joined]
role = "feature"
type = "date"
category = "user.behavior.service_subscription"
[columns.churned]
role = "label"
positive = ["yes"]
negative = ["no"]
category = "user.behavior.service_subscription"
"""


def normal_row(i: int) -> str:
    return (f"C-{i:03d},{'Basic' if i % 2 else 'Premium'},{'yes' if i % 2 else 'no'},{10 + i}.5,{i},"
            f"2024-01-{i + 1:02d},{'no' if i % 3 else 'yes'}")


# File line → (kind, column, row text). Lines 2–21 hold 20 clean customers.
DEFECTS = {
    22: (EXACT_DUPLICATE, ROW, normal_row(0)),
    23: (NEAR_DUPLICATE, ROW, "c.001,Basic,yes,11.55,1,2024-01-02,no"),  # line 3's customer, spend +0.4 %
    24: (ID_CONFLICT, ROW, "C-002,Basic,yes,999.5,2,2024-01-03,no"),
    25: (SPELLING, "plan", "C-100,basic,yes,10.5,1,2024-01-01,no"),
    26: (THOUSANDS, "spend", 'C-101,Basic,yes,"1,250.00",1,2024-01-01,no'),
    27: (DATE_FORMAT, "joined", "C-102,Basic,yes,10.5,1,05/03/2024,no"),
    28: (MISSING, "spend", "C-103,Basic,yes,,1,2024-01-01,no"),
    29: (OUT_OF_RANGE, "visits", "C-104,Basic,yes,10.5,500,2024-01-01,no"),
    30: (OUT_OF_RANGE, "spend", "C-105,Basic,yes,-3,1,2024-01-01,no"),
    31: (NOT_A_NUMBER, "spend", "C-106,Basic,yes,abc,1,2024-01-01,no"),
    32: (NOT_AN_INTEGER, "visits", "C-107,Basic,yes,10.5,2.5,2024-01-01,no"),
    33: (NOT_A_BOOLEAN, "active", "C-108,Basic,maybe,10.5,1,2024-01-01,no"),
    34: (UNKNOWN_LABEL, "churned", "C-109,Basic,yes,10.5,1,2024-01-01,perhaps"),
    35: (BAD_DATE, "joined", "C-110,Basic,yes,10.5,1,someday,no"),
    36: (SPELLING, "active", "C-111,Basic,Y,10.5,1,2024-01-01,no"),
}


def make_partner(tmp_path: Path, rows: list[str], *, min_count: int = 10, extra: str = "") -> Path:
    (tmp_path / "export.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    path = tmp_path / "partner.toml"
    path.write_text(CONFIG.format(min_count=min_count) + extra, encoding="utf-8")
    create_key(load_partner_config(path).key_path)
    return path


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    rows = [normal_row(i) for i in range(20)] + [DEFECTS[line][2] for line in sorted(DEFECTS)]
    return make_partner(tmp_path, rows)


@pytest.fixture(scope="module")
def messy_report(tmp_path_factory: pytest.TempPathFactory) -> QualityReport:
    rows = [normal_row(i) for i in range(20)] + [DEFECTS[line][2] for line in sorted(DEFECTS)]
    return assess(load_partner_config(make_partner(tmp_path_factory.mktemp("messy"), rows)))


def test_each_defect_kind_is_found_at_its_line_and_column_only(messy_report: QualityReport) -> None:
    report = messy_report
    expected: dict[tuple[str, str], set[int]] = {}
    for line, (kind, column, _) in DEFECTS.items():
        expected.setdefault((kind, column), set()).add(line)
    found = {key: set(group.lines) for key, group in report.groups.items()}
    assert found == expected
    assert report.rows_read == 35


def test_findings_name_the_first_line_and_what_ingestion_does(messy_report: QualityReport) -> None:
    report = messy_report
    near = report.groups[(NEAR_DUPLICATE, ROW)]
    assert near.examples[0]["line"] == 23 and "line 3" in str(near.examples[0]["detail"])
    assert "line 2" in str(report.groups[(EXACT_DUPLICATE, ROW)].examples[0]["detail"])
    assert "spend" in str(report.groups[(ID_CONFLICT, ROW)].examples[0]["detail"])
    assert report.groups[(SPELLING, "plan")].examples[0]["detail"] == "canonical spelling: 'Basic'"
    assert report.groups[(THOUSANDS, "spend")].action.startswith("rejected")
    assert report.groups[(OUT_OF_RANGE, "visits")].examples[0]["detail"] == "above maximum 100.0"
    assert "%d/%m/%Y" in report.groups[(DATE_FORMAT, "joined")].action


def test_rows_reaching_training_are_the_rows_ingestion_keeps(messy: Path) -> None:
    config = load_partner_config(messy)
    report = assess(config)
    result = ingest(config)
    assert report.rows_kept == result.rows_kept == len(pd.read_parquet(result.outputs["customers"]))
    assert report.rows_rejected == result.rows_rejected
    # Rejected: exact duplicate, id conflict, and the nine rows with a value ingestion cannot parse or
    # accept. Kept: the near duplicate (its raw id differs), the missing spend, both spelling variants.
    assert result.rows_kept == 35 - 11


def test_configured_fixes_parse_what_was_rejected(tmp_path: Path) -> None:
    rows = [normal_row(i) for i in range(20)] + [DEFECTS[line][2] for line in (25, 26, 27)]
    extra = '\n[quality.spelling]\naction = "fix"\n'
    path = make_partner(tmp_path, rows, extra=extra)
    text = path.read_text().replace('max_reject_fraction = 1.0',
                                    'max_reject_fraction = 0.0\nthousands = ","\ndate_formats = ["%Y-%m-%d", "%d/%m/%Y"]')
    path.write_text(text)
    config = load_partner_config(path)
    report = assess(config)
    assert report.groups[(SPELLING, "plan")].action.startswith("fixed")
    assert report.groups[(THOUSANDS, "spend")].action.startswith("fixed")
    assert report.groups[(DATE_FORMAT, "joined")].action.startswith("parsed")
    result = ingest(config)
    customers = pd.read_parquet(result.outputs["customers"])
    assert result.rows_rejected == 0 and len(customers) == 23
    assert set(customers["plan"]) == {"Basic", "Premium"}
    assert 1250.0 in set(customers["spend"])
    assert pd.Timestamp("2024-03-05") in set(customers["joined"])


def test_spelling_rule_reject_sends_rows_to_the_rejects_file(tmp_path: Path) -> None:
    rows = [normal_row(i) for i in range(20)] + [DEFECTS[25][2]]
    config = load_partner_config(make_partner(tmp_path, rows, extra='\n[quality.spelling]\naction = "reject"\n'))
    result = ingest(config)
    rejects = pd.read_csv(config.work_path / REJECTS_FILE, dtype=str)
    assert rejects.to_dict("records") == [{"line": "22", "column": "plan", "value": "basic",
                                           "reason": "inconsistent spelling 'basic' (canonical: 'Basic')"}]
    assert result.rows_kept == 20


def test_unknown_quality_key_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    from fedcrm.client.quality_rules import quality_rules
    from fedcrm.errors import ConfigError

    path = make_partner(tmp_path, [normal_row(0)], extra='\n[quality.near_duplicates]\nmatch_columns = ["nope"]\n')
    with pytest.raises(ConfigError, match=r"partner\.toml.*'nope'"):
        quality_rules(load_partner_config(path))


def test_small_cells_are_withheld_not_zeroed_and_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedcrm"):
        shown = withhold({"k/total": 40, "k/a": 25, "k/b": 12, "k/c": 3, "k/d": 0}, min_count=10, partition="k",
                         total="k/total")
    # c alone (3) could be recovered as 40 - 25 - 12: the next-smallest cell (b) goes too. Zero is no customer.
    assert shown == {"k/total": 40, "k/a": 25, "k/d": 0}
    records = [r for r in caplog.records if "withheld" in r.getMessage()]
    assert [r.cell for r in records] == ["k/c", "k/b"]  # type: ignore[attr-defined]
    assert all("3" not in r.getMessage() and "12" not in r.getMessage() for r in records)


def test_json_marks_the_exportable_part_and_applies_the_minimum_count(tmp_path: Path) -> None:
    rows = [normal_row(i) for i in range(30)]
    rows = [r.replace(f",{i},2024", ",,2024") if i < 12 else r for i, r in enumerate(rows)]  # visits: 12 rows
    rows = [f"C-{i:03d},Basic,yes,,1,2024-01-01," if i >= 27 else r for i, r in enumerate(rows)]  # spend, label
    doc = report_json(assess(load_partner_config(make_partner(tmp_path, rows))))
    assert doc["local"]["exportable"] is False and doc["export"]["exportable"] is True
    missing = doc["local"]["findings"][MISSING]["columns"]
    assert {c: v["count"] for c, v in missing.items()} == {"visits": 12, "spend": 3, "churned": 3}
    # spend and churned (3 customers each) are withheld; together still under 10, so visits (12) goes
    # with them, or it would give them away as total − visits. The total (15 customers) stays.
    assert doc["export"]["cells"][MISSING] == {"missing_value/total": 15}
    assert doc["export"]["overall"]["rows_read"] == 30
    assert "C-0" not in json.dumps(doc["export"])


def test_html_page_is_self_contained_with_inline_charts(messy_report: QualityReport) -> None:
    page = render_html(report_json(messy_report))
    assert page.count("src='data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "c.001" in page and "near_duplicate" in page


def test_quality_command_writes_json_and_html_to_the_work_dir(messy: Path) -> None:
    result = CliRunner().invoke(app, ["quality", "--config", str(messy)])
    assert result.exit_code == 0, result.output
    work = load_partner_config(messy).work_path
    doc = json.loads((work / "quality.json").read_text())
    assert doc["local"]["counts"][EXACT_DUPLICATE] == 1
    assert (work / "quality.html").read_text().startswith("<!doctype html>")
    assert "near_duplicate" in result.output
