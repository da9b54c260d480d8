"""Consent CSV import: everything validated first, one batch, or nothing at all."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedcrm.client.pseudonymise import pseudonymise
from fedcrm.consent.events import ConsentEvent
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import import_consents, make_consent, parse_consents
from fedcrm.errors import ConsentImportError

KEY = bytes(range(32))
HEADER = "customer_id,purpose,category,action,legal_basis,effective_at,recorded_at,source,notice_version,receipt_id,expires_at"
GOOD_ROWS = [
    "7590-VHVEG,churn_prediction,user,withdraw,legitimate_interest,2024-05-01T09:00:00Z,2024-05-01T09:05:00Z,call-centre,2024-03,,",
    "5575-GNVDE,purchase_propensity,user.behavior.purchase_history,grant,consent,2024-04-01T00:00:00+02:00,2024-04-01T00:00:00Z,web-form,2024-03,rcpt-1,2025-04-01T00:00:00Z",
    "3668-QPYBK,purchase_propensity,user.behavior,grant,consent,2024-04-02T10:00:00Z,2024-04-02T10:00:00Z,web-form,2024-03,rcpt-2,",
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "consents.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def pseudo(raw: str) -> str:
    return pseudonymise(raw, KEY)


def test_valid_file_is_imported_as_one_batch_with_pseudonyms_only(ledger: Ledger, tmp_path: Path) -> None:
    ledger.append([make_consent(subject=pseudo("x"), purpose="churn_prediction", category="user", action="withdraw",
                                source="t", notice_version="v")])
    path = write(tmp_path, GOOD_ROWS)
    result = import_consents(ledger, path, pseudonymise=pseudo)
    assert (result.n_events, result.first_index, result.checkpoint.size) == (3, 1, 4)
    assert ledger.latest_checkpoint().size == 4

    stored = [s.event for s in ledger.events(1)]
    assert all(isinstance(e, ConsentEvent) for e in stored)
    assert [e.subject for e in stored] == [pseudo("7590-VHVEG"), pseudo("5575-GNVDE"), pseudo("3668-QPYBK")]
    second = stored[1]
    assert second.receipt_id == "rcpt-1"
    assert second.effective_at == datetime(2024, 3, 31, 22, 0, tzinfo=UTC)
    assert second.expires_at == datetime(2025, 4, 1, tzinfo=UTC)
    assert len(stored[0].receipt_id) == 32  # generated when the source gives none
    # No raw customer id is anywhere in the stored log.
    for leaf in ledger.public_leaves(0, 4):
        assert "VHVEG" not in leaf and "GNVDE" not in leaf


def test_subject_column_takes_pseudonyms_as_they_are(ledger: Ledger, tmp_path: Path) -> None:
    header = HEADER.replace("customer_id", "subject")
    row = GOOD_ROWS[0].replace("7590-VHVEG", pseudo("7590-VHVEG"))
    import_consents(ledger, write(tmp_path, [row], header))
    assert ledger.events()[0].event.subject == pseudo("7590-VHVEG")


def bad(rows_or_row: str, line: int = 3) -> list[str]:
    rows = list(GOOD_ROWS)
    rows[line - 2] = rows_or_row
    return rows


@pytest.mark.parametrize(
    ("rows", "line", "column", "needle"),
    [
        (bad(GOOD_ROWS[1].replace("purchase_propensity", "upselling")), 3, "purpose", "unknown purpose 'upselling'"),
        (bad(GOOD_ROWS[1].replace("user.behavior.purchase_history", "user.shoe_size")), 3, "category", "user.shoe_size"),
        (bad(GOOD_ROWS[1].replace(",grant,", ",opt-in,")), 3, "action", "unknown action 'opt-in'"),
        (bad(GOOD_ROWS[0].replace("legitimate_interest", "vital_interest"), line=2), 2, "legal_basis", "vital_interest"),
        (bad(GOOD_ROWS[1].replace(",consent,", ",contract,")), 3, "legal_basis", "would have no effect"),
        (bad(GOOD_ROWS[2].replace("2024-04-02T10:00:00Z,2024", "2024-04-31T10:00:00Z,2024"), line=4), 4, "effective_at", "not an ISO-8601"),
        (bad(GOOD_ROWS[1].replace("2024-04-01T00:00:00Z,web", "2024-04-01T00:00:00,web")), 3, "recorded_at", "no time zone"),
        (bad(GOOD_ROWS[1].replace("2025-04-01T00:00:00Z", "2023-01-01T00:00:00Z")), 3, "expires_at", "later than effective_at"),
        (bad(GOOD_ROWS[1].replace(",web-form,", ",,")), 3, "source", "missing value"),
        (bad(GOOD_ROWS[1].replace("5575-GNVDE", "")), 3, "customer_id", "missing value"),
        (bad(GOOD_ROWS[2].replace("rcpt-2", "rcpt-1"), line=4), 4, "receipt_id", "duplicate receipt id (first on line 3)"),
        # Timestamps Python parses but cannot represent in UTC (year 1 shifted back, year 9999 forward).
        (bad(GOOD_ROWS[1].replace("2024-04-01T00:00:00+02:00", "0001-01-01T00:00:00+01:00")), 3, "effective_at", "out of range"),
        (bad(GOOD_ROWS[1].replace("2025-04-01T00:00:00Z", "9999-12-31T23:00:00-05:00")), 3, "expires_at", "after 9999-12-31"),
        (bad(GOOD_ROWS[1].replace("2024-04-01T00:00:00Z,web", "2024-04-01T00:00:00+23:59:59.5,web")), 3, "recorded_at", "not an ISO-8601"),
        (bad(GOOD_ROWS[1].replace("2024-04-01T00:00:00Z,web", "2024-W14-1T00:00Z,web")), 3, "recorded_at", "not an ISO-8601"),
        (bad(GOOD_ROWS[1].replace("2024-04-01T00:00:00Z,web", "2024-04-01T00:00:00\x00Z,web")), 3, "recorded_at", "U+0000"),
        # A grant for a category the purpose can never use would be recorded and do nothing.
        (bad(GOOD_ROWS[1].replace("user.behavior.purchase_history", "user.contact.email")), 3, "category", "may not use 'user.contact.email'"),
        # A quoted value with a line break: how an unclosed quote swallows the rows after it.
        (bad(GOOD_ROWS[1].replace(",web-form,", ',"web\n4-NOTAROW,form",')), 3, "source", "line break"),
        # Physical line numbers: a blank line still counts.
        ([GOOD_ROWS[0], "", GOOD_ROWS[1].replace(",grant,", ",opt-in,")], 4, "action", "unknown action"),
    ],
)
def test_first_bad_row_is_named_and_nothing_is_written(
    ledger: Ledger, tmp_path: Path, rows: list[str], line: int, column: str, needle: str
) -> None:
    path = write(tmp_path, rows)
    with pytest.raises(ConsentImportError) as err:
        import_consents(ledger, path, pseudonymise=pseudo)
    message = str(err.value)
    assert message.startswith(f"{path}, line {line}, column '{column}'")
    assert needle in message
    assert ledger.tree_size() == 0


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (HEADER + ",favourite_colour", "column 'favourite_colour': unknown column"),
        (HEADER.replace(",notice_version", ""), "column 'notice_version': required column is missing"),
        ("subject," + HEADER, "exactly one of 'subject' or 'customer_id'"),
        # Two 'action' columns used to let the last one win (grants recorded as withdrawals).
        (HEADER + ",action", "column 'action' appears twice (fields 4 and 12)"),
        (HEADER.replace("source", " source ").replace("notice_version", "source"), "column 'source' appears twice (fields 8 and 9)"),
    ],
)
def test_bad_headers_are_refused_on_line_one(tmp_path: Path, header: str, needle: str) -> None:
    with pytest.raises(ConsentImportError, match="line 1") as err:
        parse_consents(header + "\n", name="h.csv", pseudonymise=pseudo)
    assert needle in str(err.value)


def test_raw_ids_without_the_partner_key_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConsentImportError, match="column 'customer_id': raw ids need the partner key"):
        parse_consents("\n".join([HEADER, *GOOD_ROWS]), name="c.csv")


def test_a_raw_id_in_the_subject_column_is_refused_without_echoing_it(tmp_path: Path) -> None:
    header = HEADER.replace("customer_id", "subject")
    with pytest.raises(ConsentImportError) as err:
        parse_consents("\n".join([header, GOOD_ROWS[0]]), name="c.csv")
    assert "line 2, column 'subject'" in str(err.value)
    assert "7590-VHVEG" not in str(err.value)


def test_extra_fields_and_empty_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConsentImportError, match="line 2: 12 fields, but the header has 11"):
        parse_consents("\n".join([HEADER, GOOD_ROWS[0] + ",surplus"]), name="c.csv", pseudonymise=pseudo)
    with pytest.raises(ConsentImportError, match="line 3: 10 fields, but the header has 11"):
        parse_consents("\n".join([HEADER, GOOD_ROWS[0], GOOD_ROWS[1].rsplit(",", 1)[0]]), name="c.csv", pseudonymise=pseudo)
    with pytest.raises(ConsentImportError, match="no consent records"):
        parse_consents(HEADER + "\n\n", name="c.csv", pseudonymise=pseudo)
    with pytest.raises(ConsentImportError, match="empty file"):
        parse_consents("", name="c.csv")


def test_make_consent_defaults_to_the_purposes_legal_basis_and_names_bad_fields() -> None:
    event = make_consent(subject=pseudo("a"), purpose="purchase_propensity", category="user.behavior.purchase_history",
                         action="grant", source="web", notice_version="v1")
    assert event.legal_basis == "consent" and event.effective_at.tzinfo is not None
    with pytest.raises(ConsentImportError, match="^category: unknown data category"):
        make_consent(subject=pseudo("a"), purpose="churn_prediction", category="user.nope", action="withdraw",
                     source="web", notice_version="v1")


# --- the command line ---------------------------------------------------------------------------


def partner_dir(tmp_path: Path) -> Path:
    from fedcrm.client.pseudonymise import create_key
    from fedcrm.consent.checkpoint import generate_signing_key

    d = tmp_path / "partner"
    generate_signing_key(d / "ledger.key")
    create_key(d / "partner.key")
    return d


def test_cli_import_is_all_or_nothing_and_pseudonymises_with_the_partner_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedcrm.client.pseudonymise import load_key
    from fedcrm.consent.cli import app

    d = partner_dir(tmp_path)
    runner = CliRunner()
    base = ["--partner-dir", str(d), "--origin", "fedcrm/test-partner"]
    bad_path = write(tmp_path, bad(GOOD_ROWS[1].replace(",consent,", ",vibes,")))
    result = runner.invoke(app, ["import", str(bad_path), "--partner-key", str(d / "partner.key"), *base])
    assert result.exit_code == 1
    assert "line 3, column 'legal_basis'" in " ".join(result.output.split())

    good_path = write(tmp_path, GOOD_ROWS)
    result = runner.invoke(app, ["import", str(good_path), "--partner-key", str(d / "partner.key"), *base])
    assert result.exit_code == 0, result.output
    assert "imported 3 consent records" in result.output
    key = load_key(d / "partner.key")
    with Ledger.open(d / "consent.db") as led:
        assert led.tree_size() == 3  # the failed import wrote nothing
        assert led.events()[0].event.subject == pseudonymise("7590-VHVEG", key)


def test_malformed_quoting_is_named_by_the_line_it_starts_on(tmp_path: Path) -> None:
    unclosed = GOOD_ROWS[1].replace(",web-form,", ',"web-form,')
    with pytest.raises(ConsentImportError, match=r"^c.csv, line 3: a quoted field that starts in this record is never closed"):
        parse_consents("\n".join([HEADER, GOOD_ROWS[0], unclosed, GOOD_ROWS[2]]), name="c.csv", pseudonymise=pseudo)
    stray = GOOD_ROWS[1].replace(",web-form,", ',"web"form,')
    with pytest.raises(ConsentImportError, match=r"^c.csv, line 3: malformed CSV"):
        parse_consents("\n".join([HEADER, GOOD_ROWS[0], stray]), name="c.csv", pseudonymise=pseudo)
    huge = GOOD_ROWS[1].replace(",web-form,", f',"{"x" * 200_000}",')
    with pytest.raises(ConsentImportError, match=r"^c.csv, line 3: malformed CSV \(field larger than field limit"):
        parse_consents("\n".join([HEADER, GOOD_ROWS[0], huge]), name="c.csv", pseudonymise=pseudo)


def test_a_file_that_is_not_utf8_is_named_with_byte_and_line(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("\n".join([HEADER, GOOD_ROWS[0], GOOD_ROWS[1].replace("web-form", "f\xf6rm")]).encode("latin-1"))
    with pytest.raises(ConsentImportError, match=rf"^{path}: not UTF-8 text \(invalid start byte at byte \d+, line 3\)"):
        import_consents(ledger, path, pseudonymise=pseudo)
    assert ledger.tree_size() == 0


def test_a_withdrawal_outside_the_purposes_categories_is_still_recorded(ledger: Ledger, tmp_path: Path) -> None:
    # An objection is never thrown away, even when it names a category the purpose does not use today.
    row = GOOD_ROWS[0].replace(",user,", ",user.contact.email,")
    import_consents(ledger, write(tmp_path, [row]), pseudonymise=pseudo)
    assert ledger.events()[0].event.category == "user.contact.email"
    with pytest.raises(ConsentImportError, match="^category: purpose 'churn_prediction' may not use 'user.contact.email'"):
        make_consent(subject=pseudo("a"), purpose="churn_prediction", category="user.contact.email", action="grant",
                     legal_basis="legitimate_interest", source="web", notice_version="v1")


def test_grants_for_parents_and_children_of_the_purposes_categories_are_accepted() -> None:
    # purchase_propensity uses user.behavior.purchase_history: its ancestors cover it, a child narrows it.
    vocab_rows = [GOOD_ROWS[1].replace("user.behavior.purchase_history", cat) for cat in ("user", "user.behavior")]
    events = parse_consents("\n".join([HEADER, *[r.replace("rcpt-1", f"r{i}") for i, r in enumerate(vocab_rows)]]),
                            name="c.csv", pseudonymise=pseudo)
    assert [e.category for e in events] == ["user", "user.behavior"]


def test_reimporting_a_file_is_refused_naming_the_line_and_the_logged_entry(ledger: Ledger, tmp_path: Path) -> None:
    from fedcrm.errors import DuplicateReceipt

    path = write(tmp_path, GOOD_ROWS)
    import_consents(ledger, path, pseudonymise=pseudo)
    before = ledger.latest_checkpoint()
    with pytest.raises(DuplicateReceipt, match=rf"^{path}, line 3, column 'receipt_id': receipt id 'rcpt-1' is already in the ledger \(entry 1\)"):
        import_consents(ledger, path, pseudonymise=pseudo)
    # Only one row known already: still nothing of the file is written.
    fresh = [GOOD_ROWS[0], GOOD_ROWS[1].replace("rcpt-1", "rcpt-9"), GOOD_ROWS[2]]
    with pytest.raises(DuplicateReceipt, match="line 4, column 'receipt_id': receipt id 'rcpt-2'.*entry 2"):
        import_consents(ledger, write(tmp_path, fresh), pseudonymise=pseudo)
    assert ledger.latest_checkpoint() == before
    assert sum(1 for s in ledger.events() if s.event.receipt_id == "rcpt-1") == 1
    # An erased receipt keeps its id in the hashed leaf, so it cannot be re-imported either.
    ledger.erase_subject(pseudo("5575-GNVDE"))
    with pytest.raises(DuplicateReceipt, match="'rcpt-1'"):
        import_consents(ledger, write(tmp_path, [GOOD_ROWS[1]]), pseudonymise=pseudo)
    assert ledger.verify().ok


def test_a_pseudonym_with_a_trailing_newline_is_not_a_pseudonym() -> None:
    # re.match with '$' accepts "…\n"; a subject must be exactly '<key id>:<hex>'.
    with pytest.raises(ConsentImportError, match="^subject: .*pseudonym"):
        make_consent(subject=pseudo("a") + "\n", purpose="churn_prediction", category="user", action="withdraw",
                     source="web", notice_version="v1")
