"""offers as records; queue timeouts, maximum wait and overflow; RONA per profile; an
interaction's offer count, overflow count and maximum-wait deadline; an agent channel's pending
next state

Revision ID: 0009_offers
Revises: 0008_scheduled
Create Date: 2026-11-23 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0009_offers"
down_revision: str | None = "0008_scheduled"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out: a migration must not change with the code.
OFFER_STATUSES = (
    "status IN ('pending', 'accepted', 'declined', 'timed_out', 'rescinded', 'abandoned',"
    " 'completed', 'transferred')"
)
LIVE_OFFER = "status IN ('pending', 'accepted')"


def upgrade() -> None:
    op.create_table(
        "offers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("interaction_id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=100), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.CheckConstraint(OFFER_STATUSES, name=op.f("ck_offers_status")),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_offers_interaction_id_interactions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_offers_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offers")),
    )
    op.create_index(
        "ix_offers_interaction_id_offered_at", "offers", ["interaction_id", "offered_at"]
    )
    # At most one offer per interaction is pending or accepted: the database says so.
    op.create_index(
        "uq_offers_live_interaction",
        "offers",
        ["interaction_id"],
        unique=True,
        postgresql_where=sa.text(LIVE_OFFER),
        sqlite_where=sa.text(LIVE_OFFER),
    )
    # RONA reads the offers an agent most recently answered or missed on a channel.
    op.create_index(
        "ix_offers_agent_id_channel_decided_at", "offers", ["agent_id", "channel", "decided_at"]
    )
    op.create_index(
        "ix_offers_live_agent",
        "offers",
        ["agent_id"],
        postgresql_where=sa.text(LIVE_OFFER),
        sqlite_where=sa.text(LIVE_OFFER),
    )
    # Queues: NULL takes the channel's default (routing.model.QUEUE_DEFAULTS).
    for name in (
        "offer_timeout_seconds",
        "routing_timeout_seconds",
        "max_wait_seconds",
        "max_offers",
    ):
        op.add_column("queues", sa.Column(name, sa.Integer(), nullable=True))
    op.add_column("queues", sa.Column("overflow_queue", sa.String(length=100), nullable=True))
    op.add_column(
        "profiles", sa.Column("rona_after", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column(
        "profiles",
        sa.Column("rona_counts_decline", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "profiles",
        sa.Column("return_accepted_email", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "interactions", sa.Column("offers_made", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "interactions", sa.Column("overflows", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "interactions", sa.Column("max_wait_at", sa.DateTime(timezone=True), nullable=True)
    )
    # GET /v1/queues counts each queue's recent abandons: only abandoned rows enter this index.
    op.create_index(
        "ix_interactions_abandoned",
        "interactions",
        ["queue", "abandoned_at"],
        postgresql_where=sa.text("state = 'abandoned'"),
        sqlite_where=sa.text("state = 'abandoned'"),
    )
    op.add_column("agent_channels", sa.Column("next_status", sa.String(length=16), nullable=True))
    op.add_column("agent_channels", sa.Column("next_reason", sa.String(length=64), nullable=True))
    _records_for_work_under_way()


def _records_for_work_under_way() -> None:
    """Offers for work already with an agent, and a deadline timer for every interaction no
    agent has accepted yet, so that nothing stored before can wait unbounded. The timers fall
    due at once with the deadline ``check``: the scheduler then arms what each one's state
    needs. An offer pending now gets the longest default offer timeout from now."""
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    now = datetime.now(UTC)
    stamp = now if postgres else now.replace(tzinfo=None)
    expires = stamp + timedelta(seconds=120)
    json_check = (
        'CAST(\'{"deadline": "check"}\' AS JSON)' if postgres else '\'{"deadline": "check"}\''
    )
    timestamps = (sa.bindparam("now", type_=sa.DateTime(timezone=postgres)),)
    bind.execute(
        sa.text(
            """
            INSERT INTO offers (id, interaction_id, agent_id, channel, status, offered_at,
                                expires_at, decided_at, reason)
            SELECT 'ofr_m' || id, id, agent_id, channel,
                   CASE WHEN state IN ('offered', 'delivered') THEN 'pending'
                        WHEN state = 'accepted' THEN 'accepted'
                        ELSE 'completed' END,
                   COALESCE(offered_at, updated_at),
                   CASE WHEN state IN ('offered', 'delivered') THEN :expires
                        ELSE COALESCE(offered_at, updated_at) END,
                   CASE WHEN state IN ('offered', 'delivered') THEN NULL
                        ELSE COALESCE(accepted_at, completed_at, updated_at) END,
                   'migrated'
            FROM interactions
            WHERE agent_id IS NOT NULL
              AND state IN ('offered', 'delivered', 'accepted', 'completed')
            """
        ).bindparams(
            sa.bindparam("expires", type_=sa.DateTime(timezone=postgres)),
        ),
        {"expires": expires},
    )
    bind.execute(
        sa.text(
            "UPDATE interactions SET offers_made = 1 WHERE agent_id IS NOT NULL"
            " AND state IN ('offered', 'delivered', 'accepted', 'completed')"
        )
    )
    bind.execute(
        sa.text(
            f"""
            INSERT INTO scheduled (id, kind, subject, guard, detail, due_at, created_at,
                                   attempts)
            SELECT 'tmr_m' || id, 'interaction', id, '', {json_check}, :now, :now, 0
            FROM interactions
            WHERE state IN ('received', 'routing', 'queued', 'offered', 'delivered')
            """
        ).bindparams(*timestamps),
        {"now": stamp},
    )


def downgrade() -> None:
    op.drop_index("ix_interactions_abandoned", table_name="interactions")
    for table, column in (
        ("agent_channels", "next_reason"),
        ("agent_channels", "next_status"),
        ("interactions", "max_wait_at"),
        ("interactions", "overflows"),
        ("interactions", "offers_made"),
        ("profiles", "return_accepted_email"),
        ("profiles", "rona_counts_decline"),
        ("profiles", "rona_after"),
        ("queues", "overflow_queue"),
        ("queues", "max_offers"),
        ("queues", "max_wait_seconds"),
        ("queues", "routing_timeout_seconds"),
        ("queues", "offer_timeout_seconds"),
    ):
        # Plain ALTER TABLE on both databases (SQLite 3.35 and later drop a column in place):
        # a batch copy on SQLite would lose the interactions table's triggers.
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    op.drop_index("ix_offers_live_agent", table_name="offers")
    op.drop_index("ix_offers_agent_id_channel_decided_at", table_name="offers")
    op.drop_index("uq_offers_live_interaction", table_name="offers")
    op.drop_index("ix_offers_interaction_id_offered_at", table_name="offers")
    op.drop_table("offers")
