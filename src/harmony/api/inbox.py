"""What operators see of incoming events: ``GET /v1/inbox/{source}/{event_id}`` shows one as
received and how its handling went; ``POST .../redrive`` applies again one that failed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from harmony.adapters.generic_http.protocol import EVENT_ID_PATTERN
from harmony.api.deps import Container, container
from harmony.api.events import answer
from harmony.api.plumbing import errors
from harmony.api.schemas import AgentEventAccepted, EventAccepted
from harmony.errors import NotFound
from harmony.routing import commands
from harmony.routing.commands import InboundEvent
from harmony.routing.messages import TargetKind
from harmony.routing.ports import InboxEntry

router = APIRouter(tags=["inbox"])
Wired = Annotated[Container, Depends(container)]
# No control characters: a NUL cannot reach PostgreSQL as part of a key.
SourcePath = Annotated[
    str,
    Path(
        min_length=5,
        max_length=80,
        pattern=r"^(crm|acd):[^\x00-\x1f]+$",
        description="who sent the event: `crm:<adapter>` or `acd:<adapter>`",
        examples=["crm:generic"],
    ),
]
EventIdPath = Annotated[
    str,
    Path(pattern=EVENT_ID_PATTERN, description="the envelope id"),
]


class InboxEventOut(BaseModel):
    """One incoming event as stored: ``payload`` is the body exactly as verified (null for
    events stored before payloads were kept); ``error`` says why a failed one was refused."""

    source: str
    event_id: str
    type: str
    received_at: datetime
    status: Literal["pending", "applied", "failed"]
    handled_at: datetime | None
    error: str | None
    interaction_id: str | None
    payload: str | None

    @classmethod
    def of(cls, entry: InboxEntry) -> InboxEventOut:
        return cls(
            source=entry.source,
            event_id=entry.event_id,
            type=entry.event_type,
            received_at=entry.received_at,
            status=entry.status.value,
            handled_at=entry.handled_at,
            error=entry.error,
            interaction_id=entry.interaction_id,
            payload=entry.payload,
        )


@router.get(
    "/v1/inbox/{source}/{event_id}", response_model=InboxEventOut, responses=errors(404, 422)
)
async def get_inbox_event(source: SourcePath, event_id: EventIdPath, wired: Wired) -> InboxEventOut:
    """One received event, its payload and how its handling went."""
    async with wired.db.reader() as uow:
        entry = await uow.inbox.get(source, event_id)
    if entry is None:
        raise NotFound(f"no event '{event_id}' from {source} in the inbox", code="unknown_event")
    return InboxEventOut.of(entry)


@router.post(
    "/v1/inbox/{source}/{event_id}/redrive",
    response_model=EventAccepted | AgentEventAccepted,
    responses=errors(400, 404, 409, 422, 503),
)
async def redrive_inbox_event(
    source: SourcePath, event_id: EventIdPath, wired: Wired
) -> EventAccepted | AgentEventAccepted:
    """Apply again an event whose application failed, once its cause is fixed (a queue or an
    agent created since); answers what the sender would have got. 409 ``already_applied``
    for an event that took effect."""

    def parse(payload: str) -> InboundEvent:
        kind, _, name = source.partition(":")
        return wired.registry.get(TargetKind(kind), name).parse_stored(payload)

    result = await commands.redrive(
        source, event_id, parse, wired.db.uow, wired.clock, wired.policy
    )
    return answer(result)
