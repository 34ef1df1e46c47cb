"""openapi/openapi.json is the app's document, byte for byte as `harmony openapi` writes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from harmony.cli import openapi_document
from harmony.config import Settings
from harmony.main import create_app

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_exported_openapi_matches_the_app() -> None:
    exported = json.loads(SPEC.read_text())
    assert exported == openapi_document(), (
        "openapi/openapi.json is stale: run `harmony openapi -o openapi/openapi.json`"
    )


def test_every_route_documents_its_errors() -> None:
    spec = openapi_document()
    events = spec["paths"]["/v1/crm/{adapter}/events"]["post"]
    assert {"202", "400", "401", "404", "409", "413", "415", "422"} <= set(events["responses"])
    body = events["requestBody"]["content"]["application/json"]["schema"]
    assert list(body["discriminator"]["mapping"]) == [
        "interaction.created",
        "interaction.accepted",
        "interaction.completed",
        "interaction.declined",
        "interaction.abandoned",
        "interaction.cancelled",
        "interaction.transfer_requested",
        "agent.logged_in",
        "agent.logged_out",
        "agent.state_changed",
    ]
    agents = spec["paths"]["/v1/agents"]["get"]["responses"]
    assert {"200", "400", "404", "422"} <= set(agents)


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_error_is_documented_as_the_apps_error_body() -> None:
    spec = openapi_document()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in operation["responses"], (path, method)


def test_event_data_is_described_per_type_with_the_signature_headers() -> None:
    spec = openapi_document()
    events = spec["paths"]["/v1/acd/{adapter}/events"]["post"]
    headers = {p["name"] for p in events["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    mapping = events["requestBody"]["content"]["application/json"]["schema"]["discriminator"]
    selected = _resolve(spec, {"$ref": mapping["mapping"]["agent.selected"]})
    assert selected["properties"]["type"]["const"] == "agent.selected"
    data = _resolve(spec, selected["properties"]["data"])
    assert set(data["required"]) == {"request_id", "agent_id"}
    assert data["properties"]["agent_id"]["pattern"] == "^[^\\x00]*$"


def test_capacities_and_reasons_are_as_tight_as_validation() -> None:
    reasons = ("lunch", "rona", "other")
    app = create_app(Settings(migrate_on_start=False, not_ready_reasons=reasons))
    spec = app.openapi()
    capacities = spec["components"]["schemas"]["ChannelCapacities"]["properties"]
    voice = capacities["voice"]["anyOf"][0]
    assert (voice["minimum"], voice["maximum"]) == (0, 1)
    state = spec["components"]["schemas"]["AgentStateIn"]["properties"]["reason"]
    assert state["anyOf"][0]["enum"] == ["lunch", "rona", "other"]


def test_the_not_ready_reasons_must_include_the_one_harmony_gives_a_missed_offer() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(migrate_on_start=False, not_ready_reasons=("lunch", "other"))
    assert "must include 'rona'" in str(refused.value)


def test_every_write_documents_the_retryable_503() -> None:
    """Writes run through the deadlock retry; when every attempt is aborted they answer 503."""
    spec = openapi_document()
    writes = [
        (path, method)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in ("post", "put")
    ]
    assert len(writes) >= 7, writes
    missing = [w for w in writes if "503" not in spec["paths"][w[0]][w[1]]["responses"]]
    assert missing == []
