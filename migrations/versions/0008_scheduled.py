"""durable timers: the scheduled table

Revision ID: 0008_scheduled
Revises: 0007_lifecycle_states
Create Date: 2026-11-23 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_scheduled"
down_revision: str | None = "0007_lifecycle_states"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scheduled",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("guard", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claim_token", sa.String(length=64), nullable=True),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled")),
        sa.UniqueConstraint("kind", "subject", name=op.f("uq_scheduled_kind_subject")),
    )
    op.create_index("ix_scheduled_due_at", "scheduled", ["due_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_scheduled_due_at", table_name="scheduled")
    op.drop_table("scheduled")
