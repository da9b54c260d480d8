"""The gate's read in a long-lived process: the consent log proven once, then extended by its new entries.

:func:`fedcrm.consent.integrity.read_history` re-hashes every leaf on every call. A partner
process that gates every round (the SuperNode's ClientApp worker) keeps what it proved
instead: the tree of the entries it read (their frontier), their consent receipts as
columns, the rotation graph and the suppressed set. The next read checks only the entries
appended since: each is checked as the full read checks it (leaf re-hashed, salted payload
hashes, kind and fingerprint columns), pushed onto a copy of the kept tree, and the root
compared with the newly signed one. Equal roots prove that the kept entries are a prefix of
the newly signed tree (collision resistance of SHA-256: what a Certificate Transparency monitor
checks between two signed heads, RFC 9162 §2.1.4), so the kept columns equal what a full read
would give, and only the new entries are read.

The whole log is read again (and the kept state replaced) in every new process; when the
signed size is smaller than the kept one or the extension does not give the signed root (a
rewritten or replaced database: the full read then gives the verdict, and raises where it
fails); when a new entry is an erasure or a key rotation (they change what older entries mean:
payloads deleted, pseudonyms mapped); and after :func:`forget` (an erasure in this process
drops what it kept, erased pseudonyms among it).

What the kept state does not do is notice an edit, after it was proven, of an entry below the
kept size: such an edit cannot reach the gate's decisions (they come from the proven copy),
and ``fedcrm consent verify`` and any new process's read report it.

Hand-written rather than a library's: no maintained library keeps a verified RFC 6962 tree over
a SQL table; the hashing is the ledger's own (``merkle``, ``bundle.check_log``).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy import Connection

from fedcrm.consent.events import PseudonymGraph
from fedcrm.consent.integrity import parsed_consents, proven_facts
from fedcrm.consent.merkle import TreeFrontier
from fedcrm.consent.policy import PurposeEvents, micros

__all__ = ["VerifiedConsents", "forget", "read_verified"]

_NEVER = np.iinfo(np.int64).max
_GENERATIONS = itertools.count(1)


class _Codes:
    """Strings as small integer codes (purposes, categories and bases: a handful of values among a million)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._code: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        code = self._code.get(key)
        if code is None:
            code = self._code[key] = len(self.keys)
            self.keys.append(key)
        return code


class _Micros(dict[str | None, int]):
    """ISO timestamps as epoch microseconds, parsed once each (receipts share a handful); None: never."""

    def __missing__(self, text: str | None) -> int:
        value = self[text] = _NEVER if text is None else micros(datetime.fromisoformat(text))
        return value


@dataclass
class _Columns:
    """Consent receipts as columns, appended part by part (each part one read's new receipts)."""

    purposes: _Codes = field(default_factory=_Codes)
    categories: _Codes = field(default_factory=_Codes)
    bases: _Codes = field(default_factory=_Codes)
    parts: list[dict[str, Any]] = field(default_factory=list)
    n: int = 0

    def with_part(self, kept: list[tuple[int, str, str]]) -> _Columns:
        """These columns and the proven consent texts ``(index, text, pseudonym)`` parsed into a new part.

        The parts are shared (never changed once made); only the code tables grow, and old codes keep their keys.
        """
        out = _Columns(self.purposes, self.categories, self.bases, list(self.parts), self.n)
        out.add(kept)
        return out

    def add(self, kept: list[tuple[int, str, str]]) -> None:
        """Parse the proven consent texts ``(index, text, pseudonym)`` into a new part (no object kept per receipt)."""
        if not kept:
            return
        times = _Micros()
        index, purpose, category, withdraw, basis, eff, exp = [], [], [], [], [], [], []
        for parsed, part in parsed_consents(kept):
            for d, (idx, _, _) in zip(parsed, part):
                index.append(idx)
                purpose.append(self.purposes(d["purpose"]))
                category.append(self.categories(d["category"]))
                withdraw.append(d["action"] == "withdraw")
                basis.append(self.bases(d["legal_basis"]))
                eff.append(times[d["effective_at"]])
                exp.append(times[d.get("expires_at")])
        self.parts.append({
            "index": np.asarray(index, dtype=np.int64), "purpose": np.asarray(purpose, dtype=np.int32),
            "category": np.asarray(category, dtype=np.int32), "withdraw": np.asarray(withdraw, dtype=bool),
            "basis": np.asarray(basis, dtype=np.int32), "eff": np.asarray(eff, dtype=np.int64),
            "exp": np.asarray(exp, dtype=np.int64),
            "subject": pa.array([s for _, _, s in kept], type=pa.large_string()),
        })
        self.n += len(kept)

    def purpose_events(self, purpose: str, graph: PseudonymGraph, rotated: bool) -> PurposeEvents:
        """The receipts of ``purpose``, each under its subject's newest pseudonym, as the policy reads them."""
        code = self.purposes._code.get(purpose, -1)
        picked = [(part, np.flatnonzero(part["purpose"] == code)) for part in self.parts]

        def column(name: str) -> np.ndarray:
            arrays = [part[name][rows] for part, rows in picked]
            return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)

        subjects = [part["subject"].take(pa.array(rows, type=pa.int64())) for part, rows in picked]
        subject = pa.concat_arrays(subjects) if subjects else pa.array([], type=pa.large_string())
        if rotated:  # receipts recorded under an older key count for the subject's newest pseudonym
            subject = pa.array([graph.newest(s) for s in subject.to_pylist()], type=pa.large_string())
        return PurposeEvents.from_arrays(purpose, index=column("index"), subject=subject, category=column("category"),
                                         categories=self.categories.keys, withdraw=column("withdraw"),
                                         basis=column("basis"), bases=self.bases.keys, eff=column("eff"),
                                         exp=column("exp"))


