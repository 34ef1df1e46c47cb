"""The core loop over HTTP against a real database (SQLite file and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from harmony.db.tables import inbox, interactions, outbox
from harmony.outbox.relay import MAX_BACKOFF_SECONDS
from tests.conftest import Harness


async def _interaction(h: Harness, interaction_id: str) -> dict:
    response = await h.client.get(f"/v1/interactions/{interaction_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def _agent(h: Harness, agent_id: str) -> dict:
    return (await h.client.get(f"/v1/agents/{agent_id}")).json()


async def _count(h: Harness, table, *conditions) -> int:
    async with h.container.db.engine.connect() as conn:
        query = select(func.count()).select_from(table)
        for condition in conditions:
            query = query.where(condition)
        return int((await conn.execute(query)).scalar())


async def test_chat_goes_round_the_whole_loop(harness: Harness) -> None:
    h = harness
    created = await h.create("chat-1", subject="Where is my order?", customer={"name": "Ann"})
    assert created.status_code == 202, created.text
    interaction_id = created.json()["interaction_id"]
    assert created.json()["status"] == "accepted"

    await h.drain()
    [routing] = h.acd.of_type("routing.requested")
    assert routing["data"]["interaction_id"] == interaction_id
    assert routing["data"]["skills"] == ["support"]
    assert routing["data"]["customer"] == {"name": "Ann"}
    request_id = routing["data"]["request_id"]
    assert (await _interaction(h, interaction_id))["state"] == "routing"

    queued = await h.post_event("acd", "request.queued", {"request_id": request_id, "position": 3})
    assert queued.status_code == 202, queued.text
    assert (await _interaction(h, interaction_id))["state"] == "queued"

    selected = await h.post_event(
        "acd", "agent.selected", {"request_id": request_id, "agent_id": "acd-002"}
    )
    assert selected.status_code == 202, selected.text
    assert (await _agent(h, "agent-002"))["channels"]["chat"]["load"] == 1

    await h.drain()
    [offer] = (await _interaction(h, interaction_id))["offers"]
    assert (offer["agent_id"], offer["status"], offer["decided_at"]) == (
        "agent-002",
        "pending",
        None,
    )
    [delivery] = h.crm.of_type("interaction.deliver")
    assert delivery["data"] == {
        "interaction_id": interaction_id,
        "external_id": "chat-1",
        "channel": "chat",
        "queue": "support-chat",
        "agent_id": "crm-002",
        "offer_id": offer["id"],
        "expires_at": offer["expires_at"].replace("Z", "+00:00"),
    }
    assert h.crm.headers[0]["idempotency-key"] == delivery["id"]
    assert (await _interaction(h, interaction_id))["state"] == "delivered"

    accepted = await h.post_event(
        "crm", "interaction.accepted", {"external_id": "chat-1", "agent_id": "crm-002"}
    )
    assert accepted.status_code == 202, accepted.text
    completed = await h.post_event("crm", "interaction.completed", {"external_id": "chat-1"})
    assert completed.status_code == 202, completed.text
    assert (await _agent(h, "agent-002"))["channels"]["chat"]["load"] == 0

    await h.drain()
    [ended] = h.acd.of_type("work.ended")
    assert ended["data"] == {
        "request_id": request_id,
        "interaction_id": interaction_id,
        "agent_id": "acd-002",
        "channel": "chat",
        "reason": "completed",
        "wrap_up_seconds": 0,
    }

    detail = await _interaction(h, interaction_id)
    assert detail["state"] == "completed"
    assert detail["agent_id"] == "agent-002"
    [offer] = detail["offers"]
    assert (offer["status"], offer["decided_at"]) == (
        "completed",
        detail["state_times"]["completed"],
    )
    moves = [(e["from_state"], e["to_state"]) for e in detail["history"] if e["event"] != "note"]
    assert moves == [
        (None, "received"),
        ("received", "routing"),
        ("routing", "queued"),
        ("queued", "offered"),
        ("offered", "delivered"),
        ("delivered", "accepted"),
        ("accepted", "completed"),
    ]
    times = [
        datetime.fromisoformat(detail["state_times"][s])
        for s in ("received", "routing", "queued", "offered", "delivered", "accepted", "completed")
    ]
    assert times == sorted(times)
    assert all(entry["cause"] for entry in detail["history"])


async def test_same_create_twice_is_one_interaction(harness: Harness) -> None:
    h = harness
    first = await h.post_event(
        "crm",
        "interaction.created",
        {"external_id": "e-1", "channel": "email", "queue": "support-email"},
        event_id="evt-same",
    )
    again = await h.post_event(
        "crm",
        "interaction.created",
        {"external_id": "e-1", "channel": "email", "queue": "support-email"},
        event_id="evt-same",
    )
    other_event_same_external = await h.create("e-1", "email")
    assert first.status_code == again.status_code == other_event_same_external.status_code == 202
    assert again.json() == {"status": "duplicate", "interaction_id": first.json()["interaction_id"]}
    assert other_event_same_external.json() == again.json()
    assert await _count(h, interactions) == 1
    assert await _count(h, outbox, outbox.c.type == "routing.requested") == 1
    await h.drain()
    assert len(h.acd.of_type("routing.requested")) == 1


async def test_twenty_concurrent_identical_creates_make_one_interaction(harness: Harness) -> None:
    import asyncio

    h = harness
    data = {"external_id": "chat-burst", "channel": "chat", "queue": "support-chat"}
    same_event = await asyncio.gather(
        *(h.post_event("crm", "interaction.created", data, event_id="evt-burst") for _ in range(20))
    )
    distinct_events = await asyncio.gather(*(h.create("chat-burst-2") for _ in range(20)))
    for batch in (same_event, distinct_events):
        assert {r.status_code for r in batch} == {202}, [r.text for r in batch]
        ids = {r.json()["interaction_id"] for r in batch}
        assert len(ids) == 1
        assert sorted(r.json()["status"] for r in batch).count("accepted") == 1
    assert await _count(h, interactions) == 2
    assert await _count(h, outbox, outbox.c.type == "routing.requested") == 2
    await h.drain()
    assert len(h.acd.of_type("routing.requested")) == 2
    # one event id for the first burst, 20 for the second
    assert await _count(h, inbox, inbox.c.event_type == "interaction.created") == 21


async def test_full_agent_is_refused_and_keeps_its_load(harness: Harness) -> None:
    h = harness
    # agent-002 takes 2 chats (examples/seed.json)
    ids = [(await h.create(f"c-{n}")).json()["interaction_id"] for n in range(3)]
    await h.drain()
    answers = [
        await h.post_event(
            "acd", "agent.selected", {"request_id": h.request_id_for(i), "agent_id": "acd-002"}
        )
        for i in ids
    ]
    assert [a.status_code for a in answers] == [202, 202, 409]
    assert answers[2].json()["error"] == "agent_unavailable"
    assert "2/2" in answers[2].json()["detail"]
    chat = (await _agent(h, "agent-002"))["channels"]["chat"]
    assert (chat["capacity"], chat["load"], chat["free"]) == (2, 2, 0)
    assert (await _interaction(h, ids[2]))["state"] == "routing"
    # The ACD picks again: another agent takes it.
    retry = await h.post_event(
        "acd", "agent.selected", {"request_id": h.request_id_for(ids[2]), "agent_id": "acd-001"}
    )
    assert retry.status_code == 202
    assert (await _interaction(h, ids[2]))["agent_id"] == "agent-001"


async def test_concurrent_selections_never_exceed_capacity(harness: Harness) -> None:
    import asyncio

    h = harness
    ids = [(await h.create(f"c-{n}")).json()["interaction_id"] for n in range(8)]
    await h.drain()
    answers = await asyncio.gather(
        *(
            h.post_event(
                "acd", "agent.selected", {"request_id": h.request_id_for(i), "agent_id": "acd-001"}
            )
            for i in ids
        )
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 3 + [409] * 5, [a.text for a in answers]
    assert (await _agent(h, "agent-001"))["channels"]["chat"]["load"] == 3
    offered = await h.client.get("/v1/interactions", params={"state": "offered"})
    assert len(offered.json()["items"]) == 3


async def test_delivery_refused_by_crm_fails_and_releases(harness: Harness) -> None:
    h = harness
    h.crm.answer_status = 400
    interaction_id = (await h.create("c-x")).json()["interaction_id"]
    await h.drain()
    await h.post_event(
        "acd",
        "agent.selected",
        {"request_id": h.request_id_for(interaction_id), "agent_id": "acd-001"},
    )
    await h.drain()
    detail = await _interaction(h, interaction_id)
    assert detail["state"] == "failed"
    assert "HTTP 400" in detail["history"][-1]["cause"]
    assert (await _agent(h, "agent-001"))["channels"]["chat"]["load"] == 0
    [ended] = h.acd.of_type("work.ended")
    assert ended["data"]["reason"] == "delivery_failed"


async def test_acd_unreachable_retries_then_fails(harness: Harness) -> None:
    h = harness
    h.acd.answer_status = 503
    interaction_id = (await h.create("c-y")).json()["interaction_id"]
    relay = h.container.relay
    for _ in range(20):  # each round: one try, then time moves past the longest backoff
        await relay.run_once()
        state = (await _interaction(h, interaction_id))["state"]
        if state == "failed":
            break
        h.clock.advance(MAX_BACKOFF_SECONDS)
    detail = await _interaction(h, interaction_id)
    assert detail["state"] == "failed"
    assert "after 8 tries" in detail["history"][-1]["cause"]
    assert len(h.acd.received) == 8  # every try reached the ACD with the same envelope id
    assert len({m["id"] for m in h.acd.received}) == 1
