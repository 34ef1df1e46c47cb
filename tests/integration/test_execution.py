"""Statements run straight on asyncpg read and write exactly what SQLAlchemy would, inside the
unit of work's transaction, and fail the way SQLAlchemy's do (on both databases)."""

from __future__ import annotations

import contextlib
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


@pytest.mark.postgres
async def test_the_benchmarks_counter_sees_direct_and_sqlalchemy_statements(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, SystemClock().now)
    async with db.engine.connect():
        pass  # the first connection's own set-up queries are not counted below
    counter = SqlCounter()
    counter.install()
    try:
        try:
            async with transaction(db) as (conn, run):  # BEGIN: not a statement
                await run.execute(INSERT_QUEUE, queue_values("counted"))  # direct
                await run.execute(QUEUE, {"b_name": "counted"})  # direct
                await conn.execute(QUEUE.statement, {"b_name": "counted"})  # SQLAlchemy
                await conn.commit()  # COMMIT: not a statement
        finally:
            await db.dispose()
    finally:
        counter.uninstall()
    assert counter.statements == 3
    assert counter.commits == 1
    assert counter.checkouts >= 1


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
