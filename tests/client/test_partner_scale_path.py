"""The per-round data path (gate once, encode once per subject set, spilled rows) gives the old path's results,
and a withdrawal after the rows were encoded still takes effect."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from fedcrm.client import partner_session
from fedcrm.client.features import encode_features, encode_labels
from fedcrm.client.holdout import HOLDOUT_BUCKET
from fedcrm.client.ingest import CUSTOMERS_FILE, LABEL, SUBJECT, load_customers, load_customers_lean
from fedcrm.client.partner_session import PartnerSession, RoundOrder, is_validation_subject
from fedcrm.client.vocabulary import vocabulary_for_gate
from fedcrm.consent.events import ConsentEvent
from fedcrm.consent.gate import UsageContext, gate
from fedcrm.models.metrics import binary_metrics
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays
from fedcrm.models.train import TrainConfig
from fedcrm.protocol import load_task_schema
from tests.federation import TELCO_TASK, copy_partners

CFG = TrainConfig(epochs=2, batch_size=32, seed=0)


@pytest.fixture()
def session(tmp_path: Path) -> PartnerSession:
    partner_session.clear_round_views()
    [config] = copy_partners(tmp_path, names=("B",))
    yield PartnerSession(config)
    partner_session.clear_round_views()


def _order(task, server_round: int, stage: str, at: datetime | None = None) -> RoundOrder:  # noqa: ANN001
    return RoundOrder("run-1", server_round, stage, at or datetime.now(UTC), task.sha256(), task.purpose)


def _reference(session: PartnerSession, task, scaling, arrays) -> tuple[list[np.ndarray], float, int, dict]:  # noqa: ANN001
    """The path before issue 22: whole frame, per-row SHA-256 split, one-hot in float64, one global shuffle."""
    ledger = session._ledger()
    try:
        view = gate(load_customers(session.config), session.column_categories(), task.purpose, datetime.now(UTC),
                    session.task_columns(task, with_label=True), ledger=ledger,
                    use=UsageContext("ref", session.name, "ref:1", "fit"),
                    vocabulary=vocabulary_for_gate(session.config, ledger))
    finally:
        ledger.close()
    frame = view.frame.astype({c: object for c in view.frame.columns if str(view.frame[c].dtype) == "string"})
    mask = frame[SUBJECT].map(lambda s: is_validation_subject(s, session.config.privacy.validation_fraction))
    train, holdout = frame[~mask], frame[mask]
    model = partner_session._global_model("mlp", task.width, arrays)
    x = torch.from_numpy(encode_features(train, task, scaling))
    y = torch.from_numpy(encode_labels(train, LABEL))
    optimizer = torch.optim.Adam(model.parameters(), lr=CFG.learning_rate)
    generator = torch.Generator().manual_seed(CFG.seed)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(CFG.epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), CFG.batch_size):
            idx = order[start : start + CFG.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
    eval_model = partner_session._global_model("mlp", task.width, arrays)
    eval_model.eval()
    with torch.no_grad():
        hx = torch.from_numpy(encode_features(holdout, task, scaling))
        hy = torch.from_numpy(encode_labels(holdout, LABEL))
        logits = eval_model(hx)
        scores = torch.sigmoid(logits).numpy().astype(np.float64)
        metrics = {"loss": float(nn.functional.binary_cross_entropy_with_logits(logits, hy)),
                   **binary_metrics(hy.numpy(), scores)}
    return get_arrays(model), total / len(x), len(train), metrics


def test_fit_and_evaluate_equal_the_old_path(session: PartnerSession) -> None:
    task = load_task_schema(TELCO_TASK)
    scaling = {"tenure_months": (30.0, 24.0), "monthly_charges": (65.0, 30.0), "total_charges": (2200.0, 2200.0)}
    arrays = get_arrays(build_model("mlp", task.width))
    want_arrays, want_loss, want_n, want_metrics = _reference(session, task, scaling, arrays)
    got, n, metrics = session.fit(task, _order(task, 1, "fit"), arrays, scaling, CFG, architecture="mlp",
                                  max_weight=1e6, clipping_range=None)
    assert n == want_n
    assert metrics.loss == pytest.approx(want_loss, rel=1e-6)
    for a, b in zip(got, want_arrays, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    loss, _, ev = session.evaluate(task, _order(task, 1, "evaluate"), arrays, scaling, architecture="mlp")
    assert loss == pytest.approx(want_metrics["loss"], rel=1e-6)
    assert ev.roc_auc == pytest.approx(want_metrics["roc_auc"], rel=1e-9)


def test_tables_ingested_before_the_bucket_column_split_the_same(session: PartnerSession) -> None:
    table = session.config.work_path / CUSTOMERS_FILE
    frame = load_customers(session.config)
    assert HOLDOUT_BUCKET in frame.columns
    with_bucket = session.split(frame, validation=True)
    pq.write_table(pq.read_table(table).drop_columns([HOLDOUT_BUCKET]), table)
    without = load_customers_lean(session.config)
    assert without[HOLDOUT_BUCKET].tolist() == frame[HOLDOUT_BUCKET].tolist()
    assert session.split(frame.drop(columns=[HOLDOUT_BUCKET]), validation=True)[SUBJECT].tolist() == \
        with_bucket[SUBJECT].tolist()


def test_rows_are_reused_only_for_the_same_subjects_task_scaling_and_table(session: PartnerSession) -> None:
    task = load_task_schema(TELCO_TASK)
    scaling = {"tenure_months": (30.0, 24.0)}
    first, _, _ = session.round_data(task, _order(task, 1, "fit"), scaling)
    again, _, _ = session.round_data(task, _order(task, 2, "fit", datetime.now(UTC) + timedelta(hours=1)), scaling)
    assert again is first  # next round, later consent-as-of, same subjects: no re-encoding
    other_scaling, _, _ = session.round_data(task, _order(task, 3, "fit"), {"tenure_months": (0.0, 1.0)})
    assert other_scaling is not first
    other_task = task.model_copy(update={"version": task.version + "-b"})
    assert other_task.sha256() != task.sha256()
    moved, _, _ = session.round_data(other_task, _order(other_task, 4, "fit"), scaling)
    assert moved is not first
    table = session.config.work_path / CUSTOMERS_FILE
    stat = table.stat()
    import os

    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # what a re-ingest does
    rebuilt, _, _ = session.round_data(task, _order(task, 5, "fit"), scaling)
    assert rebuilt is not first and rebuilt.train.n_rows == first.train.n_rows


def test_a_withdrawal_after_the_rows_were_encoded_takes_effect_next_round(session: PartnerSession) -> None:
    task = load_task_schema(TELCO_TASK)
    scaling: dict[str, tuple[float, float]] = {}
    arrays = get_arrays(build_model("mlp", task.width))
    _, n_before, _ = session.fit(task, _order(task, 1, "fit"), arrays, scaling, CFG, architecture="mlp",
                                 max_weight=1e6, clipping_range=None)
    encoded, view, _ = session.round_data(task, _order(task, 1, "evaluate"), scaling)
    fraction = session.config.privacy.validation_fraction
    leaving = sorted(s for s in view.subjects if not is_validation_subject(s, fraction))[0]
    when = datetime.now(UTC) - timedelta(minutes=1)
    ledger = session._ledger()
    try:
        ledger.append([ConsentEvent(receipt_id="w-after-cache", subject=leaving, purpose=task.purpose,
                                    category="user.behavior.service_subscription", action="withdraw",
                                    legal_basis="legitimate_interest", effective_at=when, recorded_at=when,
                                    source="test", notice_version="1")])
    finally:
        ledger.close()
    partner_session.reset_timings()
    _, n_after, _ = session.fit(task, _order(task, 2, "fit"), arrays, scaling, CFG, architecture="mlp",
                                max_weight=1e6, clipping_range=None)
    assert n_after == n_before - 1
    assert "encode" in partner_session.timings()  # the rows were rebuilt, not reused
    fresh, view2, _ = session.round_data(task, _order(task, 2, "evaluate"), scaling)
    assert fresh is not encoded and leaving not in view2.subjects
    assert fresh.train.n_rows == encoded.train.n_rows - 1
    assert encoded.train._file.closed and encoded.holdout._file.closed  # the withdrawn customer's rows are gone


def test_an_erasure_drops_the_rows_a_long_lived_process_encoded(session: PartnerSession) -> None:
    """``client erase`` in the partner's process: its cached views and encoded rows go at once, not next round."""
    from fedcrm.client.erase import erase_customer
    from fedcrm.client.ingest import load_id_map

    task = load_task_schema(TELCO_TASK)
    scaling: dict[str, tuple[float, float]] = {}
    encoded, view, _ = session.round_data(task, _order(task, 1, "fit"), scaling)
    fraction = session.config.privacy.validation_fraction
    leaving = sorted(s for s in view.subjects if not is_validation_subject(s, fraction))[0]
    ids = load_id_map(session.config)
    raw = ids.loc[ids[SUBJECT] == leaving].iloc[0]
    raw_id = str(raw[[c for c in ids.columns if c != SUBJECT][0]])
    assert partner_session._ROUND_DATA and partner_session._ROUND_VIEWS
    erase_customer(session.config, raw_id, request_id="art17-test")
    assert not partner_session._ROUND_DATA and not partner_session._ROUND_VIEWS
    assert encoded.train._file.closed and encoded.holdout._file.closed  # spilled rows closed (unlinked file gone)
    fresh, view2, _ = session.round_data(task, _order(task, 1, "evaluate"), scaling)  # same round, later message
    assert fresh is not encoded and leaving not in view2.subjects
    assert fresh.train.n_rows == encoded.train.n_rows - 1


