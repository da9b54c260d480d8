"""Per-customer purchase summaries from a transaction-level export.

One row of the input is one purchase: a customer, a date, an amount and optionally a
quantity. Every function takes the partner's own column names as parameters, so any
export works. All purchases of a customer on the same calendar day are one *purchase
day*: this is the definition the BG/NBD and Gamma-Gamma papers (Fader, Hardie & Lee
2005) use on CDNOW, and the one their published figures depend on.

Definitions, for an observation period that ends at ``observation_end`` (inclusive):

- ``frequency`` (x): distinct purchase days − 1, i.e. repeat purchase days.
- ``recency`` (t_x): time from the first to the last purchase day.
- ``T``: time from the first purchase day to ``observation_end``.
- ``monetary_value``: mean spend per *repeat* purchase day (the first day is left out,
  the Gamma-Gamma convention); 0 when there is no repeat purchase.

``recency`` and ``T`` are in the chosen time unit: ``"D"`` days or ``"W"`` weeks (days / 7).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from fedcrm.errors import DataValidationError

TimeUnit = Literal["D", "W"]

#: Days per time unit.
UNIT_DAYS: dict[str, float] = {"D": 1.0, "W": 7.0}

# Internal column names of the normalised frame (prefixed so they cannot clash with a partner's).
_CUST, _DAY, _AMT, _QTY = "_customer", "_day", "_amount", "_quantity"


def unit_days(time_unit: str) -> float:
    """Days in one ``time_unit`` ("D" or "W"); anything else is a clear error."""
    try:
        return UNIT_DAYS[time_unit]
    except KeyError:
        raise DataValidationError(f"time_unit '{time_unit}': expected one of {sorted(UNIT_DAYS)}") from None


def to_day(value: object, *, name: str) -> pd.Timestamp:
    """A date-like value as a tz-naive midnight timestamp; ``name`` is used in the error."""
    try:
        ts = pd.Timestamp(str(value) if isinstance(value, (int, np.integer)) else value)
    except (ValueError, TypeError) as exc:
        raise DataValidationError(f"{name}: '{value}' is not a date") from exc
    if ts is pd.NaT:
        raise DataValidationError(f"{name}: no date given")
    if ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    return ts.normalize()


def normalise_transactions(
    frame: pd.DataFrame,
    *,
    customer: str,
    date: str,
    amount: str | None = None,
    quantity: str | None = None,
) -> pd.DataFrame:
    """Validate a transaction frame and return it with internal column names.

    Dates may be datetimes, ISO-8601 strings or ``YYYYMMDD`` numbers; they are cut to
    the calendar day. Errors name the column and the row (the frame's index label).
    """
    wanted = [c for c in (customer, date, amount, quantity) if c is not None]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"column(s) {missing} not in the transaction data; it has {list(map(str, frame.columns))}"
        )
    out = pd.DataFrame(index=frame.index)
    ids = frame[customer]
    _reject(ids.isna(), frame, customer, "customer id is empty")
    out[_CUST] = ids.astype(str)
    out[_DAY] = _parse_days(frame[date], frame, date)
    if amount is not None:
        out[_AMT] = _parse_numbers(frame[amount], frame, amount)
    if quantity is not None:
        out[_QTY] = _parse_numbers(frame[quantity], frame, quantity)
    return out


def summarise_transactions(
    frame: pd.DataFrame,
    *,
    customer: str,
    date: str,
    amount: str | None = None,
    quantity: str | None = None,
    observation_end: object,
    time_unit: TimeUnit = "D",
) -> pd.DataFrame:
    """One row per customer (index named ``customer``) with the summary features.

    Only purchases on or before ``observation_end`` count; customers whose first purchase
    is later are absent. Columns: ``frequency``, ``recency``, ``T`` (in ``time_unit``),
    ``monetary_value``, ``purchase_days``, ``transactions``, ``total_spend``,
    ``average_spend`` (per purchase day, first included), ``total_quantity`` (when a
    quantity column is given), ``first_purchase``, ``last_purchase``,
    ``days_since_first``, ``days_since_last``, ``mean_gap_days`` (mean days between
    purchase days; NaN with a single purchase day).
    """
    per = unit_days(time_unit)
    end = to_day(observation_end, name="observation_end")
    tx = normalise_transactions(frame, customer=customer, date=date, amount=amount, quantity=quantity)
    tx = tx[tx[_DAY] <= end]
    if tx.empty:
        raise DataValidationError(f"no purchase on or before observation_end {end.date()}")
    if _AMT not in tx:
        tx = tx.assign(**{_AMT: 0.0})
    daily = _daily(tx)
    g = daily.groupby(_CUST, sort=True)
    first = g[_DAY].min()
    last = g[_DAY].max()
    days = g.size()
    out = pd.DataFrame(index=first.index)
    out.index.name = customer
    out["frequency"] = (days - 1).astype(np.int64)
    out["recency"] = (last - first).dt.days / per
    out["T"] = (end - first).dt.days / per
    # Gamma-Gamma's m_x is the mean over repeat purchase days: drop each customer's first day.
    repeat = daily[daily[_DAY] > daily[_CUST].map(first)]
    rep_mean = repeat.groupby(_CUST)[_AMT].mean()
    out["monetary_value"] = rep_mean.reindex(out.index).fillna(0.0)
    out["purchase_days"] = days.astype(np.int64)
    out["transactions"] = g["_rows"].sum().astype(np.int64)
    out["total_spend"] = g[_AMT].sum()
    out["average_spend"] = out["total_spend"] / out["purchase_days"]
    if _QTY in tx:
        out["total_quantity"] = g[_QTY].sum()
    out["first_purchase"] = first
    out["last_purchase"] = last
    out["days_since_first"] = (end - first).dt.days.astype(np.int64)
    out["days_since_last"] = (end - last).dt.days.astype(np.int64)
    gap = (last - first).dt.days / out["frequency"].where(out["frequency"] > 0)
    out["mean_gap_days"] = gap.astype(float)
    return out


def holdout_summary(
    frame: pd.DataFrame,
    calibration_end: object,
    holdout_end: object,
    *,
    customer: str,
    date: str,
) -> pd.DataFrame:
    """Purchase days per customer in the holdout period (calibration_end, holdout_end].

    Rows are the customers with a purchase on or before ``calibration_end`` (the cohort a
    model calibrated on that period scores), in sorted order. Columns:
    ``holdout_purchase_days`` and ``holdout_any`` (bool, the purchase-propensity label);
    the frame's ``attrs["holdout_days"]`` holds the holdout length in days.
    """
    cal = to_day(calibration_end, name="calibration_end")
    hold = to_day(holdout_end, name="holdout_end")
    if hold <= cal:
        raise DataValidationError(f"holdout_end {hold.date()} is not after calibration_end {cal.date()}")
    tx = normalise_transactions(frame, customer=customer, date=date)
    cohort = pd.Index(sorted(tx.loc[tx[_DAY] <= cal, _CUST].unique()), name=customer)
    if cohort.empty:
        raise DataValidationError(f"no purchase on or before calibration_end {cal.date()}")
    later = tx[(tx[_DAY] > cal) & (tx[_DAY] <= hold)]
    counts = later.drop_duplicates([_CUST, _DAY]).groupby(_CUST).size()
    out = pd.DataFrame(index=cohort)
    out["holdout_purchase_days"] = counts.reindex(cohort).fillna(0).astype(np.int64)
    out["holdout_any"] = out["holdout_purchase_days"] > 0
    out.attrs["holdout_days"] = int((hold - cal).days)
    return out


def recent_purchase_days(
    frame: pd.DataFrame, *, customer: str, date: str, observation_end: object, window_days: int
) -> pd.Series:
    """Distinct purchase days per customer in the last ``window_days`` up to ``observation_end``."""
    if window_days < 1:
        raise DataValidationError(f"window_days must be at least 1, got {window_days}")
    end = to_day(observation_end, name="observation_end")
    tx = normalise_transactions(frame, customer=customer, date=date)
    start = end - pd.Timedelta(days=window_days)
    inside = tx[(tx[_DAY] > start) & (tx[_DAY] <= end)].drop_duplicates([_CUST, _DAY])
    counts = inside.groupby(_CUST).size()
    counts.index.name = customer
    return counts.rename("recent_purchase_days")


# --- helpers ---------------------------------------------------------------------------


def _daily(tx: pd.DataFrame) -> pd.DataFrame:
    """Collapse all purchases of a customer on one day into one purchase day."""
    agg = {_AMT: (_AMT, "sum"), "_rows": (_DAY, "size")}
    if _QTY in tx:
        agg[_QTY] = (_QTY, "sum")
    return tx.groupby([_CUST, _DAY], sort=True).agg(**agg).reset_index()


def _reject(bad: pd.Series, frame: pd.DataFrame, column: str, problem: str) -> None:
    if bool(bad.any()):
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataValidationError(
            f"column '{column}', row {frame.index[pos]!r}: {problem} "
            f"(value {frame[column].iloc[pos]!r}; {int(bad.sum())} bad row(s) in all)"
        )


def _parse_days(col: pd.Series, frame: pd.DataFrame, name: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = col.dt.tz_localize(None) if getattr(col.dt, "tz", None) is not None else col
    else:
        # YYYYMMDD numbers are common in exports; pandas would read them as epoch nanoseconds.
        text = col.astype("string") if pd.api.types.is_integer_dtype(col) else col
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
    _reject(parsed.isna(), frame, name, "not a date (expected ISO-8601 or YYYYMMDD)")
    return parsed.dt.normalize().astype("datetime64[ns]")


def _parse_numbers(col: pd.Series, frame: pd.DataFrame, name: str) -> pd.Series:
    values = pd.to_numeric(col, errors="coerce").astype(float)
    _reject(~np.isfinite(values), frame, name, "not a finite number")
    return values
