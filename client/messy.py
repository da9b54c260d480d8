"""A seeded generator of messy customer exports with a truth file.

Takes a clean CSV and a seed, injects each defect kind at known rows, and writes the
messy CSV plus a truth JSON listing every ``(kind, line, column)``. The kinds are the
quality report's own names (``fedcrm.client.quality``), so detection recall per kind is
a set comparison. Each injected defect sits on its own row, and rows that are copied to
make duplicates carry no other defect, so one defect never hides another.

Nothing here knows a data set: the id column is given or found (the first column whose
values are all distinct), numeric and category columns are found from the values.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from fedcrm.client import quality as q
from fedcrm.client.normalise import spelling_key
from fedcrm.errors import DataValidationError

DATE_FORMAT = "%Y-%m-%d"
OTHER_DATE_FORMATS = ["%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y%m%d", "%d %b %Y"]
KINDS = [q.EXACT_DUPLICATE, q.NEAR_DUPLICATE, q.MISSING, q.THOUSANDS, q.DATE_FORMAT, q.SPELLING, q.OUT_OF_RANGE]
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


@dataclass
class Defect:
    """One injected defect; ``column`` is None for whole-row defects (duplicates)."""

    kind: str
    line: int
    column: str | None
    of_line: int | None = None  # duplicates: the line of the row copied

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"kind": self.kind, "line": self.line, "column": self.column, "of_line": self.of_line}


@dataclass
class Truth:
    """What was injected where."""

    seed: int
    source: str
    id_column: str
    date_column: str
    date_format: str
    rows: int
    defects: list[Defect] = field(default_factory=list)
    non_negative: list[str] = field(default_factory=list)  # numeric columns made negative (min 0 is valid)

    def lines(self, kind: str) -> set[tuple[int, str | None]]:
        """(line, column) pairs of one kind."""
        return {(d.line, d.column) for d in self.defects if d.kind == kind}

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"seed": self.seed, "source": self.source, "id_column": self.id_column,
                "date_column": self.date_column, "date_format": self.date_format, "rows": self.rows,
                "non_negative": self.non_negative, "defects": [d.as_dict() for d in self.defects]}


def _find_id_column(frame: pd.DataFrame) -> str:
    for col in frame.columns:
        values = frame[col].str.strip()
        if (values != "").all() and values.is_unique and not values.str.match(_NUMBER).all():
            return str(col)
    raise DataValidationError("no column with distinct non-numeric values to serve as customer id")


def _kinds_of_columns(frame: pd.DataFrame, id_col: str, date_col: str) -> tuple[list[str], list[str]]:
    """(numeric columns with more than two values and none negative, category columns)."""
    numeric, categories = [], []
    for col in frame.columns:
        if col in (id_col, date_col):
            continue
        values = frame[col].str.strip()
        present = values[values != ""]
        if present.str.match(_NUMBER).all():
            numbers = pd.to_numeric(present)
            if present.nunique() > 2 and (numbers >= 0).all():
                numeric.append(str(col))
        elif present.nunique() <= 20:
            categories.append(str(col))
    return numeric, categories


def _spelling_variant(value: str, others: list[str], rng: random.Random) -> str | None:
    keys = {spelling_key(o) for o in others}
    options = [value.lower(), value.upper(), value + " ", value.swapcase()]
    first = spelling_key(value)[:1]
    if first and sum(k.startswith(first) for k in keys) == 1 and len(spelling_key(value)) > 1:
        options.append(value[0])  # "Yes" → "Y": an abbreviation that names one spelling only
    options = [o for o in options if o != value]
    return rng.choice(options) if options else None


def _id_variant(raw: str, rng: random.Random) -> str:
    options = []
    if raw.lower() != raw:
        options.append(raw.lower())
    if re.search(r"[^0-9A-Za-z]", raw):
        options.append(re.sub(r"[^0-9A-Za-z]", rng.choice([" ", "", ".", "_"]), raw))
    options.append(raw[: len(raw) // 2] + " " + raw[len(raw) // 2:])
    return rng.choice([o for o in options if o != raw])


def _perturb(value: str, rng: random.Random) -> str:
    """A float changed by at most 0.3 % (within the default near-duplicate tolerance)."""
    if "." not in value:
        return value
    decimals = len(value.split(".")[1])
    return f"{float(value) * (1 + rng.uniform(-0.003, 0.003)):.{decimals}f}"


def make_messy(clean: Path | str, out_csv: Path | str, truth_path: Path | str, *, seed: int, per_kind: int = 40,
               id_column: str | None = None, date_column: str = "record_date") -> Truth:
    """Write a messy copy of ``clean`` and its truth file; returns the truth.

    Parameters
    ----------
    per_kind:
        How many defects of each kind to inject (each on its own row).
    date_column:
        Added with random ISO dates when the source has no column of that name; its values
        are otherwise taken as dates in ``%Y-%m-%d``.
    """
    rng = random.Random(seed)
    frame = pd.read_csv(clean, dtype=str, keep_default_na=False, na_filter=False)
    id_col = id_column or _find_id_column(frame)
    if date_column not in frame:
        start = date(2015, 1, 1)
        frame[date_column] = [(start + timedelta(days=rng.randrange(3650))).strftime(DATE_FORMAT)
                              for _ in range(len(frame))]
    numeric, categories = _kinds_of_columns(frame, id_col, date_column)
    rows = frame.to_dict("records")
    order = list(range(len(rows)))
    rng.shuffle(order)
    if len(order) < per_kind * len(KINDS) * 2:
        raise DataValidationError(f"{clean}: too few rows ({len(rows)}) for {per_kind} defects of each kind")
    pools = {kind: order[i * per_kind * 2:(i + 1) * per_kind * 2] for i, kind in enumerate(KINDS)}
    cell: dict[int, tuple[str, str]] = {}  # row index → (kind, column)
    inserted: dict[int, list[tuple[dict[str, str], str, int]]] = {}  # after row → [(row, kind, source)]
    distinct = {c: sorted(set(frame[c]) - {""}) for c in categories}

    def take(kind: str, ok: object) -> list[int]:
        chosen = [i for i in pools[kind] if ok(rows[i])][:per_kind]  # type: ignore[operator]
        if len(chosen) < per_kind:
            raise DataValidationError(f"{clean}: not enough rows suited to inject '{kind}'")
        return chosen

    for i in take(q.MISSING, lambda r: True):
        col = rng.choice([c for c in frame.columns if c != id_col and rows[i][c].strip() != ""])
        rows[i][col] = ""
        cell[i] = (q.MISSING, col)
    for i in take(q.THOUSANDS, lambda r: any(_big(r[c]) for c in numeric)):
        col = rng.choice([c for c in numeric if _big(rows[i][c])])
        v = rows[i][col]
        rows[i][col] = f"{float(v):,.{len(v.split('.')[1])}f}" if "." in v else f"{int(v):,}"
        cell[i] = (q.THOUSANDS, col)
    for i in take(q.DATE_FORMAT, lambda r: True):
        when = pd.to_datetime(rows[i][date_column], format=DATE_FORMAT)
        rows[i][date_column] = when.strftime(rng.choice(OTHER_DATE_FORMATS))
        cell[i] = (q.DATE_FORMAT, date_column)
    for i in take(q.SPELLING, lambda r: any(r[c] != "" for c in categories)):
        col = rng.choice([c for c in categories if rows[i][c] != ""])
        variant = _spelling_variant(rows[i][col], distinct[col], rng)
        if variant is not None:
            rows[i][col] = variant
            cell[i] = (q.SPELLING, col)
    for i in take(q.OUT_OF_RANGE, lambda r: any(r[c] != "" for c in numeric)):
        col = rng.choice([c for c in numeric if rows[i][c] != ""])
        v = rows[i][col]
        rows[i][col] = "-" + (f"{float(v) + 1:.{len(v.split('.')[1])}f}" if "." in v else str(int(v) + 1))
        cell[i] = (q.OUT_OF_RANGE, col)
    for kind in (q.EXACT_DUPLICATE, q.NEAR_DUPLICATE):
        for i in take(kind, lambda r: True):
            copy = dict(rows[i])
            if kind == q.NEAR_DUPLICATE:
                copy[id_col] = _id_variant(copy[id_col], rng)
                for c in numeric:
                    copy[c] = _perturb(copy[c], rng)
            after = rng.randrange(i, len(rows))
            inserted.setdefault(after, []).append((copy, kind, i))

    out_rows: list[dict[str, str]] = []
    line_of: dict[int, int] = {}
    truth = Truth(seed, str(clean), id_col, date_column, DATE_FORMAT, 0, non_negative=numeric)
    pending: list[tuple[int, str, int]] = []
    for i, row in enumerate(rows):
        out_rows.append(row)
        line_of[i] = len(out_rows) + 1  # header is line 1
        for copy, kind, source in inserted.get(i, []):
            out_rows.append(copy)
            pending.append((len(out_rows) + 1, kind, source))
    truth.defects = [Defect(kind, line_of[i], col) for i, (kind, col) in cell.items()]
    truth.defects += [Defect(kind, line, None, line_of[src]) for line, kind, src in pending]
    truth.defects.sort(key=lambda d: (d.line, d.kind))
    truth.rows = len(out_rows)
    pd.DataFrame(out_rows, columns=list(frame.columns)).to_csv(out_csv, index=False)
    Path(truth_path).write_text(json.dumps(truth.as_dict(), indent=1), encoding="utf-8")
    return truth


def _big(value: str) -> bool:
    return bool(_NUMBER.match(value.strip())) and abs(float(value)) >= 1000
