"""Alembic migrations of the operator's registry (run by ``fedcrm.coordinator.registry_db.upgrade_registry``)."""
