"""The block-wise full verification (``verify_log``) gives the reference's verdict on every tamper.

A SQLite ledger of 40 consent receipts (one signed head per append of 3), a usage record
with its subject set, a key rotation and an erasure is verified with blocks of 4 entries,
so plain consent blocks take the fast path and the blocks holding other records go entry
by entry. Each case tampers with the database by raw SQL (some re-sign the rewritten log
with the partner's key, so only the per-entry text checks can tell) and asserts that
``Ledger.verify`` reports exactly what the reference ``bundle.check_log`` reports: ok,
failure class, first bad index, message, sizes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedcrm.consent import checkpoint as cp
from fedcrm.consent import ledger as ledger_module
from fedcrm.consent import merkle, verify_log
from fedcrm.consent.bundle import VerificationReport
from fedcrm.consent.cli_log import register
from fedcrm.consent import verify_blocks
from fedcrm.consent.events import SALT_BYTES, canonical_json, subject_fingerprint
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import LedgerIntegrityError
from tests.raw_sql import raw_sql, rewrite_members

N_CONSENTS = 40


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def world(url: str, signing_key: Path, make, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    monkeypatch.setattr(verify_log, "BLOCK", 4)
    led = Ledger.open(url, signing_key_path=signing_key, origin=make.origin)
    for lo in range(0, N_CONSENTS, 3):
        led.append([make.consent(n, "withdraw" if n % 7 == 3 else "grant") for n in range(lo, min(lo + 3, N_CONSENTS))])
    subjects = [make.pseudonym(n) for n in range(10)]
    usage = make.usage(subjects)
    with led.transaction() as txn:
        txn.append([usage])
        txn.store_subject_set(subject_fingerprint(subjects), subjects)
    led.record_key_rotation({make.pseudonym(n): make.pseudonym(n, key_id="99887766") for n in (1, 2)}, "0a1b2c3d", "99887766")
    led.append([make.consent(n) for n in range(100, 110)])  # plain consent blocks after the other records
    led.erase_subject(make.pseudonym(5))
    yield led
    led.close()


@pytest.fixture
def sql(url: str) -> Iterator[Callable[..., list]]:
    with raw_sql(url) as run:
        yield run


def reference(led: Ledger, trusted: object = None) -> VerificationReport:
    with led._engine.connect() as conn, conn.begin():
        return led._verify_on(conn, trusted, fast=False)


def fast_verdicts(monkeypatch: pytest.MonkeyPatch) -> list[VerificationReport | None]:
    """What verify_sqlite itself returned on each call (None: it left the verdict to the reference)."""
    seen: list[VerificationReport | None] = []
    real = ledger_module.verify_sqlite

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(ledger_module, "verify_sqlite", spy)
    return seen


def _leaf(sql: Callable[..., list], idx: int) -> str:
    return sql("SELECT public_json FROM log_entries WHERE idx = :i", i=idx)[0][0]


def _set_text(sql: Callable[..., list], idx: int, new: str, *, fix_hash: bool) -> None:
    sql("UPDATE log_entries SET public_json = :p WHERE idx = :i", p=new, i=idx)
    if fix_hash:
        sql("UPDATE log_entries SET leaf_hash = :h WHERE idx = :i", h=merkle.hash_leaf(new.encode()), i=idx)


def _resign(sql: Callable[..., list], signing_key: Path, origin: str) -> None:
    """What the partner itself could do: recompute every leaf hash, drop the old heads, sign one new head."""
    for idx, public in sql("SELECT idx, public_json FROM log_entries ORDER BY idx"):
        sql("UPDATE log_entries SET leaf_hash = :h WHERE idx = :i", h=merkle.hash_leaf(public.encode()), i=idx)
    leaves = [r[0] for r in sql("SELECT leaf_hash FROM log_entries ORDER BY idx")]
    frontier = merkle.TreeFrontier()
    frontier.extend(leaves)
    head = cp.sign_checkpoint(origin, len(leaves), frontier.root(), cp.load_signing_key(signing_key))
    sql("DELETE FROM signed_heads")
    sql("INSERT INTO signed_heads (size, root_hash, note, frontier, created_at) VALUES (:s, :r, :n, :f, :c)",
        s=len(leaves), r=head.root_hash, n=head.note, f=frontier.to_bytes(), c=datetime.now(UTC))


def _swap(sql: Callable[..., list], table: str, a: int, b: int) -> None:
    for x, y in ((a, -1), (b, a), (-1, b)):
        sql(f"UPDATE {table} SET idx = :y WHERE idx = :x", x=x, y=y)


def _edit_json(sql: Callable[..., list], idx: int, change: Callable[[dict], dict], *, fix_hash: bool) -> None:
    _set_text(sql, idx, canonical_json(change(json.loads(_leaf(sql, idx)))), fix_hash=fix_hash)


TAMPERS: dict[str, Callable[..., None]] = {
    "edited text": lambda sql, **_: _edit_json(sql, 9, lambda d: d | {"action": "grant"}, fix_hash=False),
    "edited text, leaf hash fixed": lambda sql, **_: _edit_json(sql, 9, lambda d: d | {"action": "grant"}, fix_hash=True),
    "deleted entry": lambda sql, **_: sql("DELETE FROM log_entries WHERE idx = 13"),
    "entries swapped": lambda sql, **_: (_swap(sql, "log_entries", 2, 6), _swap(sql, "personal_payloads", 2, 6)),
    "payloads swapped": lambda sql, **_: _swap(sql, "personal_payloads", 20, 21),
    "payload value edited": lambda sql, make, **_: sql("UPDATE personal_payloads SET value = :v WHERE idx = 17",
                                                       v=make.pseudonym(999)),
    "payload deleted": lambda sql, **_: sql("DELETE FROM personal_payloads WHERE idx = 30"),
    "payload of another field added": lambda sql, **_: sql(
        "INSERT INTO personal_payloads (idx, field, salt, value) VALUES (12, 'email', :s, 'x@y')", s=b"\x00" * 32),
    "payload salt shortened": lambda sql, **_: sql("UPDATE personal_payloads SET salt = substr(salt, 1, 31) WHERE idx = 8"),
    # ||'s result is TEXT: the salt is stored as text from then on (SQLite keeps whatever type it is given).
    "a byte moved from value to salt": lambda sql, **_: sql(
        "UPDATE personal_payloads SET salt = salt || CAST(substr(value, 1, 1) AS BLOB), value = substr(value, 2) "
        "WHERE idx = 16"),
    "kind column edited": lambda sql, **_: sql("UPDATE log_entries SET kind = 'usage' WHERE idx = 22"),
    "fingerprint set on a consent": lambda sql, **_: sql("UPDATE log_entries SET fingerprint = :f WHERE idx = 25", f="ab" * 32),
    "leaf hash of another entry": lambda sql, **_: sql(
        "UPDATE log_entries SET leaf_hash = (SELECT leaf_hash FROM log_entries WHERE idx = 4) WHERE idx = 5"),
    "head root forged": lambda sql, **_: sql("UPDATE signed_heads SET root_hash = :r WHERE size = 12", r=b"\x01" * 32),
    "head frontier altered": lambda sql, **_: sql("UPDATE signed_heads SET frontier = :f WHERE size = 9", f=b"\x02" * 64),
    "head deleted": lambda sql, **_: sql("DELETE FROM signed_heads WHERE size = 15"),
    "log truncated": lambda sql, **_: sql("DELETE FROM log_entries WHERE idx >= 50"),
    "entry added beyond the head": lambda sql, **_: sql(
        "INSERT INTO log_entries (idx, kind, public_json, leaf_hash, fingerprint) "
        "SELECT idx + 1000, kind, public_json, leaf_hash, fingerprint FROM log_entries WHERE idx = 0"),
    "subject set member deleted": lambda sql, make, **_: rewrite_members(
        sql, lambda members: [m for m in members if m != make.pseudonym(7)]),
    "rotation row edited": lambda sql, make, **_: sql(
        "UPDATE key_rotations SET new_pseudonym = :n WHERE old_pseudonym = :o",
        n=make.pseudonym(77, key_id="99887766"), o=make.pseudonym(1)),
    "erased payload restored": lambda sql, **_: sql(
        "INSERT INTO personal_payloads (idx, field, salt, value) SELECT 5, 'subject', salt, value "
        "FROM personal_payloads WHERE idx = 6"),
    "raw CRLF, re-signed": lambda sql, key, origin, **_: (
        _set_text(sql, 10, _leaf(sql, 10).replace('","', '",\r\n"', 1), fix_hash=False), _resign(sql, key, origin)),
    "index of another entry, re-signed": lambda sql, key, origin, **_: (
        _edit_json(sql, 11, lambda d: d | {"index": 12}, fix_hash=False), _resign(sql, key, origin)),
    "index as the last key, re-signed": lambda sql, key, origin, **_: (
        _set_text(sql, 14, _leaf(sql, 14).replace('"index":14,', "", 1)[:-1] + ',"index":14}', fix_hash=False),
        _resign(sql, key, origin)),
    "second kind key, re-signed": lambda sql, key, origin, **_: (
        _set_text(sql, 18, _leaf(sql, 18).replace('{"action"', '{"kind":"usage","action"', 1), fix_hash=False),
        _resign(sql, key, origin)),
    "kind removed, re-signed": lambda sql, key, origin, **_: (
        _set_text(sql, 19, _leaf(sql, 19).replace('"kind":"consent",', "", 1), fix_hash=False), _resign(sql, key, origin)),
    "salted hash moved, re-signed": lambda sql, key, origin, **_: (
        _edit_json(sql, 21, lambda d: d | {"zz": "1"}, fix_hash=False), _resign(sql, key, origin)),
    "salted hash key renamed, re-signed": lambda sql, key, origin, **_: (
        _set_text(sql, 23, _leaf(sql, 23).replace('"subject_salted_sha256"', '"subject_salted_sha25"', 1), fix_hash=False),
        _resign(sql, key, origin)),
    "entry rewritten and re-signed": lambda sql, key, origin, **_: (
        _edit_json(sql, 26, lambda d: d | {"action": "grant"}, fix_hash=False), _resign(sql, key, origin)),
}


def test_the_block_check_knows_the_ledgers_salt_length() -> None:
    assert verify_blocks.SALT_BYTES == SALT_BYTES


def test_the_untampered_log_is_vouched_for_by_the_fast_path(world: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fast_verdicts(monkeypatch)
    report = world.verify()
    assert report.ok and report == reference(world)
    assert seen == [report]  # decided by verify_sqlite, not handed to the reference
    trusted = world.checkpoint_at(21)
    assert world.verify(trusted=trusted) == reference(world, trusted) and seen[-1] is not None and seen[-1].ok


def test_two_processes_join_their_subtrees_to_the_same_verdict(world: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_log, "BLOCK", 2)  # ranges of two blocks, heads (every 3 entries) inside them
    seen = fast_verdicts(monkeypatch)
    assert verify_log._ranges(world.tree_size(), 2, 2)[:2] == [(0, 4), (4, 8)]  # aligned perfect subtrees
    report = world.verify(workers=2)
    assert report.ok and report == reference(world) and seen == [report]


def test_plain_consent_blocks_take_the_fast_route(world: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    routes: list[bool] = []
    real = verify_log.plain_block
    monkeypatch.setattr(verify_log, "plain_block", lambda *a: routes.append(real(*a) is not None) or real(*a))
    assert world.verify().ok
    # 40 consents, usage, rotation, 10 consents, erasure: the blocks holding other records (and the
    # erased consent 5) go entry by entry, the plain ones in one piece.
    assert routes.count(True) >= 8 and routes.count(False) >= 2, routes


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_a_tampered_log_gets_the_reference_verdict(
    case: str, world: Ledger, sql, signing_key: Path, make, monkeypatch: pytest.MonkeyPatch
) -> None:
    trusted = world.checkpoint_at(21)
    TAMPERS[case](sql, make=make, key=signing_key, origin=make.origin)
    seen = fast_verdicts(monkeypatch)
    for held in (None, trusted):
        want = reference(world, held)
        assert world.verify(trusted=held) == want, case
    assert world.verify(workers=2) == reference(world), case  # ranges of 16 entries in two processes
    assert len(seen) == 3


def _history_both_ways(led: Ledger, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """The gate's read through the block check, and through the reference alone (each a History or the error)."""
    def read() -> object:
        with led._engine.connect() as conn, conn.begin():
            try:
                history = led._signed_history(conn)
            except LedgerIntegrityError as exc:
                return ("refused", str(exc))
        return (history.consents, sorted(history.graph.aliases(history.consents[-1][1].subject)), history.suppressed)

    fast = read()
    with monkeypatch.context() as m:
        m.setattr(verify_log, "verify_sqlite", lambda *a, **k: None)
        ref = read()
    return fast, ref


