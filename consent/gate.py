"""The one consent gate: the only way customer data reaches training, scoring or analytics.

``gate`` checks every requested column's data category against the purpose (minimum
necessary), keeps only the subjects whose consent or other legal basis covers the purpose
as of ``at``, and records the use (with the exact subject set) in the same ledger
transaction it read consent from. Only this module can make a ``ConsentedView``; the
rest of the code accepts nothing else, so no path around the gate type-checks or runs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedcrm.consent.events import RefusalEvent, UsageEvent, suppression_hash
from fedcrm.consent.integrity import paused_gc
from fedcrm.consent.policy import PurposeEvents, check_category, rule_key
from fedcrm.consent.taxonomy import Vocabulary, default_vocabulary
from fedcrm.consent.verified import forget as forget_verified
from fedcrm.errors import ConsentError, PurposeNotAllowed

if TYPE_CHECKING:
    from fedcrm.consent.ledger import Ledger
    from fedcrm.consent.verified import VerifiedConsents

__all__ = ["SUBJECT", "ConsentedView", "UsageContext", "clear_subject_memo", "gate", "record_reuse"]

#: Name of the pseudonym column every gated frame carries.
SUBJECT = "subject"

# Module-private capability: only ``gate`` holds it, so only ``gate`` can build a view.
_GATE_TOKEN = object()


@dataclass(frozen=True)
class UsageContext:
    """Who uses the data and in which job, as recorded in the usage event.

    Parameters
    ----------
    job_id
        The run id (federated training) or the scoring/analytics job id.
    model_version
        ``"<run_id>:<round>"`` (``"<run_id>:final"`` for the final model); ``""`` for non-model uses.
    stage
        ``"stats"``, ``"fit"``, ``"evaluate"``, ``"score"`` or ``"analytics"``.
    """

    job_id: str
    partner: str
    model_version: str
    stage: str


class ConsentedView:
    """Customer rows the gate let through for one purpose, and only the requested columns.

    Built only by ``gate``. ``frame`` returns a fresh copy on every access, so nothing a
    caller does to it changes the view or what the ledger says was used. The subject set is
    held as one sorted Arrow array; ``subjects`` builds the Python set on first access only.
    A view gated from an Arrow table (immutable: a memory-mapped round table) holds that
    table's requested columns and the kept row positions, and builds the rows only when
    ``frame`` is read: a round that reuses rows it encoded before never materialises them.
    """

    __slots__ = ("_at", "_columns", "_covered", "_fingerprint", "_frame", "_purpose", "_requested", "_rows",
                 "_subjects", "_tree_size", "_use")

    def __init__(
        self,
        token: object,
        *,
        frame: pd.DataFrame | pa.Table,
        subjects: _Covered,
        columns: tuple[str, ...],
        purpose: str,
        at: datetime,
        tree_size: int,
        fingerprint: str,
        use: UsageContext,
        requested: int,
        rows: np.ndarray | None = None,
    ) -> None:
        if token is not _GATE_TOKEN:
            raise ConsentError("a ConsentedView can only be made by fedcrm.consent.gate.gate()")
        setter = object.__setattr__
        setter(self, "_frame", frame)
        setter(self, "_covered", subjects)  # distinct pseudonyms, sorted (a _Covered: taken only when read)
        setter(self, "_subjects", None)
        setter(self, "_columns", columns)
        setter(self, "_purpose", purpose)
        setter(self, "_at", at)
        setter(self, "_tree_size", tree_size)
        setter(self, "_fingerprint", fingerprint)
        setter(self, "_use", use)
        setter(self, "_requested", requested)
        positions = np.arange(len(frame), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        positions.setflags(write=False)
        setter(self, "_rows", positions)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a ConsentedView is read-only")

    @property
    def frame(self) -> pd.DataFrame:
        """A copy of the consented rows: ``subject`` plus the requested columns."""
        if isinstance(self._frame, pa.Table):
            return _taken(self._frame, self._rows)
        return self._frame.copy(deep=True)

    def take(self, positions: np.ndarray) -> pd.DataFrame:
        """A copy of the view's rows at ``positions`` (0-based into the view; index = those positions).

        Equal to ``frame.take(positions)`` without building the whole frame first: encoding and
        statistics read a view block by block, or only its training part.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if isinstance(self._frame, pa.Table):
            out = _taken(self._frame, self._rows[positions])
            out.index = pd.Index(positions)
            return out
        return self._frame.take(positions).copy(deep=True)

    @property
    def rows(self) -> np.ndarray:
        """Positions (0-based, in order) of the kept rows in the frame the gate was given (read-only).

        Lets a caller line up per-row data it derived from the pseudonym alone (the hold-out
        bucket) without passing it through the gate as if it were a data category.
        """
        return self._rows

    @property
    def subjects(self) -> frozenset[str]:
        """Pseudonyms of the subjects in the view (built once, on first access: ~150 B a subject)."""
        if self._subjects is None:
            object.__setattr__(self, "_subjects", frozenset(self._covered.values().to_pylist()))
        return self._subjects

    @property
    def n_subjects(self) -> int:
        """How many distinct subjects the view holds (without building the set)."""
        return len(self._covered)

    @property
    def columns(self) -> tuple[str, ...]:
        """The requested columns, in request order (``subject`` not included)."""
        return self._columns

    @property
    def purpose(self) -> str:
        return self._purpose

    @property
    def at(self) -> datetime:
        """Consent-as-of time."""
        return self._at

    @property
    def tree_size(self) -> int:
        """Ledger size the gate read consent from (later records never change this view)."""
        return self._tree_size

    @property
    def fingerprint(self) -> str:
        """SHA-256 subject fingerprint recorded in the usage event."""
        return self._fingerprint

    @property
    def use(self) -> UsageContext:
        return self._use

    @property
    def n_excluded(self) -> int:
        """How many distinct subjects of the input were left out for lack of cover."""
        return self._requested - len(self._covered)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (
            f"ConsentedView(purpose={self._purpose!r}, subjects={len(self._covered)}, "
            f"columns={list(self._columns)}, tree_size={self._tree_size})"
        )


