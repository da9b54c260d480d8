"""SQLAlchemy 2 models of the consent log, and the engine factory.

Tables: ``log_entries`` (the append-only log: index, kind, public leaf JSON, leaf
hash), ``signed_heads`` (one checkpoint per append transaction, with the tree's right
edge so the next append needs no full scan), and the three *erasable* tables that
hold personal data outside the tree: ``personal_payloads`` (salted values),
``subject_set_chunks`` (who a usage record included, in sorted chunks) and ``key_rotations`` (the
partner-local old -> new pseudonym mapping). ``ledger_meta`` holds the origin and key.
The schema itself is created by the Alembic migrations in ``migrations/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import suppress
from datetime import datetime
import os
import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fedcrm.consent.bundle import HeadRow, LeafRow
from fedcrm.migrations import alembic_config as shared_alembic_config

__all__ = [
    "Base",
    "KeyRotation",
    "LedgerMeta",
    "LogEntry",
    "PersonalPayload",
    "SignedHead",
    "SubjectSetChunk",
    "make_engine",
    "normalise_url",
    "read_heads",
    "stream_rows",
    "upgrade_schema",
]

# On SQLite an INTEGER primary key is the rowid: ordered scans and appends are fastest.
Index64 = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (for migrations)."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class LedgerMeta(Base):
    """Key/value facts about this ledger: origin, key name, public key PEM."""

    __tablename__ = "ledger_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class LogEntry(Base):
    """One leaf of the log: its public JSON (hashed as is) and the stored leaf hash."""

    __tablename__ = "log_entries"
    idx: Mapped[int] = mapped_column(Index64, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    public_json: Mapped[str] = mapped_column(Text)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    #: Subject-set fingerprint of usage records: a lookup index for subject requests.
    fingerprint: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)


class PersonalPayload(Base):
    """A personal field's value and salt (erasable; the leaf keeps SHA-256(salt || value))."""

    __tablename__ = "personal_payloads"
    idx: Mapped[int] = mapped_column(Index64, primary_key=True, autoincrement=False)
    field: Mapped[str] = mapped_column(String(64), primary_key=True)
    salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    value: Mapped[str] = mapped_column(String(200), index=True)


