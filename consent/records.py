"""Consent records in: single grants/withdrawals and all-or-nothing CSV imports.

Every row is checked against the vocabulary before anything is written; the first bad
row is reported with its line number and column, and nothing reaches the ledger. A
valid file becomes one ``ledger.append`` batch (one transaction, one signed head).
Raw customer ids never reach the ledger: a ``customer_id`` column is pseudonymised by a
function the caller supplies (the partner key stays on the partner's side).
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from fedcrm.consent.events import ConsentEvent
from fedcrm.consent.taxonomy import Vocabulary, default_vocabulary
from fedcrm.errors import ConsentImportError, VocabularyError

if TYPE_CHECKING:
    from fedcrm.consent.checkpoint import Checkpoint
    from fedcrm.consent.ledger import Ledger

__all__ = [
    "CSV_COLUMNS",
    "ImportResult",
    "import_consents",
    "make_consent",
    "parse_consents",
    "parse_time",
]

REQUIRED = ("purpose", "category", "action", "legal_basis", "effective_at", "recorded_at", "source", "notice_version")
OPTIONAL = ("receipt_id", "expires_at")
#: Every column a consent CSV may have (plus exactly one of ``subject`` / ``customer_id``).
CSV_COLUMNS = ("subject", "customer_id", *REQUIRED, *OPTIONAL)
ACTIONS = ("grant", "withdraw")

Pseudonymiser = Callable[[str], str]


class _RowError(Exception):
    """A problem with one field; the caller adds file and line."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def parse_time(value: str, column: str = "time") -> datetime:
    """An ISO-8601 timestamp with a time zone (``Z`` allowed), as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _RowError(column, f"'{value}' is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _RowError(column, f"'{value}' has no time zone (write e.g. 2024-05-01T09:00:00Z)")
    return parsed.astimezone(UTC)


def _check_vocabulary(vocab: Vocabulary, purpose: str, category: str, action: str, legal_basis: str) -> None:
    """Raise ``_RowError`` for an unknown key or a grant that could never take effect."""
    checks = (("purpose", vocab.purpose, purpose), ("category", vocab.category, category))
    for column, lookup, value in checks:
        try:
            lookup(value)
        except VocabularyError as exc:
            raise _RowError(column, str(exc)) from None
    if action not in ACTIONS:
        raise _RowError("action", f"unknown action '{action}' (known: {', '.join(ACTIONS)})")
    try:
        vocab.legal_basis(legal_basis)
    except VocabularyError as exc:
        raise _RowError("legal_basis", str(exc)) from None
    expected = vocab.purpose(purpose).legal_basis
    if action == "grant" and legal_basis != expected:
        # A grant under another basis is ignored by the policy; refusing it avoids a record that silently does nothing.
        raise _RowError(
            "legal_basis", f"purpose '{purpose}' rests on '{expected}'; a grant under '{legal_basis}' would have no effect"
        )


def _build(fields: dict[str, str | datetime | None]) -> ConsentEvent:
    try:
        return ConsentEvent.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        column = str(first["loc"][0]) if first["loc"] else "row"
        raise _RowError(column, first["msg"]) from None


def make_consent(
    *,
    subject: str,
    purpose: str,
    category: str,
    action: str,
    legal_basis: str | None = None,
    effective_at: datetime | None = None,
    recorded_at: datetime | None = None,
    source: str,
    notice_version: str,
    expires_at: datetime | None = None,
    receipt_id: str | None = None,
    vocabulary: Vocabulary | None = None,
) -> ConsentEvent:
    """One validated grant or withdrawal; the legal basis defaults to the purpose's, times to now.

    Raises
    ------
    ConsentImportError
        Naming the field that is wrong.
    """
    vocab = vocabulary or default_vocabulary()
    now = datetime.now(UTC)
    try:
        basis = legal_basis or vocab.purpose(purpose).legal_basis
    except VocabularyError as exc:
        raise ConsentImportError(f"purpose: {exc}") from None
    try:
        _check_vocabulary(vocab, purpose, category, action, basis)
        event = _build(
            {
                "receipt_id": receipt_id or uuid.uuid4().hex,
                "subject": subject,
                "purpose": purpose,
                "category": category,
                "action": action,
                "legal_basis": basis,
                "effective_at": effective_at or now,
                "recorded_at": recorded_at or now,
                "source": source,
                "notice_version": notice_version,
                "expires_at": expires_at,
            }
        )
        if event.expires_at is not None and event.expires_at <= event.effective_at:
            raise _RowError("expires_at", "expires_at must be later than effective_at")
    except _RowError as exc:
        raise ConsentImportError(f"{exc.column}: {exc}") from None
    return event


def _row_event(row: dict[str, str], id_column: str, pseudonymise: Pseudonymiser | None, vocab: Vocabulary) -> ConsentEvent:
    for column in (id_column, *REQUIRED):
        if not (row.get(column) or "").strip():
            raise _RowError(column, "missing value")
    values = {k: (v or "").strip() for k, v in row.items() if k is not None}
    _check_vocabulary(vocab, values["purpose"], values["category"], values["action"], values["legal_basis"])
    if id_column == "customer_id":
        assert pseudonymise is not None
        subject = pseudonymise(values["customer_id"])
    else:
        subject = values["subject"]
    effective = parse_time(values["effective_at"], "effective_at")
    expires = parse_time(values["expires_at"], "expires_at") if values.get("expires_at") else None
    if expires is not None and expires <= effective:
        raise _RowError("expires_at", "expires_at must be later than effective_at")
    return _build(
        {
            "receipt_id": values.get("receipt_id") or uuid.uuid4().hex,
            "subject": subject,
            "purpose": values["purpose"],
            "category": values["category"],
            "action": values["action"],
            "legal_basis": values["legal_basis"],
            "effective_at": effective,
            "recorded_at": parse_time(values["recorded_at"], "recorded_at"),
            "source": values["source"],
            "notice_version": values["notice_version"],
            "expires_at": expires,
        }
    )


def parse_consents(
    text: str,
    *,
    name: str,
    pseudonymise: Pseudonymiser | None = None,
    vocabulary: Vocabulary | None = None,
) -> list[ConsentEvent]:
    """Validate a whole consent CSV and return its events; raise on the first bad row.

    Parameters
    ----------
    text
        The CSV text (header row first).
    name
        File name used in error messages.
    pseudonymise
        Turns a raw ``customer_id`` into a pseudonym; required when the file has that column.

    Raises
    ------
    ConsentImportError
        ``<name>, line <n>, column '<col>': <what is wrong>``.
    """
    vocab = vocabulary or default_vocabulary()
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise ConsentImportError(f"{name}, line 1: empty file (expected a header row)")
    reader.fieldnames = header
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        allowed = ", ".join(CSV_COLUMNS)
        raise ConsentImportError(f"{name}, line 1, column '{unknown[0]}': unknown column (allowed: {allowed})")
    ids = [h for h in ("subject", "customer_id") if h in header]
    if len(ids) != 1:
        raise ConsentImportError(f"{name}, line 1: the header needs exactly one of 'subject' or 'customer_id'")
    if ids[0] == "customer_id" and pseudonymise is None:
        raise ConsentImportError(
            f"{name}, line 1, column 'customer_id': raw ids need the partner key to be pseudonymised "
            "(pass --partner-key, or import pseudonyms in a 'subject' column)"
        )
    absent = [c for c in REQUIRED if c not in header]
    if absent:
        raise ConsentImportError(f"{name}, line 1, column '{absent[0]}': required column is missing")

    events: list[ConsentEvent] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if None in row:
            raise ConsentImportError(f"{name}, line {line}: more fields than header columns")
        if not any((v or "").strip() for v in row.values()):
            continue  # a blank line is not a record
        try:
            event = _row_event(row, ids[0], pseudonymise, vocab)
        except _RowError as exc:
            raise ConsentImportError(f"{name}, line {line}, column '{exc.column}': {exc}") from None
        if event.receipt_id in seen:
            raise ConsentImportError(
                f"{name}, line {line}, column 'receipt_id': duplicate receipt id (first on line {seen[event.receipt_id]})"
            )
        seen[event.receipt_id] = line
        events.append(event)
    if not events:
        raise ConsentImportError(f"{name}: no consent records after the header")
    return events


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote: how many records, and the signed head after it."""

    n_events: int
    first_index: int
    checkpoint: Checkpoint


def import_consents(
    ledger: Ledger,
    source: Path | str,
    *,
    text: str | None = None,
    pseudonymise: Pseudonymiser | None = None,
    vocabulary: Vocabulary | None = None,
) -> ImportResult:
    """Validate a consent CSV completely, then append all of it in one ledger transaction.

    Parameters
    ----------
    source
        The CSV path (read unless ``text`` is given; then only its name is used in messages).
    text
        The CSV content, e.g. from an HTTP upload.
    """
    name = str(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConsentImportError(f"{name}: cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConsentImportError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    events = parse_consents(text, name=name, pseudonymise=pseudonymise, vocabulary=vocabulary)
    checkpoint = ledger.append(events)
    return ImportResult(len(events), checkpoint.size - len(events), checkpoint)

