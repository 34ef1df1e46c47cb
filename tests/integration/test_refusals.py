"""Bad input gets a clear 4xx naming the problem and changes nothing stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from harmony.adapters.generic_http.protocol import encode, envelope
from harmony.adapters.generic_http.signing import Signer, new_secret
from harmony.config import DEV_SECRET
from harmony.db.tables import agent_channels, inbox, interaction_history, interactions, outbox
from tests.conftest import Harness


async def snapshot(h: Harness) -> dict[str, Any]:
    """Everything stored that an event could change."""
    async with h.container.db.engine.connect() as conn:
        result = {}
        for table in (interactions, interaction_history, inbox, outbox, agent_channels):
            rows = (await conn.execute(select(table))).mappings().all()
            if table is inbox:
                # The inbox keeps a refused event (to show why and re-drive it): not a change.
                rows = [r for r in rows if r["status"] != "failed"]
            result[table.name] = sorted(
                json.dumps(dict(r), sort_keys=True, default=str) for r in rows
            )
        return result


@pytest.fixture
async def routed(harness: Harness) -> tuple[Harness, str, str]:
    """One chat waiting for an agent, its routing request sent."""
    interaction_id = (await harness.create("chat-known")).json()["interaction_id"]
    await harness.drain()
    return harness, interaction_id, harness.request_id_for(interaction_id)


def signed(body: bytes, event_id: str = "evt-1", secret: str = DEV_SECRET) -> dict[str, str]:
    return {"content-type": "application/json", **Signer(secret).headers(event_id, body)}


CREATE = {"external_id": "chat-new", "channel": "chat", "queue": "support-chat"}


def _body(event_type: str, data: dict[str, Any], event_id: str = "evt-1") -> bytes:
    return encode(envelope(event_type, data, event_id=event_id))


BAD_REQUESTS = {
    "malformed_json": (
        "crm",
        b'{"id": "evt-1", "type": "interaction.created", "data": {',
        400,
        "malformed_json",
        "not valid JSON",
    ),
    "unknown_channel": (
        "crm",
        _body("interaction.created", {**CREATE, "channel": "fax"}),
        422,
        "validation_error",
        "data.channel",
    ),
    "voice_is_not_routed_here": (
        "crm",
        _body("interaction.created", {**CREATE, "channel": "voice"}),
        422,
        "validation_error",
        "data.channel",
    ),
    "missing_external_id": (
        "crm",
        _body("interaction.created", {"channel": "chat", "queue": "support-chat"}),
        422,
        "validation_error",
        "data.external_id: Field required",
    ),
    "missing_envelope_type": (
        "crm",
        encode({"id": "evt-1", "occurred_at": "2026-01-01T00:00:00Z", "data": CREATE}),
        422,
        "validation_error",
        "type: Field required",
    ),
    "unknown_queue": (
        "crm",
        _body("interaction.created", {**CREATE, "queue": "nowhere"}),
        422,
        "unknown_queue",
        "unknown queue 'nowhere'",
    ),
    "queue_of_other_channel": (
        "crm",
        _body("interaction.created", {**CREATE, "queue": "support-email"}),
        422,
        "queue_channel_mismatch",
        "takes email interactions",
    ),
    "priority_out_of_range": (
        "crm",
        _body("interaction.created", {**CREATE, "priority": 101}),
        422,
        "validation_error",
        "data.priority",
    ),
    "unknown_event_type": (
        "crm",
        _body("interaction.exploded", CREATE),
        422,
        "validation_error",
        "unknown event type 'interaction.exploded'",
    ),
    "acd_event_sent_to_crm_route": (
        "crm",
        _body("agent.selected", {"request_id": "x", "agent_id": "acd-001"}),
        422,
        "validation_error",
        "unknown event type 'agent.selected'",
    ),
    "accept_unknown_interaction": (
        "crm",
        _body("interaction.accepted", {"external_id": "never-seen"}),
        404,
        "unknown_interaction",
        "never-seen",
    ),
    "complete_still_routing": (
        "crm",
        _body("interaction.completed", {"external_id": "chat-known"}),
        409,
        "not_with_an_agent",
        "is routing",
    ),
    "selection_for_unknown_request": (
        "acd",
        _body("agent.selected", {"request_id": "rr_unknown", "agent_id": "acd-001"}),
        404,
        "unknown_interaction",
        "rr_unknown",
    ),
    "queued_for_unknown_request": (
        "acd",
        _body("request.queued", {"request_id": "rr_unknown"}),
        404,
        "unknown_interaction",
        "rr_unknown",
    ),
    "selection_missing_agent": (
        "acd",
        _body("agent.selected", {"request_id": "rr_unknown"}),
        422,
        "validation_error",
        "data.agent_id: Field required",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_event_is_refused_and_changes_nothing(
    routed: tuple[Harness, str, str], case: str
) -> None:
    h, _, _ = routed
    kind, body, status, code, detail = BAD_REQUESTS[case]
    before = await snapshot(h)
    response = await h.client.post(f"/v1/{kind}/generic/events", content=body, headers=signed(body))
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert detail in response.json()["detail"]
    if status == 409:  # a lifecycle refusal names the state it found
        assert response.json()["state"] == "routing"
    assert await snapshot(h) == before


async def test_selection_naming_unknown_agent_changes_nothing(
    routed: tuple[Harness, str, str],
) -> None:
    h, _, request_id = routed
    before = await snapshot(h)
    response = await h.post_event(
        "acd", "agent.selected", {"request_id": request_id, "agent_id": "acd-ghost"}
    )
    assert response.status_code == 404
    assert response.json() == {
        "error": "unknown_agent",
        "detail": "data.agent_id: no agent 'acd-ghost'",
    }
    assert await snapshot(h) == before
    # The same event id, corrected, is still applied: the refusal did not consume it.
    fixed = await h.post_event(
        "acd", "agent.selected", {"request_id": request_id, "agent_id": "acd-001"}
    )
    assert fixed.status_code == 202


async def test_oversized_body_is_refused(routed: tuple[Harness, str, str]) -> None:
    h, _, _ = routed
    before = await snapshot(h)
    big = _body("interaction.created", {**CREATE, "customer": {"notes": "x" * (256 * 1024)}})
    response = await h.client.post("/v1/crm/generic/events", content=big, headers=signed(big))
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"

    async def chunks():  # no content-length: the limit still holds while streaming
        for _ in range(40):
            yield b"x" * 8192

    streamed = await h.client.post(
        "/v1/crm/generic/events", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await snapshot(h) == before


async def test_just_under_the_limit_is_accepted(routed: tuple[Harness, str, str]) -> None:
    h, _, _ = routed
    filler = 256 * 1024 - 400
    body = _body("interaction.created", {**CREATE, "customer": {"notes": "x" * filler}})
    assert len(body) <= 256 * 1024
    response = await h.client.post("/v1/crm/generic/events", content=body, headers=signed(body))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("kind", ["crm", "acd"])
async def test_unknown_adapter_is_404(routed: tuple[Harness, str, str], kind: str) -> None:
    h, _, _ = routed
    before = await snapshot(h)
    body = _body("interaction.created", CREATE)
    response = await h.client.post(
        f"/v1/{kind}/salesforce/events", content=body, headers=signed(body)
    )
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_adapter"
    assert "'salesforce'" in response.json()["detail"]
    assert await snapshot(h) == before


SIGNATURE_CASES = {
    "unsigned": lambda body: {"content-type": "application/json"},
    "wrong_secret": lambda body: signed(body, secret=new_secret()),
    "tampered": lambda body: signed(body.replace(b"chat-new", b"chat-old")),
    "stale": lambda body: {
        "content-type": "application/json",
        **Signer(DEV_SECRET).headers("evt-1", body, at=datetime(2020, 1, 1, tzinfo=UTC)),
    },
    "garbage_signature": lambda body: {**signed(body), "webhook-signature": "v1"},
}


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
async def test_bad_signature_is_401_and_changes_nothing(
    routed: tuple[Harness, str, str], case: str
) -> None:
    h, _, _ = routed
    before = await snapshot(h)
    body = _body("interaction.created", CREATE)
    response = await h.client.post(
        "/v1/crm/generic/events", content=body, headers=SIGNATURE_CASES[case](body)
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_signature"
    assert await snapshot(h) == before


async def test_envelope_id_must_match_webhook_id(routed: tuple[Harness, str, str]) -> None:
    h, _, _ = routed
    before = await snapshot(h)
    body = _body("interaction.created", CREATE, event_id="evt-body")
    response = await h.client.post(
        "/v1/crm/generic/events", content=body, headers=signed(body, event_id="evt-header")
    )
    assert response.status_code == 422
    assert "webhook-id" in response.json()["detail"]
    assert await snapshot(h) == before


async def test_wrong_content_type_is_415(routed: tuple[Harness, str, str]) -> None:
    h, _, _ = routed
    body = _body("interaction.created", CREATE)
    response = await h.client.post(
        "/v1/crm/generic/events",
        content=body,
        headers={**signed(body), "content-type": "text/plain"},
    )
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


async def test_capacity_below_current_load_is_refused(routed: tuple[Harness, str, str]) -> None:
    h, _, request_id = routed
    await h.post_event("acd", "agent.selected", {"request_id": request_id, "agent_id": "acd-001"})
    before = await snapshot(h)
    response = await h.client.put(
        "/v1/agents/agent-001",
        json={"crm_agent_id": "crm-001", "acd_agent_id": "acd-001", "capacity": {"chat": 0}},
    )
    assert response.status_code == 409
    assert response.json()["error"] == "capacity_below_load"
    assert await snapshot(h) == before


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"crm_agent_id": "crm-x", "acd_agent_id": "acd-x", "capacity": {"voice": 2}}, "voice"),
        (
            {"crm_agent_id": "crm-x", "acd_agent_id": "acd-x", "capacity": {"fax": 1}},
            "capacity.fax",
        ),
        ({"acd_agent_id": "acd-x"}, "crm_agent_id: Field required"),
        (
            {"crm_agent_id": "crm-001", "acd_agent_id": "acd-x"},
            "already belongs to agent agent-001",
        ),
    ],
)
async def test_bad_agent_definitions_are_refused(
    routed: tuple[Harness, str, str], body: dict[str, Any], detail: str
) -> None:
    h, _, _ = routed
    before = await snapshot(h)
    response = await h.client.put("/v1/agents/agent-new", json=body)
    assert 400 <= response.status_code < 500
    assert detail in response.json()["detail"], response.text
    assert await snapshot(h) == before
    assert (await h.client.get("/v1/agents/agent-new")).status_code == 404
