"""Thirty-odd direct database tampers on a real partner ledger, each with its exact verdict.

Every class of stored data is attacked with raw SQL, as someone with database access
(and, where said, the partner's own signing key) would: edits inside the Merkle tree,
history rewrites caught only by a head held outside, and every table outside the tree
(kinds, fingerprints, payloads, subject sets, key rotations, signed heads, frontiers,
the stored key). Each case asserts the verdict (failure class), the first bad index and
the table named; the cases that once revived a withdrawn customer also run the real
gate and assert the customer stays out (the gate refuses the history).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fedcrm.consent import checkpoint as cp
from fedcrm.consent import merkle
from fedcrm.consent.bundle import export_bundle, verify_bundle
from fedcrm.consent.cli_log import register
from fedcrm.consent.events import canonical_json
from fedcrm.consent.gate import UsageContext, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.verified import forget as forget_verified
from fedcrm.consent.subject import subject_report
from fedcrm.errors import LedgerIntegrityError
from tests.raw_sql import raw_sql, rewrite_members

OLD, NEW = "0a1b2c3d", "99887766"
CATEGORY = "user.behavior.service_subscription"
AT = datetime(2025, 1, 2, tzinfo=UTC)
WITHDRAWN = 3  # subject 3 objected: index 5 of the world below


def run_gate(ledger: Ledger, subjects: list[str]) -> frozenset[str]:
    """The real gate over a frame of these subjects (churn_prediction is opt-out: only objectors are left out)."""
    frame = pd.DataFrame({"subject": subjects, "tenure": range(len(subjects))})
    view = gate(frame, {"tenure": CATEGORY}, "churn_prediction", AT, ["tenure"], ledger=ledger,
                use=UsageContext(job_id="job", partner="partner-a", model_version="job:1", stage="fit"))
    return view.subjects


@pytest.fixture
def sql(ledger_url: str) -> Iterator[Callable[..., list]]:
    """Run raw SQL behind the ledger's back, each statement committed at once."""
    with raw_sql(ledger_url) as run:
        yield run


@pytest.fixture
def world(ledger: Ledger, make) -> SimpleNamespace:
    """Grants for subjects 1-5 (entries 0-4, one signed head each), subject 3 objects (entry 5),
    then one gated run (usage entry 6, subject set {1, 2, 4, 5})."""
    for n in range(1, 6):
        ledger.append([make.consent(n)])
    ledger.append([make.consent(WITHDRAWN, "withdraw", minutes=5)])
    subjects = [make.pseudonym(n) for n in range(1, 6)]
    assert run_gate(ledger, subjects) == frozenset(subjects) - {make.pseudonym(WITHDRAWN)}
    assert ledger.tree_size() == 7 and ledger.verify().ok
    return SimpleNamespace(ledger=ledger, subjects=subjects, withdrawn=make.pseudonym(WITHDRAWN), trusted=ledger.latest_checkpoint())


def verdict(ledger: Ledger, failure: str, index: int | None, fragment: str, **kw: object) -> None:
    report = ledger.verify(**kw)
    assert not report.ok, "the tamper went unnoticed"
    assert (report.failure, report.first_bad_index) == (failure, index), report.message
    assert fragment in report.message, report.message


def gate_refuses(world: SimpleNamespace) -> None:
    """The withdrawn customer stays out.

    This process proved the log before the tamper (the world's gate): its gate decides on that proven
    copy, or refuses. A new process holds no proven copy: its gate refuses a history verify rejects.
    """
    try:
        assert world.withdrawn not in run_gate(world.ledger, world.subjects)
    except LedgerIntegrityError:
        pass
    forget_verified()  # what a new process starts with
    with pytest.raises(LedgerIntegrityError, match="does not verify"):
        run_gate(world.ledger, world.subjects)


def _leaf(sql: Callable[..., list], idx: int) -> dict:
    return json.loads(sql("SELECT public_json FROM log_entries WHERE idx = :i", i=idx)[0][0])


def _set_leaf(sql: Callable[..., list], idx: int, data: dict, *, fix_hash: bool) -> None:
    new = canonical_json(data)
    sql("UPDATE log_entries SET public_json = :p WHERE idx = :i", p=new, i=idx)
    if fix_hash:
        sql("UPDATE log_entries SET leaf_hash = :h WHERE idx = :i", h=merkle.hash_leaf(new.encode()), i=idx)


# --- 1. edits inside the tree ---------------------------------------------------------------


