"""The operator's SQL registry: tables, engine, and schema migrations (SQLAlchemy 2 + Alembic).

The run directory stays the artifact store; these tables *index* it so operators can
query runs, rounds, partners, privacy spend, models and their promotion across runs
(``coordinator/registry_index.py`` fills them from run directories, and can rebuild them).

Tables:

- ``runs``: config, task schema name + hash, strategy, aggregation, status, timings,
  early stopping and which round the ``final`` model is;
- ``rounds``: per round the participants, SecAgg+ stages, federated metrics (example-weighted
  over partners' *local hold-outs*: ``metric_source``), start/end times;
- ``round_partners``: one row per partner per round: fit and evaluate examples, losses and
  metrics (local hold-out), and, when the partner trained with differential privacy, its
  ε, δ and noise multiplier;
- ``dropouts``: who did not deliver at which stage of which round, and why;
- ``ledger_heads``: each partner's signed consent-ledger head as reported per round and stage;
- ``models``: every model file with its SHA-256, the round it comes from, its promotion stage;
- ``promotions``: every stage change (candidate → staging → production, archived) with who and when.

SQLite embedded by default (a file next to the runs directory), PostgreSQL in production
(``--registry URL`` or ``FEDCRM_REGISTRY_URL``).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fedcrm import migrations
from fedcrm.errors import RegistryError

__all__ = [
    "REGISTRY_ENV",
    "Base",
    "DropoutRow",
    "LedgerHeadRow",
    "ModelRow",
    "PromotionRow",
    "RoundPartnerRow",
    "RoundRow",
    "RunRow",
    "default_registry_url",
    "make_registry_engine",
    "open_registry",
    "registry_url",
    "upgrade_registry",
]

#: The environment variable naming the registry database (compose points it at Postgres).
REGISTRY_ENV = "FEDCRM_REGISTRY_URL"
#: The default SQLite file, created next to the runs directory.
DEFAULT_FILE = "registry.db"
#: Metrics that partners compute on their own local hold-out (a stable 20% of their customers).
LOCAL_HOLDOUT = "partners' local hold-out"


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (for migrations)."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        }
    )


_RUN_FK = "runs.run_id"


class RunRow(Base):
    """One federated run, as its run directory records it."""

    __tablename__ = "runs"
    run_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_dir: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), index=True)  # running | completed | failed | killed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    task_name: Mapped[str] = mapped_column(String(200), index=True)
    task_schema_sha256: Mapped[str] = mapped_column(String(64), index=True)
    strategy: Mapped[str] = mapped_column(String(20))
    aggregation: Mapped[str] = mapped_column(String(20))
    architecture: Mapped[str] = mapped_column(String(20))
    rounds_planned: Mapped[int] = mapped_column(Integer)
    rounds_completed: Mapped[int] = mapped_column(Integer, default=0)
    num_partners: Mapped[int] = mapped_column(Integer)
    partners: Mapped[list[str]] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    privacy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # run-level DP settings, if any
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    resumed_from: Mapped[list[int]] = mapped_column(JSON, default=list)
    best_round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    final_round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    final_rule: Mapped[str | None] = mapped_column(String(20), nullable=True)  # best | last
    stopped_early_after: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the supervising process, for API-started runs
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RoundRow(Base):
    """One round of a run: who took part, SecAgg+ stages, federated metrics, timings."""

    __tablename__ = "rounds"
    run_id: Mapped[str] = mapped_column(ForeignKey(_RUN_FK, ondelete="CASCADE"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    consent_as_of: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    fit_partners: Mapped[list[str]] = mapped_column(JSON, default=list)
    evaluate_partners: Mapped[list[str]] = mapped_column(JSON, default=list)
    secagg_stages: Mapped[dict[str, list[str]]] = mapped_column(JSON, default=dict)
    federated_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    federated: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    metric_source: Mapped[str] = mapped_column(String(100), default=LOCAL_HOLDOUT)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)


class RoundPartnerRow(Base):
    """One partner in one round: its examples, losses, local hold-out metrics and privacy spend."""

    __tablename__ = "round_partners"
    run_id: Mapped[str] = mapped_column(ForeignKey(_RUN_FK, ondelete="CASCADE"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    partner: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
    fit_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fit_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    roc_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    pr_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    top_decile_lift: Mapped[float | None] = mapped_column(Float, nullable=True)
    consent_as_of: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Differential privacy (present when the partner's FitMetrics carried ``dp``).
    dp_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    dp_delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    dp_noise_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    dp: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # everything the partner reported
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DropoutRow(Base):
    """A partner that did not deliver at a stage of a round, and why."""

    __tablename__ = "dropouts"
    run_id: Mapped[str] = mapped_column(ForeignKey(_RUN_FK, ondelete="CASCADE"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)


class LedgerHeadRow(Base):
    """A partner's signed consent-ledger head as received with a reply."""

    __tablename__ = "ledger_heads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey(_RUN_FK, ondelete="CASCADE"), index=True)
    partner: Mapped[str] = mapped_column(String(200), index=True)
    round: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str | None] = mapped_column(Text, nullable=True)
    tree_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    root_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)  # base64
    note: Mapped[str] = mapped_column(Text)


