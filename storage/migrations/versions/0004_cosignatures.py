"""Witness cosignatures of the epochs' checkpoints (docs/PROTOCOL.md §12.4):
one row per epoch and witness key, the cosignature's signature line.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "witness_cosignatures",
        sa.Column("epoch", sa.BigInteger, sa.ForeignKey("epochs.number"), primary_key=True),
        sa.Column("witness", sa.String(255), primary_key=True),
        sa.Column("key_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("line", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_witness_cosignatures_witness", "witness_cosignatures", ["witness", "key_id", "epoch"]
    )


def downgrade() -> None:
    op.drop_index("ix_witness_cosignatures_witness", "witness_cosignatures")
    op.drop_table("witness_cosignatures")
