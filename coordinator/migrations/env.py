"""Alembic environment of the operator's registry.

The registry runs migrations on a connection it hands in (``config.attributes["connection"]``,
see ``fedcrm.coordinator.registry_db.upgrade_registry``). For operators running Alembic by
hand, a ``sqlalchemy.url`` main option works too (both: :func:`fedcrm.migrations.run_env`).
"""

from __future__ import annotations

from fedcrm.coordinator.registry_db import VERSION_TABLE, Base, make_registry_engine
from fedcrm.migrations import run_env

run_env(Base.metadata, VERSION_TABLE, make_registry_engine)
