"""The unhappy paths through the API on both databases: events from the CRM, the timers a
running replica fires, and what operators see (offers, state filters, queue figures,
transfers)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Harness


async def interaction(h: Harness, interaction_id: str) -> dict[str, Any]:
    answer = await h.client.get(f"/v1/interactions/{interaction_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def created(h: Harness, external_id: str) -> str:
    answer = await h.create(external_id)
    assert answer.status_code == 202, answer.text
    await h.drain()
    return str(answer.json()["interaction_id"])


async def offered(h: Harness, external_id: str, agent: str = "acd-002") -> str:
    interaction_id = await created(h, external_id)
    selected = await h.post_event(
        "acd",
        "agent.selected",
        {"request_id": h.request_id_for(interaction_id), "agent_id": agent},
    )
    assert selected.status_code == 202, selected.text
    await h.drain()
    return interaction_id


async def queue(h: Harness, name: str) -> dict[str, Any]:
    answer = await h.client.get("/v1/queues")
    [found] = [q for q in answer.json() if q["name"] == name]
    return dict(found)


async def test_a_decline_is_told_to_the_acd_and_the_offers_are_listed(harness: Harness) -> None:
    h = harness
    interaction_id = await offered(h, "chat-1")
    declined = await h.post_event(
        "crm",
        "interaction.declined",
        {"external_id": "chat-1", "agent_id": "crm-002", "reason": "busy"},
    )
    assert declined.status_code == 202, declined.text
    await h.drain()

    [told] = h.acd.of_type("offer.declined")
    assert (told["data"]["agent_id"], told["data"]["agents_tried"]) == ("acd-002", ["acd-002"])
    detail = await interaction(h, interaction_id)
    assert detail["state"] == "routing"
    [offer] = detail["offers"]
    assert (offer["agent_id"], offer["status"], offer["reason"]) == (
        "agent-002",
        "declined",
        "busy",
    )
    # A second decline now has no offer to decline: recorded, answered as applied.
    again = await h.post_event("crm", "interaction.declined", {"external_id": "chat-1"})
    assert again.status_code == 202, again.text
    assert (await interaction(h, interaction_id))["history"][-1]["event"] == "late_decline"


async def test_a_decline_naming_another_agent_is_refused_with_nothing_changed(
    harness: Harness,
) -> None:
    h = harness
    interaction_id = await offered(h, "chat-1")
    before = await interaction(h, interaction_id)
    answer = await h.post_event(
        "crm", "interaction.declined", {"external_id": "chat-1", "agent_id": "crm-001"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "not_offered_to_agent"
    assert await interaction(h, interaction_id) == before


async def test_an_abandoned_chat_is_found_by_its_state_and_counted_on_its_queue(
    harness: Harness,
) -> None:
    h = harness
    with_agent = await offered(h, "chat-1")
    waiting = await created(h, "chat-2")
    assert (await queue(h, "support-chat"))["offered"] == 1
    for external_id in ("chat-1", "chat-2"):
        answer = await h.post_event("crm", "interaction.abandoned", {"external_id": external_id})
        assert answer.status_code == 202, answer.text
    await h.drain()

    page = (await h.client.get("/v1/interactions?state=abandoned")).json()
    assert {i["external_id"] for i in page["items"]} == {"chat-1", "chat-2"}
    stats = await queue(h, "support-chat")
    assert (stats["waiting"], stats["offered"], stats["abandoned_24h"]) == (0, 0, 2)
    cancelled = [m["data"] for m in h.acd.of_type("request.cancelled")]
    assert {(m["interaction_id"], m.get("agent_id")) for m in cancelled} == {
        (waiting, None),
        (with_agent, "acd-002"),
    }
    agent = (await h.client.get("/v1/agents/agent-002")).json()
    assert agent["channels"]["chat"]["load"] == 0


async def test_an_unanswered_offer_times_out_when_the_scheduler_runs(harness: Harness) -> None:
    h = harness
    interaction_id = await offered(h, "chat-1")
    assert await h.container.scheduler.run_once() == 0
    h.clock.advance(31)
    assert await h.container.scheduler.run_once() == 1
    await h.drain()

    assert (await interaction(h, interaction_id))["state"] == "routing"
    [timed_out] = h.acd.of_type("offer.timed_out")
    assert timed_out["data"]["request_id"] == h.request_id_for(interaction_id)
    [rescinded] = h.crm.of_type("offer.rescinded")
    assert (rescinded["data"]["external_id"], rescinded["data"]["agent_id"]) == (
        "chat-1",
        "crm-002",
    )
    agent = (await h.client.get("/v1/agents/agent-002")).json()
    assert (agent["channels"]["chat"]["state"], agent["channels"]["chat"]["reason"]) == (
        "not_ready",
        "rona",
    )


async def test_a_supervisor_transfers_accepted_work(harness: Harness) -> None:
    h = harness
    interaction_id = await offered(h, "chat-1")
    accepted = await h.post_event("crm", "interaction.accepted", {"external_id": "chat-1"})
    assert accepted.status_code == 202, accepted.text

    refused = await h.client.post(f"/v1/interactions/{interaction_id}/transfer", json={})
    assert (refused.status_code, refused.json()["error"]) == (422, "transfer_target_missing")
    unknown = await h.client.post(
        f"/v1/interactions/{interaction_id}/transfer", json={"agent_id": "agent-999"}
    )
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_agent")
    moved = await h.client.post(
        f"/v1/interactions/{interaction_id}/transfer", json={"queue": "billing-chat"}
    )
    assert moved.status_code == 202, moved.text
    assert (moved.json()["state"], moved.json()["queue"]) == ("routing", "billing-chat")
    again = await h.client.post(
        f"/v1/interactions/{interaction_id}/transfer", json={"queue": "support-chat"}
    )
    assert (again.status_code, again.json()["error"], again.json()["state"]) == (
        409,
        "not_with_an_agent",
        "routing",
    )
    await h.drain()
    [ended] = h.acd.of_type("work.ended")
    assert (ended["data"]["agent_id"], ended["data"]["reason"]) == ("acd-002", "transferred")


async def test_queue_policies_are_stored_checked_and_shown(harness: Harness) -> None:
    h = harness
    put = await h.client.put(
        "/v1/queues/overflow-chat", json={"channel": "chat", "max_wait_seconds": 900}
    )
    assert put.status_code == 200, put.text
    policy = {
        "channel": "chat",
        "skills": ["support"],
        "offer_timeout_seconds": 15,
        "max_offers": 3,
        "overflow_queue": "overflow-chat",
    }
    answer = await h.client.put("/v1/queues/support-chat", json=policy)
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert (
        shown["offer_timeout_seconds"],
        shown["routing_timeout_seconds"],
        shown["max_wait_seconds"],
        shown["max_offers"],
        shown["overflow_queue"],
    ) == (15, 60, 600, 3, "overflow-chat")
    for bad, error in (
        ({"overflow_queue": "nowhere"}, "unknown_queue"),
        ({"overflow_queue": "support-email"}, "queue_channel_mismatch"),
        ({"overflow_queue": "support-chat"}, "invalid_overflow_queue"),
        ({"offer_timeout_seconds": 0}, "validation_error"),
        ({"max_offers": "5"}, "validation_error"),
    ):
        refused = await h.client.put("/v1/queues/support-chat", json={**policy, **bad})
        assert (refused.status_code, refused.json()["error"]) == (422, error), refused.text
    assert (await queue(h, "support-chat"))["offer_timeout_seconds"] == 15


async def test_every_new_route_answers_bad_input_with_a_4xx(harness: Harness) -> None:
    h = harness
    for body in ("[]", '{"queue": 7}', '{"agent_id": ""}', "not json"):
        answer = await h.client.post(
            "/v1/interactions/nope/transfer",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, (body, answer.status_code, answer.text)
    missing = await h.client.post("/v1/interactions/nope/transfer", json={"queue": "support-chat"})
    assert (missing.status_code, missing.json()["error"]) == (404, "unknown_interaction")
