"""Consent records in: single grants/withdrawals and all-or-nothing CSV imports.

Every row is checked against the vocabulary before anything is written; the first bad
row is reported with its line number and column, and nothing reaches the ledger. A
valid file becomes one ``ledger.append`` batch (one transaction, one signed head).
Raw customer ids never reach the ledger: a ``customer_id`` column is pseudonymised by a
function the caller supplies (the partner key stays on the partner's side).

Import rules beyond the vocabulary (docs/consent.md §4): RFC 4180 quoting checked strictly,
every row exactly as many fields as the header, no duplicated header names, no line breaks or
control characters inside a value, timestamps RFC 3339 with a zone and representable in UTC,
grants only for categories the purpose can use, and no receipt id that is already in the ledger
(a re-import is refused, never duplicated).
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from fedcrm.consent.events import ConsentEvent
from fedcrm.consent.taxonomy import Vocabulary, default_vocabulary
from fedcrm.errors import ConsentImportError, DuplicateReceipt, VocabularyError

if TYPE_CHECKING:
    from fedcrm.consent.checkpoint import Checkpoint
    from fedcrm.consent.ledger import Ledger

__all__ = [
    "CSV_COLUMNS",
    "ImportResult",
    "append_consents",
    "existing_receipts",
    "import_consents",
    "is_rfc3339",
    "make_consent",
    "parse_consents",
    "parse_time",
    "to_utc",
]

REQUIRED = ("purpose", "category", "action", "legal_basis", "effective_at", "recorded_at", "source", "notice_version")
OPTIONAL = ("receipt_id", "expires_at")
#: Every column a consent CSV may have (plus exactly one of ``subject`` / ``customer_id``).
CSV_COLUMNS = ("subject", "customer_id", *REQUIRED, *OPTIONAL)
ACTIONS = ("grant", "withdraw")

Pseudonymiser = Callable[[str], str]

# RFC 3339 (ASCII digits only): Python's fromisoformat alone also takes week dates, NUL bytes
# and second-fraction offsets, none of which a CRM export means.
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})?$"
)
# C0 controls and DEL: a line break inside a value is how an unclosed quote swallows rows.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RECEIPT = re.compile(r'"receipt_id":("(?:[^"\\]|\\.)*")')


class _RowError(Exception):
    """A problem with one field; the caller adds file and line."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def to_utc(value: datetime) -> datetime:
    """``value`` (tz-aware) in UTC; ValueError if that falls outside years 1–9999."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{value.isoformat()} is out of range: in UTC it falls before 0001-01-01 or after 9999-12-31"
        ) from None


def is_rfc3339(value: str) -> bool:
    """Whether ``value`` has the shape of an RFC 3339 timestamp (zone optional here; ``parse_time`` wants one)."""
    return _RFC3339.match(value.strip()) is not None


def parse_time(value: str, column: str = "time") -> datetime:
    """An RFC 3339 timestamp with a time zone (``Z`` allowed), as UTC."""
    text = value.strip()
    match = _RFC3339.match(text)
    try:
        parsed = datetime.fromisoformat(text) if match else None
    except ValueError:
        parsed = None
    if match is None or parsed is None:
        raise _RowError(column, f"'{value}' is not an ISO-8601 timestamp (write e.g. 2024-05-01T09:00:00Z)")
    if match["zone"] is None:
        raise _RowError(column, f"'{value}' has no time zone (write e.g. 2024-05-01T09:00:00Z)")
    try:
        return to_utc(parsed)
    except ValueError as exc:
        raise _RowError(column, f"'{value}' is out of range: {str(exc).split(': ', 1)[1]}") from None


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
    spec = vocab.purpose(purpose)
    if action == "grant" and legal_basis != spec.legal_basis:
        # A grant under another basis is ignored by the policy; refusing it avoids a record that silently does nothing.
        raise _RowError(
            "legal_basis", f"purpose '{purpose}' rests on '{spec.legal_basis}'; a grant under '{legal_basis}' would have no effect"
        )
    related = any(vocab.covers(category, allowed) or vocab.covers(allowed, category) for allowed in spec.data_categories)
    if action == "grant" and not related:
        # Withdrawals are kept whatever their category: an objection is never thrown away (and takes
        # effect should the purpose ever be widened to that category).
        raise _RowError(
            "category",
            f"purpose '{purpose}' may not use '{category}' (its categories: {', '.join(spec.data_categories)}); "
            "a grant for it would have no effect",
        )


def _build(fields: dict[str, str | datetime | None]) -> ConsentEvent:
    try:
        return ConsentEvent.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        column = str(first["loc"][0]) if first["loc"] else "row"
        raise _RowError(column, first["msg"]) from None


def _aware_utc(value: datetime | None, column: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise _RowError(column, f"{value.isoformat()} has no time zone")
    try:
        return to_utc(value)
    except ValueError as exc:
        raise _RowError(column, str(exc)) from None


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
                "effective_at": _aware_utc(effective_at, "effective_at") or now,
                "recorded_at": _aware_utc(recorded_at, "recorded_at") or now,
                "source": source,
                "notice_version": notice_version,
                "expires_at": _aware_utc(expires_at, "expires_at"),
            }
        )
        if event.expires_at is not None and event.expires_at <= event.effective_at:
            raise _RowError("expires_at", "expires_at must be later than effective_at")
    except _RowError as exc:
        raise ConsentImportError(f"{exc.column}: {exc}") from None
    return event


def _row_event(values: dict[str, str], id_column: str, pseudonymise: Pseudonymiser | None, vocab: Vocabulary) -> ConsentEvent:
    for column in (id_column, *REQUIRED):
        if not values.get(column):
            raise _RowError(column, "missing value")
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


def _check_header(header: list[str], name: str, pseudonymise: Pseudonymiser | None) -> str:
    """Validate the header row; return the id column (``subject`` or ``customer_id``)."""
    if not any(header):
        raise ConsentImportError(f"{name}, line 1: empty file (expected a header row)")
    first_at: dict[str, int] = {}
    for position, column in enumerate(header, start=1):
        if column in first_at:
            # Two columns of one name would let the later one silently win (e.g. two 'action's).
            raise ConsentImportError(
                f"{name}, line 1: column '{column}' appears twice (fields {first_at[column]} and {position})"
            )
        first_at[column] = position
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
    return ids[0]


def _parse(
    text: str, name: str, pseudonymise: Pseudonymiser | None, vocab: Vocabulary
) -> tuple[list[ConsentEvent], list[int]]:
    """The events of a consent CSV and the physical line each record starts on."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    start = 1
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise ConsentImportError(f"{name}, line 1: {_csv_problem(exc)}") from None
    id_column = _check_header(header, name, pseudonymise)
    if _CONTROL.search("".join(header)):
        raise ConsentImportError(f"{name}, line 1: a header name contains a line break or control character")

    events: list[ConsentEvent] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    while True:
        start = reader.line_num + 1  # the physical line this record starts on (records may span lines)
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ConsentImportError(f"{name}, line {start}: {_csv_problem(exc)}") from None
        if not any(f.strip() for f in fields):
            continue  # a blank line (or a row of empty fields) is not a record
        if len(fields) != len(header):
            raise ConsentImportError(f"{name}, line {start}: {len(fields)} fields, but the header has {len(header)}")
        values = {column: field.strip() for column, field in zip(header, fields, strict=True)}
        try:
            for column, field in values.items():
                if bad := _CONTROL.search(field):
                    what = "a line break" if bad.group() in "\r\n" else f"control character U+{ord(bad.group()):04X}"
                    hint = " (a quote left open swallows the rows after it)" if bad.group() in "\r\n" else ""
                    raise _RowError(column, f"value contains {what}{hint}")
            event = _row_event(values, id_column, pseudonymise, vocab)
        except _RowError as exc:
            raise ConsentImportError(f"{name}, line {start}, column '{exc.column}': {exc}") from None
        if event.receipt_id in seen:
            raise ConsentImportError(
                f"{name}, line {start}, column 'receipt_id': duplicate receipt id (first on line {seen[event.receipt_id]})"
            )
        seen[event.receipt_id] = start
        events.append(event)
        lines.append(start)
    if not events:
        raise ConsentImportError(f"{name}: no consent records after the header")
    return events, lines