def test_withdrawal_turned_into_a_grant_is_named(world, sql) -> None:
    _set_leaf(sql, 5, _leaf(sql, 5) | {"action": "grant"}, fix_hash=False)
    verdict(world.ledger, "entry", 5, "stored leaf hash")
    gate_refuses(world)


def test_withdrawal_turned_into_a_grant_with_its_leaf_hash_recomputed_is_named_by_the_heads(world, sql) -> None:
    _set_leaf(sql, 5, _leaf(sql, 5) | {"action": "grant"}, fix_hash=True)
    verdict(world.ledger, "entry", 5, "signed head of size 6")
    gate_refuses(world)


def test_deleted_withdrawal_row_is_missing(world, sql) -> None:
    sql("DELETE FROM log_entries WHERE idx = 5")
    verdict(world.ledger, "entry", 5, "entry 5 is missing")
    gate_refuses(world)


def test_swapped_rows_are_reordered(world, sql) -> None:
    for a, b in ((2, -1), (5, 2), (-1, 5)):
        for table in ("log_entries", "personal_payloads"):
            sql(f"UPDATE {table} SET idx = :b WHERE idx = :a", a=a, b=b)
    verdict(world.ledger, "entry", 2, "reordered")
    gate_refuses(world)


def test_withdrawal_moved_to_another_customer_by_its_payload(world, sql, make) -> None:
    sql("UPDATE personal_payloads SET value = :v WHERE idx = 5", v=make.pseudonym(9))
    verdict(world.ledger, "entry", 5, "salted hash")
    gate_refuses(world)


def test_edited_payload_salt(world, sql) -> None:
    sql("UPDATE personal_payloads SET salt = :s WHERE idx = 5", s=b"\x00" * 32)
    verdict(world.ledger, "entry", 5, "salted hash")
    gate_refuses(world)


def test_withdrawal_moved_to_another_pseudonym_by_shifting_a_byte_from_value_to_salt(world, sql) -> None:
    # salt || value stays byte for byte the same, so its salted hash still matches the leaf, and the
    # objection would apply to a pseudonym nobody has: only the salt's length (always events.SALT_BYTES)
    # tells that the stored subject is not the one logged.
    [(salt, value)] = sql("SELECT salt, value FROM personal_payloads WHERE idx = 5")
    sql("UPDATE personal_payloads SET salt = :s, value = :v WHERE idx = 5", s=salt + value[:1].encode(), v=value[1:])
    verdict(world.ledger, "entry", 5, "salt of 33 bytes")
    verdict(world.ledger, "entry", 5, "salt of 33 bytes", workers=2)
    gate_refuses(world)


def test_edited_leaf_hash_column(world, sql) -> None:
    sql("UPDATE log_entries SET leaf_hash = :h WHERE idx = 2", h=b"\x11" * 32)
    verdict(world.ledger, "entry", 2, "stored leaf hash")
    gate_refuses(world)


def test_edited_usage_record(world, sql) -> None:
    _set_leaf(sql, 6, _leaf(sql, 6) | {"n_subjects": 5}, fix_hash=True)
    verdict(world.ledger, "entry", 6, "signed head of size 7")


def test_truncated_log(world, sql) -> None:
    sql("DELETE FROM personal_payloads WHERE idx >= 5")
    sql("DELETE FROM log_entries WHERE idx >= 5")
    verdict(world.ledger, "truncated", 5, "log ends at 5")
    with pytest.raises(LedgerIntegrityError, match="log ends at index 4"):
        run_gate(world.ledger, world.subjects)


def test_entry_slipped_in_after_the_newest_head(world, sql) -> None:
    row = sql("SELECT kind, public_json, leaf_hash FROM log_entries WHERE idx = 0")[0]
    sql("INSERT INTO log_entries (idx, kind, public_json, leaf_hash) VALUES (7, :k, :p, :h)", k=row[0], p=row[1], h=row[2])
    verdict(world.ledger, "entry", 7, "not covered by the newest signed head")
    with pytest.raises(LedgerIntegrityError, match="log ends at index 7"):
        run_gate(world.ledger, world.subjects)


def test_payload_added_to_a_usage_record(world, sql, make) -> None:
    sql("INSERT INTO personal_payloads (idx, field, salt, value) VALUES (6, 'subject', :s, :v)",
        s=b"\x01" * 32, v=make.pseudonym(1))
    verdict(world.ledger, "entry", 6, "salted hash")


