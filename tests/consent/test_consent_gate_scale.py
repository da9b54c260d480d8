"""The gate's Arrow fast paths give exactly what the plain Python definitions give."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from fedcrm.consent.events import subject_fingerprint
from fedcrm.consent.gate import _distinct, _sort_order, _sorted_fingerprint, _subject_array, clear_subject_memo

#: Mixed lengths, non-ASCII (multi-byte UTF-8 must sort by code point), a shared prefix, one fixed width.
CASES = [
    ["b", "a", "é", "z", "0a1b:ff", "ß", "A", "ab", "a\x00"],
    ["ab", "é", "ba", "Aa", "zz"],  # all two bytes wide: the numpy fixed-width path, é above ASCII
    [f"0a1b2c3d:{i * 7919 % 1000:064x}" for i in range(1000)],
    ["only"],
    [],
]


def test_sort_order_is_pythons_sorted_order() -> None:
    for values in CASES:
        arr = pa.array(values, type=pa.large_string())
        assert [values[i] for i in _sort_order(arr)] == sorted(values)
        sliced = pa.array(["zz", *values], type=pa.large_string()).slice(1)  # a non-zero offset
        assert [values[i] for i in _sort_order(sliced)] == sorted(values)


def test_sorted_fingerprint_equals_the_definition() -> None:
    for values in CASES:
        ordered = pa.array(sorted(set(values)), type=pa.large_string())
        assert _sorted_fingerprint(ordered) == subject_fingerprint(values)
        assert _sorted_fingerprint(pa.array(["x", *sorted(set(values))], type=pa.large_string()).slice(1)) == \
            subject_fingerprint(values)


def test_distinct_values_codes_and_memo() -> None:
    clear_subject_memo()
    rows = pa.array(["c", "a", "c", "b", "a"], type=pa.large_string())
    got = _distinct(rows)
    assert got.unique.to_pylist() == ["c", "a", "b"] and got.codes.tolist() == [0, 1, 0, 2, 1]
    assert [got.unique[int(i)].as_py() for i in got.order] == ["a", "b", "c"]
    assert _distinct(pa.array(["c", "a", "c", "b", "a"], type=pa.large_string())) is got  # same bytes: memo
    assert _distinct(pa.array(["c", "a", "c", "b", "b"], type=pa.large_string())) is not got
    unique = _distinct(pa.array(["q", "p"], type=pa.large_string()))
    assert unique.codes is None and unique.unique is None and unique.order.tolist() == [1, 0]


def test_subject_array_from_every_string_dtype() -> None:
    plain = ["x1", "x2", "x1"]
    for series in (pd.Series(plain, dtype=object), pd.Series(plain, dtype="string"),
                   pd.Series(plain, dtype="string[pyarrow]"), pd.Series(pd.Categorical(plain))):
        got = _subject_array(series)
        assert got.type == pa.large_string() and got.to_pylist() == plain


def test_locate_by_binary_search_equals_a_plain_lookup() -> None:
    clear_subject_memo()
    for values in CASES:
        unique = pa.array(list(dict.fromkeys(values)), type=pa.large_string())
        distinct = _distinct(unique)
        named = [*values[::2], "absent", "0a1b2c3d:" + "f" * 64, "", "zz", "a\x00"][: len(values) + 5]
        got = distinct.locate(unique, pa.array(named, type=pa.large_string()))
        position = {v: i for i, v in enumerate(unique.to_pylist())}
        assert got.tolist() == [position.get(v, -1) for v in named], values
    assert _distinct(pa.array(CASES[2], type=pa.large_string())).width == 73
    assert _distinct(pa.array(CASES[0], type=pa.large_string())).width == 0


def test_distinct_by_sort_finds_a_duplicate_anywhere() -> None:
    clear_subject_memo()
    values = [f"0a1b2c3d:{i:064x}" for i in range(70_000)]  # more than one comparison block
    assert _distinct(pa.array(values, type=pa.large_string())).codes is None
    for at in (0, 65_536, 69_999):
        dup = [*values, values[at]]
        got = _distinct(pa.array(dup, type=pa.large_string()))
        assert got.codes is not None and len(got.unique) == 70_000 and got.codes[-1] == at
