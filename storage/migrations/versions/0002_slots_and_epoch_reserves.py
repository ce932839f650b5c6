"""Slot assignments per salt period, and the reserve snapshot of each epoch.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from storage.schema import Amount

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slot_assignments",
        sa.Column("period", sa.Integer, sa.ForeignKey("salt_periods.number"), primary_key=True),
        sa.Column("asset", sa.String(16), sa.ForeignKey("assets.id"), primary_key=True),
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("slot", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("period", "asset", "slot", name="uq_slot_assignments_slot"),
    )
    op.create_table(
        "epoch_reserves",
        sa.Column("epoch", sa.BigInteger, sa.ForeignKey("epochs.number"), primary_key=True),
        sa.Column("asset", sa.String(16), sa.ForeignKey("assets.id"), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("amount", Amount, nullable=False),
        sa.Column("as_of_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("epoch_reserves")
    op.drop_table("slot_assignments")
