"""Content safety: what moderation decided per request; the release gate's red-team results.

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
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("moderation", sa.String(256), nullable=True))
    op.create_table(
        "model_releases",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attack_success", sa.Float(), nullable=False),
        sa.Column("false_refusal", sa.Float(), nullable=False),
        sa.Column("attacks", sa.Integer(), nullable=False),
        sa.Column("benign", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(4096), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_releases")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("moderation")
