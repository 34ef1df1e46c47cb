"""Statements run straight on asyncpg read and write exactly what SQLAlchemy would, inside the
unit of work's transaction, and fail the way SQLAlchemy's do (on both databases)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from harmony.clock import SystemClock
from harmony.db.dialect import sqlstate
from harmony.db.engine import Database
from harmony.db.execution import Prepared, Statements
from harmony.db.tables import profiles, queues
from harmony.dev.bench.served import SqlCounter
from tests.sql_sent import statements_sent

AT = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
INSERT_QUEUE = Prepared(insert(queues))
QUEUE = Prepared(select(queues).where(queues.c.name == bindparam("b_name")))
RENAME_SKILLS = Prepared(
    update(queues).where(queues.c.name == bindparam("b_name")).values(skills=bindparam("b_skills"))
)
INSERT_PROFILES = Prepared(insert(profiles))
PROFILES = Prepared(
    select(profiles).where(profiles.c.name.like(bindparam("b_prefix"))).order_by(profiles.c.name)
)


def queue_values(name: str) -> dict[str, object]:
    return {
        "name": name,
        "channel": "chat",
        "skills": ["support", "ü-lang"],
        "created_at": AT,
        "updated_at": AT + timedelta(hours=1),
    }


@contextlib.asynccontextmanager
async def transaction(db: Database) -> AsyncIterator[tuple[AsyncConnection, Statements]]:
    """A connection in a transaction begun at once, and its statements (not committed)."""
    async with db.engine.connect() as conn:
        await conn.begin()
        run = Statements(conn)
        await run.begin_now()
        yield conn, run


async def test_rows_read_and_written_as_through_sqlalchemy(database_url: str) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            await run.execute(INSERT_QUEUE, queue_values("direct"))
            await conn.execute(INSERT_QUEUE.statement, queue_values("through-sqlalchemy"))
            changed = await run.execute(
                RENAME_SKILLS, {"b_name": "direct", "b_skills": ["billing"]}
            )
            assert changed.rowcount == 1
            missing = await run.execute(RENAME_SKILLS, {"b_name": "nobody", "b_skills": []})
            assert missing.rowcount == 0
            await run.execute(
                INSERT_PROFILES,
                [
                    {
                        "name": f"p{n}",
                        "capacity": {"chat": n, "email": 2},
                        "wrap_up_seconds": {"chat": 1.5},
                        "blocks": [{"nested": [1, None]}],
                        "created_at": AT + timedelta(seconds=n),
                        "updated_at": AT,
                    }
                    for n in range(3)
                ],
            )
            await conn.commit()

        async with transaction(db) as (conn, run):
            direct = (await run.execute(QUEUE, {"b_name": "direct"})).first()
            other_direct = (await run.execute(QUEUE, {"b_name": "through-sqlalchemy"})).first()
            other = (await conn.execute(QUEUE.statement, {"b_name": "through-sqlalchemy"})).first()
            written = (await run.execute(PROFILES, {"b_prefix": "p%"})).all()
            assert (await run.execute(QUEUE, {"b_name": "nobody"})).first() is None
    finally:
        await db.dispose()

    assert direct.skills == ["billing"]
    assert direct.created_at == AT and direct.created_at.tzinfo is not None
    assert direct.updated_at == AT + timedelta(hours=1)
    assert other is not None
    assert tuple(other_direct) == tuple(other)
    assert [row.name for row in written] == ["p0", "p1", "p2"]
    assert written[2].capacity == {"chat": 2, "email": 2}
    assert written[2].blocks == [{"nested": [1, None]}]
    assert written[1].created_at == AT + timedelta(seconds=1)


async def test_statements_run_inside_the_transaction(database_url: str) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            await run.execute(INSERT_QUEUE, queue_values("rolled-back"))
            await conn.rollback()
        async with db.engine.connect() as conn:
            found = (await conn.execute(QUEUE.statement, {"b_name": "rolled-back"})).first()
    finally:
        await db.dispose()
    assert found is None


async def test_a_violated_constraint_is_sqlalchemys_integrity_error(database_url: str) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            await run.execute(INSERT_QUEUE, queue_values("twice"))
            with pytest.raises(IntegrityError) as raised:
                await run.execute(INSERT_QUEUE, queue_values("twice"))
            await conn.rollback()
    finally:
        await db.dispose()
    if "postgresql" in database_url:
        assert sqlstate(raised.value) == "23505"


@contextlib.asynccontextmanager
async def counting(postgres_url: str) -> AsyncIterator[tuple[Database, SqlCounter]]:
    """A database whose first connection is set up already (its own queries are not counted),
    and the benchmark's counter installed until the block ends (the database disposed)."""
    db = Database(postgres_url, SystemClock().now)
    async with db.engine.connect():
        pass
    counter = SqlCounter()
    counter.install()
    try:
        try:
            yield db, counter
        finally:
            await db.dispose()
    finally:
        counter.uninstall()


