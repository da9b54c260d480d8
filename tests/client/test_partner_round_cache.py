"""A long-lived partner process gates its data once per round; every use is still in the ledger."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedcrm.client import partner_session
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import CUSTOMERS_FILE
from fedcrm.client.partner_session import PartnerSession, RoundOrder
from fedcrm.consent.ledger import Ledger
from fedcrm.protocol import load_task_schema
from tests.federation import TELCO_TASK, copy_partners


@pytest.fixture()
def session(tmp_path: Path) -> PartnerSession:
    partner_session.clear_round_views()
    [config] = copy_partners(tmp_path, names=("B",), task=None)
    return PartnerSession(config)


def _usage(session: PartnerSession) -> list:
    cfg = load_partner_config(session.config.config_path)
    ledger = Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin=f"fedcrm/{cfg.name}")
    try:
        return [r.event for r in ledger.events_of_kind("usage")]
    finally:
        ledger.close()


def _order(task, server_round: int, stage: str) -> RoundOrder:  # noqa: ANN001
    return RoundOrder("run-1", server_round, stage, datetime.now(UTC), task.sha256(), task.purpose)


def test_a_round_gates_once_and_records_each_stage(session: PartnerSession, monkeypatch: pytest.MonkeyPatch) -> None:
    task = load_task_schema(TELCO_TASK)
    columns = session.task_columns(task, with_label=True)
    calls = []
    real_gate = partner_session.gate
    monkeypatch.setattr(partner_session, "gate", lambda *a, **k: calls.append(1) or real_gate(*a, **k))

    fit_view, _ = session.consented(task, _order(task, 1, "fit"), columns)
    eval_view, _ = session.consented(task, _order(task, 1, "evaluate"), columns)
    assert eval_view is fit_view and len(calls) == 1
    next_view, _ = session.consented(task, _order(task, 2, "fit"), columns)  # the next round gates again
    assert next_view is not fit_view and len(calls) == 2

    usage = _usage(session)
    assert [(u.model_version, u.stage) for u in usage] == [("run-1:1", "fit"), ("run-1:1", "evaluate"),
                                                           ("run-1:2", "fit")]
    first, reuse = usage[0], usage[1]
    # The reuse names the same subject set, columns, consent time and ledger size as the gate's own record.
    for field in ("subject_fingerprint", "n_subjects", "columns", "at", "tree_size_read", "purpose"):
        assert getattr(reuse, field) == getattr(first, field), field


def test_a_changed_table_or_other_columns_gate_afresh(session: PartnerSession, monkeypatch: pytest.MonkeyPatch) -> None:
    task = load_task_schema(TELCO_TASK)
    columns = session.task_columns(task, with_label=True)
    calls = []
    real_gate = partner_session.gate
    monkeypatch.setattr(partner_session, "gate", lambda *a, **k: calls.append(1) or real_gate(*a, **k))
    session.consented(task, _order(task, 1, "fit"), columns)
    session.consented(task, _order(task, 1, "stats"), session.task_columns(task, with_label=False))
    assert len(calls) == 2
    table = session.config.work_path / CUSTOMERS_FILE
    stat = table.stat()
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # what a re-ingest does
    session.consented(task, _order(task, 1, "evaluate"), columns)
    assert len(calls) == 3
