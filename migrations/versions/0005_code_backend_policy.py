"""Per-model policy for backends that run code from the model folder.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_policies") as batch:
        batch.add_column(sa.Column("allow_code_backends", sa.Boolean, nullable=True))
        batch.add_column(sa.Column("code_backends_require_signature", sa.Boolean, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_policies") as batch:
        batch.drop_column("code_backends_require_signature")
        batch.drop_column("allow_code_backends")
