"""Right to erasure as a logged, verifiable operation.

:func:`erase_subject` runs in ONE ledger transaction: it first verifies the whole log
(an erasure must not launder a tampered table into a fresh fingerprint), then deletes
every personal payload, subject-set row and rotation-mapping row of every pseudonym the
subject had, and appends an :class:`~fedcrm.consent.events.ErasureEvent` saying which
consent entries lost their payload, what remains of each touched subject set and
mapping (their new fingerprints), and the suppression hashes that keep the subject out
of every later gate under that key. ``verify`` then accepts exactly those payloads
missing; a payload deleted without such an event is a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, or_, select

from fedcrm.consent import checkpoint as cp
from fedcrm.consent import subject_sets
from fedcrm.consent.db import KeyRotation, LogEntry, PersonalPayload
from fedcrm.consent.events import ErasureEvent, leaf_kind, mapping_fingerprint, suppression_hash
from fedcrm.consent.verified import forget as forget_verified
from fedcrm.errors import LedgerIntegrityError

if TYPE_CHECKING:
    from fedcrm.consent.ledger import Ledger

__all__ = ["Erased", "ErasureRequest", "ErasureResult", "erase_subject"]

_E, _P, _K = LogEntry.__table__, PersonalPayload.__table__, KeyRotation.__table__
_CHUNK = 5000


@dataclass(frozen=True)
class ErasureResult:
    """What one erasure removed, and the signed head that logs it."""

    index: int
    payloads: int
    subject_sets: int
    rotation_rows: int
    pseudonyms: int
    checkpoint: cp.Checkpoint


class ErasureRequest(BaseModel):
    """Body of ``POST /subjects/{pseudonym}/erasure``."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$",
                            description="Your reference of the erasure request (logged; no personal data)")


class Erased(BaseModel):
    """What an erasure removed, and the entry that logs it."""

    index: int
    payloads: int
    subject_sets: int
    rotation_rows: int
    pseudonyms: int
    tree_size: int

    @classmethod
    def of(cls, done: ErasureResult) -> Erased:
        return cls(index=done.index, payloads=done.payloads, subject_sets=done.subject_sets,
                   rotation_rows=done.rotation_rows, pseudonyms=done.pseudonyms, tree_size=done.checkpoint.size)


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def erase_subject(ledger: Ledger, subject: str, *, request_id: str = "erasure") -> ErasureResult:
    """Erase one subject (every pseudonym across key rotations) and log it; returns what was removed.

    Raises :class:`LedgerIntegrityError` (and erases nothing) if the log does not verify.
    A subject the ledger never saw is still logged: its suppression hash keeps it out of
    later runs should it reappear in an export under the same key.
    """
    with ledger.transaction() as txn:
        conn = txn._conn
        report = ledger._verify_on(conn, None)
        if not report.ok:
            where = f" (first bad index {report.first_bad_index})" if report.first_bad_index is not None else ""
            raise LedgerIntegrityError(f"erasure refused: the consent log does not verify{where}: {report.message}")
        aliases = sorted(txn.history().graph.aliases(subject))
        erased: list[int] = []
        pairs: set[tuple[str, str]] = set()
        rotation_rows = 0
        for chunk in _chunks(aliases):
            erased += conn.execute(
                select(_P.c.idx).where((_P.c.field == "subject") & _P.c.value.in_(chunk))).scalars().all()
            touches = or_(_K.c.old_pseudonym.in_(chunk), _K.c.new_pseudonym.in_(chunk))
            pairs.update(conn.execute(select(_K.c.old_key_id, _K.c.new_key_id).where(touches)).tuples())
            conn.execute(delete(_P).where((_P.c.field == "subject") & _P.c.value.in_(chunk)))
            rotation_rows += conn.execute(delete(_K).where(touches)).rowcount
        fingerprints = subject_sets.remove_members(conn, aliases)
        sets = tuple((fp, *subject_sets.remaining(conn, fp)) for fp in sorted(fingerprints))
        rotations = []
        if pairs:
            for idx, leaf in conn.execute(select(_E.c.idx, _E.c.public_json).where(_E.c.kind == "key_rotation")):
                if leaf_kind(leaf) != "key_rotation":
                    continue
                pair = next((p for p in pairs if f'"old_key_id":"{p[0]}"' in leaf and f'"new_key_id":"{p[1]}"' in leaf), None)
                if pair is not None:
                    rows = conn.execute(select(_K.c.old_pseudonym, _K.c.new_pseudonym).where(
                        (_K.c.old_key_id == pair[0]) & (_K.c.new_key_id == pair[1]))).tuples().all()
                    rotations.append((idx, mapping_fingerprint(rows), len(rows)))
        event = ErasureEvent(
            request_id=request_id, at=datetime.now(UTC), erased_indices=tuple(sorted(erased)), subject_sets=sets,
            rotations=tuple(rotations), suppressed=tuple(sorted(suppression_hash(a) for a in aliases)),
        )
        index = txn.tree_size()
        txn.append([event])
    assert txn.checkpoint is not None
    forget_verified()  # this process's kept consent columns held the erased pseudonyms: the next gate reads anew
    return ErasureResult(index, len(erased), len(sets), rotation_rows, len(aliases), txn.checkpoint)