def _taken(table: pa.Table, rows: np.ndarray) -> pd.DataFrame:
    """Rows of an Arrow table as a new pandas frame (the taken copy is freed column by column as it converts)."""
    return table.take(pa.array(rows, type=pa.int64())).to_pandas(split_blocks=True, self_destruct=True)


def _category_of(schema: Mapping[str, str] | Any, column: str) -> str | None:
    """The schema's category for ``column`` (any mapping-like object), or None."""
    try:
        value = schema[column]
    except (KeyError, IndexError):
        return None
    return value or None


def _refuse(
    ledger: Ledger, purpose: str, at: datetime, use: UsageContext, refused: Sequence[tuple[str, str, str]]
) -> None:
    """Record every refused column (its own transaction: a refusal is audit data) and raise."""
    ledger.append(
        [
            RefusalEvent(
                purpose=purpose, partner=use.partner, job_id=use.job_id, column=col, category=cat, reason=why, at=at
            )
            for col, cat, why in refused
        ]
    )
    col, cat, why = refused[0]
    more = f" (and {len(refused) - 1} more column(s))" if len(refused) > 1 else ""
    raise PurposeNotAllowed(
        f"column '{col}' (data category '{cat or 'none'}') may not be used for purpose '{purpose}': {why}{more}"
    )


