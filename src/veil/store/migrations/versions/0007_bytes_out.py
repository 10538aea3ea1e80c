"""Transparency: how many bytes of each request left the device; a tenant's and a user's
requests by time (the dashboard and the privacy report).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(
            sa.Column("bytes_out", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_index("ix_usage_user_created", "usage", ["tenant", "user_hash", "created_at"])
    op.create_index("ix_usage_tenant_created", "usage", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_tenant_created", "usage")
    op.drop_index("ix_usage_user_created", "usage")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("bytes_out")
