"""The OpenAPI document, exact: what FastAPI generates plus what it cannot know.

The event routes read their body themselves (the signature is checked over the raw bytes before
any parsing), so FastAPI sees no body model there: this module describes the body as a union of
one envelope per event type, discriminated on ``type``, and the Standard Webhooks headers. It
lists the configured not-ready reasons and adapter names, and drops FastAPI's default
validation-error schema, since every 422 answers the app's ``{"error", "detail"}`` body.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import models_json_schema

from harmony.adapters.generic_http.inbound import EVENT_DATA
from harmony.adapters.generic_http.protocol import EVENT_ID_PATTERN, Envelope
from harmony.inputs import JSON_VALUE_SCHEMA, NOT_READY_REASON_MARK

__all__ = ["event_request", "install_openapi"]

REF = "#/components/schemas/{model}"
SIGNATURE_HEADERS: list[dict[str, Any]] = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "Standard Webhooks message id: must equal the envelope `id`",
        "schema": {"type": "string", "pattern": EVENT_ID_PATTERN, "not": {"enum": [".", ".."]}},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "Unix seconds when signed; more than 5 minutes from now is refused (401)",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": 'space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` '
        "with the adapter's secret (401 when none matches)",
        "schema": {"type": "string", "pattern": "^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$"},
    },
]


def _envelope_name(event_type: str) -> str:
    return "".join(part.title() for part in re.split(r"[._]", event_type)) + "Event"


def _envelope_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for event_type, data_model in EVENT_DATA.items():
        models[event_type] = create_model(
            _envelope_name(event_type),
            __base__=Envelope,
            __doc__=f"A signed `{event_type}` event (docs/protocol.md).",
            type=(Literal[event_type], Field()),  # type: ignore[arg-type]
            data=(data_model, Field()),
        )
    return models


ENVELOPES = _envelope_models()


def event_request(types: list[str]) -> dict[str, Any]:
    """``openapi_extra`` for an event route taking ``types``: headers and the body union."""
    mapping = {t: REF.format(model=ENVELOPES[t].__name__) for t in types}
    return {
        "parameters": SIGNATURE_HEADERS,
        "requestBody": {
            "required": True,
            "description": "A signed event envelope (docs/protocol.md); UTF-8 JSON, at most "
            "256 KiB, `content-type: application/json`.",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [{"$ref": ref} for ref in mapping.values()],
                        "discriminator": {"propertyName": "type", "mapping": mapping},
                    }
                }
            },
        },
    }


def _walk(node: Any, reasons: list[str]) -> None:
    if isinstance(node, dict):
        if node.pop(NOT_READY_REASON_MARK, False):
            node["enum"] = reasons
        for child in node.values():
            _walk(child, reasons)
    elif isinstance(node, list):
        for child in node:
            _walk(child, reasons)


def _name_adapters(spec: dict[str, Any], adapters: dict[str, list[str]]) -> None:
    for path, operations in spec["paths"].items():
        kind = path.split("/")[2] if path.endswith("/events") else None
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if kind in adapters and parameter["name"] == "adapter":
                    parameter["schema"]["enum"] = adapters[kind]
                    parameter["description"] = "a configured adapter (404 `unknown_adapter`)"


def install_openapi(
    app: FastAPI, not_ready_reasons: tuple[str, ...], adapters: dict[str, list[str]]
) -> None:
    """Make ``app.openapi()`` return the exact document described in this module's docstring;
    ``adapters`` are the configured adapter names by kind (``crm``, ``acd``)."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        _, defs = models_json_schema(
            [(model, "validation") for model in ENVELOPES.values()], ref_template=REF
        )
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        schemas["JsonValue"] = JSON_VALUE_SCHEMA
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _walk(spec, list(not_ready_reasons))
        _name_adapters(spec, adapters)
        app.openapi_schema = spec
        return spec

    app.openapi = document  # type: ignore[method-assign]
