"""Metering: billed and cost amounts on usage rows; the double-entry ledger.

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
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("billed", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cost", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "ledger_entries",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("line", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account", sa.String(160), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("counterparty", sa.String(160), nullable=False),
        sa.Column("contract", sa.String(128), nullable=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=True),
        # Every request writes several lines: on SQLite the table is clustered on its key
        # (no separate index to maintain), and there are no secondary indexes. Statements
        # and reconciliation scan a period; they are rare, metering is on every request.
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("ledger_entries")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("cost")
        batch.drop_column("billed")
