"""Edge rules found by review: each input here answered 5xx, was stored in a form Harmony could
not use later, or was accepted though the OpenAPI document says it is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from harmony.adapters.generic_http.protocol import encode, envelope
from harmony.adapters.generic_http.signing import Signer
from harmony.clock import SystemClock
from harmony.config import DEV_SECRET, AdapterSettings
from harmony.db.engine import Database
from harmony.db.tables import agents
from harmony.errors import ValidationFailed
from harmony.main import apply_seed
from harmony.seed import load_seed
from tests.conftest import CRM_URL, SEED, Harness, make_settings
from tests.integration.test_hostile_input import snapshot

NEW_AGENT = {"crm_agent_id": "crm-900", "acd_agent_id": "acd-900"}


async def _signed(h: Harness, message: dict[str, Any]) -> httpx.Response:
    body = encode(message)
    headers = {
        "content-type": "application/json",
        **Signer(DEV_SECRET).headers(message["id"], body),
    }
    return await h.client.post("/v1/crm/generic/events", content=body, headers=headers)


@pytest.mark.parametrize("crm_adapter", ["nosuch", "x" * 80])
async def test_an_agent_bound_to_a_crm_adapter_that_is_not_configured_is_refused(
    harness: Harness, crm_adapter: str
) -> None:
    before = await snapshot(harness)

    response = await harness.client.put(
        "/v1/agents/agent-900", json={**NEW_AGENT, "crm_adapter": crm_adapter}
    )

    assert response.status_code == 422, response.text
    assert response.json()["error"] in {"unknown_adapter", "validation_error"}
    assert "crm_adapter" in response.json()["detail"]
    assert await snapshot(harness) == before


async def test_an_agent_naming_no_crm_adapter_gets_the_configured_one(harness: Harness) -> None:
    response = await harness.client.put("/v1/agents/agent-900", json=NEW_AGENT)

    assert response.status_code == 200, response.text
    assert response.json()["crm_adapter"] == "generic"


async def test_seeded_agents_follow_the_only_configured_crm(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/seeded.db",
        crm_adapters={"sf": AdapterSettings(url=CRM_URL)},  # type: ignore[arg-type]
    )
    db = Database(settings.database_url, SystemClock().now)
    try:
        await db.migrate()
        await apply_seed(db, SystemClock(), load_seed(SEED), settings)
        async with db.engine.connect() as conn:
            bound = set((await conn.execute(select(agents.c.crm_adapter))).scalars())
    finally:
        await db.dispose()
    assert bound == {"sf"}


async def test_a_seed_naming_an_unconfigured_crm_stops_before_writing(tmp_path: Path) -> None:
    raw = json.loads(SEED.read_text())
    raw["agents"][0]["crm_adapter"] = "nosuch"
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(raw))
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/seeded.db")
    db = Database(settings.database_url, SystemClock().now)
    try:
        await db.migrate()
        with pytest.raises(ValidationFailed, match="nosuch"):
            await apply_seed(db, SystemClock(), load_seed(seed_file), settings)
        async with db.engine.connect() as conn:
            assert (await conn.execute(select(agents.c.id))).first() is None
    finally:
        await db.dispose()


@pytest.mark.parametrize("event_id", ["a/b", ".", ".."])
async def test_an_event_id_the_inbox_could_not_address_is_refused(
    harness: Harness, event_id: str
) -> None:
    data = {"external_id": "chat-odd-id", "channel": "chat", "queue": "support-chat"}
    response = await _signed(harness, envelope("interaction.created", data, event_id=event_id))

    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("id:")
    assert (await harness.client.get("/v1/interactions")).json()["items"] == []


@pytest.mark.parametrize(
    "occurred_at",
    [1700000000, 1.7e9, "1700000000", "2024-01-01 00:00:00Z", "2024-01-01T00:00Z"],
)
async def test_occurred_at_must_be_an_rfc3339_date_time(harness: Harness, occurred_at: Any) -> None:
    message = envelope("agent.state_changed", {"agent_id": "crm-001", "state": "not_ready"})
    message["occurred_at"] = occurred_at

    response = await _signed(harness, message)

    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("occurred_at:")
    agent = (await harness.client.get("/v1/agents/agent-001")).json()
    assert agent["channels"]["chat"]["state"] == "ready"


async def test_customer_numbers_beyond_what_the_document_allows_are_refused(
    harness: Harness,
) -> None:
    data = {
        "external_id": "chat-big",
        "channel": "chat",
        "queue": "support-chat",
        "customer": {"lifetime_value": 1e308},
    }
    response = await _signed(harness, envelope("interaction.created", data))

    # The strict parser refuses it before the schema sees it.
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed_json"
    assert (await harness.client.get("/v1/interactions")).json()["items"] == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/merge-patch+json"])
async def test_an_operator_body_that_is_not_application_json_is_415(
    harness: Harness, content_type: str
) -> None:
    response = await harness.client.put(
        "/v1/queues/q-new",
        content=b'{"channel": "chat"}',
        headers={"content-type": content_type},
    )

    assert response.status_code == 415, response.text
    assert response.json()["error"] == "unsupported_media_type"
    names = [q["name"] for q in (await harness.client.get("/v1/queues")).json()]
    assert "q-new" not in names
