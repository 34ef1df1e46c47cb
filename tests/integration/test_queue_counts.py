"""GET /v1/queues reads waiting counts kept by triggers, never an aggregate of the waiting rows:
they must stay exactly what GET /v1/interactions shows, through every move in and out of a
waiting state, on SQLite and PostgreSQL, and under concurrent transactions on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from harmony.db.tables import interactions, queue_waiting
from harmony.routing.model import WAITING_STATES
from tests.conftest import Harness

WAITING = {state.value for state in WAITING_STATES}


async def _every_interaction(h: Harness) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = (await h.client.get("/v1/interactions", params=params)).json()
        found += page["items"]
        if page["next_cursor"] is None:
            return found
        params["cursor"] = page["next_cursor"]


async def assert_queues_match_interactions(h: Harness) -> dict[str, int]:
    """Each queue's ``waiting`` and ``oldest_received_at`` equal what the interactions say."""
    answer = await h.client.get("/v1/queues")
    assert answer.status_code == 200, answer.text
    waiting = [i for i in await _every_interaction(h) if i["state"] in WAITING]
    counts = Counter(i["queue"] for i in waiting)
    for queue in answer.json():
        mine = [i["received_at"] for i in waiting if i["queue"] == queue["name"]]
        assert queue["waiting"] == counts[queue["name"]], (queue, mine)
        assert queue["oldest_received_at"] == min(mine, default=None), queue
        assert (queue["oldest_wait_seconds"] is None) == (not mine)
    return {queue["name"]: queue["waiting"] for queue in answer.json()}


async def test_waiting_counts_follow_every_move_in_and_out_of_waiting(harness: Harness) -> None:
    h = harness
    assert (await assert_queues_match_interactions(h))["support-chat"] == 0
    ids = {}
    for n, (external_id, queue) in enumerate(
        [("c-1", "support-chat"), ("c-2", "support-chat"), ("c-3", "billing-chat")]
    ):
        h.clock.advance(1 + n)
        created = await h.create(external_id, queue=queue)
        assert created.status_code == 202, created.text
        ids[external_id] = created.json()["interaction_id"]
    email = await h.create("e-1", channel="email")
    ids["e-1"] = email.json()["interaction_id"]
    counts = await assert_queues_match_interactions(h)
    assert (counts["support-chat"], counts["billing-chat"], counts["support-email"]) == (2, 1, 1)

    await h.drain()
    # routing -> queued: still waiting, still counted once.
    queued = await h.post_event(
        "acd", "request.queued", {"request_id": h.request_id_for(ids["c-1"])}
    )
    assert queued.status_code == 202, queued.text
    assert (await assert_queues_match_interactions(h))["support-chat"] == 2

    # queued -> offered: the oldest leaves, the next one is the oldest now.
    selected = await h.post_event(
        "acd", "agent.selected", {"request_id": h.request_id_for(ids["c-1"]), "agent_id": "acd-001"}
    )
    assert selected.status_code == 202, selected.text
    assert (await assert_queues_match_interactions(h))["support-chat"] == 1

    # A refused selection changes nothing; a duplicate create neither.
    refused = await h.post_event(
        "acd", "agent.selected", {"request_id": h.request_id_for(ids["c-2"]), "agent_id": "acd-999"}
    )
    assert refused.status_code == 404, refused.text
    assert (await h.create("c-2")).json()["status"] == "duplicate"
    assert (await assert_queues_match_interactions(h))["support-chat"] == 1

    # offered -> delivered -> accepted -> completed: no waiting count moves.
    await h.drain()
    for event in ("interaction.accepted", "interaction.completed"):
        answer = await h.post_event("crm", event, {"external_id": "c-1"})
        assert answer.status_code == 202, answer.text
    assert (await assert_queues_match_interactions(h))["support-chat"] == 1

    # routing -> failed: a routing request the ACD refuses for good.
    h.acd.answer_status = 400
    doomed = (await h.create("c-4", queue="billing-chat")).json()["interaction_id"]
    await h.drain()
    assert (await h.client.get(f"/v1/interactions/{doomed}")).json()["state"] == "failed"
    counts = await assert_queues_match_interactions(h)
    assert (counts["support-chat"], counts["billing-chat"], counts["support-email"]) == (1, 1, 1)


async def test_the_counts_equal_a_count_of_the_rows_after_direct_writes(harness: Harness) -> None:
    """Kept by the database itself: rows written, moved between queues or deleted by SQL (a
    repair, a purge) are counted as well as those the use cases write."""
    h = harness
    for n in range(3):
        await h.create(f"c-{n}")
    await h.create("e-1", channel="email")
    async with h.container.db.engine.begin() as conn:
        one = (await conn.execute(select(interactions.c.id).limit(1))).scalar_one()
        await conn.execute(
            update(interactions).where(interactions.c.id == one).values(queue="billing-chat")
        )
        await conn.execute(delete(interactions).where(interactions.c.channel == "email"))
    await assert_queues_match_interactions(h)
    async with h.container.db.engine.connect() as conn:
        kept = dict(
            (
                await conn.execute(
                    select(queue_waiting.c.queue, func.sum(queue_waiting.c.waiting)).group_by(
                        queue_waiting.c.queue
                    )
                )
            ).all()
        )
        counted = dict(
            (
                await conn.execute(
                    select(interactions.c.queue, func.count())
                    .where(interactions.c.state.in_(WAITING))
                    .group_by(interactions.c.queue)
                )
            ).all()
        )
    assert {q: n for q, n in kept.items() if n} == counted
    assert counted == {"support-chat": 2, "billing-chat": 1}


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_concurrent_transactions_of_one_queue_keep_it_exact(harness: Harness) -> None:
    """Creates and selections of one queue commit concurrently on the pool's connections, each
    moving a counter row of its own shard or sharing one: the sum stays exact."""
    h = harness
    created = await asyncio.gather(*(h.create(f"c-{n}") for n in range(24)))
    assert [c.status_code for c in created] == [202] * 24
    await h.drain()
    agents = ["acd-001", "acd-002", "acd-003"]
    selections = [
        h.post_event(
            "acd",
            "agent.selected",
            {"request_id": h.request_id_for(c.json()["interaction_id"]), "agent_id": agent},
        )
        for c, agent in zip(created, agents * 2, strict=False)
    ]
    more = [h.create(f"d-{n}") for n in range(12)]
    answers = await asyncio.gather(*selections, *more)
    assert all(a.status_code in (202, 409) for a in answers), [a.text for a in answers]
    offered = sum(1 for a in answers[: len(selections)] if a.status_code == 202)
    assert offered >= 1
    assert (await assert_queues_match_interactions(h))["support-chat"] == 24 + 12 - offered
