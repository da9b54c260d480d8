"""Normalising customer ids and category spellings so that variants compare equal.

One place for the two comparisons the data-quality report and the unified customer view
both need: an id normalisation (configurable steps: strip, case, non-alphanumerics,
prefix, zero-padding) and a spelling key for category values ("Yes", "yes", "Y e s " →
"yes"). Pure functions over pandas Series; no files.
"""

from __future__ import annotations

import re
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

IdStep = Literal["strip", "upper", "lower", "alnum", "no_space", "no_leading_zeros"]

_NON_ALNUM = re.compile(r"[^0-9A-Za-z]+")
_SPACE = re.compile(r"\s+")


class IdNormalisation(BaseModel):
    """How raw ids become comparable keys.

    ``strip_prefix`` is removed first (case-insensitively, after surrounding spaces), then
    ``steps`` run in order, then the key is left-padded with zeros to ``zero_pad``
    characters.
    """

    model_config = ConfigDict(extra="forbid")

    strip_prefix: str | None = Field(None, description="Prefix to drop, e.g. 'cust-' (case-insensitive)")
    steps: list[IdStep] = Field(
        default_factory=lambda: ["strip", "upper", "alnum"],
        description="strip | upper | lower | alnum (drop non-alphanumerics) | no_space | no_leading_zeros",
    )
    zero_pad: int | None = Field(None, ge=1, le=64, description="Left-pad the key with zeros to this width")


def normalise_ids(raw: pd.Series, rule: IdNormalisation) -> pd.Series:
    """Comparable keys for a column of raw ids (missing stays missing)."""
    out = raw.astype("string")
    if rule.strip_prefix:
        prefix = re.escape(rule.strip_prefix)
        out = out.str.strip().str.replace(f"^(?i:{prefix})", "", regex=True)
    for step in rule.steps:
        if step == "strip":
            out = out.str.strip()
        elif step == "upper":
            out = out.str.upper()
        elif step == "lower":
            out = out.str.lower()
        elif step == "alnum":
            out = out.str.replace(_NON_ALNUM, "", regex=True)
        elif step == "no_space":
            out = out.str.replace(_SPACE, "", regex=True)
        elif step == "no_leading_zeros":
            # "000" must stay a key, not become empty.
            out = out.str.replace(r"^0+(?=.)", "", regex=True)
    if rule.zero_pad:
        out = out.str.zfill(rule.zero_pad)
    return out


def normalise_id(raw: str, rule: IdNormalisation) -> str:
    """Comparable key of one raw id."""
    return str(normalise_ids(pd.Series([raw], dtype="string"), rule).iloc[0])


def spelling_key(value: str) -> str:
    """Case-, space- and punctuation-insensitive key of a category value."""
    return _NON_ALNUM.sub("", value.casefold())


def spelling_keys(values: pd.Series) -> pd.Series:
    """``spelling_key`` over a column."""
    return values.astype("string").str.casefold().str.replace(_NON_ALNUM, "", regex=True)
