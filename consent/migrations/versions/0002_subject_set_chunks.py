"""Subject sets in sorted chunks instead of a row per member.

A million-member set took 8.4 s to write as a million rows (``docs/scale.md``); as
chunks of sorted, newline-joined pseudonyms it is a few hundred rows, and verifying it
is one SHA-256 pass over them. Existing sets are copied in the same bytewise order the
fingerprint hashes, so every logged fingerprint still matches.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHUNK_SIZE = 4096  # as consent.subject_sets.CHUNK_SIZE when this revision was written (a migration stays fixed)

_chunks = sa.table(
    "subject_set_chunks",
    sa.column("fingerprint", sa.String), sa.column("chunk", sa.Integer), sa.column("first", sa.LargeBinary),
    sa.column("last", sa.LargeBinary), sa.column("size", sa.Integer), sa.column("members", sa.LargeBinary),
)
_members = sa.table("subject_sets", sa.column("fingerprint", sa.String), sa.column("subject", sa.String))


def _create_chunks() -> None:
    op.create_table(
        "subject_set_chunks",
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("chunk", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("first", sa.LargeBinary(), nullable=False),
        sa.Column("last", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("members", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", "chunk", name="pk_subject_set_chunks"),
    )
    op.create_index("ix_subject_set_chunks_last_first", "subject_set_chunks", ["last", "first"])


def _create_members() -> None:
    op.create_table(
        "subject_sets",
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", "subject", name="pk_subject_sets"),
    )
    op.create_index("ix_subject_sets_subject", "subject_sets", ["subject"])


def upgrade() -> None:
    _create_chunks()
    conn = op.get_bind()
    fingerprints = conn.execute(sa.select(_members.c.fingerprint).distinct()).scalars().all()
    for fp in fingerprints:
        # Sorted in Python (code-point order = UTF-8 byte order), not by the database's collation.
        members = sorted(s.encode() for s in conn.execute(
            sa.select(_members.c.subject).where(_members.c.fingerprint == fp)).scalars())
        rows = [{"fingerprint": fp, "chunk": n, "first": part[0], "last": part[-1], "size": len(part),
                 "members": b"\n".join(part)}
                for n, part in enumerate(members[lo : lo + CHUNK_SIZE] for lo in range(0, len(members), CHUNK_SIZE))]
        if rows:
            conn.execute(sa.insert(_chunks), rows)
    op.drop_index("ix_subject_sets_subject", table_name="subject_sets")
    op.drop_table("subject_sets")


def downgrade() -> None:
    _create_members()
    conn = op.get_bind()
    for fp, joined in conn.execute(sa.select(_chunks.c.fingerprint, _chunks.c.members)).all():
        rows = [{"fingerprint": fp, "subject": m.decode()} for m in bytes(joined).split(b"\n")]
        conn.execute(sa.insert(_members), rows)
    op.drop_index("ix_subject_set_chunks_last_first", table_name="subject_set_chunks")
    op.drop_table("subject_set_chunks")
