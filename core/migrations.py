"""What the Alembic histories of fedcrm (the consent ledger's, the operator registry's) share.

Each history has its own scripts folder and its own version table (one database may host
both), and is migrated on a connection its owner hands in — ``config.attributes["connection"]``
— or, for operators running ``alembic`` by hand, on an engine built from ``sqlalchemy.url``.
:func:`alembic_config` builds that config; :func:`run_env` is the whole of each ``env.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import context
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData

__all__ = ["alembic_config", "run_env"]


def alembic_config(script_location: Path, version_table: str, connection: Connection | None) -> Config:
    """Programmatic Alembic config: scripts from ``script_location``, run on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("version_table", version_table)
    config.attributes["connection"] = connection
    return config


def _run(connection: Connection, metadata: MetaData, version_table: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=context.config.get_main_option("version_table") or version_table,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


def run_env(metadata: MetaData, version_table: str, make_engine: Callable[[str], Engine]) -> None:
    """An ``env.py``: migrate on the connection handed in, else on ``make_engine(sqlalchemy.url)``."""
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given, metadata, version_table)
        return
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            _run(conn, metadata, version_table)
            conn.commit()
    finally:
        engine.dispose()
