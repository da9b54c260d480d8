"""The ledger appends atomically, signs a head per transaction, and answers the gate and subject requests."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from fedcrm.consent import checkpoint as cp
from fedcrm.consent import merkle
from fedcrm.consent.db import normalise_url
from fedcrm.consent.events import ConsentEvent, subject_fingerprint
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import ConsentError, LedgerIntegrityError, LedgerNotFound, SigningKeyError


def _count(url: str, table: str) -> int:
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def test_new_ledger_starts_with_a_signed_empty_head(ledger: Ledger, make) -> None:
    head = ledger.latest_checkpoint()
    assert head.size == 0 and head.root_hash == merkle.empty_root()
    assert ledger.verify().ok


def test_append_signs_one_head_per_batch_and_returns_it(ledger: Ledger, ledger_url: str, make) -> None:
    head = ledger.append([make.consent(1), make.consent(2)])
    assert head.size == 2 and ledger.tree_size() == 2
    assert cp.verify_checkpoint(head.note, cp.load_public_key(ledger.public_key_pem), ledger.key_name, origin=make.origin)
    ledger.append([make.consent(3)])
    assert _count(ledger_url, "signed_heads") == 3  # empty head + one per append
    assert [s.index for s in ledger.events()] == [0, 1, 2]
    assert ledger.events(1, 2)[0].event == make.consent(2)


def test_failing_batch_writes_no_event_and_no_head(ledger: Ledger, ledger_url: str, make) -> None:
    ledger.append([make.consent(1)])
    bad = make.consent(2).model_dump() | {"action": "maybe"}
    with pytest.raises(ConsentError, match="event 1 of the batch"):
        ledger.append([make.consent(3), bad])
    with pytest.raises(RuntimeError):
        with ledger.transaction() as txn:
            txn.append([make.consent(4), make.consent(5)])
            txn.store_subject_set("ab" * 32, [make.pseudonym(4)])
            assert txn.tree_size() == 3
            raise RuntimeError("gate crashed before commit")
    assert ledger.tree_size() == 1
    assert (_count(ledger_url, "log_entries"), _count(ledger_url, "signed_heads")) == (1, 2)
    assert (_count(ledger_url, "personal_payloads"), _count(ledger_url, "subject_set_chunks")) == (1, 0)
    assert ledger.verify().ok


def test_database_error_mid_batch_rolls_back_everything(ledger: Ledger, ledger_url: str, make) -> None:
    ledger.append([make.consent(1)])
    engine = create_engine(normalise_url(ledger_url))
    with engine.begin() as conn:  # a row slipped in behind the ledger's back, where the batch will write
        conn.execute(text("INSERT INTO personal_payloads (idx, field, salt, value) VALUES (2, 'subject', :s, 'x')"), {"s": b"0" * 32})
    engine.dispose()
    with pytest.raises(Exception):  # noqa: B017 — the engine's IntegrityError, whichever driver
        ledger.append([make.consent(2), make.consent(3)])
    assert ledger.tree_size() == 1 and _count(ledger_url, "log_entries") == 1 and _count(ledger_url, "signed_heads") == 2


def test_append_refuses_a_log_that_disagrees_with_its_head(ledger: Ledger, ledger_url: str, make) -> None:
    ledger.append([make.consent(1), make.consent(2)])
    engine = create_engine(normalise_url(ledger_url))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM log_entries WHERE idx = 1"))  # the newest entry
    engine.dispose()
    with pytest.raises(LedgerIntegrityError, match="ends at index 0 but its newest signed head has size 2"):
        ledger.append([make.consent(3)])


def test_gate_transaction_reads_consent_and_records_usage_with_its_subject_set(ledger: Ledger, make) -> None:
    ledger.append([make.consent(1), make.consent(2), make.consent(2, "withdraw", minutes=5), make.consent(3)])
    subjects = [make.pseudonym(1), make.pseudonym(2)]
    with ledger.transaction() as txn:
        size = txn.tree_size()
        seen = txn.consent_events(upto_size=size, subjects=subjects)
        assert [(i, e.subject, e.action) for i, e in seen] == [
            (0, subjects[0], "grant"), (1, subjects[1], "grant"), (2, subjects[1], "withdraw")]
        use = make.usage(subjects[:1]).model_copy(update={"tree_size_read": size})
        txn.append([use])
        txn.store_subject_set(use.subject_fingerprint, subjects[:1])
        txn.store_subject_set(use.subject_fingerprint, subjects[:1])  # idempotent
    assert txn.checkpoint is not None and txn.checkpoint.size == 5
    assert [i for i, _ in ledger.uses_including(subjects[0])] == [4]
    assert ledger.uses_including(subjects[1]) == []
    assert ledger.consent_events(upto_size=2) == [(0, make.consent(1)), (1, make.consent(2))]


def test_usage_record_subject_sets_are_stored_once_per_fingerprint(ledger: Ledger, ledger_url: str, make) -> None:
    subjects = [make.pseudonym(i) for i in range(5)]
    fp = subject_fingerprint(subjects)
    assert fp == subject_fingerprint(reversed(subjects))
    for job in ("a", "b"):
        with ledger.transaction() as txn:
            txn.append([make.usage(subjects, job=job)])
            txn.store_subject_set(fp, subjects)
    assert _count(ledger_url, "subject_set_chunks") == 1  # 5 members: one chunk, written once
    assert [u.job_id for _, u in ledger.uses_including(subjects[3])] == ["a", "b"]


def test_key_rotation_keeps_consent_history_under_the_new_pseudonym(ledger: Ledger, make) -> None:
    old, new = make.pseudonym(7), make.pseudonym(7, key_id="99887766")
    ledger.append([make.consent(7)])
    head = ledger.record_key_rotation({old: new}, "0a1b2c3d", "99887766")
    assert head.size == 2 and ledger.events(1)[0].event.kind == "key_rotation"
    ledger.append([make.consent(7, "withdraw", key_id="99887766", minutes=1)])
    assert ledger.resolve(new) == sorted([old, new]) == ledger.resolve(old)
    history = ledger.consent_events(upto_size=3, subjects=[new])
    assert [(i, e.subject, e.action) for i, e in history] == [(0, new, "grant"), (2, new, "withdraw")]
    assert [i for i, _ in ledger.consent_events(upto_size=3)] == [0, 2]
    assert all(e.subject == new for _, e in ledger.consent_events(upto_size=3))
    assert [s.index for s in ledger.events_for_subject(old)] == [0, 2]
    with pytest.raises(ConsentError, match="does not go from key"):
        ledger.record_key_rotation({new: old}, "0a1b2c3d", "99887766")


def test_proofs_from_the_store_verify_against_signed_heads(ledger: Ledger, make) -> None:
    for n in range(11):
        ledger.append([make.consent(n)])
    old = ledger.checkpoint_at(6)
    new = ledger.latest_checkpoint()
    leaves = [s.leaf_hash for s in ledger.events()]
    for index in (0, 5, 10):
        merkle.verify_inclusion(index, new.size, leaves[index], ledger.inclusion_proof(index), new.root_hash)
    merkle.verify_consistency(6, 11, old.root_hash, new.root_hash, ledger.consistency_proof(6))


def test_raw_ids_never_enter_the_log() -> None:
    with pytest.raises(ValueError, match="pseudonym"):
        ConsentEvent(receipt_id="r", subject="customer-0042", purpose="p", category="c", action="grant",
                     legal_basis="consent", effective_at="2025-01-01T00:00:00Z", recorded_at="2025-01-01T00:00:00Z",
                     source="s", notice_version="1")


def test_reopen_checks_key_and_origin(ledger_url: str, signing_key: Path, tmp_path: Path, make) -> None:
    Ledger.open(ledger_url, signing_key_path=signing_key, origin=make.origin).close()
    cp.generate_signing_key(tmp_path / "other.pem")
    with pytest.raises(SigningKeyError, match="not the key"):
        Ledger.open(ledger_url, signing_key_path=tmp_path / "other.pem")
    with pytest.raises(ConsentError, match="origin"):
        Ledger.open(ledger_url, signing_key_path=signing_key, origin="another/origin")
    with Ledger.open(ledger_url) as read_only:  # no key: verify and read only
        assert read_only.verify().ok and read_only.origin == make.origin


def test_opening_nothing_without_a_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerNotFound, match="no consent ledger"):
        Ledger.open(tmp_path / "nothing.db")


def test_proofs_over_cached_subtrees_equal_the_rfc_definition(ledger: Ledger, make) -> None:
    sizes = []
    for batch in (1, 300, 255, 700):  # crosses several 256-leaf cached tiles
        ledger.append([make.consent(n) for n in range(batch)])
        sizes.append(ledger.tree_size())
    leaves = [s.leaf_hash for s in ledger.events()]
    subtree = merkle.subtree_hasher(leaves)
    for size in sizes:
        for index in (0, size // 3, size - 1):
            assert ledger.inclusion_proof(index, size) == merkle.inclusion_proof(index, size, subtree)
        for old in sizes:
            if old <= size:
                assert ledger.consistency_proof(old, size) == merkle.consistency_proof(old, size, subtree)


def test_concurrent_appenders_serialise_into_one_valid_log(ledger_url: str, signing_key: Path, make) -> None:
    import threading

    ledgers = [Ledger.open(ledger_url, signing_key_path=signing_key, origin=make.origin) for _ in range(3)]
    errors: list[BaseException] = []

    def work(led: Ledger, base: int) -> None:
        try:
            for n in range(8):
                led.append([make.consent(base + n), make.consent(base + n, "withdraw")])
        except BaseException as exc:  # noqa: BLE001 — surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(led, 100 * i)) for i, led in enumerate(ledgers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = ledgers[0].verify()
    assert report.ok and report.checked_size == 48
    assert _count(ledger_url, "signed_heads") == 25
    for led in ledgers:
        led.close()


def test_migrations_create_exactly_the_orm_schema(ledger: Ledger, ledger_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from fedcrm.consent.db import VERSION_TABLE, Base

    engine = create_engine(normalise_url(ledger_url))
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == []


def test_missing_postgres_binaries_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcrm.coordinator import local_postgres
    from tests import postgres_server

    monkeypatch.setattr(local_postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(postgres_server.PostgresUnavailable, match="apt-get install postgresql"):
        postgres_server.find_bindir()
