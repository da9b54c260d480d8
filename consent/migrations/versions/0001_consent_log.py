"""Consent log: entries, signed heads, and the erasable personal tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Index64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger_meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_ledger_meta"),
    )
    op.create_table(
        "log_entries",
        sa.Column("idx", Index64, autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("public_json", sa.Text(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("idx", name="pk_log_entries"),
    )
    op.create_index("ix_log_entries_kind", "log_entries", ["kind"])
    op.create_index("ix_log_entries_fingerprint", "log_entries", ["fingerprint"])
    op.create_table(
        "personal_payloads",
        sa.Column("idx", Index64, autoincrement=False, nullable=False),
        sa.Column("field", sa.String(64), nullable=False),
        sa.Column("salt", sa.LargeBinary(32), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("idx", "field", name="pk_personal_payloads"),
    )
    op.create_index("ix_personal_payloads_value", "personal_payloads", ["value"])
    op.create_table(
        "signed_heads",
        sa.Column("size", Index64, autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size", name="pk_signed_heads"),
    )
    op.create_table(
        "subject_sets",
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", "subject", name="pk_subject_sets"),
    )
    op.create_index("ix_subject_sets_subject", "subject_sets", ["subject"])
    op.create_table(
        "key_rotations",
        sa.Column("old_pseudonym", sa.String(200), nullable=False),
        sa.Column("new_pseudonym", sa.String(200), nullable=False),
        sa.Column("old_key_id", sa.String(8), nullable=False),
        sa.Column("new_key_id", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("old_pseudonym", "new_pseudonym", name="pk_key_rotations"),
    )
    op.create_index("ix_key_rotations_new_pseudonym", "key_rotations", ["new_pseudonym"])


def downgrade() -> None:
    for table in ("key_rotations", "subject_sets", "signed_heads", "personal_payloads", "log_entries", "ledger_meta"):
        op.drop_table(table)
