"""The one consent gate: the only way customer data reaches training, scoring or analytics.

``gate`` checks every requested column's data category against the purpose (minimum
necessary), keeps only the subjects whose consent or other legal basis covers the purpose
as of ``at``, and records the use (with the exact subject set) in the same ledger
transaction it read consent from. Only this module can make a ``ConsentedView``; the
rest of the code accepts nothing else, so no path around the gate type-checks or runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedcrm.consent.events import RefusalEvent, UsageEvent, subject_fingerprint, suppression_hash
from fedcrm.consent.policy import check_category, evaluate_subjects
from fedcrm.consent.taxonomy import Vocabulary, default_vocabulary
from fedcrm.errors import ConsentError, PurposeNotAllowed

if TYPE_CHECKING:
    from fedcrm.consent.ledger import Ledger

__all__ = ["SUBJECT", "ConsentedView", "UsageContext", "gate", "record_reuse"]

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
    caller does to it changes the view or what the ledger says was used.
    """

    __slots__ = ("_at", "_columns", "_fingerprint", "_frame", "_purpose", "_requested", "_subjects", "_tree_size", "_use")

    def __init__(
        self,
        token: object,
        *,
        frame: pd.DataFrame,
        subjects: frozenset[str],
        columns: tuple[str, ...],
        purpose: str,
        at: datetime,
        tree_size: int,
        fingerprint: str,
        use: UsageContext,
        requested: int,
    ) -> None:
        if token is not _GATE_TOKEN:
            raise ConsentError("a ConsentedView can only be made by fedcrm.consent.gate.gate()")
        setter = object.__setattr__
        setter(self, "_frame", frame)
        setter(self, "_subjects", subjects)
        setter(self, "_columns", columns)
        setter(self, "_purpose", purpose)
        setter(self, "_at", at)
        setter(self, "_tree_size", tree_size)
        setter(self, "_fingerprint", fingerprint)
        setter(self, "_use", use)
        setter(self, "_requested", requested)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a ConsentedView is read-only")

    @property
    def frame(self) -> pd.DataFrame:
        """A copy of the consented rows: ``subject`` plus the requested columns."""
        return self._frame.copy(deep=True)

    @property
    def subjects(self) -> frozenset[str]:
        """Pseudonyms of the subjects in the view."""
        return self._subjects

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
        return self._requested - len(self._subjects)

    def __len__(self) -> int:
        return len(self._frame)

    def __repr__(self) -> str:
        return (
            f"ConsentedView(purpose={self._purpose!r}, subjects={len(self._subjects)}, "
            f"columns={list(self._columns)}, tree_size={self._tree_size})"
        )


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
    frame: pd.DataFrame,
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
        Customer rows with a ``subject`` column of pseudonyms (several rows per subject allowed).
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
    if SUBJECT not in frame.columns:
        raise ConsentError(f"gate: the frame has no '{SUBJECT}' column of pseudonyms")
    missing = [c for c in requested if c not in frame.columns]
    if missing:
        raise ConsentError(f"gate: requested column(s) {missing} are not in the frame")
    if frame[SUBJECT].isna().any():
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

    unique = pd.unique(frame[SUBJECT].astype(str))
    with ledger.transaction() as txn:
        size = txn.tree_size()
        # Fail closed: every leaf below `size` re-hashed and proven against the signed root,
        # kinds taken from the hashed text, payloads and rotation rows checked (else it raises).
        history = txn.history()
        events = ledger._consent_events(history, size, None)
        coverage = evaluate_subjects(
            events,
            subjects=unique,
            purpose=purpose,
            categories=categories.values(),
            at=at,
            tree_size=size,
            vocabulary=vocab,
        )
        covered = coverage.covered
        if history.suppressed:
            # Erased subjects stay out for good under this key, whatever the receipts say.
            covered = frozenset(s for s in covered if suppression_hash(s) not in history.suppressed)
        kept = frame.loc[_member_mask(frame[SUBJECT], covered), [SUBJECT, *requested]].reset_index(drop=True)
        fingerprint = subject_fingerprint(covered)
        txn.store_subject_set(fingerprint, covered)
        txn.append([_usage_event(use, purpose, at, size, requested, len(covered), fingerprint)])
    return ConsentedView(
        _GATE_TOKEN,
        frame=kept,
        subjects=frozenset(covered),
        columns=requested,
        purpose=purpose,
        at=at,
        tree_size=size,
        fingerprint=fingerprint,
        use=use,
        requested=len(unique),
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
        [_usage_event(use, view.purpose, view.at, view.tree_size, view.columns, len(view.subjects), view.fingerprint)]
    )


def _usage_event(use: UsageContext, purpose: str, at: datetime, tree_size: int, columns: Sequence[str],
                 n_subjects: int, fingerprint: str) -> UsageEvent:
    """The usage record of one stage's use of a consented view (first use and reuse alike)."""
    return UsageEvent(purpose=purpose, partner=use.partner, job_id=use.job_id, model_version=use.model_version,
                      stage=use.stage, at=at, tree_size_read=tree_size, columns=columns, n_subjects=n_subjects,
                      subject_fingerprint=fingerprint)


def _member_mask(subjects: pd.Series, covered: frozenset[str]) -> np.ndarray:
    """Which rows' subjects are covered, vectorised in Arrow.

    pandas' ``isin`` on Arrow-backed strings builds a Python object per value (seconds at 1M rows);
    ``pyarrow.compute.is_in`` gives the same mask in a fraction of that.
    """
    values = pa.array(subjects.astype(str), type=pa.string(), from_pandas=True)
    mask = pc.is_in(values, value_set=pa.array(sorted(covered), type=pa.string()))
    return np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