class ModelRow(Base):
    """A model file of a run, with its hash, the round it comes from and its promotion stage."""

    __tablename__ = "models"
    model_id: Mapped[str] = mapped_column(String(300), primary_key=True)  # "<run_id>:<label>"
    run_id: Mapped[str] = mapped_column(ForeignKey(_RUN_FK, ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64))  # final | round-<k>
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    file: Mapped[str] = mapped_column(Text)  # relative to the run directory
    sha256: Mapped[str] = mapped_column(String(64))
    sidecar_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage: Mapped[str] = mapped_column(String(20), default="candidate", index=True)
    task_name: Mapped[str] = mapped_column(String(200), index=True)
    federated_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    federated: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


class PromotionRow(Base):
    """One change of a model's stage: who, when, from and to."""

    __tablename__ = "promotions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(300), index=True)
    from_stage: Mapped[str] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    by: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


# --- engine and schema ----------------------------------------------------------------------


def default_registry_url(runs_dir: Path) -> str:
    """The embedded SQLite registry: ``registry.db`` next to the runs directory."""
    return f"sqlite:///{(Path(runs_dir).expanduser().resolve().parent / DEFAULT_FILE)}"


def registry_url(option: str | None, runs_dir: Path) -> str:
    """``--registry`` if given, else ``FEDCRM_REGISTRY_URL``, else the SQLite file next to ``runs_dir``."""
    url = option or os.environ.get(REGISTRY_ENV) or default_registry_url(runs_dir)
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_registry_engine(url: str) -> Engine:
    """An engine for the registry; SQLite gets WAL and a busy timeout (the API and a run index concurrently)."""
    try:
        engine = create_engine(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several types for a bad URL
        raise RegistryError(f"registry URL {_safe(url)!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def _safe(url: str) -> str:
    """The URL without a password (for messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "registry_alembic_version"  # our own name: the database may host the consent history too


def alembic_config(connection: Connection | None) -> Config:
    """Programmatic Alembic config: scripts from the package folder, run on ``connection``."""
    return migrations.alembic_config(MIGRATIONS, VERSION_TABLE, connection)


def upgrade_registry(engine: Engine) -> None:
    """Bring the registry schema to the newest migration (creates it on first use)."""
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        if current != ScriptDirectory.from_config(alembic_config(None)).get_current_head():
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn), "head")
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - connection refused, permission denied, ...
        raise RegistryError(f"registry {_safe(str(engine.url.render_as_string(hide_password=True)))}: "
                            f"cannot open or migrate: {str(exc).splitlines()[0]}") from exc


def open_registry(url: str) -> Engine:
    """An engine on an up-to-date registry schema."""
    engine = make_registry_engine(url)
    upgrade_registry(engine)
    return engine
