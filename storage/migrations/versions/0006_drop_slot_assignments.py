"""Drop slot_assignments (migration 0002), which nothing read or wrote: the
prover places holders in slots in memory, in the order each salt period
derives from its secret (prover/periods.py), and begins a new period when it
rebuilds its trees. Downgrading recreates the table, empty.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("slot_assignments")


def downgrade() -> None:
    op.create_table(
        "slot_assignments",
        sa.Column("period", sa.Integer, sa.ForeignKey("salt_periods.number"), primary_key=True),
        sa.Column("asset", sa.String(16), sa.ForeignKey("assets.id"), primary_key=True),
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("slot", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("period", "asset", "slot", name="uq_slot_assignments_slot"),
    )