# --- 2. history rewritten with the partner's own key: only a head held outside tells ------------


def _resign(sql: Callable[..., list], signing_key: Path, origin: str, *, keep_old_heads: bool) -> None:
    leaves = [r[0] for r in sql("SELECT leaf_hash FROM log_entries ORDER BY idx")]
    frontier = merkle.TreeFrontier()
    frontier.extend(leaves)
    head = cp.sign_checkpoint(origin, len(leaves), frontier.root(), cp.load_signing_key(signing_key))
    sql("DELETE FROM signed_heads" + (" WHERE size = :s" if keep_old_heads else ""), s=len(leaves))
    sql("INSERT INTO signed_heads (size, root_hash, note, frontier, created_at) VALUES (:s, :r, :n, :f, :c)",
        s=len(leaves), r=head.root_hash, n=head.note, f=frontier.to_bytes(), c=datetime.now(UTC))


def test_rewritten_withdrawal_resigned_is_caught_by_the_trusted_head(world, sql, signing_key, make) -> None:
    _set_leaf(sql, 5, _leaf(sql, 5) | {"action": "grant"}, fix_hash=True)
    _resign(sql, signing_key, make.origin, keep_old_heads=False)
    assert world.ledger.verify().ok  # internally consistent: the partner's key signed it
    verdict(world.ledger, "consistency", None, "trusted head of size 7", trusted=world.trusted)


def test_rewrite_resigned_but_old_heads_kept_is_named_without_a_trusted_head(world, sql, signing_key, make) -> None:
    _set_leaf(sql, 5, _leaf(sql, 5) | {"action": "grant"}, fix_hash=True)
    _resign(sql, signing_key, make.origin, keep_old_heads=True)
    verdict(world.ledger, "entry", 5, "signed head of size 6")


def test_truncation_with_heads_removed_is_caught_by_the_trusted_head(world, sql) -> None:
    sql("DELETE FROM personal_payloads WHERE idx >= 5")
    sql("DELETE FROM log_entries WHERE idx >= 5")
    sql("DELETE FROM signed_heads WHERE size > 5")
    verdict(world.ledger, "derived", None, "belong to no usage record")  # the cut usage record's subject set is left over
    sql("DELETE FROM subject_set_chunks")  # a thorough attacker removes that too
    assert world.ledger.verify().ok
    verdict(world.ledger, "truncated", 5, "trusted head has size 7", trusted=world.trusted)


def test_rewrite_resigned_is_caught_in_the_bundle_by_the_trusted_head(world, sql, signing_key, make, tmp_path) -> None:
    _set_leaf(sql, 5, _leaf(sql, 5) | {"action": "grant"}, fix_hash=True)
    _resign(sql, signing_key, make.origin, keep_old_heads=False)
    export_bundle(world.ledger, tmp_path / "b")
    assert verify_bundle(tmp_path / "b").ok
    report = verify_bundle(tmp_path / "b", trusted=world.trusted)
    assert (report.ok, report.failure, report.first_bad_index) == (False, "consistency", None), report.message


def test_honest_growth_stays_consistent_with_the_trusted_head(world, make) -> None:
    world.ledger.append([make.consent(8)])
    assert world.ledger.verify(trusted=world.trusted).ok


# --- 3. tables outside the tree ---------------------------------------------------------------


def test_withdrawal_relabelled_as_usage_in_the_kind_column(world, sql) -> None:
    sql("UPDATE log_entries SET kind = 'usage' WHERE idx = 5")  # once brought the objector back
    verdict(world.ledger, "derived", 5, "log_entries row 5: column kind")
    gate_refuses(world)


def test_grant_relabelled_as_a_refusal(world, sql) -> None:
    sql("UPDATE log_entries SET kind = 'refusal' WHERE idx = 1")
    verdict(world.ledger, "derived", 1, "column kind")


def test_usage_relabelled_as_consent(world, sql) -> None:
    sql("UPDATE log_entries SET kind = 'consent' WHERE idx = 6")
    verdict(world.ledger, "derived", 6, "column kind")


def test_deleted_withdrawal_payload(world, sql) -> None:
    sql("DELETE FROM personal_payloads WHERE idx = 5")  # once cancelled the objection silently
    verdict(world.ledger, "derived", 5, "personal_payloads: consent entry 5 has no subject payload")
    gate_refuses(world)


