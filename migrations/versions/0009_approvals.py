"""Protected promotions: models that require approval, and who approved a rollout.

``model_policies`` gains ``require_approval`` (existing policies: false) and
``approval_timeout_seconds`` (86400); ``rollouts`` gains ``approved_by``,
``decided_at`` and ``approval_expires_at``, null for every rollout that
never waited for approval.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("model_policies") as batch:
        batch.add_column(sa.Column("require_approval", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(
            sa.Column("approval_timeout_seconds", sa.Integer, nullable=False, server_default="86400")
        )
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("approved_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("decided_at", TZ, nullable=True))
        batch.add_column(sa.Column("approval_expires_at", TZ, nullable=True))


def downgrade() -> None:
    # Code before 0009 knows none of the approval states: such rollouts read as failed (their reason stays).
    op.execute(
        sa.text(
            "UPDATE rollouts SET state = 'failed', active = :inactive, "
            "finished_at = COALESCE(finished_at, CURRENT_TIMESTAMP) "
            "WHERE state IN ('pending_approval', 'rejected', 'expired')"
        ).bindparams(inactive=False)
    )
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("approval_expires_at")
        batch.drop_column("decided_at")
        batch.drop_column("approved_by")
    with op.batch_alter_table("model_policies") as batch:
        batch.drop_column("approval_timeout_seconds")
        batch.drop_column("require_approval")
