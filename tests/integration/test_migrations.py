"""The schema exists only through Alembic, and the same migrations run on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from harmony.clock import SystemClock
from harmony.db.engine import Database, alembic_config
from harmony.db.tables import metadata


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _downgrade_to_base(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, "base")


async def test_head_matches_the_tables_and_downgrades_cleanly(empty_database_url: str) -> None:
    db = Database(empty_database_url, SystemClock().now)
    try:
        await db.migrate()
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert set(metadata.tables) <= tables
        async with db.engine.begin() as conn:
            await conn.run_sync(_downgrade_to_base)
        async with db.engine.connect() as conn:
            left = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert left <= {"alembic_version"}
        await db.migrate()  # and back up again: migrations are repeatable
        await db.migrate()  # a second upgrade at head is a no-op
    finally:
        await db.dispose()


def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def test_a_mirror_unsent_at_upgrade_joins_its_agents_order(empty_database_url: str) -> None:
    """A pending agent.state from before 0005 must be ordered and supersedable like new ones,
    or it could reach the peer after a newer state."""
    db = Database(empty_database_url, SystemClock().now)
    now = "2026-01-01 00:00:00"
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_upgrade, "0004_inbox_payload")
            for statement in (
                "INSERT INTO agents (id, name, crm_adapter, crm_agent_id, acd_agent_id, profile,"
                f" login_failures, created_at, updated_at) VALUES ('a-1', 'A', 'generic', 'c-1',"
                f" 'x-1', 'default', 0, '{now}', '{now}')",
                "INSERT INTO outbox (id, target_kind, target, type, interaction_id, payload,"
                " status, attempts, created_at, next_attempt_at) VALUES ('msg-old', 'acd',"
                f" 'generic', 'agent.state', '', '{{}}', 'pending', 1, '{now}', '{now}')",
                "INSERT INTO agent_mirrors (id, agent_id, channel, target_kind, status, sent_at)"
                f" VALUES ('msg-old', 'a-1', 'chat', 'acd', 'ready', '{now}')",
            ):
                await conn.exec_driver_sql(statement)
        await db.migrate()
        async with db.engine.connect() as conn:
            row = (
                await conn.exec_driver_sql(
                    "SELECT ordering_key, ordering_seq, supersede_key FROM outbox"
                    " WHERE id = 'msg-old'"
                )
            ).one()
    finally:
        await db.dispose()
    assert tuple(row) == ("agent:a-1>acd:generic", 0, "agent:a-1>acd:generic/agent.state/chat")


async def _waiting_by_queue(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.exec_driver_sql(
        "SELECT queue, SUM(waiting) FROM queue_waiting GROUP BY queue ORDER BY queue"
    )
    return {queue: int(waiting) for queue, waiting in rows}


def _interaction_row(interaction_id: str, state: str, agent: str | None, now: str) -> str:
    agent_sql = f"'{agent}'" if agent else "NULL"
    return (
        "INSERT INTO interactions (id, crm_adapter, external_id, channel, queue, priority,"
        " skills, customer, subject, acd_adapter, state, request_id, agent_id, version,"
        f" received_at, updated_at) VALUES ('{interaction_id}', 'generic', 'x-{interaction_id}',"
        f" 'chat', 'support', 0, '[]', '{{}}', NULL, 'generic', '{state}',"
        f" 'r-{interaction_id}', {agent_sql}, 1, '{now}', '{now}')"
    )


async def test_the_lifecycle_states_upgrade_keeps_every_interaction_and_its_counts(
    empty_database_url: str,
) -> None:
    """0007 rebuilds the interactions table on SQLite: the rows, the waiting counts and the
    triggers that keep them must come through, on both databases."""
    db = Database(empty_database_url, SystemClock().now)
    now = "2026-01-01 00:00:00"
    stored = {
        "i-waiting": ("routing", None),
        "i-queued": ("queued", None),
        "i-offered": ("offered", "a-1"),
        "i-done": ("completed", "a-1"),
        "i-failed": ("failed", None),
    }
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_upgrade, "0006_scale")
            for statement in (
                "INSERT INTO queues (name, channel, skills, created_at, updated_at)"
                f" VALUES ('support', 'chat', '[]', '{now}', '{now}')",
                "INSERT INTO agents (id, name, crm_adapter, crm_agent_id, acd_agent_id, profile,"
                f" login_failures, created_at, updated_at) VALUES ('a-1', 'A', 'generic', 'c-1',"
                f" 'x-1', 'default', 0, '{now}', '{now}')",
                *(_interaction_row(i, state, agent, now) for i, (state, agent) in stored.items()),
            ):
                await conn.exec_driver_sql(statement)
            before = await _waiting_by_queue(conn)
        await db.migrate()
        async with db.engine.begin() as conn:
            rows = await conn.exec_driver_sql("SELECT id, state, agent_id FROM interactions")
            after_upgrade = {i: (state, agent) for i, state, agent in rows}
            upgraded = await _waiting_by_queue(conn)
            # The counting triggers came through: a new waiting interaction counts, and one
            # that leaves for a new state stops counting.
            await conn.exec_driver_sql(_interaction_row("i-new", "received", None, now))
            added = await _waiting_by_queue(conn)
            await conn.exec_driver_sql(
                "UPDATE interactions SET state = 'abandoned', abandoned_at = updated_at"
                " WHERE id = 'i-waiting'"
            )
            moved = await _waiting_by_queue(conn)
        with pytest.raises(IntegrityError):
            async with db.engine.begin() as conn:
                # Waiting work never names an agent.
                await conn.exec_driver_sql(
                    "UPDATE interactions SET agent_id = 'a-1' WHERE id = 'i-queued'"
                )
    finally:
        await db.dispose()
    assert after_upgrade == stored
    assert before == upgraded == {"support": 2}
    assert (added, moved) == ({"support": 3}, {"support": 2})  # i-new in, then i-waiting out


async def test_the_offers_upgrade_records_work_under_way_and_bounds_every_wait(
    empty_database_url: str,
) -> None:
    """0009: work with an agent gets its offer record, and every interaction no agent has
    accepted gets a deadline timer, so nothing stored before can wait unbounded."""
    db = Database(empty_database_url, SystemClock().now)
    now = "2026-01-01 00:00:00"
    stored = {
        "i-waiting": ("routing", None),
        "i-queued": ("queued", None),
        "i-offered": ("offered", "a-1"),
        "i-accepted": ("accepted", "a-1"),
        "i-done": ("completed", "a-1"),
        "i-failed": ("failed", None),
    }
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_upgrade, "0008_scheduled")
            for statement in (
                "INSERT INTO queues (name, channel, skills, created_at, updated_at)"
                f" VALUES ('support', 'chat', '[]', '{now}', '{now}')",
                "INSERT INTO agents (id, name, crm_adapter, crm_agent_id, acd_agent_id, profile,"
                f" login_failures, created_at, updated_at) VALUES ('a-1', 'A', 'generic', 'c-1',"
                f" 'x-1', 'default', 0, '{now}', '{now}')",
                *(_interaction_row(i, state, agent, now) for i, (state, agent) in stored.items()),
            ):
                await conn.exec_driver_sql(statement)
            before = await _waiting_by_queue(conn)
        await db.migrate()
        async with db.reader() as uow:
            offers = {i: await uow.offers.of_interaction(i) for i in stored}
            timers = {t.subject: t for t in await uow.timers.pending()}
            interactions = {i: await uow.interactions.get(i) for i in stored}
            queue = await uow.queues.get("support")
            profile = await uow.profiles.get("default")
        async with db.engine.begin() as conn:
            after = await _waiting_by_queue(conn)
        with pytest.raises(IntegrityError):
            async with db.engine.begin() as conn:
                # One live offer per interaction: the database refuses a second.
                await conn.exec_driver_sql(
                    "INSERT INTO offers (id, interaction_id, agent_id, channel, status,"
                    " offered_at, expires_at) VALUES ('ofr-2', 'i-offered', 'a-1', 'chat',"
                    f" 'pending', '{now}', '{now}')"
                )
    finally:
        await db.dispose()
    assert {i: [(o.agent_id, o.status.value) for o in found] for i, found in offers.items()} == {
        "i-waiting": [],
        "i-queued": [],
        "i-offered": [("a-1", "pending")],
        "i-accepted": [("a-1", "accepted")],
        "i-done": [("a-1", "completed")],
        "i-failed": [],
    }
    [pending] = offers["i-offered"]
    assert pending.expires_at > pending.offered_at
    assert sorted(timers) == ["i-offered", "i-queued", "i-waiting"]
    assert all(
        t.kind == "interaction" and t.detail == {"deadline": "check"} for t in timers.values()
    )
    assert {i: (x.state.value, x.offers_made) for i, x in interactions.items() if x} == {
        "i-waiting": ("routing", 0),
        "i-queued": ("queued", 0),
        "i-offered": ("offered", 1),
        "i-accepted": ("accepted", 1),
        "i-done": ("completed", 1),
        "i-failed": ("failed", 0),
    }
    assert queue is not None and queue.policy.offer_timeout_seconds == 30
    assert profile is not None
    assert (profile.rona_after, profile.rona_counts_decline) == (1, False)
    assert before == after == {"support": 2}
