"""What the consent log records: consent receipts, usage records, refusals, key rotations.

Each event becomes one Merkle leaf. The leaf data is the *canonical JSON* (keys sorted,
no whitespace, UTF-8; equal to RFC 8785 JCS for the strings, integers, arrays and nulls
events contain) of the event's public fields plus ``"index"`` (its position, so a
reordered row no longer matches its own leaf) and, for every personal field ``f``, a
field ``"f_salted_sha256"`` = hex SHA-256(salt || UTF-8 value) with a fresh 32-byte salt.
The value and salt live in the erasable ``personal_payloads`` table: erasing them leaves
a leaf that still hashes to what was signed, but from which the value cannot be guessed.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

__all__ = [
    "ERASED",
    "PERSONAL_FIELDS",
    "PseudonymGraph",
    "ConsentEvent",
    "ErasureEvent",
    "KeyRotationEvent",
    "LedgerEvent",
    "OrderRefusalEvent",
    "PrivacySpendEvent",
    "RefusalEvent",
    "TaskApprovalEvent",
    "UsageEvent",
    "VocabularyEvent",
    "canonical_json",
    "event_adapter",
    "from_leaf",
    "leaf_kind",
    "mapping_fingerprint",
    "pseudonym_key_id",
    "salted_hash",
    "subject_fingerprint",
    "suppression_hash",
    "to_leaf",
]

#: Stands in for a personal value whose payload was erased.
ERASED = "<erased>"
#: ``<key_id>:<hex>``: key id = 8 hex chars of SHA-256 of the partner key, then the HMAC in hex.
_PSEUDONYM = re.compile(r"^[0-9a-f]{8}:[0-9a-f]{16,128}$")
SALT_BYTES = 32


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsentEvent(_Event):
    """A grant or withdrawal of consent: a consent receipt (Kantara / ISO/IEC TS 27560 spirit)."""

    kind: Literal["consent"] = "consent"
    receipt_id: str = Field(min_length=1, max_length=200)
    subject: str = Field(description="Pseudonym `<key_id>:<hex>`; personal, stored salted and erasable.")
    purpose: str = Field(min_length=1, max_length=200)
    category: str = Field(min_length=1, max_length=200, description="fideslang data category key")
    action: Literal["grant", "withdraw"]
    legal_basis: Literal["consent", "contract", "legitimate_interest"]
    effective_at: AwareDatetime
    recorded_at: AwareDatetime
    source: str = Field(min_length=1, max_length=500)
    notice_version: str = Field(min_length=1, max_length=100)
    expires_at: AwareDatetime | None = None

    @field_validator("subject")
    @classmethod
    def _is_pseudonym(cls, value: str) -> str:
        if value != ERASED and not _PSEUDONYM.fullmatch(value):  # match() with $ lets a trailing newline through
            # Refusing anything but a pseudonym keeps raw customer ids out of the log.
            raise ValueError("subject must be a pseudonym '<8 hex key id>:<hex HMAC>', never a raw id")
        return value

    @field_validator("effective_at", "recorded_at", "expires_at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)


class UsageEvent(_Event):
    """One use of customer data, as the gate let it through."""

    kind: Literal["usage"] = "usage"
    purpose: str = Field(min_length=1)
    partner: str = Field(min_length=1)
    job_id: str = Field(min_length=1)
    model_version: str = Field(description="`<run_id>:<round>`, empty for non-model uses")
    stage: str = Field(min_length=1, description="stats | fit | evaluate | score | analytics")
    at: AwareDatetime = Field(description="consent-as-of time the gate used")
    tree_size_read: int = Field(ge=0, description="ledger size the gate read consent from")
    columns: tuple[str, ...]
    n_subjects: int = Field(ge=0)
    subject_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")

    _to_utc = field_validator("at")(lambda cls, v: _utc(v))


class RefusalEvent(_Event):
    """The gate refused a request (no personal data)."""

    kind: Literal["refusal"] = "refusal"
    purpose: str
    partner: str
    job_id: str
    column: str
    category: str
    reason: str
    at: AwareDatetime

    _to_utc = field_validator("at")(lambda cls, v: _utc(v))


class KeyRotationEvent(_Event):
    """A partner rotated its pseudonymisation key; the old -> new mapping stays partner-local."""

    kind: Literal["key_rotation"] = "key_rotation"
    old_key_id: str = Field(pattern=r"^[0-9a-f]{8}$")
    new_key_id: str = Field(pattern=r"^[0-9a-f]{8}$")
    mapping_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    at: AwareDatetime

    _to_utc = field_validator("at")(lambda cls, v: _utc(v))


class ErasureEvent(_Event):
    """A subject's personal data was erased (right to erasure); the leaf keeps what verify needs.

    No pseudonym appears in it: ``erased_indices`` are the consent entries whose subject
    payload was removed (verify accepts exactly those missing), ``subject_sets`` and
    ``rotations`` give the fingerprint of what remains of each usage record's subject set
    ``(usage fingerprint, remaining fingerprint, remaining members)`` and of each rotation
    mapping ``(key_rotation index, remaining mapping fingerprint, remaining rows)``, and
    ``suppressed`` holds :func:`suppression_hash` of every pseudonym the subject had, so a
    withdrawal or objection made before the erasure stays in force: the gate never lets
    those pseudonyms through again.
    """

    kind: Literal["erasure"] = "erasure"
    request_id: str = Field(min_length=1, max_length=200)
    at: AwareDatetime
    erased_indices: tuple[int, ...]
    subject_sets: tuple[tuple[str, str, int], ...] = ()
    rotations: tuple[tuple[int, str, int], ...] = ()
    suppressed: tuple[str, ...]

    _to_utc = field_validator("at")(lambda cls, v: _utc(v))


class VocabularyEvent(_Event):
    """The partner's consent vocabulary changed (extra categories, purposes, widened purposes)."""

    kind: Literal["vocabulary"] = "vocabulary"
    partner: str
    vocabulary_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Vocabulary.fingerprint() of the merged vocabulary")
    sources: tuple[str, ...] = Field(description="Extra vocabulary files merged, with their SHA-256")
    added_categories: tuple[str, ...] = ()
    added_purposes: tuple[str, ...] = ()
    widened_purposes: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    at: AwareDatetime

    _to_utc = field_validator("at")(lambda cls, v: _utc(v))