def test_deleted_grant_payload(world, sql) -> None:
    sql("DELETE FROM personal_payloads WHERE idx = 0")
    verdict(world.ledger, "derived", 0, "no erasure entry")


def test_inserted_key_rotation_row(world, sql, make) -> None:
    # Maps the objector's pseudonym to a fresh one: its withdrawal would follow the alias away.
    sql("INSERT INTO key_rotations (old_pseudonym, new_pseudonym, old_key_id, new_key_id) VALUES (:o, :n, :a, :b)",
        o=world.withdrawn, n=make.pseudonym(WITHDRAWN, key_id=NEW), a=OLD, b=NEW)
    verdict(world.ledger, "derived", None, "log records no such rotation")
    gate_refuses(world)


def test_inserted_key_rotation_row_with_foreign_key_ids(world, sql, make) -> None:
    sql("INSERT INTO key_rotations (old_pseudonym, new_pseudonym, old_key_id, new_key_id) VALUES (:o, :n, :a, :b)",
        o=world.withdrawn, n=make.pseudonym(WITHDRAWN, key_id=NEW), a=NEW, b=OLD)
    verdict(world.ledger, "derived", None, "not of keys")
    gate_refuses(world)


def test_usage_fingerprint_column_cleared(world, sql) -> None:
    sql("UPDATE log_entries SET fingerprint = NULL WHERE idx = 6")
    verdict(world.ledger, "derived", 6, "column fingerprint")


def test_fingerprint_column_set_on_a_consent_row(world, sql) -> None:
    fp = sql("SELECT fingerprint FROM log_entries WHERE idx = 6")[0][0]
    sql("UPDATE log_entries SET fingerprint = :f WHERE idx = 2", f=fp)
    verdict(world.ledger, "derived", 2, "column fingerprint")


def test_deleted_subject_set_row_and_the_subject_answer_says_so(world, sql, make) -> None:
    rewrite_members(sql, lambda members: [m for m in members if m != make.pseudonym(1)])
    verdict(world.ledger, "derived", 6, "subject set of usage entry 6")
    answer = subject_report(world.ledger, make.pseudonym(1))
    assert answer.uses == () and answer.log_verifies is False and "subject_sets" in answer.verification


def test_added_subject_set_row_for_the_excluded_customer(world, sql) -> None:
    fp = sql("SELECT fingerprint FROM log_entries WHERE idx = 6")[0][0]
    rewrite_members(sql, lambda members: sorted([*members, world.withdrawn]), fp)
    verdict(world.ledger, "derived", 6, "(5 members) does not match the fingerprint its leaf logged (4 members)")
    answer = subject_report(world.ledger, world.withdrawn)
    assert len(answer.uses) == 1 and answer.log_verifies is False


def test_edited_subject_set_member(world, sql, make) -> None:
    rewrite_members(sql, lambda members: sorted(make.pseudonym(9) if m == make.pseudonym(2) else m for m in members))
    verdict(world.ledger, "derived", 6, "subject set of usage entry 6")


def test_subject_set_moved_to_another_fingerprint(world, sql) -> None:
    sql("UPDATE subject_set_chunks SET fingerprint = :f", f="ab" * 32)
    verdict(world.ledger, "derived", None, "belong to no usage record")


def test_whole_subject_set_deleted(world, sql) -> None:
    sql("DELETE FROM subject_set_chunks")
    verdict(world.ledger, "derived", 6, "is missing")


def test_corrupted_newest_frontier_blocks_appends_instead_of_signing_a_wrong_head(world, sql, make) -> None:
    blob = sql("SELECT frontier FROM signed_heads WHERE size = 7")[0][0]
    sql("UPDATE signed_heads SET frontier = :f WHERE size = 7", f=bytes([blob[0] ^ 1]) + blob[1:])
    verdict(world.ledger, "head", None, "signed_heads row of size 7: its stored frontier was altered")
    with pytest.raises(LedgerIntegrityError, match="stored frontier does not match the signed root"):
        world.ledger.append([make.consent(9)])
    with pytest.raises(LedgerIntegrityError, match="frontier"):
        run_gate(world.ledger, world.subjects)
    assert world.ledger.tree_size() == 7  # nothing signed on top of it


def test_corrupted_older_frontier(world, sql) -> None:
    sql("UPDATE signed_heads SET frontier = :f WHERE size = 3", f=b"\x00" * 64)
    verdict(world.ledger, "head", None, "signed_heads row of size 3: its stored frontier was altered")


