"""Raw SQL behind a ledger's back, for the tamper tests: each statement committed at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from fedcrm.consent.db import normalise_url


@contextmanager
def raw_sql(url: str) -> Iterator[Callable[..., list]]:
    """A function running one SQL statement with named parameters on ``url``; rows for a query, else []."""
    engine = create_engine(normalise_url(url))

    def run(statement: str, **params: object) -> list:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    try:
        yield run
    finally:
        engine.dispose()
