"""The data of each event type the generic protocol receives (docs/protocol.md), validated."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from harmony.inputs import (
    JSON_INTEGER,
    AnyChannel,
    CallId,
    ExternalId,
    InboundModel,
    JsonObject,
    Name,
    NotReadyReason,
    PeerAgentId,
    RequestId,
    RoutableChannel,
    Sequence,
    Skill,
    Text,
    WrapUpSeconds,
)

# --- inbound event data (docs/protocol.md) ---------------------------------------------------


class InteractionCreatedData(InboundModel):
    external_id: ExternalId
    channel: RoutableChannel
    queue: Name
    priority: Annotated[int, Field(ge=0, le=100), JSON_INTEGER] = 0
    skills: list[Skill] = Field(default_factory=list, max_length=50)
    customer: JsonObject = Field(default_factory=dict)
    subject: Annotated[Text, Field(max_length=1000)] | None = None


class InteractionAcceptedData(InboundModel):
    external_id: ExternalId
    agent_id: PeerAgentId | None = None


class InteractionCompletedData(InboundModel):
    external_id: ExternalId


class InteractionDeclinedData(InboundModel):
    external_id: ExternalId
    agent_id: PeerAgentId | None = None
    reason: Annotated[Text, Field(max_length=200)] | None = None


class InteractionTransferRequestedData(InboundModel):
    external_id: ExternalId
    agent_id: PeerAgentId | None = None
    queue: Name | None = None
    to_agent_id: PeerAgentId | None = None


class InteractionAbandonedData(InboundModel):
    external_id: ExternalId


class InteractionCancelledData(InboundModel):
    external_id: ExternalId


class AgentSelectedData(InboundModel):
    request_id: RequestId
    agent_id: PeerAgentId


class RequestQueuedData(InboundModel):
    request_id: RequestId
    position: Annotated[int, Field(ge=1, le=1_000_000), JSON_INTEGER] | None = None


# --- agent events (docs/protocol.md) ----------------------------------------------------------

StateName = Literal["logged_out", "not_ready", "ready"]


Channels = Annotated[list[AnyChannel], Field(min_length=1, max_length=3)]


class _AgentEvent(InboundModel):
    agent_id: PeerAgentId
    sequence: Sequence | None = None


class AgentLoggedInData(_AgentEvent):
    channels: Channels | None = None
    state: Literal["not_ready", "ready"] = "not_ready"
    reason: NotReadyReason | None = None


class AgentLoggedOutData(_AgentEvent):
    channels: Channels | None = None


class AgentStateChangedData(_AgentEvent):
    channels: Channels | None = None
    state: StateName
    reason: NotReadyReason | None = None
    echo_of: Annotated[Text, Field(max_length=128)] | None = None


class AgentLoginFailedData(_AgentEvent):
    channels: Channels | None = None
    reason: Annotated[Text, Field(max_length=200)] = "refused"


class VoiceStartedData(_AgentEvent):
    call_id: CallId


class VoiceEndedData(_AgentEvent):
    call_id: CallId
    wrap_up_seconds: WrapUpSeconds | None = None


# The data model of each inbound event type (docs/protocol.md).
