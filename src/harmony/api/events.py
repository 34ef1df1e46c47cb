"""Inbound webhooks and callbacks: ``/v1/crm/{adapter}/events`` and ``/v1/acd/{adapter}/events``.

Order of checks: adapter exists (404), content type (415), UTF-8 (400), signature (401), strict
JSON (400), envelope and data (422); only then does a use case run. A refused event changes
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, TypeVar

import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError

from harmony.adapters.base import SignatureError
from harmony.adapters.generic_http.protocol import (
    AGENT_LOGGED_IN,
    AGENT_LOGGED_OUT,
    AGENT_LOGIN_FAILED,
    AGENT_SELECTED,
    AGENT_STATE_CHANGED,
    INTERACTION_ACCEPTED,
    INTERACTION_COMPLETED,
    INTERACTION_CREATED,
    REQUEST_QUEUED,
    VOICE_ENDED,
    VOICE_STARTED,
    Envelope,
)
from harmony.api.deps import Container, container
from harmony.api.openapi import event_request
from harmony.api.plumbing import describe_pydantic_errors, errors, parse_json
from harmony.api.schemas import (
    AgentEventAccepted,
    AgentLoggedInData,
    AgentLoggedOutData,
    AgentLoginFailedData,
    AgentSelectedData,
    AgentStateChangedData,
    EventAccepted,
    InteractionAcceptedData,
    InteractionCompletedData,
    InteractionCreatedData,
    RequestQueuedData,
    VoiceEndedData,
    VoiceStartedData,
)
from harmony.errors import HarmonyError, Unauthorized, ValidationFailed
from harmony.inputs import require_utf8
from harmony.routing import agents, interactions
from harmony.routing.messages import TargetKind
from harmony.routing.model import Channel, ChannelStatus

router = APIRouter(tags=["events"])
log = structlog.get_logger("harmony.events")
Model = TypeVar("Model", bound=BaseModel)

ERRORS = errors(400, 401, 404, 409, 413, 415, 422)


class UnsupportedMediaType(HarmonyError):
    status_code = 415
    code = "unsupported_media_type"


async def _verified_envelope(
    request: Request, kind: TargetKind, adapter_name: str, wired: Container
) -> Envelope:
    adapter = wired.registry.get(kind, adapter_name)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"content-type must be application/json, not '{content_type}'")
    body = await request.body()
    # Signatures are computed over text: bytes that are not UTF-8 cannot be checked, only refused.
    require_utf8(body)
    try:
        adapter.verify_inbound(body, dict(request.headers))
    except SignatureError as exc:
        log.warning("signature_rejected", adapter=f"{kind.value}:{adapter_name}", reason=str(exc))
        raise Unauthorized(f"signature check failed: {exc}") from exc
    raw = parse_json(body)
    try:
        event = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(describe_pydantic_errors(list(exc.errors()), "")) from exc
    if event.id != request.headers.get("webhook-id"):
        raise ValidationFailed("id: must equal the webhook-id header")
    return event


def _data(event: Envelope, model: type[Model]) -> Model:
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise ValidationFailed(describe_pydantic_errors(list(exc.errors()), "data")) from exc


def _unknown_type(event: Envelope, allowed: list[str]) -> ValidationFailed:
    return ValidationFailed(f"type: unknown event type '{event.type}' (expected one of {allowed})")


def _answer(outcome: interactions.Outcome) -> EventAccepted:
    structlog.contextvars.bind_contextvars(interaction_id=outcome.interaction_id)
    return EventAccepted(
        status="duplicate" if outcome.duplicate else "accepted",
        interaction_id=outcome.interaction_id,
    )


AGENT_STATE_TYPES = (AGENT_LOGGED_IN, AGENT_LOGGED_OUT, AGENT_STATE_CHANGED)
CRM_TYPES = [INTERACTION_CREATED, INTERACTION_ACCEPTED, INTERACTION_COMPLETED, *AGENT_STATE_TYPES]
ACD_TYPES = [
    AGENT_SELECTED,
    REQUEST_QUEUED,
    AGENT_LOGGED_OUT,
    AGENT_STATE_CHANGED,
    AGENT_LOGIN_FAILED,
    VOICE_STARTED,
    VOICE_ENDED,
]


def _channels(names: Sequence[str] | None) -> tuple[Channel, ...] | None:
    return tuple(Channel(n) for n in dict.fromkeys(names)) if names else None


def _agent_answer(outcome: agents.AgentOutcome) -> AgentEventAccepted:
    return AgentEventAccepted(
        status=outcome.summary,  # type: ignore[arg-type]
        agent_id=outcome.agent_id,
        channels={c.value: o.value for c, o in outcome.outcomes.items()},
    )


async def _agent_state_event(
    wired: Container, kind: TargetKind, adapter: str, event: Envelope
) -> AgentEventAccepted:
    """Login, logout and readiness changes, from the CRM's media bar or from the ACD."""
    if event.type == AGENT_LOGGED_IN:
        login = _data(event, AgentLoggedInData)
        agent_ref, sequence, channels = login.agent_id, login.sequence, login.channels
        status, reason, echo_of = ChannelStatus(login.state), login.reason, None
    elif event.type == AGENT_LOGGED_OUT:
        logout = _data(event, AgentLoggedOutData)
        agent_ref, sequence, channels = logout.agent_id, logout.sequence, logout.channels
        status, reason, echo_of = ChannelStatus.LOGGED_OUT, None, None
    else:
        changed = _data(event, AgentStateChangedData)
        agent_ref, sequence, channels = changed.agent_id, changed.sequence, changed.channels
        status, reason, echo_of = ChannelStatus(changed.state), changed.reason, changed.echo_of
    outcome = await agents.report_state(
        wired.db.uow(),
        wired.clock,
        reporter=agents.Reporter(kind, adapter),
        event_id=event.id,
        agent_ref=agent_ref,
        report=agents.StateReport(
            event=event.type,
            status=status,
            reason=reason,
            channels=_channels(channels),
            occurred_at=event.occurred_at,
            sequence=sequence,
            echo_of=echo_of,
        ),
        reasons=wired.settings.not_ready_reasons,
        acd_adapter=wired.settings.routing_acd,
    )
    return _agent_answer(outcome)


