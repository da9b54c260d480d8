"""Operator registry: runs, rounds, per-partner rounds (with DP spend), dropouts, ledger heads, models, promotions.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('promotions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.String(length=300), nullable=False),
    sa.Column('from_stage', sa.String(length=20), nullable=False),
    sa.Column('to_stage', sa.String(length=20), nullable=False),
    sa.Column('by', sa.String(length=200), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_promotions'))
    )
    op.create_index(op.f('ix_promotions_model_id'), 'promotions', ['model_id'], unique=False)
    op.create_table('runs',
    sa.Column('run_id', sa.String(length=200), nullable=False),
    sa.Column('run_dir', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('task_name', sa.String(length=200), nullable=False),
    sa.Column('task_schema_sha256', sa.String(length=64), nullable=False),
    sa.Column('strategy', sa.String(length=20), nullable=False),
    sa.Column('aggregation', sa.String(length=20), nullable=False),
    sa.Column('architecture', sa.String(length=20), nullable=False),
    sa.Column('rounds_planned', sa.Integer(), nullable=False),
    sa.Column('rounds_completed', sa.Integer(), nullable=False),
    sa.Column('num_partners', sa.Integer(), nullable=False),
    sa.Column('partners', sa.JSON(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('privacy', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wall_s', sa.Float(), nullable=True),
    sa.Column('resumed_from', sa.JSON(), nullable=False),
    sa.Column('best_round', sa.Integer(), nullable=True),
    sa.Column('final_round', sa.Integer(), nullable=True),
    sa.Column('final_rule', sa.String(length=20), nullable=True),
    sa.Column('stopped_early_after', sa.Integer(), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('indexed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_runs'))
    )
    op.create_index(op.f('ix_runs_status'), 'runs', ['status'], unique=False)
    op.create_index(op.f('ix_runs_task_name'), 'runs', ['task_name'], unique=False)
    op.create_index(op.f('ix_runs_task_schema_sha256'), 'runs', ['task_schema_sha256'], unique=False)
    op.create_table('dropouts',
    sa.Column('run_id', sa.String(length=200), nullable=False),
    sa.Column('round', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('stage', sa.String(length=64), nullable=False),
    sa.Column('partner', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_dropouts_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'round', 'stage', 'partner', name=op.f('pk_dropouts'))
    )
    op.create_table('ledger_heads',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=200), nullable=False),
    sa.Column('partner', sa.String(length=200), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=False),
    sa.Column('origin', sa.Text(), nullable=True),
    sa.Column('tree_size', sa.Integer(), nullable=True),
    sa.Column('root_hash', sa.String(length=64), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_ledger_heads_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_heads'))
    )
    op.create_index(op.f('ix_ledger_heads_partner'), 'ledger_heads', ['partner'], unique=False)
    op.create_index(op.f('ix_ledger_heads_run_id'), 'ledger_heads', ['run_id'], unique=False)
    op.create_table('models',
    sa.Column('model_id', sa.String(length=300), nullable=False),
    sa.Column('run_id', sa.String(length=200), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('round', sa.Integer(), nullable=True),
    sa.Column('file', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('sidecar_sha256', sa.String(length=64), nullable=True),
    sa.Column('stage', sa.String(length=20), nullable=False),
    sa.Column('task_name', sa.String(length=200), nullable=False),
    sa.Column('federated_loss', sa.Float(), nullable=True),
    sa.Column('federated', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_models_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('model_id', name=op.f('pk_models'))
    )
    op.create_index(op.f('ix_models_run_id'), 'models', ['run_id'], unique=False)
    op.create_index(op.f('ix_models_stage'), 'models', ['stage'], unique=False)
    op.create_index(op.f('ix_models_task_name'), 'models', ['task_name'], unique=False)
    op.create_table('round_partners',
    sa.Column('run_id', sa.String(length=200), nullable=False),
    sa.Column('round', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('partner', sa.String(length=200), nullable=False),
    sa.Column('fit_examples', sa.Integer(), nullable=True),
    sa.Column('fit_loss', sa.Float(), nullable=True),
    sa.Column('eval_examples', sa.Integer(), nullable=True),
    sa.Column('eval_loss', sa.Float(), nullable=True),
    sa.Column('roc_auc', sa.Float(), nullable=True),
    sa.Column('pr_auc', sa.Float(), nullable=True),
    sa.Column('top_decile_lift', sa.Float(), nullable=True),
    sa.Column('consent_as_of', sa.String(length=64), nullable=True),
    sa.Column('dp_epsilon', sa.Float(), nullable=True),
    sa.Column('dp_delta', sa.Float(), nullable=True),
    sa.Column('dp_noise_multiplier', sa.Float(), nullable=True),
    sa.Column('dp', sa.JSON(), nullable=True),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_round_partners_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'round', 'partner', name=op.f('pk_round_partners'))
    )
    op.create_index(op.f('ix_round_partners_partner'), 'round_partners', ['partner'], unique=False)
    op.create_table('rounds',
    sa.Column('run_id', sa.String(length=200), nullable=False),
    sa.Column('round', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('consent_as_of', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('fit_partners', sa.JSON(), nullable=False),
    sa.Column('evaluate_partners', sa.JSON(), nullable=False),
    sa.Column('secagg_stages', sa.JSON(), nullable=False),
    sa.Column('federated_loss', sa.Float(), nullable=True),
    sa.Column('federated', sa.JSON(), nullable=False),
    sa.Column('metric_source', sa.String(length=100), nullable=False),
    sa.Column('completed', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_rounds_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'round', name=op.f('pk_rounds'))
    )


def downgrade() -> None:
    for table in ("rounds", "round_partners", "models", "ledger_heads", "dropouts", "runs", "promotions"):
        op.drop_table(table)
