"""Subject sets stored in sorted chunks: lookups at chunk edges, erasure inside a chunk, tamper, migration."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pytest
from alembic import command
from sqlalchemy import create_engine

from fedcrm.consent import subject_sets
from fedcrm.consent.db import alembic_config, normalise_url
from fedcrm.consent.events import subject_fingerprint
from fedcrm.consent.gate import UsageContext, gate
from fedcrm.consent.ledger import Ledger
from tests.raw_sql import raw_sql, stored_members

N = 2 * subject_sets.CHUNK_SIZE + 5  # three chunks, the last one short
AT = datetime(2025, 1, 2, tzinfo=UTC)  # after every receipt the factories make
CATEGORY = "user.behavior.service_subscription"


@pytest.fixture
def sql(ledger_url: str) -> Iterator[Callable[..., list]]:
    with raw_sql(ledger_url) as run:
        yield run


@pytest.fixture
def big(ledger: Ledger, make) -> tuple[Ledger, list[str], str]:
    """One usage record over N subjects (even numbers: the odd ones fall between them), stored as three chunks."""
    subjects = sorted(make.pseudonym(2 * i) for i in range(N))
    fp = subject_fingerprint(subjects)
    with ledger.transaction() as txn:
        txn.append([make.usage(subjects)])
        txn.store_subject_set(fp, pa.array(subjects, pa.large_string()))
    return ledger, subjects, fp


def _edges(subjects: list[str]) -> list[str]:
    size = subject_sets.CHUNK_SIZE
    return [subjects[i] for i in (0, size - 1, size, 2 * size - 1, 2 * size, N - 1, N // 2)]


def test_a_large_set_is_stored_in_chunks_that_hash_to_its_fingerprint(big, sql) -> None:
    ledger, subjects, fp = big
    rows = sql("SELECT chunk, size FROM subject_set_chunks ORDER BY chunk")
    assert [tuple(r) for r in rows] == [(0, subject_sets.CHUNK_SIZE), (1, subject_sets.CHUNK_SIZE), (2, 5)]
    assert stored_members(sql) == subjects
    assert ledger.verify().ok
    for member in _edges(subjects):  # first and last of each chunk, and one inside
        assert [i for i, _ in ledger.uses_including(member)] == [0], member


def test_strings_and_arrow_store_the_same_rows(ledger_url: str, ledger: Ledger, make, sql) -> None:
    subjects = [make.pseudonym(i) for i in range(N)]
    with ledger.transaction() as txn:
        txn.store_subject_set("aa" * 32, reversed(subjects + subjects[:10]))  # any order, duplicates
        txn.store_subject_set("bb" * 32, pa.array(sorted(subjects)))
        assert txn.has_subject_set("aa" * 32) and not txn.has_subject_set("cc" * 32)
    rows = sql("SELECT fingerprint, chunk, first, last, size, members FROM subject_set_chunks ORDER BY fingerprint, chunk")
    a = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r[1:]) for r in rows if r[0] == "aa" * 32]
    b = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r[1:]) for r in rows if r[0] == "bb" * 32]
    assert a == b and len(a) == 3


def test_non_members_between_and_around_chunks_are_not_found(big, make) -> None:
    ledger, subjects, _ = big
    size = subject_sets.CHUNK_SIZE
    inside = [make.pseudonym(2 * i + 1) for i in (0, size - 1, size, N // 2, N - 2)]  # in a chunk, between chunks
    outside = [make.pseudonym(2 * N + 1), "0a1b2c3c:" + "f" * 32, "0a1b2c3e:" + "0" * 32]
    assert all(subjects[0] < a < subjects[-1] for a in inside)
    assert all(ledger.uses_including(a) == [] for a in inside + outside)


def test_erasing_a_member_at_a_chunk_edge_keeps_lookups_and_verification_right(big, sql) -> None:
    ledger, subjects, fp = big
    size = subject_sets.CHUNK_SIZE
    gone = subjects[size]  # first member of chunk 1: its bounds move
    result = ledger.erase_subject(gone)
    assert result.subject_sets == 1
    report = ledger.verify()
    assert report.ok, report.message
    rest = [s for s in subjects if s != gone]
    assert stored_members(sql) == rest
    assert ledger.uses_including(gone) == []
    assert [i for i, _ in ledger.uses_including(subjects[size + 1])] == [0]  # the new first of chunk 1
    erasure = ledger.events(result.index)[0].event
    assert erasure.subject_sets == ((fp, subject_fingerprint(rest), N - 1),)


def test_erasing_a_chunks_only_member_removes_the_chunk(ledger: Ledger, make, sql) -> None:
    subjects = sorted(make.pseudonym(i) for i in range(subject_sets.CHUNK_SIZE + 1))
    with ledger.transaction() as txn:
        txn.append([make.usage(subjects)])
        txn.store_subject_set(subject_fingerprint(subjects), subjects)
    ledger.erase_subject(subjects[-1])
    assert [tuple(r) for r in sql("SELECT chunk FROM subject_set_chunks")] == [(0,)]
    assert ledger.verify().ok


def _verdict(ledger: Ledger, index: int, words: str) -> None:
    report = ledger.verify()
    assert not report.ok and report.first_bad_index == index and words in report.message, report.message


def test_chunk_bounds_edited_so_a_lookup_would_miss_is_caught(big, sql) -> None:
    ledger, subjects, _ = big
    sql("UPDATE subject_set_chunks SET first = :b WHERE chunk = 1", b=subjects[subject_sets.CHUNK_SIZE + 1].encode())
    _verdict(ledger, 0, "chunk 1's first/last columns do not match its members")


def test_chunk_size_column_edited_is_caught(big, sql) -> None:
    ledger, _, _ = big
    sql("UPDATE subject_set_chunks SET size = size - 1 WHERE chunk = 2")
    _verdict(ledger, 0, "chunk 2's size column")


def test_chunks_renumbered_out_of_order_are_caught(big, sql) -> None:
    ledger, _, _ = big
    for x, y in ((0, 9), (2, 0), (9, 2)):
        sql("UPDATE subject_set_chunks SET chunk = :y WHERE chunk = :x", x=x, y=y)
    _verdict(ledger, 0, "overlaps or precedes")


def test_the_gate_stores_a_multi_chunk_set_from_arrow_and_a_new_one_after_a_withdrawal(ledger: Ledger, make, sql) -> None:
    subjects = [make.pseudonym(i) for i in range(N)]
    frame = pd.DataFrame({"subject": subjects, "tenure": range(N)})
    use = UsageContext(job_id="job", partner="partner-a", model_version="job:1", stage="fit")

    def run() -> frozenset[str]:
        return gate(frame, {"tenure": CATEGORY}, "churn_prediction", AT, ["tenure"], ledger=ledger, use=use).subjects

    assert len(run()) == N  # opt-out purpose: everyone in
    ledger.append([make.consent(7, "withdraw", minutes=5)])
    assert make.pseudonym(7) not in run()
    assert len(run()) == N - 1  # the same set again: stored once
    fps = [r[0] for r in sql("SELECT fingerprint FROM log_entries WHERE kind = 'usage' ORDER BY idx")]
    assert len(fps) == 3 and fps[1] == fps[2] != fps[0]
    assert sorted(stored_members(sql, fps[0])) == sorted(subjects)
    assert stored_members(sql, fps[1]) == sorted(set(subjects) - {make.pseudonym(7)})
    assert ledger.verify().ok
    assert [i for i, _ in ledger.uses_including(make.pseudonym(7))] == [0]


def test_migration_from_a_row_per_member_and_back_keeps_every_set(big, ledger_url: str, sql) -> None:
    ledger, subjects, fp = big
    before = sql("SELECT fingerprint, chunk, first, last, size, members FROM subject_set_chunks ORDER BY chunk")
    engine = create_engine(normalise_url(ledger_url))
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0001")
        assert sorted(s for (s,) in sql("SELECT subject FROM subject_sets")) == subjects
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    finally:
        engine.dispose()
    after = sql("SELECT fingerprint, chunk, first, last, size, members FROM subject_set_chunks ORDER BY chunk")
    norm = lambda rows: [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]  # noqa: E731
    assert norm(after) == norm(before)
    assert ledger.verify().ok and [i for i, _ in ledger.uses_including(subjects[5])] == [0]
