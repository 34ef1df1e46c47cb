"""The inbox keeps what it verified: an event can be inspected, a retry has no second effect,
and an event refused for a cause fixed since can be re-driven."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from harmony.adapters.generic_http.protocol import encode, envelope
from harmony.adapters.generic_http.signing import Signer
from harmony.config import DEV_SECRET
from harmony.db.tables import interactions
from tests.conftest import Harness


async def _post(h: Harness, kind: str, body: bytes, event_id: str) -> httpx.Response:
    headers = {"content-type": "application/json", **Signer(DEV_SECRET).headers(event_id, body)}
    return await h.client.post(f"/v1/{kind}/generic/events", content=body, headers=headers)


def _create(event_id: str, external_id: str, queue: str = "support-chat", **data: Any) -> bytes:
    payload = {"external_id": external_id, "channel": "chat", "queue": queue, **data}
    return encode(envelope("interaction.created", payload, event_id=event_id))


async def _count(h: Harness, table: Any) -> int:
    async with h.container.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_the_stored_payload_is_the_body_as_sent(harness: Harness) -> None:
    h = harness
    body = _create("evt-stored", "chat-stored", customer={"name": "Zoë", "tier": 2})
    answer = await _post(h, "crm", body, "evt-stored")
    assert answer.status_code == 202, answer.text

    stored = await h.client.get("/v1/inbox/crm:generic/evt-stored")

    assert stored.status_code == 200, stored.text
    event = stored.json()
    assert event["payload"] == body.decode()
    assert event["type"] == "interaction.created"
    assert event["status"] == "applied"
    assert event["error"] is None
    assert event["interaction_id"] == answer.json()["interaction_id"]
    assert event["handled_at"] is not None


async def test_a_retried_delivery_has_no_second_effect(harness: Harness) -> None:
    h = harness
    body = _create("evt-retried", "chat-retried")
    first = await _post(h, "crm", body, "evt-retried")
    again = await _post(h, "crm", body, "evt-retried")

    assert first.json()["status"] == "accepted"
    assert again.json() == {"status": "duplicate", "interaction_id": first.json()["interaction_id"]}
    await h.drain()
    assert len(h.acd.of_type("routing.requested")) == 1
    stored = (await h.client.get("/v1/inbox/crm:generic/evt-retried")).json()
    assert (stored["status"], stored["payload"]) == ("applied", body.decode())


async def test_a_failed_event_is_kept_and_redriven_once_its_queue_exists(harness: Harness) -> None:
    h = harness
    body = _create("evt-early", "chat-early", queue="launch-week")
    refused = await _post(h, "crm", body, "evt-early")
    assert refused.status_code == 422
    assert await _count(h, interactions) == 0

    failed = (await h.client.get("/v1/inbox/crm:generic/evt-early")).json()
    assert failed["status"] == "failed"
    assert "unknown queue 'launch-week'" in failed["error"]
    assert failed["payload"] == body.decode()

    still_missing = await h.client.post("/v1/inbox/crm:generic/evt-early/redrive")
    assert still_missing.status_code == 422
    assert "unknown queue 'launch-week'" in still_missing.json()["detail"]

    created = await h.client.put("/v1/queues/launch-week", json={"channel": "chat"})
    assert created.status_code == 200, created.text
    redriven = await h.client.post("/v1/inbox/crm:generic/evt-early/redrive")

    assert redriven.status_code == 200, redriven.text
    assert redriven.json()["status"] == "accepted"
    interaction_id = redriven.json()["interaction_id"]
    interaction = (await h.client.get(f"/v1/interactions/{interaction_id}")).json()
    assert (interaction["external_id"], interaction["queue"]) == ("chat-early", "launch-week")
    await h.drain()
    assert [m["data"]["queue"] for m in h.acd.of_type("routing.requested")] == ["launch-week"]
    applied = (await h.client.get("/v1/inbox/crm:generic/evt-early")).json()
    assert (applied["status"], applied["error"]) == ("applied", None)

    # Applied now: neither a second re-drive nor the CRM's own retry applies it again.
    twice = await h.client.post("/v1/inbox/crm:generic/evt-early/redrive")
    assert (twice.status_code, twice.json()["error"]) == (409, "already_applied")
    retry = await _post(h, "crm", body, "evt-early")
    assert retry.json()["status"] == "duplicate"
    assert await _count(h, interactions) == 1


async def test_an_agent_event_for_an_agent_configured_later_can_be_redriven(
    harness: Harness,
) -> None:
    h = harness
    body = encode(
        envelope(
            "agent.logged_in", {"agent_id": "crm-new-hire", "state": "ready"}, event_id="evt-hire"
        )
    )
    refused = await _post(h, "crm", body, "evt-hire")
    assert (refused.status_code, refused.json()["error"]) == (404, "unknown_agent")

    agent = {"crm_agent_id": "crm-new-hire", "acd_agent_id": "acd-new-hire", "skills": []}
    assert (await h.client.put("/v1/agents/new-hire", json=agent)).status_code == 200
    redriven = await h.client.post("/v1/inbox/crm:generic/evt-hire/redrive")

    assert redriven.status_code == 200, redriven.text
    assert redriven.json()["status"] == "applied"
    channels = (await h.client.get("/v1/agents/new-hire")).json()["channels"]
    assert {c["state"] for c in channels.values()} == {"ready"}


async def test_an_applied_event_is_not_redriven(harness: Harness) -> None:
    h = harness
    await _post(h, "crm", _create("evt-done", "chat-done"), "evt-done")

    answer = await h.client.post("/v1/inbox/crm:generic/evt-done/redrive")

    assert (answer.status_code, answer.json()["error"]) == (409, "already_applied")
    await h.drain()
    assert len(h.acd.of_type("routing.requested")) == 1


async def test_an_unknown_event_is_404(harness: Harness) -> None:
    h = harness
    read = await h.client.get("/v1/inbox/crm:generic/evt-never")
    redrive = await h.client.post("/v1/inbox/acd:generic/evt-never/redrive")
    for answer in (read, redrive):
        assert (answer.status_code, answer.json()["error"]) == (404, "unknown_event")


async def test_a_source_that_is_not_crm_or_acd_is_refused(harness: Harness) -> None:
    answer = await harness.client.get("/v1/inbox/erp:generic/evt-1")
    assert (answer.status_code, answer.json()["error"]) == (422, "validation_error")


async def test_events_older_than_the_retention_are_pruned_as_new_ones_arrive(
    harness: Harness,
) -> None:
    h = harness
    await _post(h, "crm", _create("evt-old", "chat-old"), "evt-old")
    retention_days = h.container.settings.inbox_retention_days
    h.clock.advance(retention_days * 86400 - 60)
    await _post(h, "crm", _create("evt-recent", "chat-recent"), "evt-recent")
    assert (await h.client.get("/v1/inbox/crm:generic/evt-old")).status_code == 200

    h.clock.advance(120)
    await _post(h, "crm", _create("evt-new", "chat-new"), "evt-new")

    assert (await h.client.get("/v1/inbox/crm:generic/evt-old")).status_code == 404
    for kept in ("evt-recent", "evt-new"):
        assert (await h.client.get(f"/v1/inbox/crm:generic/{kept}")).status_code == 200


async def test_a_redrive_racing_the_senders_retry_applies_once(harness: Harness) -> None:
    h = harness
    body = _create("evt-race", "chat-race", queue="late-queue")
    assert (await _post(h, "crm", body, "evt-race")).status_code == 422
    assert (
        await h.client.put("/v1/queues/late-queue", json={"channel": "chat"})
    ).status_code == 200

    redrive, retry = await asyncio.gather(
        h.client.post("/v1/inbox/crm:generic/evt-race/redrive"), _post(h, "crm", body, "evt-race")
    )

    assert sorted([redrive.json()["status"], retry.json()["status"]]) == ["accepted", "duplicate"]
    assert redrive.json()["interaction_id"] == retry.json()["interaction_id"]
    assert await _count(h, interactions) == 1
    await h.drain()
    assert len(h.acd.of_type("routing.requested")) == 1