@dataclass(eq=False)
class VerifiedConsents:
    """The consent history proven against a signed root, as the gate reads it (columns; see the module)."""

    size: int  #: entries proven (all of them below the signed size read)
    frontier: TreeFrontier = field(repr=False)
    graph: PseudonymGraph = field(repr=False)
    rotated: bool  #: whether any key rotation is logged (receipts then map to the newest pseudonym)
    suppressed: frozenset[str] = field(repr=False)
    generation: int = field(default_factory=lambda: next(_GENERATIONS))  #: a new one per full read
    _columns: _Columns = field(default_factory=_Columns, repr=False)
    _by_purpose: dict[str, tuple[int, PurposeEvents]] = field(default_factory=dict, repr=False)
    full_reads: int = 1  #: whole-log reads that made this state (1), for tests and benchmarks

    @property
    def version(self) -> tuple[int, int]:
        """(generation, receipts): equal versions, equal receipts (a read that adds none keeps the version)."""
        return self.generation, self._columns.n

    def purpose_events(self, purpose: str) -> PurposeEvents:
        """The purpose's receipts as columns, built once per version."""
        found = self._by_purpose.get(purpose)
        if found is None or found[0] != self._columns.n:
            found = (self._columns.n, self._columns.purpose_events(purpose, self.graph, self.rotated))
            self._by_purpose[purpose] = found
        return found[1]


#: database URL -> its kept state, newest use last (a simulation runs many partners in one process)
_KEPT: OrderedDict[str, VerifiedConsents] = OrderedDict()
_MAX_KEPT = 16
_LOCK = threading.Lock()


def _keep(key: str, state: VerifiedConsents) -> None:
    with _LOCK:
        _KEPT[key] = state
        _KEPT.move_to_end(key)
        while len(_KEPT) > _MAX_KEPT:
            _KEPT.popitem(last=False)


def _database(conn: Connection) -> str:
    """The connection's database, as a key (a digest: no second copy of a password in memory)."""
    return hashlib.sha256(conn.engine.url.render_as_string(hide_password=False).encode()).hexdigest()


def forget() -> None:
    """Drop every kept state of this process (an erasure; tests): the next read re-reads the whole log."""
    with _LOCK:
        _KEPT.clear()


def read_verified(conn: Connection, frontier: TreeFrontier) -> VerifiedConsents:
    """The consent history below ``frontier.size``, proven against ``frontier.root()`` (the signed tree).

    ``frontier`` must itself be proven against the signed root (``LedgerTxn`` does so when it
    opens). Extends this process's kept state when the new entries allow it, else reads the
    whole log; raises :class:`~fedcrm.errors.LedgerIntegrityError` naming the index where the
    read does not verify. The caller must not change the returned state.
    """
    key, size, root = _database(conn), frontier.size, frontier.root()
    with _LOCK:
        kept = _KEPT.get(key)
    if kept is not None and kept.size <= size:
        if kept.size == size:
            if kept.frontier.root() == root:
                return kept
        else:
            extended = _extended(conn, kept, size, root)
            if extended is not None:
                _keep(key, extended)
                return extended
    facts, edges = proven_facts(conn, size, root)
    state = VerifiedConsents(size=size, frontier=frontier.copy(), graph=PseudonymGraph(edges), rotated=bool(edges),
                             suppressed=facts.suppressed(),
                             full_reads=1 if kept is None else kept.full_reads + 1)
    state._columns.add(facts.consents)
    _keep(key, state)
    return state


def _extended(conn: Connection, kept: VerifiedConsents, size: int, root: bytes) -> VerifiedConsents | None:
    """``kept`` extended by the entries ``kept.size .. size-1``; None where only a whole read may decide."""
    from fedcrm.errors import LedgerIntegrityError

    tree = kept.frontier.copy()
    try:
        facts, _ = proven_facts(conn, size, root, start=tree)
    except LedgerIntegrityError:
        return None  # a rewritten prefix, a replaced database or a bad new entry: the whole read gives the verdict
    if facts.erasures or facts.rotations:
        return None
    # A new state sharing the old one's parts (a caller holding the old state still sees its own receipts).
    columns = kept._columns.with_part(facts.consents) if facts.consents else kept._columns
    return VerifiedConsents(size=size, frontier=tree, graph=kept.graph, rotated=kept.rotated,
                            suppressed=kept.suppressed, generation=kept.generation, _columns=columns,
                            _by_purpose=dict(kept._by_purpose), full_reads=kept.full_reads)
