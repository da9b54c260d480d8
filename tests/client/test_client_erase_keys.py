"""Erasure and key loss on a real partner directory: the customer never comes back, receipts never go stale.

`fedcrm client erase` logs the erasure in the ledger and purges the ingested tables;
the next gated run leaves the customer out even after the export is re-ingested.
`fedcrm client init` refuses to make a new key on a used ledger; `rotate-key` is the
logged way to change keys, and `status` fails when receipts are orphaned.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.client.cli_analytics import consented_customers
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import CUSTOMERS_FILE, ID_MAP_FILE, load_id_map
from fedcrm.client.pseudonymise import create_key, key_id, load_key, pseudonymise
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import make_consent
from fedcrm.paths import DATASETS

PURPOSE = "churn_prediction"  # legitimate interest: everyone is used unless they object
runner = CliRunner(env={"COLUMNS": "240"})


@pytest.fixture
def partner(tmp_path: Path) -> Path:
    """Partner A of the Telco split, cut to 120 customers, initialised and ingested."""
    root = tmp_path / "A"
    shutil.copytree(DATASETS / "partners" / "telco" / "iid" / "A", root)
    lines = (root / "customers.csv").read_text().splitlines(keepends=True)
    (root / "customers.csv").write_text("".join(lines[:121]))
    result = runner.invoke(app, ["client", "init", "--config", str(root / "partner.toml")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["client", "ingest", "--config", str(root / "partner.toml")])
    assert result.exit_code == 0, result.output
    return root / "partner.toml"


def raw_ids(config: Path) -> list[str]:
    return list(pd.read_csv(config.parent / "customers.csv", dtype=str)["customerID"])


def object_to(config: Path, raw: str) -> None:
    cfg = load_partner_config(config)
    when = datetime.now(UTC) - timedelta(days=1)
    with Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path) as ledger:
        ledger.append([make_consent(subject=pseudonymise(raw, load_key(cfg.key_path)), purpose=PURPOSE, category="user",
                                    action="withdraw", effective_at=when, recorded_at=when, source="call-centre",
                                    notice_version="v1")])


def next_run(config: Path) -> frozenset[str]:
    """The subjects the next gated run on this partner uses (the analytics path: load table, gate)."""
    cfg = load_partner_config(config)
    with Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path) as ledger:
        view, _ = consented_customers(cfg, PURPOSE, datetime.now(UTC), ledger)
        assert ledger.verify().ok
    return view.subjects


def test_erased_customer_is_out_of_tables_id_map_and_every_later_run(partner: Path) -> None:
    cfg = load_partner_config(partner)
    objector, plain = raw_ids(partner)[:2]
    key = load_key(cfg.key_path)
    object_to(partner, objector)
    assert pseudonymise(plain, key) in next_run(partner) and pseudonymise(objector, key) not in next_run(partner)

    for n, raw in enumerate((objector, plain)):
        result = runner.invoke(app, ["client", "erase", "--config", str(partner), "--customer-id", raw,
                                     "--request-id", f"dsr-{n}"])
        assert result.exit_code == 0, result.output
        assert f"rows removed from {CUSTOMERS_FILE}" in result.output

    gone = {pseudonymise(objector, key), pseudonymise(plain, key)}
    ids = load_id_map(cfg)
    assert not gone & set(ids["subject"]) and not {objector, plain} & set(ids["customer_id"])
    assert not gone & set(pd.read_parquet(cfg.work_path / CUSTOMERS_FILE)["subject"])
    assert len(ids) == 118
    assert oct((cfg.work_path / ID_MAP_FILE).stat().st_mode & 0o777) == "0o600"

    used = next_run(partner)
    assert len(used) == 118 and not gone & used

    # The CRM export still lists both: a re-ingest puts them back in the table, never in a run.
    time.sleep(0.01)
    os.utime(partner.parent / "customers.csv")
    used = next_run(partner)
    assert gone <= set(pd.read_parquet(cfg.work_path / CUSTOMERS_FILE)["subject"])
    assert len(used) == 118 and not gone & used
    with Ledger.open(cfg.ledger_url) as ledger:
        assert ledger.verify().ok
        erasures = ledger.events_of_kind("erasure")
        assert [s.event.request_id for s in erasures] == ["dsr-0", "dsr-1"]
        assert all(objector not in s.event.model_dump_json() for s in erasures)


def test_init_refuses_a_used_ledger_whose_key_is_missing(partner: Path) -> None:
    cfg = load_partner_config(partner)
    object_to(partner, raw_ids(partner)[0])
    old_id = key_id(load_key(cfg.key_path))
    cfg.key_path.unlink()
    result = runner.invoke(app, ["client", "init", "--config", str(partner)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "partner key is missing" in text and "Restore the key file from your backup" in text and old_id in text
    assert "rotate-key" in text and not cfg.key_path.exists()


def test_rotated_key_keeps_earlier_objections_in_force(partner: Path) -> None:
    cfg = load_partner_config(partner)
    objector = raw_ids(partner)[3]
    object_to(partner, objector)
    old_id = key_id(load_key(cfg.key_path))
    result = runner.invoke(app, ["client", "rotate-key", "--config", str(partner)])
    assert result.exit_code == 0, result.output
    new_key = load_key(cfg.key_path)
    assert key_id(new_key) != old_id and "120 customers mapped" in result.output
    assert load_key(cfg.key_path.with_name(f"partner.key.retired-{old_id}")) != new_key

    used = next_run(partner)  # re-ingested under the new key
    assert len(used) == 119 and pseudonymise(objector, new_key) not in used
    assert all(s.startswith(key_id(new_key) + ":") for s in used)
    status = runner.invoke(app, ["client", "status", "--config", str(partner)])
    assert status.exit_code == 0 and "verifies: yes" in status.output, status.output
    with Ledger.open(cfg.ledger_url) as ledger:
        assert [s.event.old_key_id for s in ledger.events_of_kind("key_rotation")] == [old_id]


def test_status_fails_when_receipts_are_orphaned(partner: Path) -> None:
    cfg = load_partner_config(partner)
    object_to(partner, raw_ids(partner)[0])
    old_id = key_id(load_key(cfg.key_path))
    cfg.key_path.unlink()
    create_key(cfg.key_path)  # a new key made behind fedcrm's back: the receipt now names nobody
    status = runner.invoke(app, ["client", "status", "--config", str(partner)])
    text = " ".join(status.output.split())
    assert status.exit_code == 1 and "verifies: NO" in text and "orphaned" in text and old_id in text
