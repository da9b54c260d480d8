"""Edits behind the ledger's back are caught, and verify names the first bad index.

Each test changes the database with raw SQL, as someone with database access but
(except in the re-signing test) without the signing key would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from fedcrm.consent import checkpoint as cp
from fedcrm.consent import merkle
from fedcrm.consent.db import normalise_url
from fedcrm.consent.events import canonical_json
from fedcrm.consent.ledger import Ledger

N = 10


@pytest.fixture
def filled(ledger: Ledger, make) -> Ledger:
    """A ledger with N entries, one append (and signed head) each."""
    for n in range(N):
        ledger.append([make.consent(n)])
    assert ledger.verify().ok
    return ledger


@pytest.fixture
def sql(ledger_url: str) -> Iterator[Connection]:
    engine = create_engine(normalise_url(ledger_url))
    with engine.begin() as conn:
        yield conn
    engine.dispose()


def _edit(conn: Connection, idx: int, *, fix_leaf_hash: bool) -> None:
    public = json.loads(conn.execute(text("SELECT public_json FROM log_entries WHERE idx = :i"), {"i": idx}).scalar_one())
    public["action"] = "withdraw"
    new = canonical_json(public)
    conn.execute(text("UPDATE log_entries SET public_json = :p WHERE idx = :i"), {"p": new, "i": idx})
    if fix_leaf_hash:
        conn.execute(text("UPDATE log_entries SET leaf_hash = :h WHERE idx = :i"), {"h": merkle.hash_leaf(new.encode()), "i": idx})


def test_edited_row_is_named(filled: Ledger, sql: Connection) -> None:
    _edit(sql, 4, fix_leaf_hash=False)
    sql.commit()
    report = filled.verify()
    assert not report.ok and report.first_bad_index == 4 and report.failure == "entry"


def test_edited_row_with_recomputed_leaf_hash_is_named_by_the_heads(filled: Ledger, sql: Connection) -> None:
    _edit(sql, 6, fix_leaf_hash=True)
    sql.commit()
    report = filled.verify()
    assert not report.ok and report.first_bad_index == 6, report.message
    assert "signed head of size 7" in report.message


def test_deleted_row_is_named(filled: Ledger, sql: Connection) -> None:
    sql.execute(text("DELETE FROM log_entries WHERE idx = 3"))
    sql.commit()
    report = filled.verify()
    assert not report.ok and report.first_bad_index == 3 and "missing" in report.message


def test_reordered_rows_are_named(filled: Ledger, sql: Connection) -> None:
    for a, b in ((2, -1), (7, 2), (-1, 7)):  # swap entries 2 and 7 with everything they carry
        for table in ("log_entries", "personal_payloads"):
            sql.execute(text(f"UPDATE {table} SET idx = :b WHERE idx = :a"), {"a": a, "b": b})
    sql.commit()
    report = filled.verify()
    assert not report.ok and report.first_bad_index == 2 and "reordered" in report.message


def test_edited_personal_payload_is_named(filled: Ledger, sql: Connection, make) -> None:
    sql.execute(text("UPDATE personal_payloads SET value = :v WHERE idx = 5"), {"v": make.pseudonym(999)})
    sql.commit()
    report = filled.verify()
    assert not report.ok and report.first_bad_index == 5 and "salted hash" in report.message


def test_truncation_is_caught_by_the_stored_head(filled: Ledger, sql: Connection) -> None:
    sql.execute(text("DELETE FROM log_entries WHERE idx >= 8"))
    sql.commit()
    report = filled.verify()
    assert not report.ok and report.failure == "truncated" and report.first_bad_index == 8


def test_truncation_with_heads_removed_is_caught_only_by_a_trusted_head(filled: Ledger, sql: Connection) -> None:
    trusted = filled.latest_checkpoint().note  # e.g. held by the coordinator
    for table, col in (("log_entries", "idx"), ("personal_payloads", "idx"), ("signed_heads", "size")):
        sql.execute(text(f"DELETE FROM {table} WHERE {col} >= 5" if table != "signed_heads" else f"DELETE FROM {table} WHERE {col} > 5"))
    sql.commit()
    assert filled.verify().ok  # a shorter, consistent log: nothing inside it can tell
    report = filled.verify(trusted=trusted)
    assert not report.ok and report.failure == "truncated" and report.first_bad_index == 5
    assert "trusted head has size 10" in report.message


def test_rewrite_resigned_with_the_partners_key_is_caught_only_by_a_trusted_head(
    filled: Ledger, sql: Connection, signing_key: Path, make
) -> None:
    trusted = filled.checkpoint_at(8)
    # The partner rewrites entry 2, recomputes every hash, drops its old heads and signs a new one.
    _edit(sql, 2, fix_leaf_hash=True)
    leaves = list(sql.execute(text("SELECT leaf_hash FROM log_entries ORDER BY idx")).scalars())
    frontier = merkle.TreeFrontier()
    frontier.extend(leaves)
    head = cp.sign_checkpoint(make.origin, N, frontier.root(), cp.load_signing_key(signing_key))
    sql.execute(text("DELETE FROM signed_heads"))
    sql.execute(
        text("INSERT INTO signed_heads (size, root_hash, note, frontier, created_at) VALUES (:s, :r, :n, :f, :c)"),
        {"s": N, "r": head.root_hash, "n": head.note, "f": frontier.to_bytes(), "c": datetime.now(UTC)},
    )
    sql.commit()
    assert filled.verify().ok  # signed with the right key: the stored head alone cannot tell
    report = filled.verify(trusted=trusted)
    assert not report.ok and report.failure == "consistency"
    assert "trusted head of size 8" in report.message


def test_unchanged_log_is_consistent_with_an_older_trusted_head(filled: Ledger, make) -> None:
    trusted = filled.checkpoint_at(4)
    filled.append([make.consent(100)])
    report = filled.verify(trusted=trusted)
    assert report.ok and report.trusted_size == 4 and report.checked_size == N + 1


def test_forged_head_row_is_reported_as_a_bad_head(filled: Ledger, sql: Connection) -> None:
    sql.execute(text("UPDATE signed_heads SET root_hash = :r WHERE size = 5"), {"r": b"\x00" * 32})
    sql.commit()
    report = filled.verify()
    assert not report.ok and report.failure == "head" and "size 5" in report.message


def test_edited_newest_head_fails_its_signature(filled: Ledger, sql: Connection) -> None:
    note = sql.execute(text("SELECT note FROM signed_heads WHERE size = :s"), {"s": N}).scalar_one()
    sql.execute(text("UPDATE signed_heads SET note = :n WHERE size = :s"), {"n": note.replace(f"\n{N}\n", f"\n{N + 1}\n"), "s": N})
    sql.commit()
    report = filled.verify()
    assert not report.ok and report.failure == "signature"


def test_within_one_batch_the_first_unproven_index_is_named(ledger: Ledger, sql: Connection, make) -> None:
    ledger.append([make.consent(n) for n in range(3)])
    ledger.append([make.consent(n) for n in range(3, 9)])  # one head covers 3..8
    _edit(sql, 6, fix_leaf_hash=True)
    sql.commit()
    report = ledger.verify()
    # One signature over the batch cannot tell which of its entries changed: the batch start is named.
    assert not report.ok and report.first_bad_index == 3 and "entries 3..8" in report.message
