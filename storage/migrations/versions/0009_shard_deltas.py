"""Add shard_deltas: each close of a shard appends the holdings it changed
as one packed row, folded into shard_holdings later (storage/shards.py).
The rows 0008 saved in shard_holdings are the base the deltas apply over,
so a shard saved before this migration restores unchanged.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from storage.shards import fold_deltas

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shard_deltas",
        sa.Column("stream", sa.String(128), primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    # fold the deltas first: without them, 0008's shard_holdings must be whole
    conn = op.get_bind()
    keys = conn.execute(sa.text("SELECT DISTINCT stream, part FROM shard_deltas")).all()
    for stream, part in keys:
        fold_deltas(conn, conn.dialect.name, stream, part)
    op.drop_table("shard_deltas")
