"""Alembic environment of the consent ledger.

The ledger runs migrations on a connection it hands in (``config.attributes["connection"]``,
see ``fedcrm.consent.db.upgrade_schema``). For operators running Alembic by hand, a
``sqlalchemy.url`` main option works too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from fedcrm.consent.db import VERSION_TABLE, Base, make_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=context.config.get_main_option("version_table") or VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()
