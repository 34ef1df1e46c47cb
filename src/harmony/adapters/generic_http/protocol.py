"""The generic JSON-over-HTTP protocol (docs/protocol.md): envelope, event types, signed posting.

Shared by the generic adapters, the API and the simulators so that every side builds and reads
the same envelope.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from harmony.adapters.generic_http.signing import Signer
from harmony.adapters.http_client import OutboundClient
from harmony.inputs import PeerTime, Text, unknown_fields_are_json_values
from harmony.routing.ids import random_hex
from harmony.routing.messages import (
    AGENT_CAPACITY,
    AGENT_STATE,
    INTERACTION_DELIVER,
    INTERACTION_FALLBACK,
    OFFER_DECLINED,
    OFFER_RESCINDED,
    OFFER_TIMED_OUT,
    REQUEST_CANCELLED,
    ROUTING_REQUESTED,
    WORK_ENDED,
)

__all__ = [
    "AGENT_CAPACITY",
    "AGENT_LOGGED_IN",
    "AGENT_LOGGED_OUT",
    "AGENT_LOGIN_FAILED",
    "AGENT_SELECTED",
    "AGENT_STATE",
    "AGENT_STATE_CHANGED",
    "INTERACTION_ABANDONED",
    "INTERACTION_ACCEPTED",
    "INTERACTION_CANCELLED",
    "INTERACTION_COMPLETED",
    "INTERACTION_CREATED",
    "INTERACTION_DECLINED",
    "INTERACTION_DELIVER",
    "INTERACTION_FALLBACK",
    "INTERACTION_TRANSFER_REQUESTED",
    "MAX_BODY_BYTES",
    "OFFER_DECLINED",
    "OFFER_RESCINDED",
    "OFFER_TIMED_OUT",
    "REQUEST_CANCELLED",
    "REQUEST_QUEUED",
    "ROUTING_REQUESTED",
    "VOICE_ENDED",
    "VOICE_STARTED",
    "WORK_ENDED",
    "Envelope",
    "encode",
    "envelope",
    "new_event_id",
    "post_event",
]

MAX_BODY_BYTES = 256 * 1024

# CRM -> Harmony
INTERACTION_CREATED = "interaction.created"
INTERACTION_ACCEPTED = "interaction.accepted"
INTERACTION_COMPLETED = "interaction.completed"
INTERACTION_DECLINED = "interaction.declined"
INTERACTION_ABANDONED = "interaction.abandoned"  # the customer left
INTERACTION_CANCELLED = "interaction.cancelled"  # the CRM withdrew the work
INTERACTION_TRANSFER_REQUESTED = "interaction.transfer_requested"
# CRM (media bar) -> Harmony; the ACD may send the last two as well
AGENT_LOGGED_IN = "agent.logged_in"
AGENT_LOGGED_OUT = "agent.logged_out"
AGENT_STATE_CHANGED = "agent.state_changed"
# ACD -> Harmony
AGENT_SELECTED = "agent.selected"
REQUEST_QUEUED = "request.queued"
AGENT_LOGIN_FAILED = "agent.login_failed"
VOICE_STARTED = "voice.started"
VOICE_ENDED = "voice.ended"
# Harmony -> ACD: ROUTING_REQUESTED, WORK_ENDED, AGENT_STATE, AGENT_CAPACITY, OFFER_DECLINED,
#   OFFER_TIMED_OUT, REQUEST_CANCELLED
# Harmony -> CRM: INTERACTION_DELIVER, AGENT_STATE, OFFER_RESCINDED, INTERACTION_FALLBACK


# Visible ASCII without "/": it travels as the webhook-id header and as a path segment of
# /v1/inbox/{source}/{event_id}, where "." and ".." would be normalised away.
EVENT_ID_PATTERN = r"^[!-.0-~]{1,128}$"


def _addressable(event_id: str) -> str:
    if event_id in (".", ".."):
        raise ValueError("must not be '.' or '..'")
    return event_id


EventId = Annotated[str, Field(pattern=EVENT_ID_PATTERN), AfterValidator(_addressable)]


class Envelope(BaseModel):
    """One event as it travels over HTTP."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=unknown_fields_are_json_values)

    id: EventId
    type: Annotated[Text, Field(min_length=1, max_length=64)]
    occurred_at: PeerTime
    data: dict[str, Any]


def new_event_id() -> str:
    """Return a fresh, globally unique event id."""
    return f"evt_{random_hex()}"


def envelope(event_type: str, data: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """Build an envelope dict ready to be serialised."""
    return {
        "id": event_id or new_event_id(),
        "type": event_type,
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": data,
    }


def encode(message: dict[str, Any]) -> bytes:
    """Serialise an envelope the one way every sender does (compact UTF-8 JSON)."""
    return json.dumps(message, separators=(",", ":"), default=str).encode()


async def post_event(
    client: httpx.AsyncClient,
    url: str | httpx.URL,
    signer: Signer,
    message: dict[str, Any],
    timeout: float | None = None,  # noqa: ASYNC109 - httpx request timeout, not a task deadline
) -> httpx.Response:
    """POST one signed envelope; the envelope id doubles as webhook-id and idempotency key.
    Harmony's own client sends it straight onto its transport; any other httpx client (a test's,
    say) through its usual layers."""
    body = encode(message)
    headers = {
        "content-type": "application/json",
        "idempotency-key": message["id"],
        **signer.headers(message["id"], body),
    }
    if isinstance(client, OutboundClient):
        target = url if isinstance(url, httpx.URL) else httpx.URL(url)
        return await client.post_direct(target, body, headers, timeout)
    return await client.post(
        url, content=body, headers=headers, timeout=timeout if timeout else httpx.USE_CLIENT_DEFAULT
    )