@pytest.mark.postgres
async def test_the_benchmarks_counter_sees_direct_and_sqlalchemy_statements(
    postgres_url: str,
) -> None:
    async with (
        counting(postgres_url) as (db, counter),
        transaction(db) as (conn, run),  # BEGIN: not a statement
    ):
        await run.execute(INSERT_QUEUE, queue_values("counted"))  # direct
        await run.execute(QUEUE, {"b_name": "counted"})  # direct
        await conn.execute(QUEUE.statement, {"b_name": "counted"})  # SQLAlchemy
        await conn.commit()  # COMMIT: not a statement
    assert counter.statements == 3
    assert counter.commits == 1
    assert counter.checkouts >= 1


@pytest.mark.postgres
async def test_the_benchmarks_counter_leaves_out_other_threads_statements(
    postgres_url: str,
) -> None:
    """The test suite's own threads (databases copied ahead, dropped after) send statements
    while a test counts; only the installing thread's are Harmony's."""
    import asyncpg  # type: ignore[import-untyped]

    dsn = postgres_url.replace("postgresql+asyncpg", "postgresql")

    async def elsewhere() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.fetchval("select 1")
            await conn.execute("select 2")
        finally:
            await conn.close()

    async with counting(postgres_url) as (db, counter):
        worker = threading.Thread(target=lambda: asyncio.run(elsewhere()))
        worker.start()
        worker.join()
        async with db.engine.connect() as conn:
            await conn.execute(QUEUE.statement, {"b_name": "none"})
    assert counter.statements == 1
    assert counter.checkouts == 1


async def test_none_in_a_json_column_is_json_null_as_through_sqlalchemy(database_url: str) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            await run.execute(INSERT_QUEUE, {**queue_values("direct-null"), "skills": None})
            await conn.execute(
                INSERT_QUEUE.statement, {**queue_values("sqlalchemy-null"), "skills": None}
            )
            stored = (
                await conn.execute(
                    select(queues.c.name, queues.c.skills.is_(None)).order_by(queues.c.name)
                )
            ).all()
            await conn.rollback()
    finally:
        await db.dispose()
    # Neither is SQL NULL (the column is NOT NULL): both are the JSON value null.
    assert [tuple(row) for row in stored] == [("direct-null", False), ("sqlalchemy-null", False)]


def profile_values(name: str, n: int) -> dict[str, object]:
    return {
        "name": name,
        "capacity": {"chat": n},
        "wrap_up_seconds": {"chat": 0.5},
        "blocks": [],
        "created_at": AT + timedelta(seconds=n),
        "updated_at": AT,
    }


async def test_rows_inserted_later_ride_with_the_next_write(database_url: str) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            driver = (await conn.get_raw_connection()).driver_connection
            with statements_sent(on=driver) as sent:
                await run.execute(INSERT_QUEUE, queue_values("carrier"))
                await run.insert_later(
                    INSERT_PROFILES, [profile_values("later-a", 1), profile_values("later-b", 2)]
                )
                # A write to another table: on PostgreSQL the profiles go with it.
                renamed = await run.execute(
                    RENAME_SKILLS, {"b_name": "carrier", "b_skills": ["billing"]}
                )
                stored = (await run.execute(PROFILES, {"b_prefix": "later-%"})).all()
            await conn.commit()
    finally:
        await db.dispose()
    assert renamed.rowcount == 1  # the update's own count, not the carried inserts'
    assert [(row.name, row.capacity, row.created_at) for row in stored] == [
        ("later-a", {"chat": 1}, AT + timedelta(seconds=1)),
        ("later-b", {"chat": 2}, AT + timedelta(seconds=2)),
    ]
    if "postgresql" in database_url:
        assert [statement.split()[0] for statement in sent] == ["INSERT", "WITH", "SELECT"]
        assert sent[1].startswith("WITH later_0 AS \n(INSERT INTO profiles")
        assert "UPDATE queues" in sent[1]


