"""Add shard_states and shard_holdings: what a shard of the sharded prover
restarts from after a crash, its state and holders as of the last epoch it
closed (storage/shards.py).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from storage.schema import Amount

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shard_states",
        sa.Column("stream", sa.String(128), primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("period", sa.Integer, nullable=False),
        sa.Column("cut", sa.BigInteger, nullable=False),
        sa.Column("resume", sa.BigInteger, nullable=False),
        sa.Column("marks", sa.Text, nullable=False),
        sa.Column("trees", sa.Text, nullable=False),
        sa.Column("replies", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "shard_holdings",
        sa.Column("stream", sa.String(128), primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("asset", sa.String(16), primary_key=True),
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("amount", Amount, nullable=False),
        sa.Column("slot", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("shard_holdings")
    op.drop_table("shard_states")
