"""Reading the generic protocol's inbound events: one table per side from event type to the
schema of its ``data`` and the command it becomes (docs/protocol.md).

Adding an event type is one row here (and, for a new use case, a command and a row in
``harmony.routing.commands.COMMAND_HANDLERS``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from harmony.adapters.generic_http.data import (
    AgentLoggedInData,
    AgentLoggedOutData,
    AgentLoginFailedData,
    AgentSelectedData,
    AgentStateChangedData,
    InteractionAbandonedData,
    InteractionAcceptedData,
    InteractionCancelledData,
    InteractionCompletedData,
    InteractionCreatedData,
    InteractionDeclinedData,
    InteractionTransferRequestedData,
    RequestQueuedData,
    VoiceEndedData,
    VoiceStartedData,
)
from harmony.adapters.generic_http.protocol import (
    AGENT_LOGGED_IN,
    AGENT_LOGGED_OUT,
    AGENT_LOGIN_FAILED,
    AGENT_SELECTED,
    AGENT_STATE_CHANGED,
    INTERACTION_ABANDONED,
    INTERACTION_ACCEPTED,
    INTERACTION_CANCELLED,
    INTERACTION_COMPLETED,
    INTERACTION_CREATED,
    INTERACTION_DECLINED,
    INTERACTION_TRANSFER_REQUESTED,
    REQUEST_QUEUED,
    VOICE_ENDED,
    VOICE_STARTED,
    Envelope,
)
from harmony.errors import ValidationFailed
from harmony.inputs import describe_pydantic_errors, parse_json
from harmony.routing.agents import Reporter, StateReport
from harmony.routing.commands import (
    AbandonInteraction,
    AcceptInteraction,
    Command,
    CompleteInteraction,
    CreateInteraction,
    DeclineInteraction,
    InboundEvent,
    LoginFailed,
    QueueRequest,
    ReportAgentState,
    SelectAgent,
    TransferInteraction,
    VoiceEnded,
    VoiceStarted,
)
from harmony.routing.model import Channel, ChannelStatus


@dataclass(frozen=True)
class EventType:
    """How one event type is read: the schema of its ``data`` and the command it becomes.

    ``to_command`` gets the validated data, the envelope and who sent it.
    """

    data: type[BaseModel]
    to_command: Callable[[Any, Envelope, Reporter], Command]


def _channels(names: Sequence[str] | None) -> tuple[Channel, ...] | None:
    return tuple(Channel(n) for n in dict.fromkeys(names)) if names else None


def _created(d: InteractionCreatedData, e: Envelope, by: Reporter) -> Command:
    return CreateInteraction(
        crm_adapter=by.name,
        event_id=e.id,
        external_id=d.external_id,
        channel=Channel(d.channel),
        queue=d.queue,
        priority=d.priority,
        skills=tuple(d.skills),
        customer=d.customer,
        subject=d.subject,
    )


def _accepted(d: InteractionAcceptedData, e: Envelope, by: Reporter) -> Command:
    return AcceptInteraction(
        crm_adapter=by.name, event_id=e.id, external_id=d.external_id, crm_agent_id=d.agent_id
    )


def _completed(d: InteractionCompletedData, e: Envelope, by: Reporter) -> Command:
    return CompleteInteraction(crm_adapter=by.name, event_id=e.id, external_id=d.external_id)


def _declined(d: InteractionDeclinedData, e: Envelope, by: Reporter) -> Command:
    return DeclineInteraction(
        crm_adapter=by.name,
        event_id=e.id,
        external_id=d.external_id,
        crm_agent_id=d.agent_id,
        reason=d.reason,
    )


def _transfer_requested(d: InteractionTransferRequestedData, e: Envelope, by: Reporter) -> Command:
    return TransferInteraction(
        crm_adapter=by.name,
        event_id=e.id,
        external_id=d.external_id,
        crm_agent_id=d.agent_id,
        queue=d.queue,
        to_crm_agent_id=d.to_agent_id,
    )


def _abandoned(d: InteractionAbandonedData, e: Envelope, by: Reporter) -> Command:
    return AbandonInteraction(crm_adapter=by.name, event_id=e.id, external_id=d.external_id)


def _cancelled(d: InteractionCancelledData, e: Envelope, by: Reporter) -> Command:
    return AbandonInteraction(
        crm_adapter=by.name, event_id=e.id, external_id=d.external_id, cancelled=True
    )


def _state(e: Envelope, by: Reporter, d: Any, status: str, **report: Any) -> Command:
    return ReportAgentState(
        reporter=by,
        event_id=e.id,
        agent_ref=d.agent_id,
        report=StateReport(
            event=e.type,
            status=ChannelStatus(status),
            channels=_channels(d.channels),
            occurred_at=e.occurred_at,
            sequence=d.sequence,
            **report,
        ),
    )


def _logged_in(d: AgentLoggedInData, e: Envelope, by: Reporter) -> Command:
    return _state(e, by, d, d.state, reason=d.reason)


def _logged_out(d: AgentLoggedOutData, e: Envelope, by: Reporter) -> Command:
    return _state(e, by, d, ChannelStatus.LOGGED_OUT.value)


def _state_changed(d: AgentStateChangedData, e: Envelope, by: Reporter) -> Command:
    return _state(e, by, d, d.state, reason=d.reason, echo_of=d.echo_of)


def _selected(d: AgentSelectedData, e: Envelope, by: Reporter) -> Command:
    return SelectAgent(
        acd_adapter=by.name, event_id=e.id, request_id=d.request_id, acd_agent_id=d.agent_id
    )


def _queued(d: RequestQueuedData, e: Envelope, by: Reporter) -> Command:
    return QueueRequest(
        acd_adapter=by.name, event_id=e.id, request_id=d.request_id, position=d.position
    )


def _login_failed(d: AgentLoginFailedData, e: Envelope, by: Reporter) -> Command:
    return LoginFailed(
        acd_adapter=by.name,
        event_id=e.id,
        acd_agent_id=d.agent_id,
        channels=_channels(d.channels),
        reason=d.reason,
        occurred_at=e.occurred_at,
    )


def _voice_started(d: VoiceStartedData, e: Envelope, by: Reporter) -> Command:
    return VoiceStarted(
        acd_adapter=by.name,
        event_id=e.id,
        acd_agent_id=d.agent_id,
        call_id=d.call_id,
        occurred_at=e.occurred_at,
    )


def _voice_ended(d: VoiceEndedData, e: Envelope, by: Reporter) -> Command:
    return VoiceEnded(
        acd_adapter=by.name,
        event_id=e.id,
        acd_agent_id=d.agent_id,
        call_id=d.call_id,
        occurred_at=e.occurred_at,
        wrap_up_seconds=d.wrap_up_seconds,
    )


LOGGED_OUT = EventType(AgentLoggedOutData, _logged_out)
STATE_CHANGED = EventType(AgentStateChangedData, _state_changed)

# What a CRM may send (the media bar reports logins and readiness too).
CRM_EVENTS: Mapping[str, EventType] = {
    INTERACTION_CREATED: EventType(InteractionCreatedData, _created),
    INTERACTION_ACCEPTED: EventType(InteractionAcceptedData, _accepted),
    INTERACTION_COMPLETED: EventType(InteractionCompletedData, _completed),
    INTERACTION_DECLINED: EventType(InteractionDeclinedData, _declined),
    INTERACTION_ABANDONED: EventType(InteractionAbandonedData, _abandoned),
    INTERACTION_CANCELLED: EventType(InteractionCancelledData, _cancelled),
    INTERACTION_TRANSFER_REQUESTED: EventType(
        InteractionTransferRequestedData, _transfer_requested
    ),
    AGENT_LOGGED_IN: EventType(AgentLoggedInData, _logged_in),
    AGENT_LOGGED_OUT: LOGGED_OUT,
    AGENT_STATE_CHANGED: STATE_CHANGED,
}

# What an ACD may send (it can log an agent out or change readiness, but not log one in).
ACD_EVENTS: Mapping[str, EventType] = {
    AGENT_SELECTED: EventType(AgentSelectedData, _selected),
    REQUEST_QUEUED: EventType(RequestQueuedData, _queued),
    AGENT_LOGGED_OUT: LOGGED_OUT,
    AGENT_STATE_CHANGED: STATE_CHANGED,
    AGENT_LOGIN_FAILED: EventType(AgentLoginFailedData, _login_failed),
    VOICE_STARTED: EventType(VoiceStartedData, _voice_started),
    VOICE_ENDED: EventType(VoiceEndedData, _voice_ended),
}


def read_event(
    payload: str, events: Mapping[str, EventType], sender: Reporter, webhook_id: str | None
) -> InboundEvent:
    """Validate an envelope and its ``data`` against ``events``; ``webhook_id`` is the header
    the envelope id must equal (None when re-reading a stored event, already checked)."""
    try:
        envelope = Envelope.model_validate(parse_json(payload.encode()))
    except ValidationError as exc:
        raise ValidationFailed(describe_pydantic_errors(list(exc.errors()), "")) from exc
    if webhook_id is not None and envelope.id != webhook_id:
        raise ValidationFailed("id: must equal the webhook-id header")
    event_type = events.get(envelope.type)
    if event_type is None:
        raise ValidationFailed(
            f"type: unknown event type '{envelope.type}' (expected one of {list(events)})"
        )
    try:
        data = event_type.data.model_validate(envelope.data)
    except ValidationError as exc:
        raise ValidationFailed(describe_pydantic_errors(list(exc.errors()), "data")) from exc
    return InboundEvent(
        source=sender.source,
        event_id=envelope.id,
        type=envelope.type,
        occurred_at=envelope.occurred_at,
        payload=payload,
        command=event_type.to_command(data, envelope, sender),
    )


# The data model of each inbound event type, for the OpenAPI document.
EVENT_DATA: Mapping[str, type[BaseModel]] = {
    event_type: kind.data for event_type, kind in {**CRM_EVENTS, **ACD_EVENTS}.items()
}
