"""scale: waiting counts per queue kept by triggers, the waiting index, pending outbox by key

Revision ID: 0006_scale
Revises: 0005_outbox_fencing
Create Date: 2026-11-22 20:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_scale"
down_revision: str | None = "0005_outbox_fencing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# routing.model.WAITING_STATES, spelled out: a migration must not change with the code.
WAITING = "state IN ('queued', 'received', 'routing')"
PENDING = "status = 'pending'"
OLD_WAITING = WAITING.replace("state", "OLD.state")
NEW_WAITING = WAITING.replace("state", "NEW.state")
# PostgreSQL spreads each queue's count over 16 rows by interaction id, so that concurrent
# transactions of one queue rarely queue up on one row's lock (a single counter row cut a
# write-heavy mix from about 1,500 to 550 transactions/s in a measurement; 16 rows kept 1,100
# to 1,600). An interaction counts on one shard for its whole life.
SHARDS = 16


def _shard(row: str) -> str:
    return f"get_byte(decode(md5({row}.id), 'hex'), 0) % {SHARDS}"


POSTGRES_UP = [
    f"""
    CREATE FUNCTION harmony_count_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'INSERT' AND {OLD_WAITING} THEN
            UPDATE queue_waiting SET waiting = waiting - 1
            WHERE queue = OLD.queue AND shard = {_shard("OLD")};
        END IF;
        IF TG_OP <> 'DELETE' AND {NEW_WAITING} THEN
            INSERT INTO queue_waiting AS w (queue, shard, waiting)
            VALUES (NEW.queue, {_shard("NEW")}, 1)
            ON CONFLICT (queue, shard) DO UPDATE SET waiting = w.waiting + 1;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    f"""
    CREATE TRIGGER tr_interactions_waiting_insert AFTER INSERT ON interactions
    FOR EACH ROW WHEN ({NEW_WAITING}) EXECUTE FUNCTION harmony_count_waiting()
    """,
    f"""
    CREATE TRIGGER tr_interactions_waiting_update AFTER UPDATE OF state, queue ON interactions
    FOR EACH ROW WHEN (({OLD_WAITING}) IS DISTINCT FROM ({NEW_WAITING})
                       OR (OLD.queue IS DISTINCT FROM NEW.queue AND {OLD_WAITING}))
    EXECUTE FUNCTION harmony_count_waiting()
    """,
    f"""
    CREATE TRIGGER tr_interactions_waiting_delete AFTER DELETE ON interactions
    FOR EACH ROW WHEN ({OLD_WAITING}) EXECUTE FUNCTION harmony_count_waiting()
    """,
    # After the triggers: creating them locked out writers until this transaction commits.
    f"""
    INSERT INTO queue_waiting (queue, shard, waiting)
    SELECT queue, {_shard("interactions")}, count(*) FROM interactions WHERE {WAITING}
    GROUP BY 1, 2
    """,
]

# SQLite has one writer: one shard per queue.
INCREMENT = "ON CONFLICT (queue, shard) DO UPDATE SET waiting = waiting + 1"
SQLITE_UP = [
    f"""
    CREATE TRIGGER tr_interactions_waiting_insert AFTER INSERT ON interactions
    WHEN {NEW_WAITING}
    BEGIN
        INSERT INTO queue_waiting (queue, shard, waiting) VALUES (NEW.queue, 0, 1) {INCREMENT};
    END
    """,
    f"""
    CREATE TRIGGER tr_interactions_waiting_update AFTER UPDATE OF state, queue ON interactions
    WHEN ({OLD_WAITING}) IS NOT ({NEW_WAITING}) OR (OLD.queue IS NOT NEW.queue AND {OLD_WAITING})
    BEGIN
        UPDATE queue_waiting SET waiting = waiting - 1
        WHERE {OLD_WAITING} AND queue = OLD.queue AND shard = 0;
        INSERT INTO queue_waiting (queue, shard, waiting)
        SELECT NEW.queue, 0, 1 WHERE {NEW_WAITING} {INCREMENT};
    END
    """,
    f"""
    CREATE TRIGGER tr_interactions_waiting_delete AFTER DELETE ON interactions
    WHEN {OLD_WAITING}
    BEGIN
        UPDATE queue_waiting SET waiting = waiting - 1 WHERE queue = OLD.queue AND shard = 0;
    END
    """,
    f"""
    INSERT INTO queue_waiting (queue, shard, waiting)
    SELECT queue, 0, count(*) FROM interactions WHERE {WAITING} GROUP BY queue
    """,
]

TRIGGERS = ("insert", "update", "delete")


def upgrade() -> None:
    op.create_table(
        "queue_waiting",
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("queue", "shard", name=op.f("pk_queue_waiting")),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_UP if postgres else SQLITE_UP:
        op.execute(statement)
    # GET /v1/queues reads the oldest waiting interaction of each queue as this index's first
    # entry for it, instead of aggregating every waiting row.
    op.create_index(
        "ix_interactions_waiting",
        "interactions",
        ["queue", "received_at"],
        unique=False,
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )
    # The relay's claim asks, for each due row with an ordering key, whether an earlier one of
    # that key is still pending. With 'pending' rare in the statistics, PostgreSQL answered it
    # by walking every pending entry of the (status, next_attempt_at) index, dead ones
    # included, once per candidate row; this index holds only pending rows, by key.
    op.create_index(
        "ix_outbox_pending_ordering",
        "outbox",
        ["ordering_key", "ordering_seq"],
        unique=False,
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_outbox_pending_ordering", table_name="outbox")
    op.drop_index("ix_interactions_waiting", table_name="interactions")
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER tr_interactions_waiting_{name}" + (" ON interactions" * postgres))
    if postgres:
        op.execute("DROP FUNCTION harmony_count_waiting()")
    op.drop_table("queue_waiting")
