"""The consent ledger: an append-only, verifiable log of consent and usage events in SQL.

Every append (or :meth:`Ledger.transaction`) runs in ONE database transaction that
writes the entries, their erasable personal payloads, and a new signed tree head
(checkpoint). Reads for the gate and subject requests go through the same object.
SQLite (embedded) and PostgreSQL (psycopg 3) are both supported; the schema is made
by the Alembic migrations shipped in ``fedcrm.consent.migrations``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, func, insert, select, text

from fedcrm.consent import checkpoint as cp
from fedcrm.consent import merkle, subject_sets
from fedcrm.consent.bundle import HeadRow, VerificationReport, check_log, coerce_trusted
from fedcrm.consent.db import (
    KeyRotation,
    LedgerMeta,
    LogEntry,
    PersonalPayload,
    SignedHead,
    make_engine,
    read_heads,
    stream_rows,
    upgrade_schema,
)
from fedcrm.consent.events import (
    ConsentEvent,
    KeyRotationEvent,
    PseudonymGraph,
    UsageEvent,
    event_adapter,
    from_leaf,
    mapping_fingerprint,
    pseudonym_key_id,
    to_leaf,
)
from fedcrm.consent.integrity import ConsentFacts, History, LogFacts, Problem, read_history
from fedcrm.consent.verified import VerifiedConsents, read_verified
from fedcrm.consent.verify_log import verify_sqlite
from fedcrm.errors import CheckpointError, ConsentError, LedgerIntegrityError, LedgerNotFound, SigningKeyError

if TYPE_CHECKING:
    from fedcrm.consent.erasure import ErasureResult

__all__ = ["Checkpoint", "Ledger", "LedgerTxn", "StoredEvent", "VerificationReport"]

Checkpoint = cp.Checkpoint
_CHUNK = 5000  # IN-list size: below SQLite's and Postgres's bound-parameter limits
_E, _P, _H = LogEntry.__table__, PersonalPayload.__table__, SignedHead.__table__
_K, _M = KeyRotation.__table__, LedgerMeta.__table__


@dataclass(frozen=True)
class StoredEvent:
    """An entry as read back: the event (personal values ``<erased>`` if erased) and its leaf hash."""

    index: int
    event: Any
    erased: bool
    leaf_hash: bytes


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class LedgerTxn:
    """One write transaction: reads see its own appends; the head is signed once, at commit."""

    def __init__(self, ledger: Ledger, conn: Connection) -> None:
        self._ledger, self._conn = ledger, conn
        row = conn.execute(select(_H.c.size, _H.c.note, _H.c.frontier).order_by(_H.c.size.desc()).limit(1)).one_or_none()
        if row is None:
            raise LedgerIntegrityError("the ledger has no signed head (database edited?)")
        self._frontier = ledger._checked_frontier(row.size, row.note, row.frontier)
        last = conn.execute(select(func.max(_E.c.idx))).scalar_one()
        if (-1 if last is None else last) != row.size - 1:
            # Never sign over entries nobody signed before, or on top of a truncated log.
            # (max, not count: O(log n) per append; gaps inside are verify's job.)
            raise LedgerIntegrityError(f"log ends at index {last} but its newest signed head has size {row.size}; run verify")
        self._dirty = False
        self.checkpoint: cp.Checkpoint | None = None

    def tree_size(self) -> int:
        """Entries in the log including this transaction's appends."""
        return self._frontier.size

    def consent_events(self, *, upto_size: int, subjects: Iterable[str] | None = None) -> list[tuple[int, ConsentFacts]]:
        """Consent events with index < ``upto_size`` (see :meth:`Ledger.consent_events`), as light records."""
        return self._ledger._consent_events(self.history(), upto_size, subjects)

    def history(self) -> History:
        """The whole log so far (this transaction's appends included), proven against the tree.

        Raises :class:`LedgerIntegrityError` naming the index if anything the gate reads
        disagrees with the signed tree (see :func:`fedcrm.consent.integrity.read_history`).
        """
        return read_history(self._conn, self._frontier.size, self._frontier.root())

    def verified(self) -> VerifiedConsents:
        """The consent history so far as the gate reads it (columns), proven against the tree.

        Like :meth:`history`, fail closed; in a long-lived process only the entries appended since
        this process last proved the log are read and hashed (``fedcrm.consent.verified``).
        """
        return read_verified(self._conn, self._frontier)

    def append(self, events: Sequence[Any]) -> None:
        """Append events (models or dicts) in order; nothing is written if one is invalid."""
        checked = []
        for pos, ev in enumerate(events):
            if not isinstance(ev, BaseModel):
                try:
                    ev = event_adapter.validate_python(ev)
                except ValidationError as exc:
                    raise ConsentError(f"event {pos} of the batch is invalid: {exc}") from exc
            checked.append(ev)
        entries, payloads = [], []
        for ev in checked:
            idx = self._frontier.size
            public, personal = to_leaf(idx, ev)
            leaf = merkle.hash_leaf(public.encode())
            self._frontier.push(leaf)
            fingerprint = ev.subject_fingerprint if isinstance(ev, UsageEvent) else None
            entries.append({"idx": idx, "kind": ev.kind, "public_json": public, "leaf_hash": leaf, "fingerprint": fingerprint})
            payloads += [{"idx": idx, "field": f, "salt": s, "value": v} for f, (s, v) in personal.items()]
        if entries:
            self._conn.execute(insert(_E), entries)
            self._dirty = True
        if payloads:
            self._conn.execute(insert(_P), payloads)

    def has_subject_set(self, fingerprint: str) -> bool:
        """Whether a subject set is stored under this fingerprint."""
        return subject_sets.is_stored(self._conn, fingerprint)

    def store_subject_set(self, fingerprint: str, subjects: pa.Array | Iterable[str]) -> None:
        """Store who a usage record included, once per fingerprint (erasable, outside the tree).

        An Arrow array must hold distinct pseudonyms already sorted (the gate's covered set).
        """
        subject_sets.store(self._conn, fingerprint, subjects)

    def _sign(self) -> None:
        if not self._dirty:
            return
        ledger = self._ledger
        if ledger._signing_key is None:
            raise SigningKeyError("this ledger was opened without a signing key; it cannot append")
        head = cp.sign_checkpoint(ledger.origin, self._frontier.size, self._frontier.root(), ledger._signing_key, ledger.key_name)
        self._conn.execute(
            insert(_H).values(
                size=head.size, root_hash=head.root_hash, note=head.note,
                frontier=self._frontier.to_bytes(), created_at=datetime.now(UTC),
            )
        )
        self.checkpoint = head