def gate(
    frame: pd.DataFrame | pa.Table,
    schema: Mapping[str, str],
    purpose: str,
    at: datetime,
    columns: Sequence[str],
    *,
    ledger: Ledger,
    use: UsageContext,
    vocabulary: Vocabulary | None = None,
) -> ConsentedView:
    """Let through only covered subjects and requested columns, and record the use.

    Parameters
    ----------
    frame
        Customer rows with a ``subject`` column of pseudonyms (several rows per subject allowed): a
        pandas frame, or an Arrow table (its rows are taken only when the view's ``frame`` is read).
    schema
        Column → data-category key (fideslang), e.g. from the partner config.
    purpose
        Purpose key, e.g. ``"churn_prediction"``.
    at
        Consent-as-of time (tz-aware): only consent events effective at or before it count.
    columns
        The columns the job needs; each must have a category the purpose allows.
    ledger
        The partner's consent ledger: consent is read and the usage event appended in one transaction.
    use
        Job, partner, model version and stage, recorded in the usage event.

    Raises
    ------
    PurposeNotAllowed
        A requested column has no category, or one the purpose does not cover (recorded as a refusal).
    ConsentError
        The frame lacks ``subject`` or a requested column, has empty pseudonyms, or ``at`` is naive.
    """
    vocab = vocabulary or default_vocabulary()
    vocab.purpose(purpose)  # unknown purpose: VocabularyError before anything is read or written
    if at.tzinfo is None or at.utcoffset() is None:
        raise ConsentError(f"gate: consent-as-of time {at.isoformat()} has no time zone")
    requested = tuple(dict.fromkeys(c for c in columns if c != SUBJECT))
    arrow = isinstance(frame, pa.Table)
    names = frame.column_names if arrow else list(frame.columns)
    if SUBJECT not in names:
        raise ConsentError(f"gate: the frame has no '{SUBJECT}' column of pseudonyms")
    missing = [c for c in requested if c not in names]
    if missing:
        raise ConsentError(f"gate: requested column(s) {missing} are not in the frame")
    if frame.column(SUBJECT).null_count if arrow else frame[SUBJECT].isna().any():
        raise ConsentError(f"gate: the '{SUBJECT}' column has empty pseudonyms")

    categories: dict[str, str] = {}
    refused: list[tuple[str, str, str]] = []
    for column in requested:
        category = _category_of(schema, column)
        if category is None:
            refused.append((column, "", "the column has no data category in the schema"))
        elif category not in vocab.categories:
            refused.append((column, category, f"unknown data category '{category}'"))
        else:
            decision = check_category(purpose, category, vocabulary=vocab)
            if decision.allowed:
                categories[column] = category
            else:
                refused.append((column, category, decision.reason))
    if refused:
        _refuse(ledger, purpose, at, use, refused)

    # Columnar: the subject column stays one Arrow array; what depends on its content alone (distinct values,
    # their sort order, suppression hashes) is memoised by a digest of its bytes; consent is decided afresh.
    values = _subject_column(frame.column(SUBJECT)) if arrow else _subject_array(frame[SUBJECT])
    distinct = _distinct(values)
    unique = values if distinct.unique is None else distinct.unique
    with paused_gc(), ledger.transaction() as txn:  # a record per receipt and per subject, none cyclic
        size = txn.tree_size()
        # Fail closed: every leaf below `size` proven against the signed root (in a long-lived process: the entries
        # appended since it last proved the log, hashed onto the tree it proved then), kinds taken from the hashed
        # text, payloads and rotation rows checked (else it raises).
        verified = txn.verified()
        allowed = distinct.covered(unique, verified, purpose=purpose, categories=tuple(categories.values()), at=at,
                                   tree_size=size, vocabulary=vocab)
        if verified.suppressed:
            # Erased subjects stay out for good under this key, whatever the receipts say.
            allowed = allowed & ~distinct.suppressed(unique, verified.suppressed)
        covered = _Covered(unique, distinct.order[allowed[distinct.order]])  # sorted; values taken when read
        positions = np.flatnonzero(allowed if distinct.codes is None else allowed[distinct.codes])
        kept = frame.select([SUBJECT, *requested]) if arrow else \
            frame[[SUBJECT, *requested]].take(positions).reset_index(drop=True)
        fingerprint = distinct.fingerprint(allowed, covered)
        if not txn.has_subject_set(fingerprint):  # a round that keeps the same subjects stores nothing
            txn.store_subject_set(fingerprint, covered.values())
        txn.append([_usage_event(use, purpose, at, size, requested, len(covered), fingerprint)])
    return ConsentedView(
        _GATE_TOKEN,
        frame=kept,
        subjects=covered,
        columns=requested,
        purpose=purpose,
        at=at,
        tree_size=size,
        fingerprint=fingerprint,
        use=use,
        requested=len(unique),
        rows=positions,
    )


