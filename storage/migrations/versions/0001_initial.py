"""Initial schema: assets, balances, producer marks, reserves, salt periods,
epochs (the log's leaves), epoch marks and signing keys.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from storage.schema import Amount

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("decimals", sa.Integer, nullable=False),
    )
    op.create_table(
        "balances",
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("asset", sa.String(16), sa.ForeignKey("assets.id"), primary_key=True),
        sa.Column("amount", Amount, nullable=False),
    )
    op.create_table(
        "source_marks",
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "reserves",
        sa.Column("asset", sa.String(16), sa.ForeignKey("assets.id"), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("amount", Amount, nullable=False),
        sa.Column("as_of_ms", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "salt_periods",
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("secret", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "epochs",
        sa.Column("number", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("checkpoint", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "epoch_marks",
        sa.Column("epoch", sa.BigInteger, sa.ForeignKey("epochs.number"), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.String(8), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("active_from_ms", sa.BigInteger, nullable=False),
        sa.Column("active_to_ms", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    for table in (
        "signing_keys",
        "epoch_marks",
        "epochs",
        "salt_periods",
        "reserves",
        "source_marks",
        "balances",
        "assets",
    ):
        op.drop_table(table)