def test_the_gates_read_takes_the_block_route_and_reads_what_the_reference_reads(
    world: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes: list[bool] = []
    real = verify_log.plain_block

    def spy(*args):  # type: ignore[no-untyped-def]
        leaves = real(*args)  # once: a plain block also appends its consents to the list it is given
        routes.append(leaves is not None)
        return leaves

    monkeypatch.setattr(verify_log, "plain_block", spy)
    fast, ref = _history_both_ways(world, monkeypatch)
    assert routes.count(True) >= 8, routes  # plain consent blocks read in one piece
    assert fast[0] != "refused" and fast == ref
    assert len(fast[0]) == N_CONSENTS + 10 - 1  # every consent but the erased subject's


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_the_gates_read_of_a_tampered_log_is_the_references(
    case: str, world: Ledger, sql, signing_key: Path, make, monkeypatch: pytest.MonkeyPatch
) -> None:
    TAMPERS[case](sql, make=make, key=signing_key, origin=make.origin)
    fast, ref = _history_both_ways(world, monkeypatch)
    assert fast == ref, case


def test_cli_verify_with_workers_says_ok_then_names_the_first_bad_index(world: Ledger, url: str, sql, make) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner(env={"COLUMNS": "240"})
    result = runner.invoke(app, ["verify", "--ledger", url, "--workers", "2"])
    assert result.exit_code == 0 and "OK" in result.output, result.output
    TAMPERS["payload value edited"](sql, make=make)
    result = runner.invoke(app, ["verify", "--ledger", url, "--workers", "2"])
    assert result.exit_code == 1 and "first bad index 17" in result.output, result.output
    assert runner.invoke(app, ["verify", "--ledger", url, "--workers", "0"]).exit_code == 2