class TaskApprovalEvent(_Event):
    """The partner approved (or revoked) one exact task schema for federated runs."""

    kind: Literal["task_approval"] = "task_approval"
    action: Literal["approve", "revoke"]
    partner: str
    task_name: str
    task_version: str
    task_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the task schema's canonical JSON")
    purpose: str = Field(min_length=1, description="The consent purpose the partner's gate uses for this task")
    approved_by: str = Field("", max_length=200, description="Who decided (free text, e.g. the data-team lead)")
    note: str = Field("", max_length=2000)
    at: AwareDatetime

    _to_utc = field_validator("at")(lambda cls, v: _utc(v))


class OrderRefusalEvent(_Event):
    """The partner refused a coordinator's order before touching any customer data."""

    kind: Literal["order_refusal"] = "order_refusal"
    partner: str
    job_id: str = Field(description="The run id the order named")
    model_version: str = Field(description="`<run_id>:<round>` of the order")
    stage: str
    task_name: str
    task_sha256: str
    purpose: str = Field(description="The purpose the order's task schema declares")
    reason: Literal["task_not_approved", "purpose_not_allowed", "consent_time", "privacy_policy", "privacy_budget"]
    detail: str
    requested_consent_as_of: AwareDatetime | None = Field(None, description="The consent time the order asked for")
    at: AwareDatetime = Field(description="The partner's clock when it refused")

    _to_utc = field_validator("at", "requested_consent_as_of")(lambda cls, v: None if v is None else _utc(v))


class PrivacySpendEvent(_Event):
    """ε a partner spent on a purpose: one differentially private release (a round's update, statistics).

    ``epsilon`` is the run's cumulative ε for this mechanism after this release, from the
    accountant whose full state is ``accountant_state`` (restored on resume, so the
    accountant is kept across rounds and restarts); ``epsilon_spent`` is what this event
    charges to the purpose's budget: ``epsilon`` minus the run's previous cumulative ε for
    the same mechanism. No personal data.
    """

    kind: Literal["dp_spend"] = "dp_spend"
    partner: str = Field(min_length=1)
    purpose: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    server_round: int = Field(ge=0)
    mechanism: str = Field(min_length=1, max_length=100, description="e.g. 'dp-sgd', 'gaussian_statistics', 'gaussian_profiles'")
    epsilon: float = Field(ge=0.0, allow_inf_nan=False)
    epsilon_spent: float = Field(ge=0.0, allow_inf_nan=False)
    delta: float = Field(gt=0.0, lt=1.0)
    accountant: str = Field(min_length=1, description="Accounting method, e.g. 'rdp'")
    accountant_state: dict[str, Any] = Field(default_factory=dict)
    at: AwareDatetime

    _to_utc = field_validator("at")(lambda cls, v: _utc(v))


