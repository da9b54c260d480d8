"""Alembic environment of the consent ledger.

The ledger runs migrations on a connection it hands in (``config.attributes["connection"]``,
see ``fedcrm.consent.db.upgrade_schema``). For operators running Alembic by hand, a
``sqlalchemy.url`` main option works too (both: :func:`fedcrm.migrations.run_env`).
"""

from __future__ import annotations

from fedcrm.consent.db import VERSION_TABLE, Base, make_engine
from fedcrm.migrations import run_env

run_env(Base.metadata, VERSION_TABLE, make_engine)