class Ledger:
    """A partner's consent log. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, engine: Any, origin: str, key_name: str, public_key: Any, signing_key: Any) -> None:
        self._engine = engine
        self.origin = origin
        self.key_name = key_name
        self._public_key = public_key
        self._signing_key = signing_key
        self._node_cache: dict[tuple[int, int], bytes] = {}

    # --- opening ---------------------------------------------------------------------

    @classmethod
    def open(
        cls, url: str | Path, *, signing_key_path: Path | None = None, origin: str | None = None,
        public_key_pem: bytes | None = None,
    ) -> Ledger:
        """Open (and with a signing key, create or migrate) the ledger at a SQLAlchemy URL or SQLite path.

        Without ``signing_key_path`` the ledger is read-only (verify, export, queries);
        ``public_key_pem`` then pins the key to verify with (else the stored one is used).
        """
        engine = make_engine(url)
        signing_key = cp.load_signing_key(signing_key_path) if signing_key_path is not None else None
        if not upgrade_schema(engine, create=signing_key is not None):
            engine.dispose()
            raise LedgerNotFound(f"{url}: no consent ledger there (no schema); open it with a signing key to create one")
        with engine.connect().execution_options(ledger_write=True) as conn, conn.begin():
            meta = dict(conn.execute(select(_M.c.key, _M.c.value)).tuples().all())
            if not meta:
                if signing_key is None or not origin:
                    raise LedgerNotFound(f"{url}: empty ledger; creating one needs a signing key and an origin")
                meta = {"origin": origin, "key_name": origin, "public_key_pem": cp.public_key_pem(signing_key.public_key()).decode()}
                conn.execute(insert(_M), [{"key": k, "value": v} for k, v in meta.items()])
                empty = merkle.TreeFrontier()
                head = cp.sign_checkpoint(origin, 0, empty.root(), signing_key, origin)
                conn.execute(insert(_H).values(size=0, root_hash=head.root_hash, note=head.note, frontier=b"", created_at=datetime.now(UTC)))
        if origin and meta["origin"] != origin:
            raise ConsentError(f"{url}: ledger origin is {meta['origin']!r}, not {origin!r}")
        stored_key = cp.load_public_key(meta["public_key_pem"].encode(), f"{url}: stored public key")
        if signing_key is not None and cp.public_key_pem(signing_key.public_key()) != cp.public_key_pem(stored_key):
            raise SigningKeyError(f"{signing_key_path}: not the key this ledger ({meta['origin']}) was created with")
        public_key = cp.load_public_key(public_key_pem, "given public key") if public_key_pem else stored_key
        return cls(engine, meta["origin"], meta["key_name"], public_key, signing_key)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def public_key_pem(self) -> bytes:
        """The key checkpoints are verified with (PEM)."""
        return cp.public_key_pem(self._public_key)

    @property
    def verifier(self) -> str:
        """The signed-note verifier string of the key."""
        return cp.verifier_string(self.key_name, self._public_key)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self._engine.dialect.name)

    # --- writing -----------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[LedgerTxn]:
        """A write transaction (serialised against other writers); the head is signed at commit."""
        with self._engine.connect().execution_options(ledger_write=True) as conn, conn.begin():
            if self.dialect == "postgresql":
                # One writer at a time: indexes are assigned from the newest head.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('fedcrm.consent.ledger'))"))
            txn = LedgerTxn(self, conn)
            yield txn
            txn._sign()

    def append(self, events: Sequence[Any]) -> cp.Checkpoint:
        """Append events and sign the new head, all in one transaction; returns the head."""
        with self.transaction() as txn:
            txn.append(events)
        return txn.checkpoint or self.latest_checkpoint()

    def record_key_rotation(self, mapping: dict[str, str], old_key_id: str, new_key_id: str) -> cp.Checkpoint:
        """Store the partner-local old -> new pseudonym mapping and log the rotation (once per key pair)."""
        for old, new in mapping.items():
            if pseudonym_key_id(old) != old_key_id or pseudonym_key_id(new) != new_key_id:
                raise ConsentError(f"mapping {old} -> {new} does not go from key {old_key_id} to key {new_key_id}")
        event = KeyRotationEvent(
            old_key_id=old_key_id, new_key_id=new_key_id,
            mapping_fingerprint=mapping_fingerprint(mapping.items()), at=datetime.now(UTC),
        )
        with self.transaction() as txn:
            done = txn._conn.execute(select(_K.c.old_key_id).where(
                (_K.c.old_key_id == old_key_id) & (_K.c.new_key_id == new_key_id)).limit(1)).first()
            logged = txn._conn.execute(select(_E.c.idx).where(
                _E.c.public_json.contains(f'"new_key_id":"{new_key_id}"')
                & _E.c.public_json.contains(f'"old_key_id":"{old_key_id}"')).limit(1)).first()
            if done is not None or logged is not None:
                # One mapping per key pair: verify checks the stored rows against that one fingerprint.
                raise ConsentError(f"a rotation from key {old_key_id} to key {new_key_id} is already logged")
            rows = [{"old_pseudonym": o, "new_pseudonym": n, "old_key_id": old_key_id, "new_key_id": new_key_id} for o, n in mapping.items()]
            if rows:
                txn._conn.execute(insert(_K), rows)
            txn.append([event])
        assert txn.checkpoint is not None
        return txn.checkpoint

    def erase_subject(self, subject: str, *, request_id: str = "erasure") -> ErasureResult:
        """Right to erasure, as a logged operation (see :func:`fedcrm.consent.erasure.erase_subject`)."""
        from fedcrm.consent.erasure import erase_subject  # noqa: PLC0415 (erasure builds on this module)

        return erase_subject(self, subject, request_id=request_id)

    # --- reading -----------------------------------------------------------------------

    def tree_size(self) -> int:
        """Size of the newest signed head."""
        return self.latest_checkpoint().size

    def latest_checkpoint(self) -> cp.Checkpoint:
        """The newest stored signed head (parsed, not verified: use :meth:`verify`)."""
        with self._engine.connect() as conn:
            note = conn.execute(select(_H.c.note).order_by(_H.c.size.desc()).limit(1)).scalar_one_or_none()
        if note is None:
            raise LedgerIntegrityError("the ledger has no signed head (database edited?)")
        return cp.parse_checkpoint(note)

    def checkpoint_at(self, size: int) -> cp.Checkpoint:
        """The stored head of exactly ``size`` entries."""
        with self._engine.connect() as conn:
            note = conn.execute(select(_H.c.note).where(_H.c.size == size)).scalar_one_or_none()
        if note is None:
            raise ConsentError(f"no signed head of size {size} is stored")
        return cp.parse_checkpoint(note)

    def _stored(self, conn: Connection, where: Any) -> list[StoredEvent]:
        rows = conn.execute(select(_E.c.idx, _E.c.public_json, _E.c.leaf_hash).where(where).order_by(_E.c.idx)).all()
        payloads: dict[int, dict[str, str]] = {}
        idxs = [r.idx for r in rows]
        for i in range(0, len(idxs), _CHUNK):
            for p in conn.execute(select(_P.c.idx, _P.c.field, _P.c.value).where(_P.c.idx.in_(idxs[i : i + _CHUNK]))):
                payloads.setdefault(p.idx, {})[p.field] = p.value
        out = []
        for r in rows:
            event, erased = from_leaf(json.loads(r.public_json), payloads.get(r.idx, {}))
            out.append(StoredEvent(r.idx, event, erased, r.leaf_hash))
        return out

    def events(self, start: int = 0, stop: int | None = None) -> list[StoredEvent]:
        """Entries ``start <= index < stop`` with their events rebuilt."""
        with self._engine.connect() as conn:
            where = _E.c.idx >= start if stop is None else (_E.c.idx >= start) & (_E.c.idx < stop)
            return self._stored(conn, where)

    def events_of_kind(self, kind: str) -> list[StoredEvent]:
        """Every entry of one event kind (e.g. ``"vocabulary"``), in ledger order."""
        with self._engine.connect() as conn:
            return self._stored(conn, _E.c.kind == kind)

    def public_leaves(self, start: int, stop: int) -> list[str]:
        """The public leaf data (exactly the hashed text) of ``start <= index < stop``."""
        with self._engine.connect() as conn:
            q = select(_E.c.public_json).where((_E.c.idx >= start) & (_E.c.idx < stop)).order_by(_E.c.idx)
            return list(conn.execute(q).scalars())

    def _graph(self, conn: Connection) -> PseudonymGraph:
        return PseudonymGraph(conn.execute(select(_K.c.old_pseudonym, _K.c.new_pseudonym)).tuples().all())

    def resolve(self, subject: str) -> list[str]:
        """Every pseudonym of the subject across key rotations (itself included), sorted."""
        with self._engine.connect() as conn:
            return sorted(self._graph(conn).aliases(subject))

    @staticmethod
    def _consent_events(history: History, upto_size: int, subjects: Iterable[str] | None) -> list[tuple[int, ConsentFacts]]:
        graph = history.graph
        if subjects is None:
            as_asked = graph.newest
            wanted = None
        else:
            wanted = {alias: s for s in set(subjects) for alias in graph.aliases(s)}
            as_asked = wanted.__getitem__
        out = []
        for idx, facts in history.consents:
            if idx >= upto_size or (wanted is not None and facts.subject not in wanted):
                continue
            asked = as_asked(facts.subject)
            out.append((idx, facts if asked == facts.subject else facts._replace(subject=asked)))
        return out

    def _newest_signed_head(self, conn: Connection) -> cp.Checkpoint:
        """The newest stored head, its signature checked (else :class:`LedgerIntegrityError`)."""
        note = conn.execute(select(_H.c.note).order_by(_H.c.size.desc()).limit(1)).scalar_one_or_none()
        if note is None:
            raise LedgerIntegrityError("the ledger has no signed head (database edited?)")
        try:
            return cp.verify_checkpoint(note, self._public_key, self.key_name, origin=self.origin)
        except CheckpointError as exc:
            raise LedgerIntegrityError(f"the newest signed head does not verify ({exc}); run `fedcrm consent verify`") from exc

    def _signed_history(self, conn: Connection) -> History:
        head = self._newest_signed_head(conn)
        return read_history(conn, head.size, head.root_hash)

    def consent_events(self, *, upto_size: int, subjects: Iterable[str] | None = None) -> list[tuple[int, ConsentEvent]]:
        """Consent events with index < ``upto_size``, erased ones excluded, ordered by index.

        Events recorded under an older pseudonym of a subject (before a key rotation)
        are returned with ``subject`` set to the pseudonym asked for (or, with
        ``subjects=None``, to the subject's newest pseudonym). Read fail-closed: raises
        :class:`LedgerIntegrityError` if the log does not verify against its signed head.
        """
        with self._engine.connect() as conn:
            found = self._consent_events(self._signed_history(conn), upto_size, subjects)
        return [(i, ConsentEvent(**f._asdict())) for i, f in found]

    def events_for_subject(self, subject: str) -> list[StoredEvent]:
        """The consent history of a subject, across key rotations."""
        with self._engine.connect() as conn:
            aliases = sorted(self._graph(conn).aliases(subject))
            idxs: list[int] = []
            for chunk in _chunks(aliases):
                idxs += conn.execute(select(_P.c.idx).where((_P.c.field == "subject") & _P.c.value.in_(chunk))).scalars().all()
            return self._stored(conn, _E.c.idx.in_(sorted(idxs))) if idxs else []

    def uses_including(self, subject: str) -> list[tuple[int, UsageEvent]]:
        """Usage records whose stored subject set includes the subject (any of its pseudonyms)."""
        with self._engine.connect() as conn:
            aliases = sorted(self._graph(conn).aliases(subject))
            fps = subject_sets.fingerprints_including(conn, aliases)
            if not fps:
                return []
            stored = self._stored(conn, (_E.c.kind == "usage") & _E.c.fingerprint.in_(sorted(fps)))
        return [(s.index, s.event) for s in stored]

    # --- proofs and verification ---------------------------------------------------------

    def _subtree(self, conn: Connection) -> merkle.Subtree:
        def fetch(lo: int, hi: int) -> bytes:
            q = select(_E.c.leaf_hash).where((_E.c.idx >= lo) & (_E.c.idx < hi)).order_by(_E.c.idx)
            return merkle.root_of(conn.execution_options(yield_per=10_000).execute(q).scalars())

        # Entries below a signed head never change, so perfect subtrees can be cached across proofs.
        return merkle.cached_subtree(fetch, self._node_cache)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` (default: newest head)."""
        size = self.tree_size() if size is None else size
        with self._engine.connect() as conn:
            return merkle.inclusion_proof(index, size, self._subtree(conn))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from ``old_size`` to ``new_size`` (default: newest head)."""
        new_size = self.tree_size() if new_size is None else new_size
        with self._engine.connect() as conn:
            return merkle.consistency_proof(old_size, new_size, self._subtree(conn))

    def verify(self, trusted: cp.Checkpoint | str | None = None, *, workers: int = 1) -> VerificationReport:
        """Check the stored log against its signed heads, and every derived table against the log.

        Recomputes every leaf from the stored entry data, every root, checks every stored
        head's signature and frontier, then the derived tables (kinds, fingerprints,
        payloads, subject sets, key rotations: see :mod:`fedcrm.consent.integrity`); names
        the first bad index (or table and row). With ``trusted``, also proves the log
        extends that head (catches a rewrite re-signed with this ledger's key, and
        truncation below the trusted size). ``workers`` > 1 splits a large SQLite log across
        that many processes at power-of-two subtree boundaries (see :mod:`fedcrm.consent.verify_log`).
        """
        with self._engine.connect() as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            return self._verify_on(conn, trusted, workers=workers)

    def _verify_on(
        self, conn: Connection, trusted: cp.Checkpoint | str | None, *, fast: bool = True, workers: int = 1
    ) -> VerificationReport:
        note = conn.execute(select(_H.c.note).order_by(_H.c.size.desc()).limit(1)).scalar_one_or_none()
        if note is None:
            return VerificationReport(False, 0, "no signed head is stored", failure="head")
        try:
            newest = cp.verify_checkpoint(note, self._public_key, self.key_name, origin=self.origin)
            trusted_cp = coerce_trusted(trusted, self._public_key, self.key_name, self.origin) if trusted is not None else None
        except CheckpointError as exc:
            return VerificationReport(False, 0, str(exc), failure="signature", head_size=0)
        facts = LogFacts()

        def head_check(head: HeadRow) -> str | None:
            try:
                signed = cp.verify_checkpoint(head.note or "", self._public_key, self.key_name, origin=self.origin)
            except CheckpointError as exc:
                return f"signed_heads row of size {head.size} is bad: {exc}"
            if signed.root_hash != head.root_hash or signed.size != head.size:
                return f"signed_heads row of size {head.size} was altered (its columns disagree with its signed note)"
            return None

        def derived() -> Problem | None:
            return facts.problem(conn, subject_sets=True)

        if fast and self.dialect == "sqlite":
            # The block-wise check (verify_log) vouches only for what check_log would pass; on
            # anything else check_log below re-reads the log and gives the verdict.
            report = verify_sqlite(conn, read_heads(conn), newest, facts, trusted=trusted_cp, head_check=head_check,
                                   after=derived, workers=workers)
            if report is not None:
                return report
            facts = LogFacts()
        rows, heads = stream_rows(conn)
        with closing(rows):
            return check_log(facts.observe(rows), heads, newest, trusted=trusted_cp, head_check=head_check, after=derived)

    def _checked_frontier(self, size: int, note: str, blob: bytes) -> merkle.TreeFrontier:
        """The stored right edge of the newest head, proven against its signed root before anything is signed on it."""
        try:
            head = cp.verify_checkpoint(note, self._public_key, self.key_name, origin=self.origin)
            frontier = merkle.TreeFrontier.from_bytes(size, blob)
        except (CheckpointError, ValueError) as exc:
            raise LedgerIntegrityError(f"signed_heads row of size {size} is bad ({exc}); refusing to append: "
                                       "run `fedcrm consent verify`") from exc
        if head.size != size or frontier.root() != head.root_hash:
            raise LedgerIntegrityError(
                f"signed_heads row of size {size}: the stored frontier does not match the signed root; refusing to "
                "append (a head signed on it would be wrong). Run `fedcrm consent verify`"
            )
        return frontier

    def head_notes(self, upto: int | None = None) -> list[str]:
        """Every stored signed head (note text) of size <= ``upto``, by size."""
        with self._engine.connect() as conn:
            q = select(_H.c.note).order_by(_H.c.size)
            if upto is not None:
                q = q.where(_H.c.size <= upto)
            return list(conn.execute(q).scalars())