def test_older_head_with_a_corrupted_signature(world, sql) -> None:
    note = sql("SELECT note FROM signed_heads WHERE size = 3")[0][0]
    body, sig = note.rsplit(" ", 1)
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    sql("UPDATE signed_heads SET note = :n WHERE size = 3", n=f"{body} {flipped}")
    verdict(world.ledger, "head", None, "signed_heads row of size 3 is bad")


def test_older_head_root_column_altered(world, sql) -> None:
    sql("UPDATE signed_heads SET root_hash = :r WHERE size = 4", r=b"\x00" * 32)
    verdict(world.ledger, "head", None, "signed_heads row of size 4 was altered")


def test_newest_head_note_edited(world, sql) -> None:
    note = sql("SELECT note FROM signed_heads WHERE size = 7")[0][0]
    sql("UPDATE signed_heads SET note = :n WHERE size = 7", n=note.replace("\n7\n", "\n8\n"))
    verdict(world.ledger, "signature", None, "")


def test_stored_key_swapped_and_everything_resigned_fails_against_the_pinned_key(world, sql, tmp_path, make, ledger_url) -> None:
    pinned = world.ledger.public_key_pem
    cp.generate_signing_key(tmp_path / "attacker.pem")
    attacker = cp.load_signing_key(tmp_path / "attacker.pem")
    sql("UPDATE ledger_meta SET value = :v WHERE key = 'public_key_pem'", v=cp.public_key_pem(attacker.public_key()).decode())
    for size, root in sql("SELECT size, root_hash FROM signed_heads"):
        sql("UPDATE signed_heads SET note = :n WHERE size = :s", s=size, n=cp.sign_checkpoint(make.origin, size, root, attacker).note)
    with Ledger.open(ledger_url) as reopened:
        assert reopened.verify().ok  # the database alone cannot tell whose key it is
    with Ledger.open(ledger_url, public_key_pem=pinned) as pinned_ledger:
        report = pinned_ledger.verify()
        assert (report.ok, report.failure) == (False, "signature"), report.message


# --- 4. key rotations: the stored mapping must be the logged one --------------------------------


@pytest.fixture
def rotated(ledger: Ledger, make) -> SimpleNamespace:
    """Subjects 1-3 grant under the old key, 2 objects, then the key rotates (entry 4); the gate reads new pseudonyms."""
    ledger.append([make.consent(1), make.consent(2), make.consent(3)])
    ledger.append([make.consent(2, "withdraw", minutes=5)])
    ledger.record_key_rotation({make.pseudonym(n): make.pseudonym(n, key_id=NEW) for n in (1, 2, 3)}, OLD, NEW)
    subjects = [make.pseudonym(n, key_id=NEW) for n in (1, 2, 3)]
    assert run_gate(ledger, subjects) == {subjects[0], subjects[2]}
    return SimpleNamespace(ledger=ledger, subjects=subjects, withdrawn=subjects[1])


def test_deleted_rotation_row_of_the_objector(rotated, sql, make) -> None:
    sql("DELETE FROM key_rotations WHERE old_pseudonym = :o", o=make.pseudonym(2))  # its new pseudonym had no history left
    verdict(rotated.ledger, "derived", 4, "stored mapping of rotation entry 4")
    gate_refuses(rotated)


def test_edited_rotation_row(rotated, sql, make) -> None:
    sql("UPDATE key_rotations SET new_pseudonym = :n WHERE old_pseudonym = :o",
        o=make.pseudonym(2), n=make.pseudonym(77, key_id=NEW))
    verdict(rotated.ledger, "derived", 4, "rotation entry 4")
    gate_refuses(rotated)


def test_extra_row_in_a_logged_rotation(rotated, sql, make) -> None:
    sql("INSERT INTO key_rotations (old_pseudonym, new_pseudonym, old_key_id, new_key_id) VALUES (:o, :n, :a, :b)",
        o=make.pseudonym(9), n=make.pseudonym(9, key_id=NEW), a=OLD, b=NEW)
    verdict(rotated.ledger, "derived", 4, "rotation entry 4")
    gate_refuses(rotated)


# --- 5. erasure: exactly the logged payloads may be missing -----------------------------------


