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


def stored_members(run: Callable[..., list], fingerprint: str | None = None) -> list[str]:
    """The subject-set members as stored (all sets, or one), in stored order."""
    where = "" if fingerprint is None else " WHERE fingerprint = :f"
    rows = run(f"SELECT members FROM subject_set_chunks{where} ORDER BY fingerprint, chunk", f=fingerprint)
    return [m.decode() for (joined,) in rows for m in bytes(joined).split(b"\n")]


def rewrite_members(run: Callable[..., list], change: Callable[[list[str]], list[str]],
                    fingerprint: str | None = None) -> None:
    """Replace a stored subject set's members by ``change(members)``, as one well-formed chunk.

    The attacker a careful auditor expects: first, last and size kept consistent with the
    members, so only the hash over them can tell.
    """
    if fingerprint is None:
        (fingerprint,) = {fp for (fp,) in run("SELECT fingerprint FROM subject_set_chunks")}
    members = [m.encode() for m in change(stored_members(run, fingerprint))]
    run("DELETE FROM subject_set_chunks WHERE fingerprint = :f", f=fingerprint)
    if members:
        run("INSERT INTO subject_set_chunks (fingerprint, chunk, first, last, size, members) "
            "VALUES (:f, 0, :a, :z, :n, :m)", f=fingerprint, a=members[0], z=members[-1], n=len(members),
            m=b"\n".join(members))
