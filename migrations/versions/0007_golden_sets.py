"""Golden sets: per version, the file (a blob) a candidate must reproduce before it gets traffic.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-11
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "golden_sets",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_golden_sets"),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name="fk_golden_sets_version_id_model_versions",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("version_id", name="uq_golden_sets_version_id"),
        sa.CheckConstraint("source IN ('folder', 'attached')", name="ck_golden_sets_source"),
        sa.CheckConstraint("format IN ('npz', 'json')", name="ck_golden_sets_format"),
    )


def downgrade() -> None:
    op.drop_table("golden_sets")
