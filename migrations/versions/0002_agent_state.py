"""agent state: profiles, channel status, skills table, state history, mirrors, voice calls

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 01:58:56.285543
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

DEFAULT_PROFILE = {
    "name": "default",
    "capacity": {"voice": 1, "chat": 3, "email": 2},
    "wrap_up_seconds": {"voice": 0, "chat": 0, "email": 0},
    "blocks": {"voice": ["chat", "email"], "chat": ["email"], "email": []},
}

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("capacity", sa.JSON(), nullable=False),
        sa.Column("wrap_up_seconds", sa.JSON(), nullable=False),
        sa.Column("blocks", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_profiles")),
    )
    profiles = sa.table(
        "profiles",
        sa.column("name", sa.String),
        sa.column("capacity", sa.JSON),
        sa.column("wrap_up_seconds", sa.JSON),
        sa.column("blocks", sa.JSON),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    op.bulk_insert(profiles, [{**DEFAULT_PROFILE, "created_at": now, "updated_at": now}])
    op.create_table(
        "agent_mirrors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=100), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("target_kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("echoed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_mirrors_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_mirrors")),
    )
    with op.batch_alter_table("agent_mirrors", schema=None) as batch_op:
        batch_op.create_index(
            "ix_agent_mirrors_agent_id_channel_target_kind",
            ["agent_id", "channel", "target_kind"],
            unique=False,
        )

    op.create_table(
        "agent_sequences",
        sa.Column("agent_id", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_sequences_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", "source", name=op.f("pk_agent_sequences")),
    )
    op.create_table(
        "agent_skills",
        sa.Column("agent_id", sa.String(length=100), nullable=False),
        sa.Column("skill", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_skills_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", "skill", name=op.f("pk_agent_skills")),
    )
    with op.batch_alter_table("agent_skills", schema=None) as batch_op:
        batch_op.create_index("ix_agent_skills_skill_agent_id", ["skill", "agent_id"], unique=False)

    op.create_table(
        "agent_state_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("agent_id", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("source_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("load", sa.Integer(), nullable=True),
        sa.Column("capacity", sa.Integer(), nullable=True),
        sa.Column("wrap_up_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('applied', 'unchanged', 'ignored_stale', 'echo')",
            name=op.f("ck_agent_state_history_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_state_history_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_state_history")),
    )
    with op.batch_alter_table("agent_state_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_agent_state_history_agent_id_id", ["agent_id", "id"], unique=False
        )

    op.create_table(
        "voice_calls",
        sa.Column("acd_adapter", sa.String(length=64), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("agent_id", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_voice_calls_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("acd_adapter", "call_id", name=op.f("pk_voice_calls")),
    )
    # Agents kept their skills as a JSON list; they move to a table that can be filtered on.
    bind = op.get_bind()
    agents = sa.table("agents", sa.column("id", sa.String), sa.column("skills", sa.JSON))
    skill_rows = [
        {"agent_id": row.id, "skill": skill}
        for row in bind.execute(sa.select(agents.c.id, agents.c.skills))
        for skill in sorted(set(row.skills or []))
    ]
    if skill_rows:
        op.bulk_insert(
            sa.table(
                "agent_skills", sa.column("agent_id", sa.String), sa.column("skill", sa.String)
            ),
            skill_rows,
        )

    with op.batch_alter_table("agent_channels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("capacity_override", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), server_default="logged_out", nullable=False)
        )
        batch_op.add_column(sa.Column("reason", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("source_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("wrap_up_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_agent_channels_channel_status", ["channel", "status"], unique=False
        )
        batch_op.create_check_constraint("status", "status IN ('logged_out', 'not_ready', 'ready')")
    # Capacities set per agent before profiles existed stay the agent's own.
    op.execute("UPDATE agent_channels SET capacity_override = capacity")

    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("crm_adapter", sa.String(length=64), server_default="generic", nullable=False)
        )
        batch_op.add_column(
            sa.Column("profile", sa.String(length=100), server_default="default", nullable=False)
        )
        batch_op.add_column(
            sa.Column("login_failures", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_agents_profile", ["profile"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_agents_profile_profiles"), "profiles", ["profile"], ["name"]
        )
        batch_op.drop_column("skills")


def downgrade() -> None:
    bind = op.get_bind()
    skills: dict[str, list[str]] = {}
    for row in bind.execute(sa.text("SELECT agent_id, skill FROM agent_skills ORDER BY skill")):
        skills.setdefault(row.agent_id, []).append(row.skill)
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("skills", sa.JSON(), server_default="[]", nullable=False))
    agents = sa.table("agents", sa.column("id", sa.String), sa.column("skills", sa.JSON))
    for agent_id, agent_skills in skills.items():
        bind.execute(agents.update().where(agents.c.id == agent_id).values(skills=agent_skills))
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_agents_profile_profiles"), type_="foreignkey")
        batch_op.drop_index("ix_agents_profile")
        batch_op.drop_column("login_failures")
        batch_op.drop_column("profile")
        batch_op.drop_column("crm_adapter")

    with op.batch_alter_table("agent_channels", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_agent_channels_status"), type_="check")
        batch_op.drop_index("ix_agent_channels_channel_status")
        batch_op.drop_column("wrap_up_until")
        batch_op.drop_column("source_at")
        batch_op.drop_column("since")
        batch_op.drop_column("reason")
        batch_op.drop_column("status")
        batch_op.drop_column("capacity_override")

    op.drop_table("voice_calls")
    with op.batch_alter_table("agent_state_history", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_state_history_agent_id_id")

    op.drop_table("agent_state_history")
    with op.batch_alter_table("agent_skills", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_skills_skill_agent_id")

    op.drop_table("agent_skills")
    op.drop_table("agent_sequences")
    with op.batch_alter_table("agent_mirrors", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_mirrors_agent_id_channel_target_kind")

    op.drop_table("agent_mirrors")
    op.drop_table("profiles")