def record_reuse(view: ConsentedView, *, ledger: Ledger, use: UsageContext) -> None:
    """Record another use of a view the gate made earlier, for another stage of the same job.

    A long-lived partner process gates its data once per round and uses the view for both
    training and evaluation of that round; every use is still in the ledger, with the
    view's own subject set (fingerprint), columns, purpose, consent-as-of time and tree size.
    """
    if use.job_id != view.use.job_id or use.model_version != view.use.model_version:
        raise ConsentError(
            f"gate: a view made for {view.use.job_id} / {view.use.model_version} cannot be reused for "
            f"{use.job_id} / {use.model_version}"
        )
    ledger.append(
        [_usage_event(use, view.purpose, view.at, view.tree_size, view.columns, view.n_subjects, view.fingerprint)]
    )


def _usage_event(use: UsageContext, purpose: str, at: datetime, tree_size: int, columns: Sequence[str],
                 n_subjects: int, fingerprint: str) -> UsageEvent:
    """The usage record of one stage's use of a consented view (first use and reuse alike)."""
    return UsageEvent(purpose=purpose, partner=use.partner, job_id=use.job_id, model_version=use.model_version,
                      stage=use.stage, at=at, tree_size_read=tree_size, columns=columns, n_subjects=n_subjects,
                      subject_fingerprint=fingerprint)


# -- the subject column, columnar ----------------------------------------------------------------


