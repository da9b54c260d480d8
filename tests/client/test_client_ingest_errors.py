"""Ingestion errors: rejects with line and column, the all-or-nothing stop, foreign formats, refusing without a key."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.client.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import CUSTOMERS_FILE, ID_MAP_FILE, REJECTS_FILE, ingest, load_id_map
from fedcrm.client.pseudonymise import create_key
from fedcrm.errors import DataValidationError, MissingPartnerKey, RejectFractionExceeded

CONFIG = """
name = "E"
[source]
path = "export.csv"
chunk_rows = {chunk_rows}
max_reject_fraction = {fraction}
[columns.id]
role = "customer_id"
category = "user.unique_id"
[columns.spend]
role = "feature"
type = "numeric"
min = 0
category = "user.financial.billing"
[columns.plan]
role = "feature"
type = "categorical"
category = "user.behavior.service_subscription"
[columns.left]
role = "label"
positive = ["yes"]
negative = ["no"]
category = "user.behavior.service_subscription"
"""


def partner(tmp_path: Path, lines: list[str], *, fraction: float = 0.5, chunk_rows: int = 3,
            key: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "export.csv").write_text("\n".join(["id,spend,plan,left", *lines]) + "\n")
    path = tmp_path / "partner.toml"
    path.write_text(CONFIG.format(fraction=fraction, chunk_rows=chunk_rows))
    if key:
        create_key(load_partner_config(path).key_path)
    return path


GOOD = [f"K{i},{i}.5,basic,{'yes' if i % 2 else 'no'}" for i in range(10)]


def test_rejects_file_lists_line_column_value_and_reason(tmp_path: Path) -> None:
    rows = GOOD[:4] + ["K10,abc,basic,no", "K11,-2,basic,no", ",1,basic,no", "K12,1,basic,maybe", "K1,1,basic,no"]
    config = load_partner_config(partner(tmp_path, rows, fraction=0.6))
    report = ingest(config)
    rejects = pd.read_csv(config.work_path / REJECTS_FILE, dtype=str, keep_default_na=False)
    assert rejects.values.tolist() == [
        ["6", "spend", "abc", "not a number: 'abc'"],
        ["7", "spend", "-2", "below minimum 0.0: '-2'"],
        ["8", "id", "", "missing value"],
        ["9", "left", "maybe", "label value 'maybe' is neither positive nor negative"],
        ["10", "id", "K1", "duplicate customer id (first seen on line 3)"],
    ]
    assert report.rows_read == 9 and report.rows_kept == 4 and report.rows_rejected == 5


def test_reject_fraction_stop_writes_no_table_and_no_id_map(tmp_path: Path) -> None:
    # The bad rows sit in the last chunk: earlier chunks were already streamed to temporary files.
    rows = GOOD + ["K20,x,basic,no", "K21,y,basic,no"]
    config = load_partner_config(partner(tmp_path, rows, fraction=0.1))
    with pytest.raises(RejectFractionExceeded) as err:
        ingest(config)
    message = str(err.value)
    assert "export.csv: line 12, column 'spend': not a number: 'x'" in message
    assert "2 of 12 rows rejected" in message and "nothing was written" in message
    assert sorted(p.name for p in config.work_path.iterdir()) == [REJECTS_FILE]
    assert not (config.work_path / CUSTOMERS_FILE).exists() and not (config.work_path / ID_MAP_FILE).exists()
    assert len(pd.read_csv(config.work_path / REJECTS_FILE)) == 2


def test_a_row_with_an_extra_field_is_rejected_with_its_line(tmp_path: Path) -> None:
    config = load_partner_config(partner(tmp_path, GOOD[:2] + ["K5,1,basic,no,extra"] + GOOD[3:5]))
    report = ingest(config)
    rejects = pd.read_csv(config.work_path / REJECTS_FILE, dtype=str, keep_default_na=False)
    assert rejects.values.tolist() == [["4", "", "K5,1,basic,no,extra", "5 fields where the header (line 1) has 4; "
                                        "extra value 'extra' (an unquoted delimiter?)"]]
    assert report.rows_read == 5 and report.rows_kept == 4
    strict = load_partner_config(partner(tmp_path / "strict", GOOD[:2] + ["K5,1,basic,no,extra"], fraction=0.0))
    with pytest.raises(RejectFractionExceeded, match=r"export\.csv: line 4: 5 fields where the header"):
        ingest(strict)


def test_schema_error_names_file_line_and_column(tmp_path: Path) -> None:
    config = load_partner_config(partner(tmp_path, GOOD[:3] + ["K7,12 euros,basic,no"], fraction=0.0))
    with pytest.raises(RejectFractionExceeded, match=r"export\.csv: line 5, column 'spend': not a number: '12 euros'"):
        ingest(config)


def test_declared_column_missing_from_export_names_file_and_column(tmp_path: Path) -> None:
    path = partner(tmp_path, GOOD[:3])
    path.write_text(path.read_text() + '[columns.region]\nrole = "ignore"\n')
    with pytest.raises(DataValidationError, match=r"export\.csv: column\(s\) \['region'\] declared in .*partner\.toml"):
        ingest(load_partner_config(path))


FOREIGN_CSV = """Kundennummer;Umsatz;Tarif;Gekuendigt;Vertragsbeginn
cust-000123;1.234,50;Basis;J;03.01.2021
cust-000124;99,90;Premium;N;15.06.2022
cust-000125;;Basis;N;01.12.2023
"""
FOREIGN_CONFIG = """
name = "foreign"
[source]
path = "kunden.csv"
delimiter = ";"
decimal = ","
thousands = "."
date_formats = ["%d.%m.%Y"]
[columns.Kundennummer]
role = "customer_id"
category = "user.unique_id"
[columns.Umsatz]
role = "feature"
feature = "revenue"
type = "numeric"
category = "user.financial.billing"
[columns.Tarif]
role = "feature"
feature = "plan"
type = "categorical"
value_map = { Basis = "basic", Premium = "premium" }
category = "user.behavior.service_subscription"
[columns.Gekuendigt]
role = "label"
positive = ["J"]
negative = ["N"]
category = "user.behavior.service_subscription"
[columns.Vertragsbeginn]
role = "feature"
feature = "start"
type = "date"
category = "user.behavior.service_subscription"
"""


def test_foreign_export_ingests_by_config_alone(tmp_path: Path) -> None:
    (tmp_path / "kunden.csv").write_text(FOREIGN_CSV, encoding="utf-8")
    (tmp_path / "foreign.toml").write_text(FOREIGN_CONFIG)
    config = load_partner_config(tmp_path / "foreign.toml")
    create_key(config.key_path)
    report = ingest(config)
    customers = pd.read_parquet(report.outputs["customers"])
    assert report.rows_rejected == 0 and report.rows_kept == 3
    assert customers["revenue"].tolist()[:2] == [1234.5, 99.9] and pd.isna(customers["revenue"].iloc[2])
    assert customers["plan"].tolist() == ["basic", "premium", "basic"]
    assert customers["label"].tolist() == [1, 0, 0]
    assert customers["start"].tolist()[0] == pd.Timestamp("2021-01-03")
    assert load_id_map(config)["customer_id"].tolist() == ["cust-000123", "cust-000124", "cust-000125"]
    assert not customers["subject"].str.contains("cust-").any()


def test_ingest_quality_and_merge_refuse_without_the_partner_key(tmp_path: Path) -> None:
    path = partner(tmp_path, GOOD, key=False)
    config = load_partner_config(path)
    with pytest.raises(MissingPartnerKey, match="partner.key: partner key not found"):
        ingest(config)
    merge_toml = tmp_path / "merge.toml"
    merge_toml.write_text(
        'partner_config = "partner.toml"\noutput = "merged.csv"\n'
        '[[sources]]\nname = "a"\npath = "export.csv"\nid_column = "id"\n'
        '[[sources]]\nname = "b"\npath = "export.csv"\nid_column = "id"\n')
    runner = CliRunner()
    for args in (["ingest", "--config", str(path)], ["quality", "--config", str(path)],
                 ["merge", "--merge-config", str(merge_toml)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert "partner key not found" in " ".join(result.output.split()), args
    assert not (tmp_path / "merged.csv").exists()
    assert not config.work_path.exists() or not any(config.work_path.iterdir())
