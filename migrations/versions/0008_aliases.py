"""Aliases: named pointers to versions per model, and their history.

A model serving on the live pool at upgrade time gets its ``production``
alias at once (with a history row saying so), so that the alias and the
proxy agree from the first start of the new code.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    aliases = op.create_table(
        "model_aliases",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_aliases"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_model_aliases_model_id_models", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name="fk_model_aliases_version_id_model_versions",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("model_id", "name", name="uq_model_aliases_model_name"),
    )
    op.create_index("ix_model_aliases_version_id", "model_aliases", ["version_id"])
    history = op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("previous", sa.Integer, nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rollout_id", sa.Integer, nullable=True),
        sa.Column("at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alias_history"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_alias_history_model_id_models", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name="fk_alias_history_rollout_id_rollouts", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_alias_history_model_name_at", "alias_history", ["model_id", "name", "at"])
    _production_from_live_pool(aliases, history)


def _production_from_live_pool(aliases: sa.Table, history: sa.Table) -> None:
    """``production`` for every model the live pool (most weight; ties by name) serves now."""
    bind = op.get_bind()
    weights = bind.execute(sa.text("SELECT name, weight FROM pools ORDER BY name")).all()
    if not weights:
        return
    live = max(weights, key=lambda row: row[1])[0]
    serving = bind.execute(
        sa.text(
            "SELECT d.model_id, d.version_id, v.number FROM deployments d "
            "JOIN model_versions v ON v.id = d.version_id WHERE d.pool = :pool ORDER BY d.model_id"
        ),
        {"pool": live},
    ).all()
    now = datetime.now(UTC)
    if serving:
        op.bulk_insert(
            aliases,
            [
                {
                    "model_id": model_id,
                    "name": "production",
                    "version_id": version_id,
                    "actor": "migration 0008",
                    "updated_at": now,
                }
                for model_id, version_id, _number in serving
            ],
        )
        op.bulk_insert(
            history,
            [
                {
                    "model_id": model_id,
                    "name": "production",
                    "version": number,
                    "previous": None,
                    "actor": "migration 0008",
                    "reason": f"serving on pool {live} when aliases were introduced",
                    "rollout_id": None,
                    "at": now,
                }
                for model_id, _version_id, number in serving
            ],
        )


def downgrade() -> None:
    op.drop_index("ix_alias_history_model_name_at", table_name="alias_history")
    op.drop_table("alias_history")
    op.drop_index("ix_model_aliases_version_id", table_name="model_aliases")
    op.drop_table("model_aliases")
