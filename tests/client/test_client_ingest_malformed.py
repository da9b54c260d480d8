"""Malformed exports: a clear error or a reject naming file, physical line and column — never a traceback,
never a silently swallowed row, never a raw id in the pseudonymised table, never a leftover temporary file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import fedcrm.client.ingest as ingest_module
from fedcrm.client.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import CUSTOMERS_FILE, ID_MAP_FILE, REJECTS_FILE, ingest
from fedcrm.client.pseudonymise import create_key, load_key
from fedcrm.errors import (
    ConfigError,
    DataValidationError,
    ExportFormatError,
    PartnerKeyInvalid,
    RejectFractionExceeded,
)

CONFIG = """
name = "M"
[source]
path = "export.csv"
chunk_rows = {chunk_rows}
max_reject_fraction = {fraction}
{source_extra}
[columns.id]
role = "customer_id"
category = "user.unique_id"
[columns.spend]
role = "feature"
type = "numeric"
min = 0
category = "user.financial.billing"
[columns.visits]
role = "feature"
type = "integer"
category = "user.behavior"
[columns.plan]
role = "feature"
type = "categorical"
category = "user.behavior.service_subscription"
[columns.since]
role = "feature"
type = "date"
category = "user.behavior.service_subscription"
[columns.note]
role = "ignore"
[columns.left]
role = "label"
positive = ["yes"]
negative = ["no"]
category = "user.behavior.service_subscription"
"""
HEADER = b"id,spend,visits,plan,since,note,left\n"


def row(i: int, **values: str) -> bytes:
    """One valid data row for customer i (fields overridable by name)."""
    fields = {"id": f"ID-{i:05d}-X", "spend": f"{i}.5", "visits": str(i % 7), "plan": "basic",
              "since": "2021-03-04", "note": "ok", "left": "yes" if i % 2 else "no"} | values
    return (",".join(fields.values()) + "\n").encode()


GOOD = [row(i) for i in range(20)]


def partner(tmp_path: Path, data: bytes, *, fraction: float = 0.5, chunk_rows: int = 4, source_extra: str = "",
            key: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "export.csv").write_bytes(data)
    path = tmp_path / "partner.toml"
    path.write_text(CONFIG.format(fraction=fraction, chunk_rows=chunk_rows, source_extra=source_extra))
    if key:
        create_key(load_partner_config(path).key_path)
    return path


def rejects_of(config_path: Path) -> list[list[str]]:
    config = load_partner_config(config_path)
    frame = pd.read_csv(config.work_path / REJECTS_FILE, dtype=str, keep_default_na=False)
    return frame.values.tolist()


def written(config_path: Path) -> list[str]:
    work = load_partner_config(config_path).work_path
    return sorted(p.name for p in work.iterdir()) if work.exists() else []


def raw_ids(data: bytes) -> list[str]:
    return [line.split(b",", 1)[0].decode("utf-8", "replace").strip('"') for line in data.splitlines()[1:]
            if line.startswith(b"ID-") or line.startswith(b'"ID-')]


def assert_no_raw_id_in_outputs(config_path: Path, ids: list[str]) -> None:
    """Scan every cell of the pseudonymised table for every raw id of the export (substring match)."""
    config = load_partner_config(config_path)
    customers = pd.read_parquet(config.work_path / CUSTOMERS_FILE)
    text = "\n".join(customers.astype("string").fillna("").to_numpy().ravel().tolist())
    leaked = [i for i in ids if i in text]
    assert not leaked, f"raw ids in {CUSTOMERS_FILE}: {leaked[:5]}"


# --- whole-file errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "message"), [
    (b"", r"export\.csv: the export is empty: no header line"),
    (b"\n\n  \n", r"export\.csv: the export is empty: no header line"),
    (HEADER, r"export\.csv: only a header \(line 1\), no data rows"),
    (b"\n" + HEADER + b"\n", r"export\.csv: only a header \(line 2\), no data rows"),
    (HEADER.replace(b"left", b"spend"), r"export\.csv: line 1: column names: 'spend' appears twice \(columns 2 and 7\)"),
    (HEADER.replace(b"note", b" plan "), r"'plan' appears twice \(columns 4 and 6\)"),
    (HEADER + GOOD[0] + b"ID-9,1,1,ba\x00sic,2021-01-01,,no\n", r"export\.csv: line 3: contains a NUL byte"),
    (HEADER + GOOD[0].rstrip(b"\n") + b"\r" + GOOD[1], r"export\.csv: line 2: a lone carriage return"),
    (b'id,"spend\n' + HEADER, r"export\.csv: line 1: the header spans lines 1–2"),
])
def test_unreadable_exports_name_the_file_and_line_and_write_nothing(tmp_path: Path, data: bytes,
                                                                     message: str) -> None:
    path = partner(tmp_path, data)
    with pytest.raises(ExportFormatError, match=message):
        ingest(load_partner_config(path))
    assert written(path) == []


def test_non_utf8_bytes_name_line_and_byte_offset_and_a_declared_encoding_is_honoured(tmp_path: Path) -> None:
    data = HEADER + b"".join(GOOD[:3]) + row(3, plan="caf\xe9".encode("latin-1").decode("latin-1")).replace(
        b"caf\xc3\xa9", b"caf\xe9") + b"".join(GOOD[4:6])
    offset = data.index(b"\xe9")
    path = partner(tmp_path / "utf8", data)
    with pytest.raises(ExportFormatError) as err:
        ingest(load_partner_config(path))
    message = str(err.value)
    line_start = data.rindex(b"\n", 0, offset) + 1
    assert f"export.csv: line 5, byte {offset - line_start + 1} of the line (file offset {offset})" in message
    assert "not valid utf-8" in message and "source.encoding" in message and "partner.toml" in message
    assert written(path) == []
    latin = partner(tmp_path / "latin", data, source_extra='encoding = "latin-1"')
    report = ingest(load_partner_config(latin))
    assert report.rows_kept == 6
    customers = pd.read_parquet(report.outputs["customers"])
    assert customers["plan"].tolist()[3] == "café"


def test_a_utf8_byte_order_mark_and_crlf_line_ends_are_read(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + (HEADER + b"".join(GOOD[:5])).replace(b"\n", b"\r\n")
    report = ingest(load_partner_config(partner(tmp_path, data)))
    assert report.rows_kept == 5 and report.rows_rejected == 0
    assert pd.read_parquet(report.outputs["customers"])["label"].tolist() == [0, 1, 0, 1, 0]


@pytest.mark.parametrize(("extra", "message"), [
    ('encoding = "utf-9"', r"unknown encoding 'utf-9'"),
    ('encoding = "utf-16"', r"not ASCII-compatible"),
    ('delimiter = ";;"', r"the delimiter must be one character"),
    ("header = false", r"header = false needs the column names"),
    ("max_magnitude = -1", r"max_magnitude"),
])
def test_source_settings_that_cannot_work_are_config_errors(tmp_path: Path, extra: str, message: str) -> None:
    path = partner(tmp_path, HEADER + GOOD[0], source_extra=extra, key=False)
    with pytest.raises(ConfigError, match=message):
        load_partner_config(path)


def test_duplicate_names_in_column_names_are_refused(tmp_path: Path) -> None:
    names = '["id", "spend", "visits", "plan", "since", "plan", "left"]'
    path = partner(tmp_path, b"".join(GOOD[:3]), source_extra=f"header = false\ncolumn_names = {names}")
    with pytest.raises(ExportFormatError, match=r"source.column_names in .*partner\.toml: 'plan' appears twice "
                                                r"\(columns 4 and 6\)"):
        ingest(load_partner_config(path))


def test_duplicate_parquet_column_names_are_refused(tmp_path: Path) -> None:
    columns = [pa.array(["ID-1", "ID-2"]), pa.array(["1", "2"]), pa.array(["yes", "no"]), pa.array(["no", "yes"])]
    pq.write_table(pa.Table.from_arrays(columns, names=["id", "spend", "left", "left"]), tmp_path / "export.parquet")
    path = partner(tmp_path, b"")
    path.write_text(path.read_text().replace('path = "export.csv"', 'path = "export.parquet"'))
    with pytest.raises(ExportFormatError, match=r"export\.parquet: column 'left' appears twice \(columns 3 and 4\)"):
        ingest(load_partner_config(path))


# --- rows rejected with their physical line -------------------------------------------------------


def test_a_quote_open_at_the_first_data_row_rejects_everything_it_swallowed(tmp_path: Path) -> None:
    data = HEADER + GOOD[0].replace(b",basic,", b',"basic,') + b"".join(GOOD[1:10])
    path = partner(tmp_path, data)
    with pytest.raises(RejectFractionExceeded) as err:
        ingest(load_partner_config(path))
    assert ("export.csv: line 2, column 'plan': a quote opened in column 'plan' on line 2 is never closed: "
            "lines 2–11 would be one value") in str(err.value)
    assert "10 of 10 rows rejected" in str(err.value)
    assert [r[0] for r in rejects_of(path)] == [str(n) for n in range(2, 12)]
    assert written(path) == [REJECTS_FILE]


def test_a_quote_closed_ten_rows_later_never_turns_ten_customers_into_one_value(tmp_path: Path) -> None:
    # Line 4 opens a quote in 'plan'; line 14 closes it: one record of the right width spanning 11 lines.
    lines = [row(i) for i in range(30)]
    lines[2] = lines[2].replace(b",basic,", b',"basic,')
    lines[12] = lines[12].replace(b",basic,", b',basic",')
    data = HEADER + b"".join(lines)
    path = partner(tmp_path, data)
    report = ingest(load_partner_config(path))
    rejects = rejects_of(path)
    assert [int(r[0]) for r in rejects] == list(range(4, 15))
    assert rejects[0][1] == "plan" and "quoted value spans lines 4–14" in rejects[0][3]
    assert all(r[3] == "inside the quoted value opened on line 4" for r in rejects[1:])
    assert report.rows_rejected == 11 and report.rows_kept == 19 and report.rows_read == 30
    assert_no_raw_id_in_outputs(path, raw_ids(data))
    id_map = pd.read_parquet(report.outputs["id_map"])
    assert "ID-00005-X" not in set(id_map["customer_id"])  # swallowed: rejected, not kept under another id


def test_multiline_values_are_kept_only_in_free_text_columns_and_never_when_they_hold_rows(tmp_path: Path) -> None:
    lines = [row(i) for i in range(12)]
    lines[1] = row(1, note='"line one\nline two"')          # a real two-line note: kept
    lines[3] = row(3, plan='"basic\nvalue"')                 # a line break in a categorical: rejected
    lines[6] = lines[6].replace(b",ok,", b',"ok,')           # a quote in the note swallowing rows 7-9
    lines[9] = lines[9].replace(b",ok,", b',ok",')
    data = HEADER + b"".join(lines)
    path = partner(tmp_path, data, source_extra="multiline_values = true")
    report = ingest(load_partner_config(path))
    rejects = rejects_of(path)
    # Physical lines: the note of customer 1 takes lines 3-4, so customer 3 starts on line 6.
    assert rejects[0][:2] == ["6", "plan"] and "may not hold line breaks" in rejects[0][3]
    assert rejects[2][:2] == ["10", "note"] and "look like rows" in rejects[2][3]
    assert [int(r[0]) for r in rejects] == [6, 7, 10, 11, 12, 13]
    assert report.rows_kept == 7
    assert_no_raw_id_in_outputs(path, raw_ids(data))


def test_reject_lines_are_physical_after_blank_lines_and_embedded_line_breaks(tmp_path: Path) -> None:
    data = (HEADER + b"\n" + GOOD[0] + b"\n\n" + row(1, note='"a\nb\nc"') + row(2, spend="abc")
            + b"   \n" + row(3, visits="1.5"))
    path = partner(tmp_path, data, source_extra="multiline_values = true")
    ingest(load_partner_config(path))
    assert [r[:3] for r in rejects_of(path)] == [["9", "spend", "abc"], ["11", "visits", "1.5"]]


def test_ragged_rows_are_rejected_with_their_field_count(tmp_path: Path) -> None:
    data = (HEADER + GOOD[0].replace(b",no\n", b",no,surplus\n") + b"".join(GOOD[1:4])
            + b"ID-00090-X,1,2\n" + b"".join(GOOD[4:8]))
    path = partner(tmp_path, data)
    report = ingest(load_partner_config(path))
    rejects = rejects_of(path)
    assert rejects == [
        ["2", "", "ID-00000-X,0.5,0,basic,2021-03-04,ok,no,surplus",
         "8 fields where the header (line 1) has 7; extra value 'surplus' (an unquoted delimiter?)"],
        ["6", "", "ID-00090-X,1,2", "3 fields where the header (line 1) has 7"],
    ]
    assert report.rows_read == 9 and report.rows_kept == 7


def test_ids_holding_a_delimiter_or_quote_are_rejected(tmp_path: Path) -> None:
    data = HEADER + row(0, id='"ID-0,0"') + row(1, id='ID-"1"') + b"".join(GOOD[2:6])
    path = partner(tmp_path, data)
    ingest(load_partner_config(path))
    rejects = rejects_of(path)
    assert [(r[0], r[1], r[2]) for r in rejects] == [("2", "id", "ID-0,0"), ("3", "id", 'ID-"1"')]
    assert all("customer id holds a delimiter, quote or line break" in r[3] for r in rejects)


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("spend", "inf", "not a finite number"),
    ("spend", "Infinity", "not a finite number"),
    ("spend", "-inf", "not a finite number"),
    ("spend", "1e309", "not a finite number"),
    ("spend", "9" * 400, "not a finite number"),
    ("spend", "nan", "not a number: 'nan'"),
    ("spend", "-1", "below minimum 0.0"),
    ("spend", "2e15", "above the default bound ±1e+15 (source.max_magnitude"),
    ("visits", "-2e15", "below the default bound ±1e+15"),
    ("visits", "1e300", "above the default bound"),
    ("visits", "1e16", "above the default bound"),
    ("visits", "inf", "not a finite number"),
    ("since", "0001-01-01", "date before the earliest accepted day 1900-01-01"),
    ("since", "9999-12-31", "date after the latest accepted day 2100-12-31"),
    ("since", "2300-01-01", "date after the latest accepted day"),
])
def test_non_finite_and_out_of_bound_values_are_rejected_per_row(tmp_path: Path, column: str, value: str,
                                                                 reason: str) -> None:
    data = HEADER + b"".join(GOOD[:3]) + row(3, **{column: value}) + b"".join(GOOD[4:8])
    path = partner(tmp_path, data, source_extra="max_magnitude = 1e15")
    report = ingest(load_partner_config(path))
    rejects = rejects_of(path)
    assert len(rejects) == 1 and rejects[0][:2] == ["5", column] and reason in rejects[0][3], rejects
    customers = pd.read_parquet(report.outputs["customers"])
    assert report.rows_kept == 7 and customers[["spend", "visits"]].abs().max().max() < 1e15
    assert customers["since"].min() >= pd.Timestamp("1900-01-01")


def test_declared_bounds_override_the_defaults(tmp_path: Path) -> None:
    path = partner(tmp_path, HEADER + row(0, spend="5e15", since="1850-06-01") + row(1, visits="1e16")
                   + b"".join(GOOD[2:5]))
    path.write_text(path.read_text().replace("min = 0\n", "min = 0\nmax = 1e16\n").replace(
        'type = "integer"\n', 'type = "integer"\nmax = 1e17\n').replace(
        'type = "date"\n', 'type = "date"\nearliest = 1800-01-01\n'))
    report = ingest(load_partner_config(path))
    assert rejects_of(path) == [["3", "visits", "1e16", "integer beyond ±2^53 (not exact as a 64-bit float): '1e16'"]]
    customers = pd.read_parquet(report.outputs["customers"])
    assert customers["spend"].iloc[0] == 5e15 and customers["since"].iloc[0] == pd.Timestamp("1850-06-01")


# --- all or nothing, and file modes ------------------------------------------------------------------


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 000: every mode the test sees is the one fedcrm chose, not the umask's."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_outputs_temporary_files_ledger_and_key_are_0600_whatever_the_umask(
        tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = partner(tmp_path, HEADER + b"".join(GOOD), key=False)
    result = CliRunner().invoke(app, ["init", "--config", str(path)])
    assert result.exit_code == 0, result.output
    config = load_partner_config(path)
    assert stat.S_IMODE(config.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "consent.db").stat().st_mode) == 0o600
    seen: dict[str, int] = {}
    real_append = ingest_module._append

    def spy(writers, name, tmp, frame):  # type: ignore[no-untyped-def]
        real_append(writers, name, tmp, frame)
        seen[tmp.name] = stat.S_IMODE(tmp.stat().st_mode)

    monkeypatch.setattr(ingest_module, "_append", spy)
    ingest(config)
    assert seen == {f".{CUSTOMERS_FILE}.tmp": 0o600, f".{ID_MAP_FILE}.tmp": 0o600}
    assert _modes(config.work_path) == {CUSTOMERS_FILE: 0o600, ID_MAP_FILE: 0o600, REJECTS_FILE: 0o600}


@pytest.mark.parametrize("failure", ["parse", "interrupt", "replace", "rejects"])
def test_no_temporary_file_survives_any_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                failure: str) -> None:
    path = partner(tmp_path, HEADER + b"".join(GOOD), chunk_rows=4)
    config = load_partner_config(path)
    calls = {"n": 0}
    real_parse, real_replace = ingest_module.parse_chunk, os.replace

    def parse_then_fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # two chunks already streamed into the temporary files
            raise KeyboardInterrupt if failure == "interrupt" else DataValidationError("boom")
        return real_parse(*args, **kwargs)

    def replace_then_fail(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst).name == ID_MAP_FILE:
            raise OSError("disk full")
        return real_replace(src, dst)

    if failure in ("parse", "interrupt"):
        monkeypatch.setattr(ingest_module, "parse_chunk", parse_then_fail)
    elif failure == "replace":
        monkeypatch.setattr(ingest_module.os, "replace", replace_then_fail)
    else:
        monkeypatch.setattr(ingest_module, "write_rejects", lambda *a: (_ for _ in ()).throw(OSError("read-only")))
    with pytest.raises((DataValidationError, KeyboardInterrupt, OSError)):
        ingest(config)
    left = [p.name for p in config.work_path.iterdir() if p.name.endswith(".tmp")]
    assert left == []
    assert ID_MAP_FILE not in written(path)


def test_transaction_ingest_outputs_are_0600_and_leave_no_temporary_file(tmp_path: Path, open_umask: None) -> None:
    from tests.client.test_client_transaction_ingest import ROWS, _partner  # noqa: PLC0415

    config = load_partner_config(_partner(tmp_path, [r if r[2] != "10,5" else (r[0], r[1], "10.5", r[3])
                                                     for r in ROWS]))
    ingest(config)
    assert _modes(config.work_path) == {CUSTOMERS_FILE: 0o600, ID_MAP_FILE: 0o600, REJECTS_FILE: 0o600,
                                        "transactions.parquet": 0o600}


# --- the partner key ----------------------------------------------------------------------------------


def test_a_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = partner(tmp_path, HEADER + b"".join(GOOD))
    config = load_partner_config(path)
    os.chmod(config.key_path, 0o644)
    with pytest.raises(PartnerKeyInvalid, match=r"partner\.key: the partner key has mode 0644.*`chmod 600 .*partner\.key`"):
        ingest(config)
    result = CliRunner().invoke(app, ["ingest", "--config", str(path)])
    assert result.exit_code == 1 and "chmod 600" in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and written(path) == []
    os.chmod(config.key_path, 0o400)  # owner-only read is as good
    assert len(load_key(config.key_path)) == 32


@pytest.mark.parametrize("content", [b"not a key at all", b"ab" * 31, b"zz" * 32, b"\xff\xfe" * 32, b"",
                                     b"ab" * 33])
def test_a_key_file_with_bad_content_is_refused(tmp_path: Path, content: bytes) -> None:
    key_path = tmp_path / "partner.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(PartnerKeyInvalid, match=r"partner\.key: not a partner key: expected 64 hex characters"):
        load_key(key_path)


def test_an_unreadable_or_corrupt_export_is_an_error_naming_it(tmp_path: Path) -> None:
    path = partner(tmp_path, b"")
    (tmp_path / "export.csv").unlink()
    (tmp_path / "export.csv").mkdir()
    with pytest.raises(ExportFormatError, match=r"export\.csv: cannot read the export"):
        ingest(load_partner_config(path))
    table = pa.table({"id": [f"ID-{i}" for i in range(2000)], "spend": ["1"] * 2000})
    pq.write_table(table, tmp_path / "export.parquet")
    raw = (tmp_path / "export.parquet").read_bytes()
    (tmp_path / "export.parquet").write_bytes(raw[:-8] + b"\xff\xff\xff\x7f" + raw[-4:])  # footer length broken
    path.write_text(path.read_text().replace('path = "export.csv"', 'path = "export.parquet"'))
    with pytest.raises(ExportFormatError, match=r"export\.parquet: not a readable Parquet file"):
        ingest(load_partner_config(path))


def test_a_file_without_line_breaks_is_refused_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcrm.client import export_reader  # noqa: PLC0415

    monkeypatch.setattr(export_reader, "MAX_LINE_BYTES", 4096)
    monkeypatch.setattr(export_reader, "BLOCK_BYTES", 1024)
    path = partner(tmp_path, HEADER + b"".join(g.replace(b"\n", b"\r") for g in GOOD) * 20)
    with pytest.raises(ExportFormatError, match=r"export\.csv: line 2 is longer than 0 MB: not a CSV"):
        ingest(load_partner_config(path))


def test_dates_with_differing_utc_offsets_are_read_in_utc(tmp_path: Path) -> None:
    data = HEADER + row(0, since="2024-01-01T10:00:00+0100") + row(1, since="2024-01-01T10:00:00+0200") + row(
        2, since="2024-01-01")
    path = partner(tmp_path, data, source_extra='date_formats = ["%Y-%m-%dT%H:%M:%S%z"]')
    report = ingest(load_partner_config(path))
    assert rejects_of(path) == [["4", "since", "2024-01-01",
                                 "date not in formats ['%Y-%m-%dT%H:%M:%S%z']: '2024-01-01'"]]
    assert pd.read_parquet(report.outputs["customers"])["since"].tolist() == [
        pd.Timestamp("2024-01-01 09:00"), pd.Timestamp("2024-01-01 08:00")]
