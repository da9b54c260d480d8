"""Pseudonymisation: stable under one key, different under another, no raw id past ingestion."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.features import encode_features
from fedcrm.client.ingest import ingest, load_customers
from fedcrm.client.pseudonymise import create_key, key_id, load_key, pseudonymise, pseudonymise_series
from fedcrm.errors import MissingPartnerKey, PartnerKeyExists
from fedcrm.paths import DATASETS
from fedcrm.protocol import load_task_schema

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@given(st.text(min_size=1, max_size=40))
def test_pseudonym_is_stable_under_one_key_and_differs_under_another(raw: str) -> None:
    assert pseudonymise(raw, KEY_A) == pseudonymise(raw, KEY_A)
    assert pseudonymise(raw, KEY_A) != pseudonymise(raw, KEY_B)
    assert pseudonymise(raw, KEY_A).startswith(key_id(KEY_A) + ":")
    digest = pseudonymise(raw, KEY_A).split(":", 1)[1]
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")


def test_series_and_scalar_pseudonyms_agree() -> None:
    ids = pd.Series(["7590-VHVEG", "5575-GNVDE", "x"])
    assert list(pseudonymise_series(ids, KEY_A)) == [pseudonymise(i, KEY_A) for i in ids]


def test_key_is_created_with_mode_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "partner.key"
    create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(PartnerKeyExists):
        create_key(path)
    assert path.read_bytes() == before


def test_missing_key_is_refused_with_the_command_that_creates_it(tmp_path: Path) -> None:
    with pytest.raises(MissingPartnerKey, match="fedcrm client init"):
        load_key(tmp_path / "nope.key")


@pytest.fixture()
def partner(tmp_path: Path) -> Path:
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "B", tmp_path / "B")
    return tmp_path / "B" / "partner.toml"


@pytest.mark.parametrize("command", [["client", "ingest"], ["client", "status"]])
def test_client_commands_that_read_customer_data_refuse_without_the_key(partner: Path, command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--config", str(partner)])
    assert result.exit_code != 0
    assert "partner key not found" in " ".join(result.output.split())  # Rich wraps at the terminal width
    assert not (partner.parent / "work" / "customers.parquet").exists()


def test_no_raw_id_reaches_the_ingested_table_or_the_training_arrays(partner: Path) -> None:
    assert CliRunner().invoke(app, ["client", "init", "--config", str(partner)]).exit_code == 0
    config = load_partner_config(partner)
    ingest(config)
    raw = pd.read_csv(partner.parent / "customers.csv", dtype=str)
    raw_ids = set(raw["customerID"])
    table = load_customers(config)
    assert not raw_ids & set(table["subject"])
    flat = set(table.astype(str).to_numpy().ravel())
    assert not raw_ids & flat, "a raw customer id survived ingestion"
    assert "customerID" not in table.columns
    key = load_key(config.key_path)
    assert set(table["subject"]) == {pseudonymise(i, key) for i in raw_ids}
    matrix = encode_features(table, load_task_schema(DATASETS / "tasks" / "telco_churn.yaml"), {})
    assert matrix.dtype.kind == "f"  # numbers only: no identifier can ride along
