"""Request and response bodies. Validation of everything that comes from outside lives here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harmony.inputs import (
    INT64_MAX,
    JSON_INTEGER,
    JsonObject,
    Text,
    unknown_fields_are_json_values,
)
from harmony.routing.agent_state import AgentStateEntry, Profile, presence
from harmony.routing.model import (
    DEFAULT_PROFILE,
    MAX_CAPACITY,
    Agent,
    Channel,
    ChannelState,
    HistoryEntry,
    Interaction,
)
from harmony.routing.ports import QueueStats

NAME_PATTERN = r"^[A-Za-z0-9._:@-]+$"
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)]
Skill = Annotated[Text, Field(min_length=1, max_length=100)]
ExternalId = Annotated[Text, Field(min_length=1, max_length=200)]
PeerAgentId = Annotated[Text, Field(min_length=1, max_length=200)]
RequestId = Annotated[Text, Field(min_length=1, max_length=64)]
CallId = Annotated[Text, Field(min_length=1, max_length=128)]
Sequence = Annotated[
    int, Field(ge=0, le=INT64_MAX, description="the sender's own counter"), JSON_INTEGER
]
WrapUpSeconds = Annotated[int, Field(ge=0, le=3600), JSON_INTEGER]
RoutableChannel = Literal["chat", "email"]
AnyChannel = Literal["voice", "chat", "email"]
# Marks a not-ready reason; the served document lists the configured reasons there (api.openapi).
NOT_READY_REASON_MARK = "x-harmony-not-ready-reason"
NotReadyReason = Annotated[
    Text,
    Field(
        min_length=1,
        max_length=64,
        description="one of the configured not-ready reasons (HARMONY_NOT_READY_REASONS)",
        json_schema_extra={NOT_READY_REASON_MARK: True},
    ),
]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra=unknown_fields_are_json_values)


# --- inbound event data (docs/protocol.md) ---------------------------------------------------


class InteractionCreatedData(_In):
    external_id: ExternalId
    channel: RoutableChannel
    queue: Name
    priority: Annotated[int, Field(ge=0, le=100), JSON_INTEGER] = 0
    skills: list[Skill] = Field(default_factory=list, max_length=50)
    customer: JsonObject = Field(default_factory=dict)
    subject: Annotated[Text, Field(max_length=1000)] | None = None


class InteractionAcceptedData(_In):
    external_id: ExternalId
    agent_id: PeerAgentId | None = None


class InteractionCompletedData(_In):
    external_id: ExternalId


class AgentSelectedData(_In):
    request_id: RequestId
    agent_id: PeerAgentId


class RequestQueuedData(_In):
    request_id: RequestId
    position: Annotated[int, Field(ge=1, le=1_000_000), JSON_INTEGER] | None = None


class EventAccepted(BaseModel):
    status: Literal["accepted", "duplicate"]
    interaction_id: str


class ErrorBody(BaseModel):
    """Every error Harmony answers; ``request_id`` is set on 5xx answers (also the
    ``x-request-id`` header) so that the log line can be found."""

    error: str = Field(description="a stable code: validation_error, unknown_agent, ...")
    detail: str = Field(description="what is wrong, naming the field")
    request_id: str | None = None


# --- operators -------------------------------------------------------------------------------


class QueueIn(_In):
    model_config = ConfigDict(extra="forbid")
    channel: RoutableChannel
    skills: list[Skill] = Field(default_factory=list, max_length=50)


class ChannelCapacities(_In):
    """How many interactions at once, per channel (voice is one call at a time)."""

    model_config = ConfigDict(extra="forbid")
    voice: Annotated[int, Field(ge=0, le=MAX_CAPACITY[Channel.VOICE]), JSON_INTEGER] | None = None
    chat: Annotated[int, Field(ge=0, le=MAX_CAPACITY[Channel.CHAT]), JSON_INTEGER] | None = None
    email: Annotated[int, Field(ge=0, le=MAX_CAPACITY[Channel.EMAIL]), JSON_INTEGER] | None = None

    def given(self) -> dict[str, int]:
        """The channels given, by name."""
        return {name: n for name, n in self.model_dump().items() if n is not None}


class QueueOut(BaseModel):
    name: str
    channel: str
    skills: list[str]
    waiting: int
    oldest_received_at: datetime | None
    oldest_wait_seconds: float | None

    @classmethod
    def of(cls, stats: QueueStats, now: datetime) -> QueueOut:
        oldest = stats.oldest_received_at
        return cls(
            name=stats.queue.name,
            channel=stats.queue.channel.value,
            skills=stats.queue.skills,
            waiting=stats.waiting,
            oldest_received_at=oldest,
            oldest_wait_seconds=round((now - oldest).total_seconds(), 3) if oldest else None,
        )


class AgentIn(_In):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[Text, Field(max_length=200)] = ""
    crm_agent_id: PeerAgentId
    acd_agent_id: PeerAgentId
    crm_adapter: Name = "generic"
    skills: list[Skill] = Field(default_factory=list, max_length=100)
    profile: Name = DEFAULT_PROFILE
    capacity: ChannelCapacities = Field(
        default_factory=ChannelCapacities,
        description="per-channel overrides of the profile's capacity",
    )


class ChannelOut(BaseModel):
    state: str
    reason: str | None
    since: datetime | None
    capacity: int
    load: int
    free: int
    over_capacity: bool = Field(
        description="holding more than capacity: work a peer reported anyway, e.g. a second "
        "call or a direct-dial call on a channel without capacity"
    )
    wrap_up_until: datetime | None
    in_wrap_up: bool

    @classmethod
    def of(cls, c: ChannelState, now: datetime) -> ChannelOut:
        return cls(
            state=c.status.value,
            reason=c.reason,
            since=c.since,
            capacity=c.capacity,
            load=c.load,
            free=c.free,
            over_capacity=c.over_capacity,
            wrap_up_until=c.wrap_up_until,
            in_wrap_up=c.in_wrap_up(now),
        )


class AgentOut(BaseModel):
    id: str
    name: str
    crm_adapter: str
    crm_agent_id: str
    acd_agent_id: str
    skills: list[str]
    profile: str
    presence: str
    login_failures: int
    channels: dict[str, ChannelOut]

    @classmethod
    def of(cls, agent: Agent, now: datetime) -> AgentOut:
        return cls(
            id=agent.id,
            name=agent.name,
            crm_adapter=agent.crm_adapter,
            crm_agent_id=agent.crm_agent_id,
            acd_agent_id=agent.acd_agent_id,
            skills=agent.skills,
            profile=agent.profile,
            presence=presence(agent.channels.values(), now).value,
            login_failures=agent.login_failures,
            channels={
                channel.value: ChannelOut.of(c, now)
                for channel, c in sorted(agent.channels.items())
            },
        )


class AgentPage(BaseModel):
    items: list[AgentOut]
    next_cursor: str | None


class AgentStateIn(_In):
    """A supervisor's override of one channel's state."""

    model_config = ConfigDict(extra="forbid")
    channel: AnyChannel
    state: Literal["logged_out", "not_ready", "ready"]
    reason: NotReadyReason | None = None


class AgentStateEntryOut(BaseModel):
    at: datetime
    channel: str | None
    source: str
    source_at: datetime | None
    sequence: int | None
    event: str
    outcome: str
    state: str | None
    reason: str | None
    load: int | None
    capacity: int | None
    wrap_up_until: datetime | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, e: AgentStateEntry) -> AgentStateEntryOut:
        return cls(
            at=e.at,
            channel=e.channel.value if e.channel else None,
            source=e.source,
            source_at=e.source_at,
            sequence=e.sequence,
            event=e.event,
            outcome=e.outcome.value,
            state=e.status.value if e.status else None,
            reason=e.reason,
            load=e.load,
            capacity=e.capacity,
            wrap_up_until=e.wrap_up_until,
            detail=e.detail,
        )


class AgentHistoryPage(BaseModel):
    items: list[AgentStateEntryOut]
    next_cursor: str | None


class ProfileIn(_In):
    model_config = ConfigDict(extra="forbid")
    capacity: ChannelCapacities
    wrap_up_seconds: dict[AnyChannel, WrapUpSeconds] = Field(default_factory=dict)
    blocks: dict[AnyChannel, Annotated[list[AnyChannel], Field(max_length=3)]] = Field(
        default_factory=dict,
        description="work on the key channel blocks offers on the listed channels",
    )


class ProfileOut(BaseModel):
    name: str
    capacity: dict[str, int]
    wrap_up_seconds: dict[str, int]
    blocks: dict[str, list[str]]

    @classmethod
    def of(cls, p: Profile) -> ProfileOut:
        return cls(name=p.name, **p.as_names())


# --- agent events (docs/protocol.md) ----------------------------------------------------------

StateName = Literal["logged_out", "not_ready", "ready"]


Channels = Annotated[list[AnyChannel], Field(min_length=1, max_length=3)]


class _AgentEvent(_In):
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
EVENT_DATA: dict[str, type[_In]] = {
    "interaction.created": InteractionCreatedData,
    "interaction.accepted": InteractionAcceptedData,
    "interaction.completed": InteractionCompletedData,
    "agent.logged_in": AgentLoggedInData,
    "agent.logged_out": AgentLoggedOutData,
    "agent.state_changed": AgentStateChangedData,
    "agent.selected": AgentSelectedData,
    "request.queued": RequestQueuedData,
    "agent.login_failed": AgentLoginFailedData,
    "voice.started": VoiceStartedData,
    "voice.ended": VoiceEndedData,
}


class AgentEventAccepted(BaseModel):
    status: Literal["applied", "unchanged", "ignored_stale", "echo", "duplicate"]
    agent_id: str
    channels: dict[str, str]


class HistoryOut(BaseModel):
    at: datetime
    event: str
    from_state: str | None
    to_state: str | None
    cause: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: HistoryEntry) -> HistoryOut:
        return cls(
            at=entry.at,
            event=entry.event,
            from_state=entry.from_state.value if entry.from_state else None,
            to_state=entry.to_state.value if entry.to_state else None,
            cause=entry.cause,
            detail=entry.detail,
        )


class InteractionOut(BaseModel):
    id: str
    crm_adapter: str
    external_id: str
    channel: str
    queue: str
    priority: int
    skills: list[str]
    customer: dict[str, Any]
    subject: str | None
    state: str
    acd_adapter: str
    request_id: str | None
    agent_id: str | None
    received_at: datetime
    updated_at: datetime
    state_times: dict[str, datetime]

    @classmethod
    def fields_of(cls, interaction: Interaction) -> dict[str, Any]:
        return {
            "id": interaction.id,
            "crm_adapter": interaction.crm_adapter,
            "external_id": interaction.external_id,
            "channel": interaction.channel.value,
            "queue": interaction.queue,
            "priority": interaction.priority,
            "skills": interaction.skills,
            "customer": interaction.customer,
            "subject": interaction.subject,
            "state": interaction.state.value,
            "acd_adapter": interaction.acd_adapter,
            "request_id": interaction.request_id,
            "agent_id": interaction.agent_id,
            "received_at": interaction.received_at,
            "updated_at": interaction.updated_at,
            "state_times": {s.value: t for s, t in interaction.state_times.items()},
        }

    @classmethod
    def of(cls, interaction: Interaction) -> InteractionOut:
        return cls(**cls.fields_of(interaction))


class InteractionDetail(InteractionOut):
    history: list[HistoryOut]


class InteractionPage(BaseModel):
    items: list[InteractionOut]
    next_cursor: str | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    database: str
    outbox_pending: int
