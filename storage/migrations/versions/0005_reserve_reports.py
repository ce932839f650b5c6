"""Signed reserve reports (docs/PROTOCOL.md §13): every accepted report by
its hash, and the latest report's key id and hash beside each reserve.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reserve_reports",
        sa.Column("report_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("asset", sa.String(16), sa.ForeignKey("assets.id"), nullable=False),
        sa.Column("note", sa.LargeBinary, nullable=False),
    )
    op.add_column("reserves", sa.Column("key_id", sa.BigInteger, nullable=True))
    op.add_column("reserves", sa.Column("report_hash", sa.LargeBinary(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reserves") as batch:  # SQLite drops columns by copying
        batch.drop_column("report_hash")
        batch.drop_column("key_id")
    op.drop_table("reserve_reports")