def test_restored_payload_of_an_erased_subject(world, sql) -> None:
    saved = sql("SELECT idx, field, salt, value FROM personal_payloads WHERE idx = 5")[0]
    erased = world.ledger.erase_subject(world.withdrawn)
    assert world.ledger.verify().ok
    sql("INSERT INTO personal_payloads (idx, field, salt, value) VALUES (:i, :f, :s, :v)",
        i=saved[0], f=saved[1], s=saved[2], v=saved[3])
    verdict(world.ledger, "derived", 5, f"erasure entry {erased.index} erased it (payload restored)")


def test_payload_deleted_after_an_erasure_is_still_caught(world, sql) -> None:
    world.ledger.erase_subject(world.withdrawn)
    sql("DELETE FROM personal_payloads WHERE idx = 3")
    verdict(world.ledger, "derived", 3, "no erasure entry")


def test_subject_set_edited_after_an_erasure(world, sql, make) -> None:
    world.ledger.erase_subject(make.pseudonym(1))
    assert world.ledger.verify().ok  # the erasure logged what remains of the set
    rewrite_members(sql, lambda members: [m for m in members if m != make.pseudonym(2)])
    verdict(world.ledger, "derived", 6, "subject set of usage entry 6")


# --- 6. the exported bundle names the same first bad index ------------------------------------


def _bundle_lines(world: SimpleNamespace, tmp_path: Path) -> tuple[Path, list[str]]:
    out = tmp_path / "bundle"
    export_bundle(world.ledger, out)
    assert verify_bundle(out, trusted=world.trusted).ok
    return out, (out / "leaves.jsonl").read_text().split("\n")[:-1]


def _bundle_verdict(out: Path, failure: str, index: int | None, fragment: str) -> None:
    report = verify_bundle(out)
    assert (report.ok, report.failure, report.first_bad_index) == (False, failure, index), report.message
    assert fragment in report.message, report.message


def test_bundle_edit_at_leaf_5_is_index_5(world, tmp_path) -> None:
    out, lines = _bundle_lines(world, tmp_path)
    lines[5] = lines[5].replace('"action":"withdraw"', '"action":"grant"')
    (out / "leaves.jsonl").write_text("".join(line + "\n" for line in lines))
    _bundle_verdict(out, "entry", 5, "signed head of size 6")


def test_bundle_missing_leaf_is_a_missing_leaf(world, tmp_path) -> None:
    out, lines = _bundle_lines(world, tmp_path)
    del lines[5]
    (out / "leaves.jsonl").write_text("".join(line + "\n" for line in lines))
    _bundle_verdict(out, "entry", 5, "entry 5 is missing")


def test_bundle_with_crlf_leaves_is_refused(world, tmp_path) -> None:
    out, lines = _bundle_lines(world, tmp_path)
    (out / "leaves.jsonl").write_bytes("".join(line + "\r\n" for line in lines).encode())
    _bundle_verdict(out, "entry", 0, "raw line break")


def test_bundle_with_a_corrupted_older_head(world, tmp_path) -> None:
    out, _ = _bundle_lines(world, tmp_path)
    notes = [json.loads(line) for line in (out / "checkpoints.jsonl").read_text().splitlines()]
    notes[3] = notes[3].replace("\n3\n", "\n2\n")
    (out / "checkpoints.jsonl").write_text("".join(json.dumps(n) + "\n" for n in notes))
    _bundle_verdict(out, "signature", None, "signed head 3 of the bundle is bad")


def test_bundle_with_an_extra_leaf(world, tmp_path) -> None:
    out, lines = _bundle_lines(world, tmp_path)
    (out / "leaves.jsonl").write_text("".join(line + "\n" for line in [*lines, lines[0]]))
    _bundle_verdict(out, "entry", 7, "not covered by the newest signed head")


# --- 7. the command a compliance officer runs ------------------------------------------------


def test_cli_verify_exits_1_naming_the_table_and_row(world, sql, ledger_url) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner(env={"COLUMNS": "240"})
    assert runner.invoke(app, ["verify", "--ledger", ledger_url]).exit_code == 0
    sql("UPDATE log_entries SET kind = 'usage' WHERE idx = 5")
    result = runner.invoke(app, ["verify", "--ledger", ledger_url])
    assert result.exit_code == 1 and "first bad index 5" in result.output and "log_entries row 5" in result.output


def test_untouched_world_still_gates_and_verifies(world, make) -> None:
    # Positive control for every case above: same ledger, no tamper.
    assert world.withdrawn not in run_gate(world.ledger, world.subjects)
    assert world.ledger.verify(trusted=world.trusted).ok
    assert subject_report(world.ledger, make.pseudonym(1)).log_verifies is True

