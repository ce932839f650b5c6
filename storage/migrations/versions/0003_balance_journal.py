"""The balance journal: acknowledged batches of balance updates, one row each,
folded into ``balances`` later by ``Store.fold``.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "balance_journal",
        # INTEGER PRIMARY KEY (the rowid) on SQLite, BIGSERIAL on PostgreSQL
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    # Dropping unfolded updates would lose acknowledged balances.
    if op.get_bind().scalar(sa.text("SELECT count(*) FROM balance_journal")):
        raise RuntimeError("balance_journal holds unfolded updates: run Store.fold() first")
    op.drop_table("balance_journal")
