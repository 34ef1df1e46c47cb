"""Units of work on PostgreSQL keep their connections checked out between them
(harmony.db.kept): what each one commits or rolls back is exactly what it would have on a fresh
connection, a kept connection is only reused idle and healthy, and nothing else that needs a
connection waits for the kept ones."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from harmony.clock import SystemClock
from harmony.db.engine import Database
from harmony.dev.bench.served import SqlCounter
from harmony.routing import interactions
from harmony.routing.model import Channel, Queue
from harmony.routing.retry import run_with_retry

pytestmark = pytest.mark.postgres


def chat_queue(name: str, *skills: str) -> Queue:
    return Queue(name=name, channel=Channel.CHAT, skills=list(skills or ("support",)))


async def backend_of(db: Database) -> tuple[int, str]:
    """The kept connection's server process and the state the server sees it in (taken from
    another connection, so that looking does not change it)."""
    async with db.connection() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await conn.rollback()
    async with db.engine.connect() as other:
        state = (
            await other.execute(
                text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        ).scalar_one()
    return pid, state


async def test_units_of_work_run_one_after_another_on_one_kept_connection(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, SystemClock().now)
    counter = SqlCounter()
    try:
        await run_with_retry(db.uow, interactions.upsert_queue, chat_queue("first"))
        first_pid, _ = await backend_of(db)
        counter.install()
        try:
            for name in ("second", "third"):
                # Through SQLAlchemy (the upsert) and on the driver (the read) in one transaction.
                async with db.uow() as uow:
                    await uow.queues.upsert(chat_queue(name, "billing"))
                    assert await uow.queues.get(name) == chat_queue(name, "billing")
                    await uow.commit()
            async with db.reader() as uow:
                stored = [await uow.queues.get(n) for n in ("first", "second", "third")]
        finally:
            counter.uninstall()
        pid, state = await backend_of(db)
    finally:
        await db.dispose()
    assert stored == [
        chat_queue("first"),
        chat_queue("second", "billing"),
        chat_queue("third", "billing"),
    ]
    assert (counter.checkouts, counter.commits) == (0, 2)
    assert (pid, state) == (first_pid, "idle")


async def test_a_unit_of_work_that_fails_leaves_its_kept_connection_idle_and_stores_nothing(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, SystemClock().now)
    try:
        await run_with_retry(db.uow, interactions.upsert_queue, chat_queue("before"))
        kept_pid, _ = await backend_of(db)
        with pytest.raises(RuntimeError, match="the use case failed"):
            async with db.uow() as uow:
                await uow.queues.upsert(chat_queue("never"))
                raise RuntimeError("the use case failed")
        pid, state = await backend_of(db)
        async with db.uow() as uow:
            assert await uow.queues.get("never") is None
            await uow.queues.upsert(chat_queue("after"))
            await uow.commit()
        async with db.reader() as uow:
            after = await uow.queues.get("after")
        assert db.kept is not None and db.kept.idle == 1
    finally:
        await db.dispose()
    # Rolled back and kept: the same server process, in no transaction.
    assert (pid, state) == (kept_pid, "idle")
    assert after == chat_queue("after")


async def test_a_kept_connection_killed_while_idle_is_replaced_after_one_retry(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, SystemClock().now)
    try:
        await run_with_retry(db.uow, interactions.upsert_queue, chat_queue("before"))
        doomed, _ = await backend_of(db)
        async with db.engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": doomed})
            await other.commit()
        await run_with_retry(db.uow, interactions.upsert_queue, chat_queue("after-kill"))
        now_serving, state = await backend_of(db)
        async with db.reader() as uow:
            stored = await uow.queues.get("after-kill")
    finally:
        await db.dispose()
    assert stored == chat_queue("after-kill")
    assert now_serving != doomed and state == "idle"


async def test_the_health_check_gets_a_connection_while_the_only_one_is_kept(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, SystemClock().now, pool_size=1, max_overflow=0)
    try:
        await run_with_retry(db.uow, interactions.upsert_queue, chat_queue("kept"))
        assert db.kept is not None and db.kept.idle == 1
        await asyncio.wait_for(db.ping(), timeout=5)
        async with asyncio.timeout(5), db.exclusively(0x4861726D6F6E79FF):
            pass
        await asyncio.wait_for(
            run_with_retry(db.uow, interactions.upsert_queue, chat_queue("after")), timeout=5
        )
    except TimeoutError:
        pytest.fail("the health check waited for a connection the units of work kept")
    finally:
        await db.dispose()


async def test_more_units_of_work_at_once_than_kept_connections_give_the_rest_back(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, SystemClock().now, pool_size=2, max_overflow=3)
    entered = asyncio.Event()
    waiting = 0

    async def hold(name: str) -> None:
        nonlocal waiting
        async with db.uow() as uow:
            await uow.queues.upsert(chat_queue(name))
            waiting += 1
            if waiting == 5:
                entered.set()
            await entered.wait()
            await uow.commit()

    try:
        await asyncio.gather(*(hold(f"q{n}") for n in range(5)))
        assert db.kept is not None and db.kept.idle == 2
        checked_out = db.engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
        async with db.reader() as uow:
            stored = [await uow.queues.get(f"q{n}") for n in range(5)]
    finally:
        await db.dispose()
    assert checked_out == 2
    assert stored == [chat_queue(f"q{n}") for n in range(5)]


async def test_disposing_the_database_closes_the_kept_connections(postgres_url: str) -> None:
    db = Database(postgres_url, SystemClock().now)
    await run_with_retry(db.uow, interactions.upsert_queue, chat_queue("one"))
    pid, _ = await backend_of(db)
    await db.dispose()
    watcher = Database(postgres_url, SystemClock().now)
    try:
        async with watcher.engine.connect() as conn:
            for _ in range(50):
                alive = (
                    await conn.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                        {"pid": pid},
                    )
                ).scalar_one()
                await conn.rollback()
                if not alive:
                    break
                await asyncio.sleep(0.05)
    finally:
        await watcher.dispose()
    assert alive == 0
