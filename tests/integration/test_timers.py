"""Durable timers on the SQL store (both databases): armed, replaced, claimed under a token,
fired once by whoever holds the claim."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from harmony.db.engine import Database
from harmony.routing.ports import Timer, UnitOfWork
from harmony.routing.timers import fire
from harmony.scheduler import Scheduler
from harmony.testing import FakeClock

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def timer(subject: str, seconds: float, guard: str = "v1") -> Timer:
    return Timer("test", subject, T0 + timedelta(seconds=seconds), guard, {"n": subject})


async def arm(db: Database, *timers: Timer) -> None:
    async with db.uow() as uow:
        for t in timers:
            await uow.timers.arm(t, T0)
        await uow.commit()


async def test_due_timers_are_claimed_earliest_first_and_arming_again_replaces(
    database_url: str,
) -> None:
    db = Database(database_url, FakeClock(T0).now)
    try:
        await arm(db, timer("b", 20), timer("a", 10), timer("later", 600))
        await arm(db, timer("b", 5, guard="v2"))  # re-armed: one timer per kind and subject
        async with db.uow() as uow:
            claimed = await uow.timers.claim_due(T0 + timedelta(seconds=60), 10, 30, "s1")
            again = await uow.timers.claim_due(T0 + timedelta(seconds=60), 10, 30, "s2")
            await uow.commit()
        async with db.reader() as uow:
            pending = await uow.timers.pending()
    finally:
        await db.dispose()
    assert [(c.timer.subject, c.timer.guard, c.attempts) for c in claimed] == [
        ("b", "v2", 1),
        ("a", "v1", 1),
    ]
    assert claimed[0].timer.detail == {"n": "b"}
    assert again == []  # leased: nobody else takes them until the lease runs out
    assert [t.subject for t in pending] == ["b", "a", "later"]


async def test_a_timer_fires_once_for_the_claim_that_holds_it(database_url: str) -> None:
    clock = FakeClock(T0 + timedelta(seconds=60))
    db = Database(database_url, clock.now)
    runs: list[str] = []

    async def record(uow: UnitOfWork, t: Timer, now: datetime) -> None:
        # What firing does, stored in the firing's transaction: a timer of another kind.
        runs.append(t.subject)
        await uow.timers.arm(Timer("effect", f"{t.subject}-run{len(runs)}", now), now)

    try:
        await arm(db, timer("x", 10))
        async with db.uow() as uow:
            [first] = await uow.timers.claim_due(clock.now(), 10, 30, "s1")
            await uow.commit()
        # The lease ran out (its scheduler died, say): another claims it under a new token.
        async with db.uow() as uow:
            [second] = await uow.timers.claim_due(clock.now() + timedelta(seconds=31), 10, 30, "s2")
            await uow.commit()
        lost = await fire(db.uow(), clock, first, {"test": record})
        held = await fire(db.uow(), clock, second, {"test": record})
        again = await fire(db.uow(), clock, second, {"test": record})
        async with db.reader() as uow:
            pending = await uow.timers.pending()
    finally:
        await db.dispose()
    assert (lost, held, again) == (False, True, False)
    assert second.attempts == 2
    # The handler ran each time, but only the holder's transaction was kept.
    assert runs == ["x", "x", "x"]
    assert [(t.kind, t.subject) for t in pending] == [("effect", "x-run2")]


@pytest.mark.postgres
async def test_two_schedulers_fire_each_of_200_timers_exactly_once(postgres_url: str) -> None:
    """Two replicas (each its own database pool and scheduler) claim and fire side by side."""
    clock = FakeClock(T0 + timedelta(hours=1))
    replicas = [Database(postgres_url, clock.now) for _ in range(2)]
    fired: list[str] = []

    async def record(uow: UnitOfWork, t: Timer, now: datetime) -> None:
        await asyncio.sleep(0)
        fired.append(t.subject)

    async def replica(db: Database, name: str) -> None:
        scheduler = Scheduler(db.uow, clock, claimer=name, batch_size=7, handlers={"test": record})
        while await scheduler.run_once():
            pass

    try:
        await arm(replicas[0], *(timer(f"t{n:03}", n) for n in range(200)))
        await asyncio.gather(
            *(replica(db, f"replica-{n}") for n, db in enumerate(replicas, start=1))
        )
        async with replicas[0].reader() as uow:
            pending = await uow.timers.pending()
    finally:
        for db in replicas:
            await db.dispose()
    assert sorted(fired) == [f"t{n:03}" for n in range(200)]
    assert pending == []
