"""initial schema: queues, agents, interactions, history, inbox, outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-22 01:43:45.640641
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("crm_agent_id", sa.String(length=200), nullable=False),
        sa.Column("acd_agent_id", sa.String(length=200), nullable=False),
        sa.Column("skills", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("acd_agent_id", name=op.f("uq_agents_acd_agent_id")),
        sa.UniqueConstraint("crm_agent_id", name=op.f("uq_agents_crm_agent_id")),
    )
    op.create_table(
        "inbox",
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("interaction_id", sa.String(length=36), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "event_id", name=op.f("pk_inbox")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("target_kind", sa.String(length=8), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("interaction_id", sa.String(length=36), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'sent', 'dead')", name=op.f("ck_outbox_status")),
        sa.CheckConstraint("target_kind IN ('acd', 'crm')", name=op.f("ck_outbox_target_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "queues",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("skills", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("channel IN ('chat', 'email')", name=op.f("ck_queues_channel")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_queues")),
    )
    op.create_table(
        "agent_channels",
        sa.Column("agent_id", sa.String(length=100), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("load", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "channel IN ('voice', 'chat', 'email')", name=op.f("ck_agent_channels_channel")
        ),
        sa.CheckConstraint("capacity >= 0", name=op.f("ck_agent_channels_capacity_not_negative")),
        sa.CheckConstraint("load <= capacity", name=op.f("ck_agent_channels_load_within_capacity")),
        sa.CheckConstraint("load >= 0", name=op.f("ck_agent_channels_load_not_negative")),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_channels_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", "channel", name=op.f("pk_agent_channels")),
    )
    op.create_table(
        "interactions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("crm_adapter", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("skills", sa.JSON(), nullable=False),
        sa.Column("customer", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("acd_adapter", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("agent_id", sa.String(length=100), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("routing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(state IN ('offered', 'delivered', 'accepted', 'completed')) = (agent_id IS NOT NULL) OR state = 'failed'",
            name=op.f("ck_interactions_agent_matches_state"),
        ),
        sa.CheckConstraint("channel IN ('chat', 'email')", name=op.f("ck_interactions_channel")),
        sa.CheckConstraint(
            "state IN ('received', 'routing', 'queued', 'offered', 'delivered', 'accepted', 'completed', 'failed')",
            name=op.f("ck_interactions_state"),
        ),
        sa.CheckConstraint(
            "priority BETWEEN 0 AND 100", name=op.f("ck_interactions_priority_range")
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_interactions_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["queue"], ["queues.name"], name=op.f("fk_interactions_queue_queues")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interactions")),
        sa.UniqueConstraint(
            "crm_adapter", "external_id", name=op.f("uq_interactions_crm_adapter_external_id")
        ),
        sa.UniqueConstraint("request_id", name=op.f("uq_interactions_request_id")),
    )
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.create_index("ix_interactions_queue_state", ["queue", "state"], unique=False)
        batch_op.create_index("ix_interactions_received_at_id", ["received_at", "id"], unique=False)
        batch_op.create_index(
            "ix_interactions_state_received_at", ["state", "received_at"], unique=False
        )

    op.create_table(
        "interaction_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("interaction_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_interaction_history_interaction_id_interactions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interaction_history")),
    )
    with op.batch_alter_table("interaction_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_interaction_history_interaction_id_id", ["interaction_id", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("interaction_history", schema=None) as batch_op:
        batch_op.drop_index("ix_interaction_history_interaction_id_id")

    op.drop_table("interaction_history")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_interactions_state_received_at")
        batch_op.drop_index("ix_interactions_received_at_id")
        batch_op.drop_index("ix_interactions_queue_state")

    op.drop_table("interactions")
    op.drop_table("agent_channels")
    op.drop_table("queues")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_status_next_attempt_at")

    op.drop_table("outbox")
    op.drop_table("inbox")
    op.drop_table("agents")
