"""Routing: users' model preferences per task category; the task and attempts on usage.

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
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("category", sa.String(32), nullable=True))
        batch.add_column(sa.Column("difficulty", sa.String(16), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "preferences",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("user_hash", sa.String(64), primary_key=True),
        sa.Column("category", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("preferences")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("attempts")
        batch.drop_column("difficulty")
        batch.drop_column("category")
