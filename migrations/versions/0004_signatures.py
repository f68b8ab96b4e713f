"""Verified signatures per version and per-model signature policies.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "version_signatures",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("identity", sa.JSON, nullable=False),
        sa.Column("statement_sha256", sa.String(64), nullable=False),
        sa.Column("statement", sa.LargeBinary, nullable=False),
        sa.Column("bundle", sa.LargeBinary, nullable=False),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_version_signatures"),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name="fk_version_signatures_version_id_model_versions",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("version_id", name="uq_version_signatures_version_id"),
    )
    op.create_table(
        "model_policies",
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("require_signature", sa.Boolean, nullable=True),
        sa.Column("allowed_signers", sa.JSON, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_id", name="pk_model_policies"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_model_policies_model_id_models", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("model_policies")
    op.drop_table("version_signatures")
