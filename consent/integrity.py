"""What the gate, subject requests and erasure read, checked against the hashed log.

The Merkle tree covers each leaf's text. Everything else the ledger stores is either
derived from the leaves or personal data a leaf commits to, and is checked here:

=============================  ==============================================================
stored                         must agree with
=============================  ==============================================================
``log_entries.kind``           the ``kind`` inside the hashed leaf
``log_entries.fingerprint``    the usage leaf's ``subject_fingerprint`` (NULL for other kinds)
``personal_payloads``          the leaf's salted hash (``bundle.check_log``); a consent leaf
                               without its payload must be listed by a later erasure leaf
``subject_set_chunks``         the usage leaf's fingerprint, or what the latest erasure leaf
                               says remains of that set
``key_rotations``              the rotation leaf's mapping fingerprint, or what the latest
                               erasure leaf says remains of that mapping
``signed_heads.frontier``      the recomputed tree at that size (``bundle.check_log``)
=============================  ==============================================================

:class:`LogFacts` collects what these checks need while the leaves stream past (the
same pass that checks the tree). :func:`read_history` is the gate's fail-closed read:
it re-hashes every leaf below the size it reads, recomputes the root and compares it
with the signed one, takes kinds from the hashed text, and raises
:class:`~fedcrm.errors.LedgerIntegrityError` naming the index instead of returning a
history verify would reject.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, select

from fedcrm.consent import checkpoint as cp
from fedcrm.consent.bundle import LeafRow, check_log
from fedcrm.consent import subject_sets
from fedcrm.consent.db import KeyRotation, stream_rows
from fedcrm.consent.merkle import TreeFrontier
from fedcrm.consent.events import PERSONAL_FIELDS, PseudonymGraph, leaf_kind, mapping_fingerprint, pseudonym_key_id
from fedcrm.errors import LedgerIntegrityError

__all__ = ["ConsentFacts", "History", "LogFacts", "Problem", "parsed_consents", "paused_gc", "proven_facts", "read_history"]

_K = KeyRotation.__table__

#: (failure, first bad index or None, message): what ``bundle.check_log`` reports.
Problem = tuple[str, int | None, str]


class ConsentFacts(NamedTuple):
    """A consent receipt as the gate reads it (the fields of ``ConsentEvent``; no validation cost)."""

    receipt_id: str
    subject: str
    purpose: str
    category: str
    action: str
    legal_basis: str
    effective_at: datetime
    recorded_at: datetime
    source: str
    notice_version: str
    expires_at: datetime | None


def _short(pseudonym: str | None) -> str:
    return "NULL" if pseudonym is None else pseudonym[:20] + ("…" if len(pseudonym) > 20 else "")


@dataclass
class LogFacts:
    """What the derived-table checks need, gathered from leaves as they stream past."""

    check_columns: bool = True
    keep_consents: bool = False
    kind_bad: Problem | None = None
    fingerprint_bad: Problem | None = None
    no_payload: set[int] = field(default_factory=set)
    consents: list[tuple[int, str, str]] = field(default_factory=list)
    #: usage fingerprint -> (first usage index, n_subjects)
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: key_rotation index -> (old key id, new key id, mapping fingerprint)
    rotations: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    erasures: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def observe(self, rows: Iterable[LeafRow]) -> Iterator[LeafRow]:
        """Pass rows through unchanged, noting what the checks need."""
        for row in rows:
            self._note(row)
            yield row

    def _note(self, row: LeafRow) -> None:
        text, idx = row.public_json, row.idx
        kind = leaf_kind(text)
        leaf_fp = None
        if kind in ("usage", "key_rotation", "erasure"):
            try:
                data = json.loads(text)
            except ValueError:
                return  # not JSON: the tree check fails this row
            if kind == "usage":
                leaf_fp = data.get("subject_fingerprint")
                self.usage.setdefault(leaf_fp, (idx, data.get("n_subjects", 0)))
            elif kind == "key_rotation":
                self.rotations[idx] = (data.get("old_key_id"), data.get("new_key_id"), data.get("mapping_fingerprint"))
            else:
                self.erasures.append((idx, data))
        if self.check_columns and row.kind is not None:
            if self.kind_bad is None and row.kind != kind:
                self.kind_bad = ("derived", idx, f"log_entries row {idx}: column kind is {row.kind!r} but its hashed leaf "
                                                 f"says {kind!r} (column edited)")
            if self.fingerprint_bad is None and row.fingerprint != leaf_fp:
                self.fingerprint_bad = ("derived", idx, f"log_entries row {idx}: column fingerprint is "
                                                        f"{(row.fingerprint or 'NULL')[:16]} but its hashed leaf says "
                                                        f"{(leaf_fp or 'NULL')[:16]} (column edited)")
        if kind in PERSONAL_FIELDS:
            payloads = row.payloads or {}
            if "subject" not in payloads:
                self.no_payload.add(idx)
            elif self.keep_consents:
                self.consents.append((idx, text, payloads["subject"][1]))

    # --- checks once the tree verified ---------------------------------------------------

    def erased_by(self) -> dict[int, int]:
        """Consent index -> the erasure entry that removed its payload."""
        return {int(i): e for e, data in self.erasures for i in data.get("erased_indices", ())}

    def suppressed(self) -> frozenset[str]:
        """Suppression hashes of every erased pseudonym (see ``events.suppression_hash``)."""
        return frozenset(h for _, data in self.erasures for h in data.get("suppressed", ()))

    def payload_problem(self) -> Problem | None:
        erased = self.erased_by()
        for idx in sorted(self.no_payload):
            if erased.get(idx, -1) <= idx:
                return ("derived", idx, f"personal_payloads: consent entry {idx} has no subject payload and no erasure "
                                        "entry in the log erased it (payload deleted)")
        for idx, by in sorted(erased.items()):
            if idx not in self.no_payload:
                return ("derived", idx, f"personal_payloads: consent entry {idx} still has a subject payload although "
                                        f"erasure entry {by} erased it (payload restored)")
        return None

    def rotation_rows(self, conn: Connection) -> tuple[list[tuple[str, str]], Problem | None]:
        """The stored old -> new edges, and the first way they disagree with the logged fingerprints."""
        expected: dict[int, str] = {i: fp for i, (_, _, fp) in self.rotations.items()}
        for _, data in self.erasures:
            for ridx, fp, _rows in data.get("rotations", ()):
                expected[int(ridx)] = fp
        pair_of = {(o, n): i for i, (o, n, _) in sorted(self.rotations.items())}
        groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
        edges = []
        q = select(_K.c.old_pseudonym, _K.c.new_pseudonym, _K.c.old_key_id, _K.c.new_key_id)
        for old, new, ok, nk in conn.execute(q):
            if old is None or new is None or pseudonym_key_id(old) != ok or pseudonym_key_id(new) != nk:
                return edges, ("derived", pair_of.get((ok, nk)), f"key_rotations row {_short(old)} -> {_short(new)}: "
                                                                 f"its pseudonyms are not of keys {ok} -> {nk} (row edited)")
            groups.setdefault((ok, nk), []).append((old, new))
            edges.append((old, new))
        for pair, rows in sorted(groups.items()):
            if pair not in pair_of:
                return edges, ("derived", None, f"key_rotations: {len(rows)} row(s) map key {pair[0]} to {pair[1]}, but the "
                                                "log records no such rotation (rows inserted)")
        for pair, ridx in sorted(pair_of.items(), key=lambda kv: kv[1]):
            if mapping_fingerprint(groups.get(pair, [])) != expected[ridx]:
                return edges, ("derived", ridx, f"key_rotations: the stored mapping of rotation entry {ridx} "
                                                f"({pair[0]} -> {pair[1]}) does not match the mapping fingerprint the log "
                                                "holds for it (rows inserted, edited or deleted)")
        return edges, None

    def subject_set_problem(self, conn: Connection) -> Problem | None:
        """Every usage record's stored subject set hashes to its logged (or post-erasure) fingerprint."""
        expected = {fp: (idx, fp, n) for fp, (idx, n) in self.usage.items()}
        for _, data in self.erasures:
            for fp, after, n in data.get("subject_sets", ()):
                if fp in expected:
                    expected[fp] = (expected[fp][0], after, int(n))
        seen: set[str] = set()
        for stored in subject_sets.digests(conn):
            seen.add(stored.fingerprint)
            if stored.fingerprint not in expected:
                return ("derived", None, f"subject_sets: {stored.size} member(s) under fingerprint "
                                         f"{stored.fingerprint[:16]} belong to no usage record in the log "
                                         "(rows inserted or their fingerprint edited)")
            idx, want, n = expected[stored.fingerprint]
            if stored.malformed is not None:
                return ("derived", idx, f"subject_sets: the stored subject set of usage entry {idx}: {stored.malformed}")
            if stored.digest != want or stored.size != n:
                return ("derived", idx, f"subject_sets: the stored subject set of usage entry {idx} ({stored.size} "
                                        f"members) does not match the fingerprint its leaf logged ({n} members): "
                                        "members added, edited or deleted")
        for fp, (idx, _, n) in sorted(expected.items(), key=lambda kv: kv[1][0]):
            if n and fp not in seen:
                return ("derived", idx, f"subject_sets: the subject set of usage entry {idx} ({n} members) is missing "
                                        "(rows deleted)")
        return None

    def problem(self, conn: Connection, *, subject_sets: bool) -> Problem | None:
        """The first derived-table disagreement, checked in a fixed order; None if all agree."""
        for p in (self.kind_bad, self.fingerprint_bad, self.payload_problem()):
            if p is not None:
                return p
        _, p = self.rotation_rows(conn)
        if p is None and subject_sets:
            p = self.subject_set_problem(conn)
        return p