@router.post(
    "/v1/crm/{adapter}/events",
    status_code=202,
    response_model=EventAccepted | AgentEventAccepted,
    responses=ERRORS,
    openapi_extra=event_request(CRM_TYPES),
    summary="Receive a CRM event (interaction created / accepted / completed)",
)
async def crm_event(
    adapter: str, request: Request, wired: Annotated[Container, Depends(container)]
) -> EventAccepted | AgentEventAccepted:
    event = await _verified_envelope(request, TargetKind.CRM, adapter, wired)
    uow, clock = wired.db.uow(), wired.clock
    if event.type == INTERACTION_CREATED:
        created = _data(event, InteractionCreatedData)
        outcome = await interactions.receive_interaction(
            uow,
            clock,
            crm_adapter=adapter,
            acd_adapter=wired.settings.routing_acd,
            event_id=event.id,
            new=interactions.NewInteraction(
                external_id=created.external_id,
                channel=Channel(created.channel),
                queue=created.queue,
                priority=created.priority,
                skills=created.skills,
                customer=created.customer,
                subject=created.subject,
            ),
        )
    elif event.type == INTERACTION_ACCEPTED:
        accepted = _data(event, InteractionAcceptedData)
        outcome = await interactions.accept_interaction(
            uow,
            clock,
            crm_adapter=adapter,
            event_id=event.id,
            external_id=accepted.external_id,
            crm_agent_id=accepted.agent_id,
        )
    elif event.type == INTERACTION_COMPLETED:
        completed = _data(event, InteractionCompletedData)
        outcome = await interactions.complete_interaction(
            uow, clock, crm_adapter=adapter, event_id=event.id, external_id=completed.external_id
        )
    elif event.type in AGENT_STATE_TYPES:
        return await _agent_state_event(wired, TargetKind.CRM, adapter, event)
    else:
        raise _unknown_type(event, CRM_TYPES)
    return _answer(outcome)


@router.post(
    "/v1/acd/{adapter}/events",
    status_code=202,
    response_model=EventAccepted | AgentEventAccepted,
    responses=ERRORS,
    openapi_extra=event_request(ACD_TYPES),
    summary="Receive an ACD callback (agent selected / request queued)",
)
async def acd_event(
    adapter: str, request: Request, wired: Annotated[Container, Depends(container)]
) -> EventAccepted | AgentEventAccepted:
    event = await _verified_envelope(request, TargetKind.ACD, adapter, wired)
    uow, clock = wired.db.uow(), wired.clock
    if event.type == AGENT_SELECTED:
        selected = _data(event, AgentSelectedData)
        outcome = await interactions.select_agent(
            uow,
            clock,
            acd_adapter=adapter,
            event_id=event.id,
            request_id=selected.request_id,
            acd_agent_id=selected.agent_id,
        )
    elif event.type in AGENT_STATE_TYPES and event.type != AGENT_LOGGED_IN:
        return await _agent_state_event(wired, TargetKind.ACD, adapter, event)
    elif event.type == AGENT_LOGIN_FAILED:
        failed = _data(event, AgentLoginFailedData)
        agent_outcome = await agents.login_failed(
            uow,
            clock,
            acd_adapter=adapter,
            event_id=event.id,
            acd_agent_id=failed.agent_id,
            channels=_channels(failed.channels),
            reason=failed.reason,
            occurred_at=event.occurred_at,
        )
        return _agent_answer(agent_outcome)
    elif event.type == VOICE_STARTED:
        started = _data(event, VoiceStartedData)
        agent_outcome = await agents.voice_started(
            uow,
            clock,
            acd_adapter=adapter,
            event_id=event.id,
            acd_agent_id=started.agent_id,
            call_id=started.call_id,
            occurred_at=event.occurred_at,
        )
        return _agent_answer(agent_outcome)
    elif event.type == VOICE_ENDED:
        ended = _data(event, VoiceEndedData)
        agent_outcome = await agents.voice_ended(
            uow,
            clock,
            acd_adapter=adapter,
            event_id=event.id,
            acd_agent_id=ended.agent_id,
            call_id=ended.call_id,
            occurred_at=event.occurred_at,
            wrap_up_seconds=ended.wrap_up_seconds,
        )
        return _agent_answer(agent_outcome)
    elif event.type == REQUEST_QUEUED:
        queued = _data(event, RequestQueuedData)
        outcome = await interactions.queue_request(
            uow,
            clock,
            acd_adapter=adapter,
            event_id=event.id,
            request_id=queued.request_id,
            position=queued.position,
        )
    else:
        raise _unknown_type(event, ACD_TYPES)
    return _answer(outcome)
