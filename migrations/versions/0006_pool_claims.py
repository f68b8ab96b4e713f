"""Pool claims: one operation per pool at a time, held in the database.

Replaces the partial unique index on active rollouts' pool pairs (an inplace
rollout's pair ``blue+blue`` never collided with ``blue+green``). Rollouts
active at upgrade time get claims on their pools with a lease that has
already run out, so the next control plane adopts and resumes them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    claims = op.create_table(
        "pool_claims",
        sa.Column("pool", sa.String(32), nullable=False),
        sa.Column("holder_kind", sa.String(16), nullable=False),
        sa.Column("holder_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("taken_at", TZ, nullable=False),
        sa.Column("lease_until", TZ, nullable=False),
        sa.PrimaryKeyConstraint("pool", name="pk_pool_claims"),
        sa.ForeignKeyConstraint(
            ["pool"], ["pools.name"], name="fk_pool_claims_pool_pools", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_pool_claims_holder_id", "pool_claims", ["holder_id"])
    active = op.get_bind().execute(
        sa.text("SELECT id, source_pool, target_pool FROM rollouts WHERE active ORDER BY id")
    )
    now = datetime.now(UTC)
    rows: dict[str, dict[str, object]] = {}
    for rollout_id, source, target in active:
        for pool in (source, target):
            # Should two active rollouts share a pool (the race this replaces), the older one keeps it.
            rows.setdefault(
                pool,
                {
                    "pool": pool,
                    "holder_kind": "rollout",
                    "holder_id": str(rollout_id),
                    "owner": "migration 0006",
                    "taken_at": now,
                    "lease_until": now,
                },
            )
    if rows:
        op.bulk_insert(claims, list(rows.values()))
    op.drop_index("uq_rollouts_active_pool_pair", table_name="rollouts")


def downgrade() -> None:
    op.create_index(
        "uq_rollouts_active_pool_pair",
        "rollouts",
        ["pool_pair"],
        unique=True,
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active"),
    )
    op.drop_index("ix_pool_claims_holder_id", table_name="pool_claims")
    op.drop_table("pool_claims")
