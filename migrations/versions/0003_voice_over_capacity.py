"""voice over capacity: agent_channels.overflow counts work a peer reported beyond capacity

A call the ACD reports is a fact even when it exceeds the agent's voice capacity. It is counted
in ``overflow`` so that ``load <= capacity`` still guards what Harmony itself offers.

Revision ID: 0003_voice_over_capacity
Revises: 0002
Create Date: 2026-11-22 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_voice_over_capacity"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_channels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("overflow", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_check_constraint("overflow_not_negative", "overflow >= 0")


def downgrade() -> None:
    # Without the column, calls beyond capacity count in the load as far as capacity allows, so
    # the end of one call does not free a channel another call still holds.
    op.execute(
        "UPDATE agent_channels SET load = CASE WHEN load + overflow > capacity "
        "THEN capacity ELSE load + overflow END WHERE overflow > 0"
    )
    with op.batch_alter_table("agent_channels", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("ck_agent_channels_overflow_not_negative"), type_="check"
        )
        batch_op.drop_column("overflow")
