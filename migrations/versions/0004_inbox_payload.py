"""inbox payload: the verified body, the handling outcome and a received_at index for pruning

Revision ID: 0004_inbox_payload
Revises: 0003_voice_over_capacity
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_inbox_payload"
down_revision: str | None = "0003_voice_over_capacity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows from before this revision were applied when stored (the claim and the change
    # shared one transaction), so they start as applied, with no payload kept.
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payload", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("status", sa.String(length=8), server_default="applied", nullable=False)
        )
        batch_op.add_column(sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch_op.create_check_constraint("status", "status IN ('pending', 'applied', 'failed')")
        batch_op.create_index("ix_inbox_received_at", ["received_at"], unique=False)


def downgrade() -> None:
    # Before this revision a row meant "applied": a pending or failed one would make the
    # sender's retry a duplicate that is never applied.
    op.execute("DELETE FROM inbox WHERE status <> 'applied'")
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_inbox_received_at")
        batch_op.drop_constraint(batch_op.f("ck_inbox_status"), type_="check")
        batch_op.drop_column("error")
        batch_op.drop_column("handled_at")
        batch_op.drop_column("status")
        batch_op.drop_column("payload")