def _subject_array(subjects: pd.Series) -> pa.Array:
    """The pseudonyms as one Arrow ``large_string`` array (no Python object per value for Arrow-backed strings)."""
    try:
        values = pa.array(subjects.array, type=pa.large_string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        values = pa.array(subjects.astype(str).to_numpy(dtype=object), type=pa.large_string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values


def _subject_column(column: pa.ChunkedArray) -> pa.Array:
    """An Arrow table's subject column as one ``large_string`` array (zero copy when it is one chunk)."""
    values = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if values.type != pa.large_string():
        values = values.cast(pa.large_string())
    return values


def _offsets(values: pa.Array) -> np.ndarray:
    """The ``large_string`` offsets of ``values`` (``len + 1`` of them, into its data buffer)."""
    return np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]


def _content_key(values: pa.Array) -> bytes:
    """SHA-256 over the values' lengths and bytes: equal keys mean the same pseudonyms in the same order."""
    digest = hashlib.sha256(len(values).to_bytes(8, "little"))
    if len(values):
        offsets = _offsets(values)
        digest.update((offsets - offsets[0]).tobytes())
        data = values.buffers()[2]
        if data is not None:
            digest.update(memoryview(data)[offsets[0] : offsets[-1]])
    return digest.digest()


class _Covered:
    """The covered subjects as positions (sorted order) into the distinct values; the strings are taken when read."""

    __slots__ = ("index", "unique")

    def __init__(self, unique: pa.Array, index: np.ndarray) -> None:
        self.unique, self.index = unique, index

    def __len__(self) -> int:
        return len(self.index)

    def values(self) -> pa.Array:
        """The covered pseudonyms, sorted."""
        return self.unique.take(pa.array(self.index, type=pa.int64()))


@dataclass
class _Distinct:
    """What the gate derives from a subject column's content alone (never a consent decision)."""

    codes: np.ndarray | None  #: row -> index of its distinct value; None when every row's subject is distinct
    unique: pa.Array | None  #: the distinct values in first-seen order; None when the column itself is
    order: np.ndarray  #: permutation sorting the distinct values by UTF-8 bytes (``sorted``'s code-point order)
    width: int = 0  #: the one byte length of every distinct value (0: mixed lengths or NUL bytes)
    _prefixes: np.ndarray | None = field(default=None, repr=False)  #: first 64 bits of each suppression hash
    #: digest of a covered mask -> its subject fingerprint (a round whose gate keeps the same subjects hashes nothing)
    _fingerprints: OrderedDict[bytes, str] = field(default_factory=OrderedDict, repr=False)
    #: (history version, purpose rules, PurposeEvents.state) -> the covered mask (read-only)
    _masks: OrderedDict[tuple[object, ...], np.ndarray] = field(default_factory=OrderedDict, repr=False)
    #: the last receipts table located, and the positions of its subjects among the distinct values
    _located: tuple[PurposeEvents, np.ndarray] | None = field(default=None, repr=False)

    def fingerprint(self, allowed: np.ndarray, covered: _Covered) -> str:
        """``events.subject_fingerprint`` of the covered subjects, memoised by the mask that picked them."""
        key = hashlib.sha256(np.packbits(allowed).tobytes() + len(allowed).to_bytes(8, "little")).digest()
        found = self._fingerprints.get(key)
        if found is None:
            found = self._fingerprints[key] = _sorted_fingerprint(covered.values())
            while len(self._fingerprints) > 4:
                self._fingerprints.popitem(last=False)
        return found

    def covered(self, unique: pa.Array, verified: VerifiedConsents, *, purpose: str, categories: tuple[str, ...],
                at: datetime, tree_size: int, vocabulary: Vocabulary) -> np.ndarray:
        """The policy's covered mask over the distinct values (read-only), memoised.

        The mask is a function of the receipts (the history's version), the purpose's rules in
        the vocabulary, and the consent-as-of time only through which receipts are effective and
        which grants expired by then (``PurposeEvents.state``): a round whose gate reads the same
        receipts at a time that crosses none of their times reuses the last mask. Positions of the
        receipts' subjects among the distinct values are memoised per receipts table.
        """
        events = verified.purpose_events(purpose)
        key = (verified.version, rule_key(purpose, categories, vocabulary), events.state(at, tree_size))
        found = self._masks.get(key)
        if found is None:
            located = self._located
            if located is None or located[0] is not events:
                located = self._located = (events, self.locate(unique, events.subject))
            found = events.mask(located[1], len(unique), categories=categories, at=at, tree_size=tree_size,
                                vocabulary=vocabulary)
            found.setflags(write=False)
            self._masks[key] = found
            while len(self._masks) > 4:
                self._masks.popitem(last=False)
        return found

    def locate(self, unique: pa.Array, named: pa.Array) -> np.ndarray:
        """Position among the distinct values of each of ``named`` (-1: not among them), by binary search.

        Fixed-width values are searched in place (their bytes as a numpy ``S`` array, in the
        memoised sort order): a few comparisons per event, no hash table over a million subjects.
        """
        out = np.full(len(named), -1, dtype=np.int64)
        if self.width == 0:
            hits = np.flatnonzero(np.asarray(pc.is_in(unique, value_set=pc.unique(named)).fill_null(False), dtype=bool))
            found = np.asarray(pc.index_in(named, value_set=unique.take(pa.array(hits, type=pa.int64()))).fill_null(-1),
                               dtype=np.int64)
            out[found >= 0] = hits[found[found >= 0]]
            return out
        offsets = _offsets(unique)
        table = np.frombuffer(unique.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].view(f"S{self.width}")
        named = named.cast(pa.large_string()) if named.type != pa.large_string() else named
        if len(named) and named.null_count == 0 and _fixed_width(named) == self.width:
            # Every name has the width (pseudonyms of this key): its bytes are searched in place, zero copy.
            name_offsets = _offsets(named)
            fits = np.ones(len(named), dtype=bool)
            wanted = np.frombuffer(named.buffers()[2], dtype=np.uint8)[name_offsets[0] : name_offsets[-1]].view(
                f"S{self.width}")
        else:
            names = np.asarray(named.to_pylist(), dtype=object)
            fits = np.fromiter((v is not None and len(v.encode()) == self.width and "\x00" not in v for v in names),
                               dtype=bool, count=len(names))
            if not fits.any():
                return out
            wanted = np.array([v.encode() for v in names[fits]], dtype=f"S{self.width}")
        at = np.searchsorted(table, wanted, sorter=self.order)
        at = np.minimum(at, len(self.order) - 1)
        candidate = self.order[at]
        match = table[candidate] == wanted
        out[np.flatnonzero(fits)[match]] = candidate[match]
        return out

    def suppressed(self, unique: pa.Array, hashes: frozenset[str]) -> np.ndarray:
        """Which distinct values an erasure suppressed (``suppression_hash`` in ``hashes``), as a bool array."""
        if self._prefixes is None:  # one SHA-256 per distinct subject, once per column content
            self._prefixes = np.fromiter((int(suppression_hash(s)[:16], 16) for s in unique.to_pylist()),
                                         dtype=np.uint64, count=len(unique))
        wanted = np.fromiter((int(h[:16], 16) for h in hashes), dtype=np.uint64, count=len(hashes))
        out = np.isin(self._prefixes, wanted)
        for i in np.flatnonzero(out):  # a 64-bit prefix match: confirm on the whole hash
            out[i] = suppression_hash(unique[int(i)].as_py()) in hashes
        return out


#: content key -> distinct values and order; a few partners' tables (simulation runs several in one process).
_MEMO: OrderedDict[bytes, _Distinct] = OrderedDict()
_MAX_MEMO = 8


def clear_subject_memo() -> None:
    """Forget what the gate derived from subject columns and kept of proven consent logs (an erasure; tests)."""
    _MEMO.clear()
    forget_verified()


def _distinct(values: pa.Array) -> _Distinct:
    """Distinct pseudonyms of the column, their sort order and (lazily) suppression hashes, memoised by content."""
    key = _content_key(values)
    found = _MEMO.get(key)
    if found is not None:
        _MEMO.move_to_end(key)
        return found
    width = _fixed_width(values)
    if width:  # pseudonyms: sort in place, and distinct iff no two neighbours in that order are equal
        order = _sort_order(values)
        if _all_distinct(values, order, width):
            found = _Distinct(codes=None, unique=None, order=order, width=width)
            _MEMO[key] = found
            while len(_MEMO) > _MAX_MEMO:
                _MEMO.popitem(last=False)
            return found
    encoded = pc.dictionary_encode(values)  # several rows per subject (or mixed lengths): a hash table
    if len(encoded.dictionary) == len(values):
        found = _Distinct(codes=None, unique=None, order=_sort_order(values), width=_fixed_width(values))
    else:
        unique = encoded.dictionary
        found = _Distinct(codes=np.asarray(encoded.indices, dtype=np.int64), unique=unique, order=_sort_order(unique),
                          width=_fixed_width(unique))
    _MEMO[key] = found
    while len(_MEMO) > _MAX_MEMO:
        _MEMO.popitem(last=False)
    return found


def _all_distinct(values: pa.Array, order: np.ndarray, width: int, block: int = 1 << 16) -> bool:
    """Whether fixed-width ``values`` are all distinct: neighbours in sort order compared a block at a time."""
    offsets = _offsets(values)
    table = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].view(f"S{width}")
    for lo in range(0, len(order) - 1, block):
        left = order[lo : lo + block + 1]
        if (table[left[1:]] == table[left[:-1]]).any():
            return False
    return True


