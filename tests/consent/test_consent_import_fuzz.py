"""Property-based consent imports: generated malformed CSVs get a clear error or a correct import, never a crash.

Each example starts from a valid consent file and breaks it the ways exports break: a cell
replaced by an out-of-range timestamp, a 20-digit integer, a quote, a line break, a control
character or free text; a duplicated or missing header name; a ragged row; a stray quote or
line break anywhere in the text; a blank line; a receipt id seen earlier in the file or already
in the ledger; bytes that are not UTF-8. The import must then either accept the file exactly
(every record, nothing else) or raise ``ConsentImportError`` naming the file and, for a record,
a physical line that exists, and leave the ledger's database exactly as it was.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcrm.consent.checkpoint import generate_signing_key
from fedcrm.consent.events import ConsentEvent
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import import_consents, make_consent
from fedcrm.consent.taxonomy import default_vocabulary
from fedcrm.errors import ConsentImportError

HEADER = ["subject", "purpose", "category", "action", "legal_basis", "effective_at", "recorded_at", "source",
          "notice_version", "receipt_id", "expires_at"]
COMBOS = [
    ("churn_prediction", "user", "withdraw", "legitimate_interest"),
    ("churn_prediction", "user.financial.billing", "grant", "legitimate_interest"),
    ("purchase_propensity", "user.behavior.purchase_history", "grant", "consent"),
    ("purchase_propensity", "user.behavior", "withdraw", "consent"),
    ("customer_segmentation", "user.demographic.household", "grant", "legitimate_interest"),
]
NASTY = [
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z", "2024-01-01T00:00:00", "2024-W01-1T00:00Z", "2024-01-01T00:00:00+24:00",
    str(2**63), str(2**64 + 1), "-9223372036854775809", "1e309", "inf", "NaN", "", " ", '"', 'a,"b', "x\ny",
    "x\r\ny", "\x00", "\t", "é", "💥", "user.contact.email", "grant", "withdraw", "consent", "contract",
    "seed-receipt", "x" * 300, "0a1b2c3d:" + "f" * 32, "C-1234",
]
NAME = "fuzz.csv"


def _dump(db: Path) -> bytes:
    """The ledger's bytes on disk: the database file and its write-ahead log (SQLite WAL mode)."""
    wal = db.with_name(db.name + "-wal")
    return db.read_bytes() + b"\0WAL\0" + (wal.read_bytes() if wal.exists() else b"")


@st.composite
def valid_rows(draw: st.DrawFn) -> list[list[str]]:
    rows = []
    for n in range(draw(st.integers(1, 5))):
        purpose, category, action, basis = draw(st.sampled_from(COMBOS))
        zone = timezone(timedelta(minutes=draw(st.integers(-14 * 60, 14 * 60))))
        effective = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 10**8)))
        expires = "" if draw(st.booleans()) else (effective + timedelta(days=draw(st.integers(1, 900)))).isoformat()
        rows.append([
            f"0a1b2c3d:{draw(st.integers(0, 2**64)):032x}", purpose, category, action, basis,
            effective.astimezone(zone).isoformat(), effective.isoformat().replace("+00:00", "Z"),
            draw(st.sampled_from(["web", "call centre", "app; v2"])), "2024-01",
            "" if draw(st.booleans()) else f"r-{n}", expires,
        ])
    return rows


def _serialise(header: list[str], rows: list[list[str]], newline: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@st.composite
def consent_files(draw: st.DrawFn) -> str:
    """A consent CSV, valid or broken in zero to three of the ways exports break."""
    header = list(HEADER)
    rows = draw(valid_rows())
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "header", "ragged", "receipt"]))
        if kind == "cell":
            row = draw(st.integers(0, len(rows) - 1))
            col = draw(st.integers(0, len(rows[row]) - 1))  # a row made ragged earlier may be shorter
            rows[row][col] = draw(st.sampled_from(NASTY) | st.text(max_size=12))
        elif kind == "header":
            i = draw(st.integers(0, len(header) - 1))
            header[i] = draw(st.sampled_from([*HEADER, "customer_id", "Action", "", "extra"]))
        elif kind == "ragged":
            row = draw(st.integers(0, len(rows) - 1))
            rows[row] = rows[row][:-1] if draw(st.booleans()) else [*rows[row], "surplus"]
        else:
            target = rows[draw(st.integers(0, len(rows) - 1))]
            if len(target) > 9:
                target[9] = draw(st.sampled_from(["r-0", "seed-receipt"]))
    text = _serialise(header, rows, draw(st.sampled_from(["\n", "\r\n"])))
    for _ in range(draw(st.integers(0, 2))):
        # Text-level damage: a stray quote, delimiter or line break, or a blank line, anywhere.
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(['"', ",", "\n", "\r", "\n\n", "\x00", "\ufeff"])) + text[at:]
    if draw(st.integers(0, 9)) == 0:
        text = "\ufeff" + text
    return text


