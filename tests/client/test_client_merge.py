"""The unified customer view on hand-made exports whose matches and conflicts are known."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.client.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import ingest
from fedcrm.client.merge import load_merge_config, merge, write_merge
from fedcrm.client.pseudonymise import create_key
from fedcrm.errors import ConfigError, DataValidationError

BILLING = """AcctNo,Plan,Monthly,Updated
ACC-0001,Basic,10.00,2024-01-05
ACC-0002,Premium,20.00,2024-03-01
ACC-0003,Basic,15.00,2024-02-01
acc-0004 ,Basic,9.00,2024-01-01
ACC-0004,Basic,9.50,2024-01-02
"""
CRM = """id;name;email;plan;monthly_fee;last_change;churned
1;Ann Lee;ann.lee@example.org;Basic;10;2024-02-01;N
2;Bob Stone;bob@example.org;Basic;20;2024-04-01;J
3;Cy Dunn;cy@example.org;Basic;16.5;2024-01-01;N
7;Dee Roe;dee.roe@example.org;Premium;30;2024-01-01;N
"""
WEB = """visitor,mail,newsletter
W-1,Ann.Lee@Example.org ,yes
W-9,dee.roe@exampel.org,no
W-5,zed@nowhere.net,yes
"""
PARTNER = """
name = "merged"
[source]
path = "customers.csv"
[columns.customer_id]
role = "customer_id"
category = "user.unique_id"
[columns.plan]
role = "feature"
type = "categorical"
category = "user.behavior.service_subscription"
[columns.monthly]
role = "feature"
type = "numeric"
category = "user.financial.billing"
[columns.name]
role = "direct_identifier"
[columns.email]
role = "direct_identifier"
"""
MERGE = """
partner_config = "partner.toml"
output = "customers.csv"
source_column = "systems"
[match]
{match}
[[sources]]
name = "billing"
path = "billing.csv"
id_column = "AcctNo"
id = {{ strip_prefix = "ACC-", steps = ["strip", "upper", "alnum", "no_leading_zeros"], zero_pad = 6 }}
rename = {{ Plan = "plan", Monthly = "monthly", Updated = "updated" }}
[[sources]]
name = "crm"
path = "crm.csv"
delimiter = ";"
id_column = "id"
id = {{ zero_pad = 6 }}
rename = {{ monthly_fee = "monthly", last_change = "updated" }}
columns = ["name", "email", "plan", "monthly", "updated"]
"""
WEB_SOURCE = """
[[sources]]
name = "web"
path = "web.csv"
id_column = "visitor"
rename = { mail = "email" }
"""


def make(tmp_path: Path, match: str = "", web: bool = False, key: bool = True) -> Path:
    (tmp_path / "billing.csv").write_text(BILLING)
    (tmp_path / "crm.csv").write_text(CRM)
    (tmp_path / "web.csv").write_text(WEB)
    (tmp_path / "partner.toml").write_text(PARTNER)
    if key:
        create_key(load_partner_config(tmp_path / "partner.toml").key_path)
    path = tmp_path / "merge.toml"
    path.write_text(MERGE.format(match=match) + (WEB_SOURCE if web else ""))
    return path


def conflicts(report: object) -> dict[tuple[str, str], tuple[dict[str, str], str]]:
    return {(c["customer"], c["column"]): (c["values"], c["chosen"]) for c in report.conflicts}  # type: ignore[attr-defined]


def test_precedence_merge_report_counts_and_resolves_conflicts(tmp_path: Path) -> None:
    table, report = merge(load_merge_config(make(tmp_path, 'precedence = ["billing", "crm"]')))
    assert report.rows == {"billing": 5, "crm": 4}
    assert report.duplicates_within_source == {"billing": 1, "crm": 0}  # "acc-0004 " and "ACC-0004"
    assert report.customers == 5 and report.matched == 3 and report.matched_by_fuzzy == 0
    assert report.unmatched == {"billing": 1, "crm": 1}
    # 10.00 vs 10 is the same number: no conflict. Customer 2's plan and 3's amount differ; dates differ for all.
    found = conflicts(report)
    assert found[("000002", "plan")] == ({"billing": "Premium", "crm": "Basic"}, "billing")
    assert found[("000003", "monthly")] == ({"billing": "15.00", "crm": "16.5"}, "billing")
    assert ("000001", "monthly") not in found
    assert report.conflict_counts() == {"plan": 1, "monthly": 1, "updated": 3}
    rows = table.set_index("customer_id")
    assert rows.loc["000002", "plan"] == "Premium" and rows.loc["000003", "monthly"] == "15.00"
    assert rows.loc["000004", "monthly"] == "9.00"  # first row of the duplicated id kept
    assert rows.loc["000007", "name"] == "Dee Roe" and rows.loc["000007", "plan"] == "Premium"
    assert rows.loc["000001", "systems"] == "billing+crm" and rows.loc["000004", "systems"] == "billing"
    assert "churned" not in table.columns  # crm lists the columns it contributes


def test_most_recent_record_wins_conflicts(tmp_path: Path) -> None:
    match = 'resolution = "most_recent"\nrecent_column = "updated"'
    table, report = merge(load_merge_config(make(tmp_path, match)))
    found = conflicts(report)
    assert found[("000002", "plan")] == ({"crm": "Basic", "billing": "Premium"}, "crm")  # 2024-04-01 is later
    assert found[("000003", "monthly")] == ({"billing": "15.00", "crm": "16.5"}, "billing")  # 2024-02-01 later
    assert report.conflict_counts() == {"plan": 1, "monthly": 1}  # the date itself is the rule, not a conflict
    rows = table.set_index("customer_id")
    assert rows.loc["000002", "plan"] == "Basic" and rows.loc["000002", "updated"] == "2024-04-01"


def test_fuzzy_rule_joins_records_the_ids_cannot(tmp_path: Path) -> None:
    table, report = merge(load_merge_config(make(tmp_path, 'fuzzy_column = "email"\nfuzzy_threshold = 90', web=True)))
    assert report.matched_by_fuzzy == 2  # Ann (case and a trailing space), Dee (a typo in the domain)
    assert report.unmatched == {"billing": 1, "crm": 0, "web": 1}
    assert report.matched == 4
    rows = table.set_index("customer_id")
    assert rows.loc["000001", "systems"] == "billing+crm+web" and rows.loc["000001", "newsletter"] == "yes"
    assert rows.loc["000007", "newsletter"] == "no"
    assert rows.loc["W5", "email"] == "zed@nowhere.net"


def test_merged_table_ingests_with_a_normal_partner_config(tmp_path: Path) -> None:
    report = write_merge(load_merge_config(make(tmp_path, 'precedence = ["crm", "billing"]')))
    saved = json.loads(Path(report.outputs["report"]).read_text())
    assert saved["matched"] == 3 and saved["conflicts_per_column"]["plan"] == 1
    assert "conflicts resolved by precedence ['crm', 'billing']" in Path(report.outputs["summary"]).read_text()
    result = ingest(load_partner_config(tmp_path / "partner.toml"))
    customers = pd.read_parquet(result.outputs["customers"])
    assert result.rows_kept == 5 and "email" not in customers.columns
    assert sorted(customers["monthly"].tolist()) == [9.0, 10.0, 16.5, 20.0, 30.0]  # crm first now


def test_merge_command_prints_the_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["merge", "--merge-config", str(make(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "matched in two or more sources: 3" in result.output
    assert (tmp_path / "customers.csv").exists() and (tmp_path / "customers.merge.json").exists()


def test_missing_id_column_names_file_source_and_column(tmp_path: Path) -> None:
    path = make(tmp_path)
    path.write_text(path.read_text().replace('id_column = "AcctNo"', 'id_column = "Account"'))
    with pytest.raises(DataValidationError, match=r"billing\.csv: id column 'Account' of source 'billing'"):
        merge(load_merge_config(path))


def test_precedence_must_name_every_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"merge\.toml: invalid merge config.*precedence"):
        load_merge_config(make(tmp_path, 'precedence = ["billing"]'))