def _csv_problem(exc: csv.Error) -> str:
    message = str(exc)
    if "unexpected end of data" in message:
        return "a quoted field that starts in this record is never closed"
    return f"malformed CSV ({message})"


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
        ``<name>, line <n>, column '<col>': <what is wrong>`` (line: where the record starts).
    """
    return _parse(text, name, pseudonymise, vocabulary or default_vocabulary())[0]


_SCAN = 20_000


def existing_receipts(ledger: Ledger, receipt_ids: set[str], *, upto_size: int | None = None) -> dict[str, int]:
    """Which of ``receipt_ids`` the log already holds, and at which index (read from the hashed leaves).

    Erased receipts count too: their receipt id stays in the public leaf.
    """
    size = ledger.tree_size() if upto_size is None else upto_size
    found: dict[str, int] = {}
    for start in range(0, size, _SCAN):
        for offset, leaf in enumerate(ledger.public_leaves(start, min(start + _SCAN, size))):
            match = _RECEIPT.search(leaf)
            if match is None:
                continue
            receipt = json.loads(match.group(1))
            if receipt in receipt_ids and receipt not in found:
                found[receipt] = start + offset
    return found


def append_consents(
    ledger: Ledger, events: Sequence[ConsentEvent], *, name: str = "request", lines: Sequence[int] | None = None
) -> Checkpoint:
    """Append consent events in one transaction unless one of their receipt ids is already logged.

    Raises
    ------
    DuplicateReceipt
        Naming the first such receipt (and its line, when ``lines`` gives the source lines).
    """
    with ledger.transaction() as txn:
        # Read inside the write transaction: writers are serialised, so nobody can add the same
        # receipt between this check and the append.
        existing = existing_receipts(ledger, {e.receipt_id for e in events}, upto_size=txn.tree_size())
        for pos, event in enumerate(events):
            if event.receipt_id in existing:
                where = f"{name}, line {lines[pos]}, column 'receipt_id'" if lines is not None else f"{name}: receipt_id"
                raise DuplicateReceipt(
                    f"{where}: receipt id '{event.receipt_id}' is already in the ledger "
                    f"(entry {existing[event.receipt_id]}); was this imported before? Nothing was written"
                )
        txn.append(list(events))
    return txn.checkpoint or ledger.latest_checkpoint()


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

    Raises
    ------
    ConsentImportError
        The first problem, naming file, line and column; :class:`DuplicateReceipt` for a receipt
        id already in the ledger. Nothing is written in either case.
    """
    name = str(source)
    if text is None:
        try:
            text = Path(source).read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConsentImportError(f"{name}: cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConsentImportError(f"{name}: {describe_decode_error(exc)}") from exc
    events, lines = _parse(text, name, pseudonymise, vocabulary or default_vocabulary())
    checkpoint = append_consents(ledger, events, name=name, lines=lines)
    return ImportResult(len(events), checkpoint.size - len(events), checkpoint)


def describe_decode_error(exc: UnicodeDecodeError) -> str:
    """``not UTF-8 text (… at byte N, line L)`` for a failed decode of a whole file."""
    line = exc.object[: exc.start].count(b"\n") + 1
    return f"not UTF-8 text ({exc.reason} at byte {exc.start}, line {line})"
