"""Alembic migrations of the consent ledger."""
