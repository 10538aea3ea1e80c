"""Consents and their audit trail; partner, policy, consent and redaction metadata on usage.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("partner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("cloud", sa.String(64), nullable=True))
        batch.add_column(sa.Column("policy", sa.String(512), nullable=True))
        batch.add_column(sa.Column("consent", sa.String(16), nullable=True))
        batch.add_column(sa.Column("redactions", sa.String(512), nullable=True))
    op.create_table(
        "consents",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=False),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_consents_tenant", "consents", ["tenant"])
    op.create_index("ix_consents_user_hash", "consents", ["user_hash"])
    op.create_table(
        "consent_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=False),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("via", sa.String(64), nullable=False),
    )
    op.create_index("ix_consent_events_at", "consent_events", ["at"])
    op.create_index("ix_consent_events_tenant", "consent_events", ["tenant"])


def downgrade() -> None:
    op.drop_table("consent_events")
    op.drop_table("consents")
    with op.batch_alter_table("usage") as batch:
        for column in ("redactions", "consent", "policy", "cloud", "partner"):
            batch.drop_column(column)
