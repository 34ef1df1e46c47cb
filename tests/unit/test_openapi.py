"""openapi/openapi.json is the app's document, byte for byte as `harmony openapi` writes it."""

from __future__ import annotations

import json
from pathlib import Path

from harmony.cli import openapi_document

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
    assert body["properties"]["type"]["enum"] == [
        "interaction.created",
        "interaction.accepted",
        "interaction.completed",
        "agent.logged_in",
        "agent.logged_out",
        "agent.state_changed",
    ]