async def test_updates_written_later_ride_with_the_next_write_each_with_its_own_values(
    database_url: str,
) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            await run.execute(INSERT_QUEUE, queue_values("first"))
            await run.execute(INSERT_QUEUE, queue_values("second"))
            await run.execute(INSERT_PROFILES, profile_values("carrier", 1))
            driver = (await conn.get_raw_connection()).driver_connection
            with statements_sent(on=driver) as sent:
                # The same statement twice: each keeps its own parameters in the carrier.
                await run.update_later(RENAME_SKILLS, {"b_name": "first", "b_skills": ["one"]})
                await run.update_later(RENAME_SKILLS, {"b_name": "second", "b_skills": ["two"]})
                await run.execute(
                    Prepared(
                        update(profiles)
                        .where(profiles.c.name == bindparam("b_name"))
                        .values(wrap_up_seconds=bindparam("b_wrap_up"))
                    ),
                    {"b_name": "carrier", "b_wrap_up": {"chat": 7}},
                )
                stored = {
                    name: (await run.execute(QUEUE, {"b_name": name})).first().skills
                    for name in ("first", "second")
                }
            await conn.commit()
    finally:
        await db.dispose()
    assert stored == {"first": ["one"], "second": ["two"]}
    if "postgresql" in database_url:
        assert [statement.split()[0] for statement in sent] == ["WITH", "SELECT", "SELECT"]
        assert sent[0].count("UPDATE queues") == 2 and "UPDATE profiles" in sent[0]


async def test_a_statement_naming_their_table_sends_rows_inserted_later_first(
    database_url: str,
) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            await run.insert_later(INSERT_QUEUE, [queue_values("pending")])
            read = (await run.execute(QUEUE, {"b_name": "pending"})).first()
            await run.insert_later(INSERT_QUEUE, [queue_values("pending-2")])
            renamed = await run.execute(
                RENAME_SKILLS, {"b_name": "pending-2", "b_skills": ["billing"]}
            )
            await conn.rollback()
    finally:
        await db.dispose()
    assert read is not None and read.skills == ["support", "ü-lang"]
    assert renamed.rowcount == 1


async def test_flush_sends_rows_inserted_later_and_a_rollback_drops_them(
    database_url: str,
) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            await run.insert_later(INSERT_QUEUE, [queue_values("flushed")])
            await run.insert_later(INSERT_PROFILES, [profile_values("flushed", 3)])
            await run.flush()
            await run.flush()  # nothing left: sends nothing
            await conn.commit()
        async with transaction(db) as (conn, run):
            await run.insert_later(INSERT_QUEUE, [queue_values("dropped")])
            await run.execute(RENAME_SKILLS, {"b_name": "flushed", "b_skills": []})
            await conn.rollback()
        async with db.engine.connect() as conn:
            names = set((await conn.execute(select(queues.c.name))).scalars())
            profile = (await conn.execute(PROFILES.statement, {"b_prefix": "flushed"})).first()
    finally:
        await db.dispose()
    assert "flushed" in names and "dropped" not in names
    assert profile is not None and profile.capacity == {"chat": 3}


async def test_a_row_inserted_later_that_violates_a_constraint_fails_its_carrier(
    database_url: str,
) -> None:
    db = Database(database_url, SystemClock().now)
    try:
        async with transaction(db) as (conn, run):
            await run.execute(INSERT_QUEUE, queue_values("taken"))
            # Raised where the row is sent: at once on SQLite, by the flush on PostgreSQL.
            with pytest.raises(IntegrityError) as raised:
                await run.insert_later(INSERT_PROFILES, [profile_values("with-it", 1)])
                await run.insert_later(INSERT_QUEUE, [queue_values("taken")])
                await run.flush()
            await conn.rollback()
    finally:
        await db.dispose()
    if "postgresql" in database_url:
        assert sqlstate(raised.value) == "23505"