def _fixed_width(values: pa.Array) -> int:
    """The one byte length of all ``values`` when they share it and hold no NUL byte, else 0."""
    if len(values) == 0:
        return 0
    offsets = _offsets(values)
    lengths = np.diff(offsets)
    width = int(lengths[0])
    if width == 0 or not (lengths == width).all():
        return 0
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return 0 if (data == 0).any() else width


def _sort_order(values: pa.Array) -> np.ndarray:
    """Indices that sort distinct ``values`` by their UTF-8 bytes (the order ``sorted`` gives ``str``).

    Pseudonyms all have one length: their bytes are then a fixed-width numpy ``S`` array
    (zero copy), which numpy sorts byte-wise faster than Arrow sorts strings. Anything else
    (mixed lengths, NUL bytes that ``S`` would strip) is sorted by Arrow.
    """
    if len(values) == 0:
        return np.empty(0, dtype=np.int64)
    width = _fixed_width(values)
    if width:
        offsets = _offsets(values)
        data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        return np.argsort(data.view(f"S{width}")).astype(np.int64)
    return np.asarray(pc.sort_indices(values), dtype=np.int64)


def _sorted_fingerprint(values: pa.Array) -> str:
    """``events.subject_fingerprint`` of distinct pseudonyms already in sorted order, hashed from Arrow's buffers."""
    if len(values) == 0:
        return hashlib.sha256(b"").hexdigest()
    sep = pa.scalar("\n", pa.large_string())
    lines = pc.binary_join_element_wise(values, pa.scalar("", pa.large_string()), sep)  # each value + "\n"
    offsets = _offsets(lines)
    return hashlib.sha256(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1] - 1]).hexdigest()
