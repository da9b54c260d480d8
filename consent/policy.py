"""Policy evaluation: may this subject's data of this category be used for this purpose at time t?

Pure functions over consent events (no I/O). Semantics, per purpose P (legal basis B) and
requested data category C at time ``at``, counting only events with ledger index < the tree
size read and ``effective_at <= at``:

* P must allow C: one of P's categories is C or an ancestor of C. Otherwise every subject is
  denied (rule ``purpose.category_not_allowed``) and the gate refuses the column.
* An event speaks for C when it is about purpose P and its category is C or an ancestor of C
  (granting a parent covers its children). A withdrawal of a *child* of C does not withdraw C.
* Events are ordered by (effective_at, ledger index). Let W be the latest withdrawal (recorded
  under any basis: an objection is honoured whatever it cites). A grant counts only if it is
  recorded under B, is later than W, and is in force (``expires_at`` is None or later than ``at``).
* ``opt_in`` bases (consent): covered iff a counting grant exists.
  ``opt_out`` bases (legitimate interest, contract): covered iff there is no W, or a counting grant
  re-covers the subject after W.

Every answer is a ``Decision`` naming the rule and, where one decided, the ledger event, as Fides
policy evaluation does. ``evaluate_subjects`` applies the same rules to many subjects at once with
array operations (``covered_mask``, the gate's columnar path, over Arrow strings); ``evaluate``
answers for one subject with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedcrm.consent.taxonomy import Vocabulary, default_vocabulary
from fedcrm.errors import PurposeNotAllowed

__all__ = [
    "ConsentLike",
    "Coverage",
    "Decision",
    "PurposeEvents",
    "Rule",
    "check_category",
    "covered_mask",
    "evaluate",
    "evaluate_subjects",
    "micros",
    "require_categories",
    "rule_key",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_NEVER = np.iinfo(np.int64).max


class ConsentLike(Protocol):
    """The fields of a consent event the policy reads (``fedcrm.consent.events.ConsentEvent``)."""

    subject: str
    purpose: str
    category: str
    action: str
    legal_basis: str
    effective_at: datetime
    expires_at: datetime | None


class Rule:
    """Names of the rules a ``Decision`` can cite."""

    CATEGORY_ALLOWED = "purpose.category_allowed"
    CATEGORY_NOT_ALLOWED = "purpose.category_not_allowed"
    OPT_IN_GRANT = "opt_in.grant_in_force"
    OPT_IN_NO_GRANT = "opt_in.no_grant"
    OPT_IN_EXPIRED = "opt_in.grant_expired"
    OPT_IN_WITHDRAWN = "opt_in.withdrawn"
    OPT_OUT_NO_OBJECTION = "opt_out.no_objection"
    OPT_OUT_REGRANTED = "opt_out.granted_after_withdrawal"
    OPT_OUT_WITHDRAWN = "opt_out.withdrawn"


@dataclass(frozen=True)
class Decision:
    """An explicit allow/deny with the rule that decided it and, if one did, the ledger event."""

    allowed: bool
    purpose: str
    category: str
    rule: str
    reason: str
    subject: str | None = None
    event_index: int | None = None


def micros(when: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding at the boundaries)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"timestamp {when.isoformat()} has no time zone; consent times must be tz-aware")
    return (when - _EPOCH) // _US



def check_category(purpose: str, category: str, *, vocabulary: Vocabulary | None = None) -> Decision:
    """Does the purpose's policy allow this data category at all (independent of any subject)?"""
    vocab = vocabulary or default_vocabulary()
    spec = vocab.purpose(purpose)
    via = vocab.purpose_covers(purpose, category)
    if via is None:
        allowed = ", ".join(spec.data_categories)
        return Decision(
            False,
            purpose,
            category,
            Rule.CATEGORY_NOT_ALLOWED,
            f"purpose '{purpose}' may use only {allowed}; '{category}' is none of these nor a child of one",
        )
    how = "listed" if via == category else f"a child of '{via}'"
    return Decision(True, purpose, category, Rule.CATEGORY_ALLOWED, f"'{category}' is {how} in purpose '{purpose}'")


def require_categories(
    purpose: str, columns: dict[str, str], *, vocabulary: Vocabulary | None = None
) -> dict[str, Decision]:
    """Check every column's category against the purpose; raise on the first refused column.

    Raises
    ------
    PurposeNotAllowed
        Naming the column, its category and the purpose.
    """
    out: dict[str, Decision] = {}
    for column, category in columns.items():
        decision = check_category(purpose, category, vocabulary=vocabulary)
        if not decision.allowed:
            raise PurposeNotAllowed(
                f"column '{column}' has data category '{category}', which purpose '{purpose}' does not allow: "
                f"{decision.reason}"
            )
        out[column] = decision
    return out