@pytest.fixture(scope="module")
def fuzz_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, Path]]:
    root = tmp_path_factory.mktemp("import-fuzz")
    key = root / "ledger.key"
    generate_signing_key(key)
    db = root / "consent.db"
    led = Ledger.open(db, signing_key_path=key, origin="fedcrm.test/import-fuzz")
    led.append([make_consent(subject="0a1b2c3d:" + "e" * 32, purpose="churn_prediction", category="user",
                             action="withdraw", source="seed", notice_version="v0", receipt_id="seed-receipt")])
    yield led, root
    led.close()


def _records(text: str) -> list[list[str]]:
    """What a correct import must hold: the non-blank records after the header."""
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True))
    return [r for r in rows[1:] if any(f.strip() for f in r)]


def _check_one(ledger: Ledger, root: Path, source: Path, text_for_oracle: str | None) -> None:
    before_dump, before_size = _dump(root / "consent.db"), ledger.tree_size()
    try:
        result = import_consents(ledger, source)
    except ConsentImportError as exc:
        message = str(exc)
        assert message.startswith(f"{source}"), message
        if match := re.match(rf"^{re.escape(str(source))}, line (\d+)", message):
            # Physical lines as the CSV reader sees them: \r\n, \r and \n each end one.
            physical = len(re.split(r"\r\n|\r|\n", source.read_bytes().decode("utf-8")))
            assert 1 <= int(match.group(1)) <= physical, message
        assert _dump(root / "consent.db") == before_dump, "a failed import changed the ledger's bytes"
        return
    # Accepted: exactly the file's records, each a well-formed receipt the policy can use.
    assert text_for_oracle is not None
    records = _records(text_for_oracle)
    assert result.n_events == len(records) and result.first_index == before_size
    vocab = default_vocabulary()
    stored = [s.event for s in ledger.events(before_size, before_size + result.n_events)]
    for event, record in zip(stored, records, strict=True):
        assert isinstance(event, ConsentEvent)
        values = dict(zip(HEADER, (f.strip() for f in record), strict=False))
        assert (event.subject, event.purpose, event.category, event.action) == (
            values["subject"], values["purpose"], values["category"], values["action"])
        assert event.effective_at.utcoffset() == timedelta(0)
        if event.action == "grant":
            assert event.legal_basis == vocab.purpose(event.purpose).legal_basis
        assert event.expires_at is None or event.expires_at > event.effective_at


def _run_text(fuzz_ledger: tuple[Ledger, Path], text: str) -> None:
    ledger, root = fuzz_ledger
    source = root / NAME
    source.write_text(text, encoding="utf-8", newline="")
    _check_one(ledger, root, source, text)


def _run_bytes(fuzz_ledger: tuple[Ledger, Path], data: bytes) -> None:
    ledger, root = fuzz_ledger
    source = root / NAME
    source.write_bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    _check_one(ledger, root, source, text)


_FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_FAST
@given(text=consent_files())
def test_generated_consent_files_are_imported_exactly_or_refused_with_a_line(fuzz_ledger, text: str) -> None:
    _run_text(fuzz_ledger, text)


@settings(_FAST, max_examples=100)
@given(data=st.builds(lambda t, junk, at: (t.encode() + b"")[:at] + junk + t.encode()[at:], consent_files(),
                      st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80abc"]), st.integers(0, 4000)))
def test_bytes_that_are_not_utf8_are_refused_with_byte_and_line(fuzz_ledger, data: bytes) -> None:
    _run_bytes(fuzz_ledger, data)


@pytest.mark.slow
@_SLOW
@given(text=consent_files() | st.text(max_size=400))
def test_many_generated_consent_files_are_imported_exactly_or_refused_with_a_line(fuzz_ledger, text: str) -> None:
    _run_text(fuzz_ledger, text)