LedgerEvent = Annotated[
    ConsentEvent | UsageEvent | RefusalEvent | KeyRotationEvent | ErasureEvent | VocabularyEvent | TaskApprovalEvent
    | OrderRefusalEvent | PrivacySpendEvent,
    Field(discriminator="kind"),
]
event_adapter: TypeAdapter[Any] = TypeAdapter(LedgerEvent)

#: Which fields are personal data, per event kind.
PERSONAL_FIELDS: dict[str, frozenset[str]] = {"consent": frozenset({"subject"})}


def pseudonym_key_id(pseudonym: str) -> str:
    """The key id a pseudonym was made with."""
    return pseudonym.split(":", 1)[0]


def subject_fingerprint(subjects: Iterable[str]) -> str:
    """SHA-256 hex over the distinct pseudonyms, sorted, joined by newlines."""
    return hashlib.sha256("\n".join(sorted(set(subjects))).encode()).hexdigest()


def mapping_fingerprint(mapping: Iterable[tuple[str, str]]) -> str:
    """SHA-256 hex over the sorted ``old\tnew\n`` lines of a key-rotation mapping."""
    return hashlib.sha256("".join(sorted(f"{o}\t{n}\n" for o, n in mapping)).encode()).hexdigest()


def suppression_hash(pseudonym: str) -> str:
    """What an erasure keeps of a pseudonym: SHA-256 hex of a domain tag and the pseudonym.

    Only the key holder (the partner) can link it to a customer; the gate compares it
    with the pseudonyms it is given, to keep erased subjects out for good.
    """
    return hashlib.sha256(b"fedcrm-suppression/1\n" + pseudonym.encode()).hexdigest()


_KIND = re.compile(r'"kind":"([a-z_]+)"')


def leaf_kind(public_json: str) -> str | None:
    """The ``kind`` a leaf's own (hashed) text declares; None if it has none.

    A substring match is exact here: in canonical JSON a quote inside a string value is
    escaped, so ``"kind":"…"`` can only be the top-level key (no event nests an object
    whose values are strings under a ``kind`` key).
    """
    m = _KIND.search(public_json)
    return m.group(1) if m else None


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, non-ASCII kept as UTF-8: the bytes that are hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def salted_hash(salt: bytes, value: str) -> str:
    """Hex SHA-256(salt || UTF-8 value)."""
    return hashlib.sha256(salt + value.encode()).hexdigest()


def to_leaf(index: int, event: _Event) -> tuple[str, dict[str, tuple[bytes, str]]]:
    """The public leaf JSON of an event at ``index``, and its personal payloads ``{field: (salt, value)}``."""
    data = event.model_dump(mode="json")
    personal: dict[str, tuple[bytes, str]] = {}
    for name in sorted(PERSONAL_FIELDS.get(data["kind"], ())):
        value = data.pop(name)
        salt = secrets.token_bytes(SALT_BYTES)
        personal[name] = (salt, value)
        data[f"{name}_salted_sha256"] = salted_hash(salt, value)
    data["index"] = index
    return canonical_json(data), personal


def from_leaf(public: Mapping[str, Any], payloads: Mapping[str, str]) -> tuple[Any, bool]:
    """Rebuild an event from its parsed leaf and the payload values still stored.

    Returns the event and whether any personal value was erased (then it reads ``ERASED``).
    """
    data = {k: v for k, v in public.items() if k != "index" and not k.endswith("_salted_sha256")}
    erased = False
    for name in PERSONAL_FIELDS.get(public.get("kind", ""), ()):
        if name in payloads:
            data[name] = payloads[name]
        else:
            data[name] = ERASED
            erased = True
    return event_adapter.validate_python(data), erased


class PseudonymGraph:
    """Old -> new pseudonym edges from key rotations; resolves a subject's history."""

    def __init__(self, edges: Iterable[tuple[str, str]]) -> None:
        self._next: dict[str, str] = {}
        self._adjacent: dict[str, set[str]] = {}
        for old, new in edges:
            self._next[old] = new
            self._adjacent.setdefault(old, set()).add(new)
            self._adjacent.setdefault(new, set()).add(old)

    def aliases(self, subject: str) -> set[str]:
        """Every pseudonym connected to ``subject`` (itself included)."""
        seen, todo = {subject}, [subject]
        while todo:
            for other in self._adjacent.get(todo.pop(), ()):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen

    def newest(self, subject: str) -> str:
        """The pseudonym under the newest key, following old -> new."""
        seen = {subject}
        while subject in self._next and self._next[subject] not in seen:
            subject = self._next[subject]
            seen.add(subject)
        return subject