def _relevant(
    events: Iterable[tuple[int, ConsentLike]],
    purpose: str,
    ancestors: Sequence[str],
    at_us: int,
    tree_size: int | None,
    subject: str | None,
) -> list[tuple[int, int, ConsentLike]]:
    """Events that speak for (purpose, category) at ``at``, sorted by (effective time, index)."""
    keep = []
    for index, ev in events:
        if tree_size is not None and index >= tree_size:
            continue
        if subject is not None and ev.subject != subject:
            continue
        if ev.purpose != purpose or ev.category not in ancestors:
            continue
        eff = micros(ev.effective_at)
        if eff <= at_us:
            keep.append((eff, index, ev))
    keep.sort(key=lambda t: (t[0], t[1]))
    return keep


def evaluate(
    events: Iterable[tuple[int, ConsentLike]],
    *,
    subject: str,
    purpose: str,
    category: str,
    at: datetime,
    tree_size: int | None = None,
    vocabulary: Vocabulary | None = None,
) -> Decision:
    """Decide for one subject, one purpose and one data category as of ``at``.

    Parameters
    ----------
    events
        ``(ledger index, consent event)`` pairs; other subjects' events are ignored.
    tree_size
        Count only events with index below it (the ledger size the caller read).
    """
    vocab = vocabulary or default_vocabulary()
    scope = check_category(purpose, category, vocabulary=vocab)
    if not scope.allowed:
        return Decision(False, purpose, category, scope.rule, scope.reason, subject)
    basis = vocab.legal_basis(vocab.purpose(purpose).legal_basis)
    at_us = micros(at)
    rel = _relevant(events, purpose, vocab.ancestors(category), at_us, tree_size, subject)

    last_w = None
    for eff, index, ev in rel:
        if ev.action == "withdraw":
            last_w = (eff, index, ev)
    later = [t for t in rel if last_w is None or (t[0], t[1]) > (last_w[0], last_w[1])]
    grants = [t for t in later if t[2].action == "grant" and t[2].legal_basis == basis.key]
    in_force = [t for t in grants if t[2].expires_at is None or micros(t[2].expires_at) > at_us]

    def decide(allowed: bool, rule: str, reason: str, index: int | None) -> Decision:
        return Decision(allowed, purpose, category, rule, reason, subject, index)

    if in_force:
        _, g_index, g = in_force[-1]
        if basis.coverage == "opt_in":
            return decide(True, Rule.OPT_IN_GRANT, f"grant #{g_index} ({g.category}) is in force", g_index)
        if last_w is not None:
            return decide(
                True,
                Rule.OPT_OUT_REGRANTED,
                f"grant #{g_index} ({g.category}) re-covers the subject after withdrawal #{last_w[1]}",
                g_index,
            )
    if basis.coverage == "opt_out":
        if last_w is None:
            return decide(
                True,
                Rule.OPT_OUT_NO_OBJECTION,
                f"no withdrawal or objection recorded; legal basis '{basis.key}' covers by opt-out",
                None,
            )
        w_index, w = last_w[1], last_w[2]
        why = f"withdrawn by #{w_index} ({w.category}) effective {w.effective_at.isoformat()}"
        return decide(False, Rule.OPT_OUT_WITHDRAWN, why, w_index)
    if grants:
        _, g_index, g = grants[-1]
        assert g.expires_at is not None
        return decide(False, Rule.OPT_IN_EXPIRED, f"grant #{g_index} expired at {g.expires_at.isoformat()}", g_index)
    if last_w is not None:
        w_index, w = last_w[1], last_w[2]
        why = f"withdrawn by #{w_index} ({w.category}) effective {w.effective_at.isoformat()}"
        return decide(False, Rule.OPT_IN_WITHDRAWN, why, w_index)
    why = f"no grant under '{basis.key}' in force; legal basis '{basis.key}' needs opt-in"
    return decide(False, Rule.OPT_IN_NO_GRANT, why, None)


@dataclass(frozen=True)
class Coverage:
    """Which of the requested subjects are covered for every requested category."""

    purpose: str
    categories: tuple[str, ...]
    at: datetime
    tree_size: int | None
    subjects: tuple[str, ...]
    allowed: np.ndarray = field(repr=False)  # bool, aligned with ``subjects``
    _events: tuple[tuple[int, ConsentLike], ...] = field(repr=False, default=())
    _vocabulary: Vocabulary | None = field(repr=False, default=None)

    @property
    def covered(self) -> frozenset[str]:
        """The subjects covered for all categories."""
        return frozenset(s for s, ok in zip(self.subjects, self.allowed, strict=True) if ok)

    def decision(self, subject: str) -> Decision:
        """The reason for one subject: its first denying category, else the last allowing one."""
        last: Decision | None = None
        for category in self.categories:
            last = evaluate(
                self._events,
                subject=subject,
                purpose=self.purpose,
                category=category,
                at=self.at,
                tree_size=self.tree_size,
                vocabulary=self._vocabulary,
            )
            if not last.allowed:
                return last
        assert last is not None
        return last


