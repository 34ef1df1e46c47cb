"""Admission control on the inbound event routes: what cannot be taken now is refused at once
with 503 ``overloaded`` and ``Retry-After``, stores nothing, and is taken when sent again;
operator reads and health checks are never refused by it.

An event is held in its use case by a database writer that holds its turn (SQLite's one writer)
or a lock on the inbox (PostgreSQL): the event waits there with its slot taken, as it would
behind real contention.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from harmony.db.tables import outbox
from tests.conftest import Harness, make_settings, running_harness


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings of the app under test; tests parametrize it."""
    return {}


@pytest.fixture
async def harness(database_url: str, overrides: dict[str, Any]) -> AsyncIterator[Harness]:
    """The shared harness (agents logged in, relay drained by hand) with ``overrides``: being
    named ``harness``, it gets a copy of the database the harness has started on once."""
    settings = make_settings(database_url, migrate_on_start=False, seed_file=None, **overrides)
    async with running_harness(settings) as h:
        yield h


@contextlib.asynccontextmanager
async def writes_held(h: Harness) -> AsyncIterator[None]:
    """Until the block ends, no event can store anything: it waits inside its use case."""
    db = h.container.db
    if db.is_sqlite:
        async with db.uow():  # the one writer's turn, taken and not given back
            yield
        return
    async with db.engine.connect() as conn:
        await conn.execute(text("LOCK TABLE inbox IN EXCLUSIVE MODE"))
        yield
        await conn.rollback()


async def until_applying(h: Harness, count: int) -> None:
    """Wait until ``count`` events hold a slot (they got past admission)."""
    for _ in range(2000):
        if h.container.admission.in_flight >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} events never reached their use case")


def assert_overloaded(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "overloaded"
    assert int(answer.headers["retry-after"]) >= 1


ONE_SLOT = {"max_inflight_events": 1, "admission_wait_seconds": 0}


@pytest.mark.parametrize("overrides", [ONE_SLOT])
async def test_an_event_beyond_the_bound_is_refused_at_once_and_its_retry_is_taken(
    harness: Harness,
) -> None:
    h = harness
    async with writes_held(h):
        first = asyncio.create_task(h.create("chat-held"))
        await until_applying(h, 1)

        refused = await h.post_event(
            "crm",
            "interaction.created",
            {"external_id": "chat-refused", "channel": "chat", "queue": "support-chat"},
            event_id="evt-refused",
        )
        assert_overloaded(refused)
        callback = await h.post_event("crm", "agent.logged_out", {"agent_id": "crm-001"})
        assert_overloaded(callback)  # the bound covers every inbound event

        # Operators and health checks are not inbound events: never refused by admission.
        assert (await h.client.get("/healthz")).status_code == 200
        assert (await h.client.get("/v1/agents")).status_code == 200
        assert (await h.client.get("/v1/queues")).status_code == 200
        assert (await h.client.get("/v1/inbox/crm:generic/evt-refused")).status_code == 404
        assert not first.done()

    assert (await first).status_code == 202
    retried = await h.post_event(
        "crm",
        "interaction.created",
        {"external_id": "chat-refused", "channel": "chat", "queue": "support-chat"},
        event_id="evt-refused",
    )
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "accepted"  # its first delivery, not a duplicate
    stored = (await h.client.get("/v1/inbox/crm:generic/evt-refused")).json()
    assert stored["status"] == "applied"


@pytest.mark.parametrize("overrides", [{"max_inflight_events": 4, "admission_wait_seconds": 0}])
async def test_new_interactions_leave_slots_for_events_that_finish_work(harness: Harness) -> None:
    h = harness
    async with writes_held(h):
        creates = [asyncio.create_task(h.create(f"chat-held-{n}")) for n in range(3)]
        await until_applying(h, 3)

        refused = await asyncio.wait_for(h.create("chat-one-too-many"), 5)
        assert_overloaded(refused)  # three of the four slots are all new work may hold
        finishing = asyncio.create_task(
            h.post_event("crm", "agent.logged_out", {"agent_id": "crm-001"})
        )
        await until_applying(h, 4)  # the fourth slot is there for it
        assert not finishing.done()

    assert [(await c).status_code for c in creates] == [202, 202, 202]
    assert (await finishing).status_code == 202
    assert h.container.admission.refused == {"busy": 1, "lag": 0}


@pytest.mark.parametrize("overrides", [{"max_inflight_events": 1, "admission_wait_seconds": 10}])
async def test_an_event_waits_for_a_slot_that_frees_within_the_wait(harness: Harness) -> None:
    h = harness
    async with writes_held(h):
        first = asyncio.create_task(h.create("chat-first"))
        await until_applying(h, 1)
        second = asyncio.create_task(h.create("chat-second"))
        await asyncio.sleep(0.05)
        assert not second.done()  # waiting for the slot, not refused
    assert (await first).status_code == 202
    assert (await second).status_code == 202
    assert h.container.admission.refused == {"busy": 0, "lag": 0}


@pytest.mark.parametrize("overrides", [{"max_relay_lag_seconds": 1}])
async def test_new_interactions_are_refused_while_the_relay_lags(harness: Harness) -> None:
    h = harness
    admission = h.container.admission
    assert (await h.create("chat-a")).status_code == 202
    h.clock.advance(5)  # its routing request has waited five seconds for a relay
    assert await admission.sample() >= 5

    refused = await h.create("chat-b")
    assert_overloaded(refused)
    # What is not new work is still taken: it finishes what is under way.
    logged_out = await h.post_event("crm", "agent.logged_out", {"agent_id": "crm-001"})
    assert logged_out.status_code == 202, logged_out.text

    await h.drain()
    assert await admission.sample() == 0
    assert (await h.create("chat-b")).status_code == 202


@pytest.mark.parametrize(
    "overrides", [{"max_relay_lag_seconds": 1, "relay_base_backoff_seconds": 60}]
)
async def test_messages_waiting_for_a_retry_or_behind_one_are_no_lag(harness: Harness) -> None:
    h = harness
    h.acd.answer_status = 503
    assert (await h.create("chat-a")).status_code == 202
    logged_out = await h.post_event("crm", "agent.logged_out", {"agent_id": "crm-001"})
    assert logged_out.status_code == 202, logged_out.text
    await h.drain()  # refused by the ACD: each retried in a minute, the mirrors one at a time
    async with h.container.db.engine.connect() as conn:
        held_back = (
            await conn.execute(
                select(func.count())
                .select_from(outbox)
                .where(outbox.c.status == "pending", outbox.c.attempts == 0)
            )
        ).scalar_one()
    assert held_back >= 1  # mirrors due, but behind the one that waits for its retry

    h.clock.advance(5)
    assert await h.container.admission.sample() == 0
    assert (await h.create("chat-b")).status_code == 202
