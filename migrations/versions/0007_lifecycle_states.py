"""lifecycle states: abandoned, cancelled and fallback, with their times; an agent named while
the work is with one or was completed there, never while it waits

Revision ID: 0007_lifecycle_states
Revises: 0006_scale
Create Date: 2026-11-23 09:40:00.000000
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007_lifecycle_states"
down_revision: str | None = "0006_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out: a migration must not change with the code.
OLD_STATES = (
    "state IN ('received', 'routing', 'queued', 'offered', 'delivered', 'accepted',"
    " 'completed', 'failed')"
)
NEW_STATES = (
    "state IN ('received', 'routing', 'queued', 'offered', 'delivered', 'accepted',"
    " 'completed', 'failed', 'abandoned', 'cancelled', 'fallback')"
)
OLD_AGENT_RULE = (
    "(state IN ('offered', 'delivered', 'accepted', 'completed')) = (agent_id IS NOT NULL)"
    " OR state = 'failed'"
)
NEW_AGENT_RULE = (
    "(state NOT IN ('offered', 'delivered', 'accepted', 'completed') OR agent_id IS NOT NULL)"
    " AND (state NOT IN ('received', 'routing', 'queued') OR agent_id IS NULL)"
)
NEW_STATE_TIMES = ("abandoned_at", "cancelled_at", "fallback_at")


def _revision_0006() -> ModuleType:
    path = Path(__file__).with_name("0006_scale.py")
    spec = importlib.util.spec_from_file_location("harmony_migration_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rebuilding_interactions_on_sqlite(change: Callable[[Any], None]) -> None:
    """Apply ``change`` to the interactions table. SQLite alters a CHECK by copying the table,
    which drops its triggers and may lose its partial index's predicate: revision 0006's
    counting triggers and waiting index are taken off first and put back the same after (the
    counts themselves are untouched: the copy fires no trigger)."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    scale = _revision_0006()
    if sqlite:
        for name in scale.TRIGGERS:
            op.execute(f"DROP TRIGGER tr_interactions_waiting_{name}")
        op.drop_index("ix_interactions_waiting", table_name="interactions")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        change(batch_op)
    if sqlite:
        for statement in scale.SQLITE_UP[: len(scale.TRIGGERS)]:
            op.execute(statement)
        op.create_index(
            "ix_interactions_waiting",
            "interactions",
            ["queue", "received_at"],
            unique=False,
            sqlite_where=sa.text(scale.WAITING),
        )


def upgrade() -> None:
    def change(batch_op: Any) -> None:
        for column in NEW_STATE_TIMES:
            batch_op.add_column(sa.Column(column, sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint("state", type_="check")
        batch_op.create_check_constraint("state", NEW_STATES)
        batch_op.drop_constraint("agent_matches_state", type_="check")
        batch_op.create_check_constraint("agent_matches_state", NEW_AGENT_RULE)

    _rebuilding_interactions_on_sqlite(change)


def downgrade() -> None:
    # The old schema knows no way out but failure: work that ended otherwise becomes failed at
    # the time it ended, and a waiting interaction names no agent in either.
    op.execute(
        "UPDATE interactions SET failed_at = COALESCE(abandoned_at, cancelled_at, fallback_at),"
        " state = 'failed' WHERE state IN ('abandoned', 'cancelled', 'fallback')"
    )

    def change(batch_op: Any) -> None:
        batch_op.drop_constraint("agent_matches_state", type_="check")
        batch_op.create_check_constraint("agent_matches_state", OLD_AGENT_RULE)
        batch_op.drop_constraint("state", type_="check")
        batch_op.create_check_constraint("state", OLD_STATES)
        for column in reversed(NEW_STATE_TIMES):
            batch_op.drop_column(column)

    _rebuilding_interactions_on_sqlite(change)