@dataclass(frozen=True, eq=False)
class PurposeEvents:
    """One purpose's consent events as columns, sorted by (effective time, ledger index): what the mask reads.

    Built once per consent history and purpose: the gate keeps it while the history it read is
    unchanged, so a round evaluates a million subjects without touching an event object. The
    decisions depend on the consent-as-of time only through which events are effective and which
    grants have expired by then, i.e. through :meth:`state`: two times with the same state give
    the same mask.
    """

    purpose: str
    index: np.ndarray  #: int64 ledger index
    subject: pa.Array  #: large_string pseudonym (the newest, across key rotations)
    category: np.ndarray  #: int64 code into ``categories``
    categories: tuple[str, ...]
    withdraw: np.ndarray  #: bool
    basis: np.ndarray  #: int64 code into ``bases``
    bases: tuple[str, ...]
    eff: np.ndarray  #: int64 microseconds, ascending
    exp: np.ndarray  #: int64 microseconds (``_NEVER``: no expiry)
    _exp_sorted: np.ndarray = field(repr=False)
    _index_sorted: np.ndarray = field(repr=False)

    @classmethod
    def from_arrays(cls, purpose: str, *, index: np.ndarray, subject: pa.Array, category: np.ndarray,
                    categories: Sequence[str], withdraw: np.ndarray, basis: np.ndarray, bases: Sequence[str],
                    eff: np.ndarray, exp: np.ndarray) -> PurposeEvents:
        """The events of ``purpose`` given as aligned columns (any order); they are sorted here."""
        index = np.asarray(index, dtype=np.int64)
        eff = np.asarray(eff, dtype=np.int64)
        order = np.lexsort((index, eff))
        take = pa.array(order, type=pa.int64())
        values = subject.cast(pa.large_string()) if subject.type != pa.large_string() else subject
        exp = np.asarray(exp, dtype=np.int64)[order]
        return cls(purpose, index[order], values.take(take), np.asarray(category, dtype=np.int64)[order],
                   tuple(categories), np.asarray(withdraw, dtype=bool)[order], np.asarray(basis, dtype=np.int64)[order],
                   tuple(bases), eff[order], exp, np.sort(exp), np.sort(index))

    @classmethod
    def from_events(cls, events: Sequence[tuple[int, ConsentLike]], purpose: str) -> PurposeEvents:
        """The purpose's events among ``(index, event)`` pairs (one pass over the objects)."""
        rows = [(index, ev.subject, ev.category, ev.action == "withdraw", ev.legal_basis, micros(ev.effective_at),
                 _NEVER if ev.expires_at is None else micros(ev.expires_at))
                for index, ev in events if ev.purpose == purpose]
        index, subject, category, withdraw, basis, eff, exp = (list(c) for c in zip(*rows)) if rows else ([],) * 7
        cat_codes, cat_keys = pd.factorize(np.asarray(category, dtype=object))
        basis_codes, basis_keys = pd.factorize(np.asarray(basis, dtype=object))
        return cls.from_arrays(purpose, index=np.asarray(index, dtype=np.int64),
                               subject=pa.array(subject, type=pa.large_string()), category=cat_codes,
                               categories=[str(k) for k in cat_keys], withdraw=np.asarray(withdraw, dtype=bool),
                               basis=basis_codes, bases=[str(k) for k in basis_keys],
                               eff=np.asarray(eff, dtype=np.int64), exp=np.asarray(exp, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.index)

    def state(self, at: datetime, tree_size: int | None = None) -> tuple[int, int, int]:
        """(events effective by ``at``, grants expired by ``at``, events below ``tree_size``): equal states, equal masks."""
        at_us = micros(at)
        below = len(self) if tree_size is None else int(np.searchsorted(self._index_sorted, tree_size, side="left"))
        return (int(np.searchsorted(self.eff, at_us, side="right")),
                int(np.searchsorted(self._exp_sorted, at_us, side="right")), below)

    def positions(self, subjects: pa.Array) -> np.ndarray:
        """Position in ``subjects`` (distinct pseudonyms) of each event's subject; -1 where absent (a hash probe)."""
        values = subjects.cast(pa.large_string()) if subjects.type != pa.large_string() else subjects
        hits = np.flatnonzero(np.asarray(pc.is_in(values, value_set=pc.unique(self.subject)).fill_null(False),
                                         dtype=bool))
        found = np.asarray(pc.index_in(self.subject, value_set=values.take(pa.array(hits, type=pa.int64())))
                           .fill_null(-1), dtype=np.int64)
        return np.where(found >= 0, hits[np.maximum(found, 0)] if len(hits) else -1, -1)

    def mask(self, where: np.ndarray, n: int, *, categories: Iterable[str], at: datetime,
             tree_size: int | None = None, vocabulary: Vocabulary | None = None) -> np.ndarray:
        """Which of ``n`` distinct subjects are covered for every category; ``where`` from :meth:`positions`."""
        vocab = vocabulary or default_vocabulary()
        cats = tuple(dict.fromkeys(categories))
        require_categories(self.purpose, {c: c for c in cats}, vocabulary=vocab)
        basis = vocab.legal_basis(vocab.purpose(self.purpose).legal_basis)
        at_us = micros(at)
        live = np.arange(len(self)) < int(np.searchsorted(self.eff, at_us, side="right"))  # eff <= at: a prefix
        if tree_size is not None:
            live &= self.index < tree_size
        mine = live & (where >= 0)
        pos = where[mine]
        order = np.flatnonzero(mine)  # rank in (eff, index) order: "later than" compares these
        withdraw = self.withdraw[mine]
        wanted_basis = [i for i, key in enumerate(self.bases) if key == basis.key]
        grant_ok = ~withdraw & np.isin(self.basis[mine], wanted_basis) & (self.exp[mine] > at_us)
        codes = self.category[mine]
        allowed = np.ones(n, dtype=bool)
        for category in cats:
            ancestors = set(vocab.ancestors(category))
            rel = np.isin(codes, [i for i, key in enumerate(self.categories) if key in ancestors])
            last_w = np.full(n, -1, dtype=np.int64)
            w = rel & withdraw
            np.maximum.at(last_w, pos[w], order[w])
            g = rel & grant_ok
            later = order[g] > last_w[pos[g]]
            covered = np.zeros(n, dtype=bool)
            covered[pos[g][later]] = True
            if basis.coverage == "opt_out":
                covered |= last_w < 0
            allowed &= covered
        return allowed


def rule_key(purpose: str, categories: Iterable[str], vocabulary: Vocabulary | None = None) -> tuple[object, ...]:
    """What of the vocabulary a mask depends on: the purpose's basis, its coverage and each category's ancestors."""
    vocab = vocabulary or default_vocabulary()
    basis = vocab.legal_basis(vocab.purpose(purpose).legal_basis)
    return (purpose, basis.key, basis.coverage,
            tuple((c, tuple(sorted(vocab.ancestors(c)))) for c in dict.fromkeys(categories)))


def evaluate_subjects(
    events: Sequence[tuple[int, ConsentLike]],
    *,
    subjects: Iterable[str],
    purpose: str,
    categories: Iterable[str],
    at: datetime,
    tree_size: int | None = None,
    vocabulary: Vocabulary | None = None,
) -> Coverage:
    """Apply ``evaluate``'s rules to many subjects at once (all categories must be covered).

    Raises
    ------
    PurposeNotAllowed
        If the purpose does not allow one of the categories (no subject could be covered).
    """
    vocab = vocabulary or default_vocabulary()
    cats = tuple(dict.fromkeys(categories))
    subject_list = tuple(dict.fromkeys(subjects))
    events = tuple(events)
    allowed = covered_mask(events, pa.array(subject_list, type=pa.large_string()), purpose=purpose, categories=cats,
                           at=at, tree_size=tree_size, vocabulary=vocab)
    return Coverage(purpose, cats, at, tree_size, subject_list, allowed, events, vocab)


def covered_mask(
    events: Sequence[tuple[int, ConsentLike]],
    subjects: pa.Array,
    *,
    purpose: str,
    categories: Iterable[str],
    at: datetime,
    tree_size: int | None = None,
    vocabulary: Vocabulary | None = None,
    locate: Callable[[pa.Array], np.ndarray] | None = None,
) -> np.ndarray:
    """``evaluate_subjects``' decisions as a bool array aligned with ``subjects`` (distinct pseudonyms, Arrow strings).

    The gate's path: no Python object per subject. The subjects are probed against the hash
    set of the (few) subjects the purpose's events name (``pyarrow.compute.is_in``), the events
    are mapped to subject positions among those hits only, and the rules run as numpy
    operations over events; subjects no event names get the basis's default (opt-out
    covers, opt-in does not). Decisions equal ``evaluate`` per subject and category
    (``tests/consent/test_consent_gate_columnar.py``). ``locate`` may replace the lookup: it maps
    the events' subjects (an Arrow array) to their positions in ``subjects`` (-1: absent); the
    gate passes a binary search over its memoised sort order.
    """
    values = subjects.cast(pa.large_string()) if subjects.type != pa.large_string() else subjects
    table = PurposeEvents.from_events(events, purpose)
    where = table.positions(values) if locate is None else np.asarray(locate(table.subject), dtype=np.int64)
    return table.mask(where, len(values), categories=categories, at=at, tree_size=tree_size, vocabulary=vocabulary)
