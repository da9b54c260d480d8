"""Reading a partner's CSV export record by record, with the *physical* line of every record.

Hand-written around Python's C ``csv`` parser because no library reader reports what ingestion
must: pandas and pyarrow number records, not file lines (a blank line or a quoted line break
shifts every later number), turn an unclosed quote into one long value or a bare parser
exception, and stop at the first ragged row. Here:

- the file is read in binary blocks and decoded per block, so an encoding error names the
  physical line and the byte offset (``ExportFormatError``, never a traceback);
- the header is checked (empty file, header only, duplicate names naming both positions);
- every record carries the physical line it starts on; blank lines are skipped but counted;
- a record with the wrong number of fields, or one whose quoted value spans several physical
  lines (an unbalanced quote swallowing the rows after it), is rejected with line, column and
  reason — the lines it swallowed are listed too — instead of becoming one long value;
- memory stays bounded by the chunk: records are collected ``chunk_rows`` at a time.

The C parser does the field splitting; the Python loop only tracks line numbers, so the cost
per row stays close to pandas' own reader.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedcrm.errors import ExportFormatError

BLOCK_BYTES = 1 << 20
MAX_LINE_BYTES = 16 << 20
LINE_COLUMN = "__line__"
SHOWN_CHARS = 120  # longest value copied into a reject (the rest is elided)


@dataclass(frozen=True)
class Reject:
    """One problem in one row of an export."""

    line: int
    column: str
    value: str
    reason: str


@dataclass
class ReadTally:
    """What the reader rejected before any value was parsed."""

    rows: int = 0  # physical data lines those rejects cover (counted as rows read)


@dataclass(frozen=True)
class CsvLayout:
    """How to split the export (from ``[source]``)."""

    delimiter: str = ","
    encoding: str = "utf-8"
    header: bool = True
    column_names: tuple[str, ...] | None = None
    whitespace_delimited: bool = False
    multiline_values: bool = False
    multiline_columns: frozenset[str] = frozenset()  # columns whose values may hold line breaks
    chunk_rows: int = 50_000
    config_path: Path | None = None


def shown(value: str) -> str:
    """A value as copied into a reject or a message: line breaks visible, long values elided."""
    text = value.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


class _Lines:
    """Decoded physical lines of a file, with the byte offset and line number of each block."""

    def __init__(self, path: Path, layout: CsvLayout) -> None:
        self.path = path
        self.layout = layout

    def __iter__(self) -> Iterator[str]:
        decoder_name = self.layout.encoding
        offset, line = 0, 1  # byte offset and physical line where the current block starts
        rest = b""
        first = True
        try:
            handle = self.path.open("rb")
        except OSError as exc:  # a directory, no permission, …
            raise ExportFormatError(f"{self.path}: cannot read the export: {exc.strerror}") from None
        with handle:
            while True:
                data = handle.read(BLOCK_BYTES)
                block = rest + data
                if data:
                    cut = block.rfind(b"\n") + 1
                    if cut == 0:
                        if len(block) > MAX_LINE_BYTES:  # bounded memory, even for a file without \n
                            raise ExportFormatError(
                                f"{self.path}: line {line} is longer than {MAX_LINE_BYTES >> 20} MB: not a CSV "
                                "with \\n or \\r\\n line endings (old Mac \\r line ends, or a binary file)")
                        rest = block
                        continue
                    block, rest = block[:cut], block[cut:]
                elif not block:
                    return
                else:
                    rest = b""
                if first and block.startswith(codecs.BOM_UTF8) and decoder_name.replace("_", "-") in ("utf-8",
                                                                                                      "utf-8-sig"):
                    block, offset = block[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
                first = False
                try:
                    text = block.decode(decoder_name)
                except UnicodeDecodeError as exc:
                    raise self._decode_error(block, exc, offset, line) from None
                nul = text.find("\x00")
                if nul >= 0:  # NUL is never CSV text: a UTF-16 or binary file, or a corrupted export
                    raise ExportFormatError(
                        f"{self.path}: line {line + text.count(chr(10), 0, nul)}: contains a NUL byte: not a text CSV "
                        f"in the declared encoding ({self.layout.encoding}); re-export it as UTF-8 text")
                yield from io.StringIO(text, newline="\n")
                offset += len(block)
                line += block.count(b"\n")
                if not data:
                    return

    def _decode_error(self, block: bytes, exc: UnicodeDecodeError, offset: int, line: int) -> ExportFormatError:
        before = block[: exc.start]
        physical = line + before.count(b"\n")
        line_start = before.rfind(b"\n") + 1
        bad = block[exc.start: min(exc.end, exc.start + 4)]
        where = f"{self.layout.config_path}" if self.layout.config_path else "the partner config"
        return ExportFormatError(
            f"{self.path}: line {physical}, byte {exc.start - line_start + 1} of the line (file offset "
            f"{offset + exc.start}): bytes {bad!r} are not valid {self.layout.encoding} ({exc.reason}). "
            f"Re-export the file as UTF-8, or set source.encoding in {where} to the file's encoding "
            "(e.g. \"cp1252\" or \"latin-1\")."
        )


class CsvExport:
    """One CSV export read in chunks of records, each with its physical start line."""

    def __init__(self, path: Path, layout: CsvLayout, rejects: list[Reject], tally: ReadTally) -> None:
        self.path = path
        self.layout = layout
        self.rejects = rejects
        self.tally = tally
        self.names: list[str] = []
        self.header_line = 0

    def _fail(self, line: int, message: str) -> ExportFormatError:
        return ExportFormatError(f"{self.path}: line {line}: {message}")

    def _records(self) -> Iterator[tuple[int, int, list[str]]]:
        """(first line, last line, fields) of every non-blank record."""
        lines = _Lines(self.path, self.layout)
        if self.layout.whitespace_delimited:
            for number, text in enumerate(lines, start=1):
                fields = text.split()
                if fields:
                    yield number, number, fields
            return
        reader = csv.reader(lines, delimiter=self.layout.delimiter, skipinitialspace=True)
        last = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise self._csv_error(last + 1, reader.line_num, exc) from None
            first, last = last + 1, reader.line_num
            if len(fields) > 1 or (fields and fields[0].strip()):  # blank lines are skipped, but counted
                yield first, last, fields

    def _csv_error(self, first: int, line: int, exc: csv.Error) -> ExportFormatError:
        text = str(exc)
        if "field larger than field limit" in text:
            return self._fail(first, f"a value starting on this line runs on past line {line} and "
                              f"{csv.field_size_limit()} characters: a quote opened on line {first} is never "
                              "closed. Fix the quote in the export.")
        if "new-line character seen in unquoted field" in text:
            return self._fail(line, "a lone carriage return (\\r) inside a line: re-export the file with \\n or "
                              "\\r\\n line endings")
        if "NUL" in text:
            return self._fail(line, "contains a NUL byte: this is not a text CSV in the declared encoding "
                              f"({self.layout.encoding}); re-export it as UTF-8 text")
        return self._fail(line, f"cannot be read as CSV: {text}")

    def _check_header(self, names: list[str], line: int) -> list[str]:
        seen: dict[str, int] = {}
        for position, name in enumerate(names, start=1):
            key = name.strip()
            if not key:
                continue
            if key in seen:
                what = "column names" if self.layout.header else f"source.column_names in {self.layout.config_path}"
                raise self._fail(line, f"{what}: '{key}' appears twice (columns {seen[key]} and {position}); "
                                 "every column needs its own name — rename one")
            seen[key] = position
        return [name if name.strip() else f"Unnamed: {i}" for i, name in enumerate(names)]

    def chunks(self) -> Iterator[pd.DataFrame]:
        """String-typed chunks (object dtype) with a ``__line__`` column of physical line numbers."""
        records = self._records()
        if self.layout.header:
            head = next(records, None)
            if head is None:
                raise ExportFormatError(f"{self.path}: the export is empty: no header line with the column names")
            first, last, names = head
            if last != first:
                raise self._fail(first, f"the header spans lines {first}–{last}: a quote in it is not closed")
            self.names, self.header_line = self._check_header(names, first), first
        else:
            assert self.layout.column_names is not None
            self.names = self._check_header(list(self.layout.column_names), 0)
        width = len(self.names)
        batch = _Batch(self.names)
        final: tuple[int, int, list[str]] | None = None  # the last record, checked for a quote open at EOF
        total = 0
        for record in records:
            first, last, fields = record
            if len(fields) != width or (last != first and not self._multiline_ok(fields)):
                self._reject_record(first, last, fields)
                continue
            if final is not None:
                batch.add(final[2], final[0])
                if batch.size >= self.layout.chunk_rows:
                    total += batch.size
                    yield batch.frame()
            final = record
        if final is not None:
            if self._open_at_end(final[2]):
                self._reject_record(*final)
            else:
                batch.add(final[2], final[0])
        if batch.size:
            total += batch.size
            yield batch.frame()
        if total == 0 and self.tally.rows == 0:
            where = f"only a header (line {self.header_line})" if self.layout.header else "no records"
            raise ExportFormatError(f"{self.path}: {where}, no data rows")

    @staticmethod
    def _open_at_end(fields: list[str]) -> bool:
        # A quote left open on the last line: the C parser returns the record at end of file
        # with the line break inside the last value.
        last = fields[-1]
        return last.endswith("\n") or last.endswith("\r")

    def _multiline_ok(self, fields: list[str]) -> bool:
        """A multi-line record is kept only when allowed, in allowed columns, and holding no row-like line."""
        if not self.layout.multiline_values:
            return False
        for index, value in enumerate(fields):
            if ("\n" in value or "\r" in value) and (
                    self.names[index] not in self.layout.multiline_columns
                    or swallowed_rows(value, self.layout.delimiter, len(self.names))):
                return False
        return True

    def _column_name(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else f"(field {index + 1})"

    def _reject_record(self, first: int, last: int, fields: list[str]) -> None:
        """Reject a ragged or multi-line record, and every physical line it swallowed."""
        width = len(self.names)
        broken = [i for i, value in enumerate(fields) if "\n" in value or "\r" in value]
        if broken:
            column = self._column_name(broken[0])
            value = fields[broken[0]]
            unclosed = self._open_at_end(fields)
            if unclosed:
                reason = (f"a quote opened in column '{column}' on line {first} is never closed: lines "
                          f"{first}–{last} would be one value; fix the quote in the export")
            elif self.layout.multiline_values and len(fields) == width and column in self.layout.multiline_columns:
                reason = (f"quoted value spans lines {first}–{last} and holds lines that look like rows "
                          f"(an unbalanced quote?); fix the quote in the export")
            elif self.layout.multiline_values and len(fields) == width:
                reason = (f"quoted value spans lines {first}–{last}, but column '{column}' may not hold line "
                          "breaks (only free-text string, ignored and direct-identifier columns may); "
                          "an unbalanced quote? Fix the quote in the export")
            else:
                reason = (f"quoted value spans lines {first}–{last}: an unbalanced quote would swallow the "
                          f"rows inside it; fix the quote, or set source.multiline_values = true if values may "
                          "hold line breaks")
            self.rejects.append(Reject(first, column, shown(value), reason))
            for line in range(first + 1, last + 1):
                self.rejects.append(Reject(line, column, "", f"inside the quoted value opened on line {first}"))
            self.tally.rows += last - first + 1
            return
        reason = (f"{len(fields)} fields where the header (line {self.header_line}) has {width}"
                  if self.layout.header else f"{len(fields)} fields where source.column_names has {width}")
        if len(fields) > width:
            reason += f"; extra value '{shown(fields[width])}' (an unquoted delimiter?)"
        self.rejects.append(Reject(first, "", shown(self.layout.delimiter.join(fields)), reason))
        self.tally.rows += 1


class _Batch:
    """Records of one chunk, moved into Arrow string columns every few thousand rows (bounded Python objects)."""

    STEP = 8192

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.rows: list[list[str]] = []
        self.starts: list[int] = []
        self.parts: list[list[pa.Array]] = [[] for _ in names]
        self.size = 0

    def add(self, fields: list[str], start: int) -> None:
        self.rows.append(fields)
        self.starts.append(start)
        self.size += 1
        if len(self.rows) >= self.STEP:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        # One Arrow array of every cell, then each column as a strided take: C speed, no per-cell Python.
        width, count = len(self.names), len(self.rows)
        cells = pa.array(list(itertools.chain.from_iterable(self.rows)), type=pa.large_string())
        self.rows.clear()
        for j, parts in enumerate(self.parts):
            parts.append(pc.take(cells, np.arange(j, count * width, width)))

    def frame(self) -> pd.DataFrame:
        """The chunk as a DataFrame (Arrow-backed strings, ``__line__`` physical lines); the batch is emptied."""
        self._flush()
        data = {name: pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array(parts, type=pa.large_string())))
                for name, parts in zip(self.names, self.parts, strict=True)}
        frame = pd.DataFrame(data, copy=False)
        frame[LINE_COLUMN] = np.asarray(self.starts, dtype=np.int64)
        self.starts, self.parts, self.size = [], [[] for _ in self.names], 0
        return frame


def swallowed_rows(value: str, delimiter: str, width: int) -> bool:
    """Whether a multi-line value holds a line that looks like a record of its own (``width`` fields)."""
    return any(line.count(delimiter) >= width - 1 for line in value.splitlines()[1:])