class SignedHead(Base):
    """A checkpoint the ledger signed at the end of an append transaction."""

    __tablename__ = "signed_heads"
    size: Mapped[int] = mapped_column(Index64, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    #: Concatenated roots of the perfect subtrees on the right edge (merkle.TreeFrontier).
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SubjectSetChunk(Base):
    """A chunk of a usage record's subject set: sorted pseudonyms joined by newlines (erasable; see ``subject_sets``)."""

    __tablename__ = "subject_set_chunks"
    __table_args__ = (Index("ix_subject_set_chunks_last_first", "last", "first"),)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first: Mapped[bytes] = mapped_column(LargeBinary)  #: UTF-8 of the chunk's first member
    last: Mapped[bytes] = mapped_column(LargeBinary)  #: UTF-8 of its last member
    size: Mapped[int] = mapped_column(Integer)
    members: Mapped[bytes] = mapped_column(LargeBinary)  #: last: SQLite reads the columns before it without the blob


class KeyRotation(Base):
    """Partner-local mapping of an old pseudonym to the new one after a key rotation (erasable)."""

    __tablename__ = "key_rotations"
    old_pseudonym: Mapped[str] = mapped_column(String(200), primary_key=True)
    new_pseudonym: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
    old_key_id: Mapped[str] = mapped_column(String(8))
    new_key_id: Mapped[str] = mapped_column(String(8))


def normalise_url(url: str | Path) -> str:
    """A SQLAlchemy URL from a URL or a path to a SQLite file; Postgres goes through psycopg 3."""
    text = str(url)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    if text.startswith("postgresql://") or text.startswith("postgres://"):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def make_engine(url: str | Path) -> Engine:
    """An engine with the transaction behaviour the ledger relies on.

    SQLite: WAL with synchronous=FULL (a committed append survives power loss) and
    ``BEGIN IMMEDIATE`` for write transactions, so two appenders serialise instead of
    failing at commit; pysqlite's own implicit transactions are switched off for that.
    """
    engine = create_engine(normalise_url(url))
    if engine.dialect.name == "sqlite":
        _private_sqlite_file(engine.url.database)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # type: ignore[no-untyped-def]
            write = conn.get_execution_options().get("ledger_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _private_sqlite_file(database: str | None) -> None:
    """Create a SQLite ledger file with mode 0600 before SQLite does, whatever the umask.

    SQLite would create it with the umask (0644 by default) and gives its -wal/-shm files the
    same mode; a ledger holds pseudonyms and consent payloads, so only its owner may read it.
    An existing file readable by others is narrowed to 0600.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.is_file() and path.stat().st_mode & 0o077:
            try:
                os.chmod(path, 0o600)
            except PermissionError:
                pass  # not this user's file: SQLite opens it (or not) as before
        return
    except OSError:
        return  # a missing directory or a read-only place: SQLite reports it when it connects
    os.fchmod(fd, 0o600)
    os.close(fd)


_STREAM = 20_000


def stream_rows(conn: Connection, upto: int | None = None, since: int = 0) -> tuple[Iterator[LeafRow], Iterator[HeadRow]]:
    """Entries (with their payloads and derived columns) and heads, each ordered, streamed.

    Three ordered scans merged in Python instead of a join: a join would repeat the
    entry per payload and is slower on both engines for a full pass. ``upto`` limits
    entries and payloads to indexes below it (the gate's read), ``since`` to indexes at or
    above it (the gate extending what it verified before). Heads are read lazily.
    """
    if conn.dialect.name == "sqlite":
        return _sqlite_rows(conn, upto, since), _heads(conn)
    e, p = LogEntry.__table__, PersonalPayload.__table__
    # yield_per on each statement, not on the connection: Connection.execution_options changes the
    # connection itself, and the gate writes on this one (server-side cursors cannot executemany).
    eq = select(e.c.idx, e.c.public_json, e.c.leaf_hash, e.c.kind, e.c.fingerprint).order_by(e.c.idx)
    pq = select(p.c.idx, p.c.field, p.c.salt, p.c.value).order_by(p.c.idx, p.c.field)
    if upto is not None:
        eq, pq = eq.where(e.c.idx < upto), pq.where(p.c.idx < upto)
    if since:
        eq, pq = eq.where(e.c.idx >= since), pq.where(p.c.idx >= since)
    entries = conn.execute(eq.execution_options(yield_per=_STREAM))
    payloads = conn.execute(pq.execution_options(yield_per=_STREAM))

    return _merged(entries, payloads), _heads(conn)


def _merged(entries: Iterable[Any], payloads: Iterable[Any]) -> Iterator[LeafRow]:
    """Entries (idx, text, leaf hash, kind, fingerprint) by index, each with its payloads (idx, field, salt, value):
    two scans, both ordered by idx, merged in one pass."""
    pay_iter = iter(payloads)
    pending = next(pay_iter, None)
    for idx, public_json, leaf_hash, kind, fingerprint in entries:
        mine: dict[str, tuple[bytes, str]] = {}
        while pending is not None and pending[0] <= idx:
            if pending[0] == idx:
                mine[pending[1]] = (pending[2], pending[3])
            pending = next(pay_iter, None)
        yield LeafRow(idx, public_json, leaf_hash, mine, kind, fingerprint)


def read_heads(conn: Connection) -> list[HeadRow]:
    """Every stored signed head (size, root, note, frontier), ordered by size."""
    return list(_heads(conn))


def _heads(conn: Connection) -> Iterator[HeadRow]:
    h = SignedHead.__table__
    q = select(h.c.size, h.c.root_hash, h.c.note, h.c.frontier).order_by(h.c.size)
    for size, root, note, frontier in conn.execute(q.execution_options(yield_per=_STREAM)):
        yield HeadRow(size, root, note, frontier)


def _sqlite_rows(conn: Connection, upto: int | None, since: int = 0) -> Iterator[LeafRow]:
    """:func:`stream_rows`' entries on SQLite through raw DBAPI cursors (same rows, same order).

    SQLAlchemy's result rows cost more than the checks themselves at a million entries;
    two plain sqlite3 cursors on the connection's own DBAPI connection (so inside its
    transaction and snapshot) fetch the same two ordered scans, merged here.
    """
    dbapi = conn.connection.driver_connection
    bounds = ([("idx < ?", int(upto))] if upto is not None else []) + ([("idx >= ?", int(since))] if since else [])
    limit = (" WHERE " + " AND ".join(b for b, _ in bounds)) if bounds else ""
    args = tuple(v for _, v in bounds)
    entries = dbapi.cursor()
    entries.arraysize = _STREAM
    entries.execute(f"SELECT idx, public_json, leaf_hash, kind, fingerprint FROM {LogEntry.__tablename__}{limit} "
                    "ORDER BY idx", args)
    payloads = dbapi.cursor()
    payloads.arraysize = _STREAM
    payloads.execute(f"SELECT idx, field, CAST(salt AS BLOB), value FROM {PersonalPayload.__tablename__}{limit} ORDER BY idx, field",
                     args)
    try:
        yield from _merged(entries, payloads)
    finally:
        # A generator dropped unfinished (a check that stopped at the first bad entry) may be
        # closed by the garbage collector after its connection: its cursors went with it.
        with suppress(sqlite3.ProgrammingError):
            entries.close()
            payloads.close()


MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "consent_alembic_version"  # our own name: the database may host other Alembic histories


def alembic_config(connection: Connection | None) -> Config:
    """Programmatic Alembic config: the ledger's scripts from the package folder, run on ``connection``."""
    return shared_alembic_config(MIGRATIONS, VERSION_TABLE, connection)


def upgrade_schema(engine: Engine, *, create: bool) -> bool:
    """Bring the schema to the newest migration; False if there is none and ``create`` is off."""
    with engine.connect() as conn:
        current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if current is None and not create:
        return False
    if current != ScriptDirectory.from_config(alembic_config(None)).get_current_head():
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    return True