@dataclass(frozen=True)
class History:
    """The consent history as the gate may use it: every part checked against the signed tree."""

    consents: list[tuple[int, ConsentFacts]]
    graph: PseudonymGraph
    suppressed: frozenset[str]


class _Times(dict[str | None, datetime | None]):
    """ISO timestamps parsed once each (receipts share a handful of them); None stays None."""

    def __missing__(self, text: str | None) -> datetime | None:
        value = self[text] = None if text is None else datetime.fromisoformat(text)
        return value


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a million small acyclic records are built.

    Reference counting frees them; each collector pass would walk every record made so far (a quarter
    of the read's CPU at a million receipts). Process-wide, so it is restored only by whoever paused it first.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_history(conn: Connection, size: int, root_hash: bytes) -> History:
    """Entries below ``size``, proven against ``root_hash`` (a signed root), as the gate reads them; see :func:`_read`."""
    with paused_gc():
        return _read(conn, size, root_hash)


def _read(conn: Connection, size: int, root_hash: bytes) -> History:
    """Entries below ``size``, proven against ``root_hash`` (a signed root), as the gate reads them (see
    :func:`proven_facts`)."""
    facts, edges = proven_facts(conn, size, root_hash)
    return History(_consent_facts(facts.consents), PseudonymGraph(edges), facts.suppressed())


def proven_facts(conn: Connection, size: int, root_hash: bytes, *,
                 start: TreeFrontier | None = None) -> tuple[LogFacts, list[tuple[str, str]]]:
    """The consent texts (with their pseudonyms) and rotation edges of the entries below ``size``, proven.

    Raises :class:`LedgerIntegrityError` naming the first bad index if any leaf, payload,
    kind, rotation row or erasure disagrees with the tree: the gate never runs on a
    history that ``verify`` would reject (subject sets are written, not read, by the gate
    and are left to ``verify``). With ``start`` (the tree of the entries below its size, proven
    by this process before) only the entries from its size on are read, checked and hashed onto
    it, in place (pass a copy). Such a read proves no erasure or rotation entry: where the new
    entries hold one (``facts.erasures``, ``facts.rotations``), the caller reads the whole log.
    """
    from fedcrm.consent.verify_log import verify_sqlite  # verify_log builds on this module

    facts = LogFacts(keep_consents=True)
    edges: list[tuple[str, str]] = []

    def derived() -> Problem | None:
        if start is not None:  # new entries only: what they say of older ones needs the whole log
            return facts.kind_bad or facts.fingerprint_bad or (None if facts.erasures or facts.rotations
                                                               else facts.payload_problem())
        for p in (facts.kind_bad, facts.fingerprint_bad, facts.payload_problem()):
            if p is not None:
                return p
        got, p = facts.rotation_rows(conn)
        edges.extend(got)
        return p

    head = cp.Checkpoint(origin="", size=size, root_hash=root_hash, note="")
    report = None
    if start is None and conn.dialect.name == "sqlite":
        # SQLite: verify's block check, which vouches only for what check_log would pass (plain consent blocks
        # in one piece, everything else entry by entry with the reference's own functions); on anything it
        # does not vouch for, the reference below re-reads the log and gives the verdict.
        report = verify_sqlite(conn, [], head, facts, after=derived)
    if report is None:
        facts = LogFacts(keep_consents=True)
        edges.clear()
        rows, _ = stream_rows(conn, upto=size, since=0 if start is None else start.size)
        with closing(rows):  # closed here, on its connection, even when the check stops at a bad entry
            report = check_log(facts.observe(rows), [], head, after=derived, start=start)
    if not report.ok:
        where = f" at index {report.first_bad_index}" if report.first_bad_index is not None else ""
        raise LedgerIntegrityError(
            f"the consent log does not verify{where}: {report.message}. The gate refuses to read it; "
            "run `fedcrm consent verify` and restore the ledger from a backup"
        )
    return facts, edges


def parsed_consents(kept: list[tuple[int, str, str]],
                    chunk: int = 4096) -> Iterator[tuple[list[dict[str, Any]], list[tuple[int, str, str]]]]:
    """The verified consent texts ``(index, text, pseudonym)`` parsed, a chunk per ``json.loads`` of a JSON array (a
    third less CPU than one call per text), each chunk with its parsed objects; a chunk whose objects do not come
    back one per text, each with its own index, is parsed text by text, as the reference does."""
    for lo in range(0, len(kept), chunk):
        part = kept[lo : lo + chunk]
        try:
            parsed = json.loads("[" + ",".join([text for _, text, _ in part]) + "]")
        except ValueError:
            parsed = None
        if (not isinstance(parsed, list) or len(parsed) != len(part)
                or not all(isinstance(d, dict) and d.get("index") == idx for d, (idx, _, _) in zip(parsed, part))):
            parsed = [json.loads(text) for _, text, _ in part]
        yield parsed, part


def _consent_facts(kept: list[tuple[int, str, str]]) -> list[tuple[int, ConsentFacts]]:
    """The verified consent texts parsed into light records (:func:`parsed_consents`)."""
    times = _Times()
    out: list[tuple[int, ConsentFacts]] = []
    for parsed, part in parsed_consents(kept):
        out += [(idx, ConsentFacts(d["receipt_id"], subject, d["purpose"], d["category"], d["action"], d["legal_basis"],
                                   times[d["effective_at"]], times[d["recorded_at"]], d["source"], d["notice_version"],
                                   times[d.get("expires_at")]))
                for d, (idx, _, subject) in zip(parsed, part)]
    return out
