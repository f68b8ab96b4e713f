"""Pools with desired weights, rollouts and their events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_pools"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("from_version_id", sa.Integer, nullable=True),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("pool_pair", sa.String(80), nullable=False),
        sa.Column("source_pool", sa.String(32), nullable=False),
        sa.Column("target_pool", sa.String(32), nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step_seconds", sa.Float, nullable=False),
        sa.Column("bake_seconds", sa.Float, nullable=False),
        sa.Column("gates", sa.JSON, nullable=False),
        sa.Column("step_index", sa.Integer, nullable=True),
        sa.Column("requested_action", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_rollouts_model_id_models", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name="fk_rollouts_version_id_model_versions"
        ),
        sa.ForeignKeyConstraint(
            ["from_version_id"], ["model_versions.id"], name="fk_rollouts_from_version_id_model_versions"
        ),
    )
    op.create_index("ix_rollouts_model_id", "rollouts", ["model_id"])
    op.create_index(
        "uq_rollouts_active_pool_pair",
        "rollouts",
        ["pool_pair"],
        unique=True,
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active"),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("rollout_id", sa.Integer, nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("step_index", sa.Integer, nullable=True),
        sa.Column("weights", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("measurements", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollout_events"),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name="fk_rollout_events_rollout_id_rollouts", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_rollout_events_rollout_id", "rollout_events", ["rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_events_rollout_id", table_name="rollout_events")
    op.drop_table("rollout_events")
    op.drop_index("uq_rollouts_active_pool_pair", table_name="rollouts")
    op.drop_index("ix_rollouts_model_id", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_table("pools")
