"""Flexible jobs: a start window (``not_before``, ``deadline``) the local queue honours.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("flexible", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("not_before", sa.Double(), nullable=True))
        batch.add_column(sa.Column("deadline", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("deadline")
        batch.drop_column("not_before")
        batch.drop_column("flexible")