def test_forget_partner_leaves_other_partners_rows(tmp_path: Path) -> None:
    partner_session.clear_round_views()
    configs = copy_partners(tmp_path, names=("A", "B"))
    task = load_task_schema(TELCO_TASK)
    a, b = (PartnerSession(c) for c in configs)
    kept, _, _ = b.round_data(task, _order(task, 1, "fit"), {})
    dropped, _, _ = a.round_data(task, _order(task, 1, "fit"), {})
    try:
        assert partner_session.forget_partner(a.config) == 2
        assert dropped.train._file.closed and not kept.train._file.closed
        again, _, _ = b.round_data(task, _order(task, 1, "evaluate"), {})
        assert again is kept
    finally:
        partner_session.clear_round_views()


def test_the_round_table_is_mapped_rebuilt_when_the_table_changes_and_erased_with_the_customer(
        session: PartnerSession) -> None:
    from fedcrm.client.erase import erase_customer
    from fedcrm.client.ingest import ROUND_TABLE_FILE, load_id_map, open_customers_mapped

    mapped = session.config.work_path / ROUND_TABLE_FILE
    table = open_customers_mapped(session.config)
    assert mapped.stat().st_mode & 0o777 == 0o600 and table.column(SUBJECT).num_chunks == 1
    lean = load_customers_lean(session.config)
    assert table.column(SUBJECT).to_pylist() == lean[SUBJECT].tolist()
    assert table.column(HOLDOUT_BUCKET).to_pylist() == lean[HOLDOUT_BUCKET].tolist()
    built = mapped.stat().st_mtime_ns
    assert open_customers_mapped(session.config).equals(table) and mapped.stat().st_mtime_ns == built  # reused
    ids = load_id_map(session.config)
    leaving = ids[SUBJECT].iloc[0]
    erase_customer(session.config, str(ids[[c for c in ids.columns if c != SUBJECT][0]].iloc[0]), request_id="e1")
    assert not mapped.exists()  # the erased customer's mapped rows went with the tables
    rebuilt = open_customers_mapped(session.config)
    assert leaving not in set(rebuilt.column(SUBJECT).to_pylist()) and len(rebuilt) == len(table) - 1


def test_a_key_rotation_deletes_the_round_table_with_the_other_tables(session: PartnerSession) -> None:
    from fedcrm.client.ingest import ROUND_TABLE_FILE, open_customers_mapped
    from fedcrm.client.keys import rotate_key

    old = set(open_customers_mapped(session.config).column(SUBJECT).to_pylist())
    rotate_key(session.config)
    assert not (session.config.work_path / ROUND_TABLE_FILE).exists()
    assert not old & set(open_customers_mapped(session.config).column(SUBJECT).to_pylist())  # new pseudonyms only
