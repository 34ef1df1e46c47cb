"""The operator API's request and response bodies; field rules live in ``harmony.inputs``, event
data in ``harmony.adapters.generic_http.data``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harmony.inputs import (
    JSON_INTEGER,
    AdapterName,
    AnyChannel,
    InboundModel,
    Name,
    NotReadyReason,
    PeerAgentId,
    RoutableChannel,
    Skill,
    Text,
    WrapUpSeconds,
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
    Offer,
)
from harmony.routing.ports import Page, QueueStats


class EventAccepted(BaseModel):
    status: Literal["accepted", "duplicate"]
    interaction_id: str


class ErrorBody(BaseModel):
    """Every error Harmony answers; ``request_id`` is set on 5xx answers (also the
    ``x-request-id`` header) so that the log line can be found, ``state`` on an event the
    lifecycle table refuses (docs/lifecycle.md)."""

    error: str = Field(description="a stable code: validation_error, unknown_agent, ...")
    detail: str = Field(description="what is wrong, naming the field")
    request_id: str | None = None
    state: str | None = Field(
        default=None, description="the interaction's current state, when a 409 refuses an event"
    )


# --- operators -------------------------------------------------------------------------------


Seconds = Annotated[int, Field(ge=1, le=30 * 24 * 3600), JSON_INTEGER]


class QueueIn(InboundModel):
    model_config = ConfigDict(extra="forbid")
    channel: RoutableChannel
    skills: list[Skill] = Field(default_factory=list, max_length=50)
    offer_timeout_seconds: Seconds | None = Field(
        default=None,
        description="how long an offer waits for the CRM's answer before it times out "
        "(default: chat 30, email 120)",
    )
    routing_timeout_seconds: Seconds | None = Field(
        default=None,
        description="how long the ACD has to select an agent or queue the request; then it is "
        "placed again once, then the overflow rule applies (default 60)",
    )
    max_wait_seconds: Seconds | None = Field(
        default=None,
        description="the longest an interaction waits in this queue before the overflow rule "
        "applies (default: chat 600, email 86400)",
    )
    max_offers: Annotated[int, Field(ge=1, le=100), JSON_INTEGER] | None = Field(
        default=None,
        description="offers (declined or timed out) before the overflow rule applies (default 5)",
    )
    overflow_queue: Name | None = Field(
        default=None,
        description="the overflow rule: the queue of the same channel work moves to; "
        "absent, the work is handed back to the CRM's own routing",
    )


class ChannelCapacities(InboundModel):
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
    offer_timeout_seconds: int
    routing_timeout_seconds: int
    max_wait_seconds: int
    max_offers: int
    overflow_queue: str | None
    waiting: int
    offered: int
    abandoned_24h: int
    oldest_received_at: datetime | None
    oldest_wait_seconds: float | None

    @classmethod
    def of(cls, stats: QueueStats, now: datetime) -> QueueOut:
        oldest = stats.oldest_received_at
        queue = stats.queue
        policy = queue.policy
        return cls(
            name=queue.name,
            channel=queue.channel.value,
            skills=queue.skills,
            offer_timeout_seconds=policy.offer_timeout_seconds,
            routing_timeout_seconds=policy.routing_timeout_seconds,
            max_wait_seconds=policy.max_wait_seconds,
            max_offers=policy.max_offers,
            overflow_queue=queue.overflow_queue,
            waiting=stats.waiting,
            offered=stats.offered,
            abandoned_24h=stats.abandoned_24h,
            oldest_received_at=oldest,
            oldest_wait_seconds=round((now - oldest).total_seconds(), 3) if oldest else None,
        )


class AgentIn(InboundModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[Text, Field(max_length=200)] = ""
    crm_agent_id: PeerAgentId
    acd_agent_id: PeerAgentId
    crm_adapter: AdapterName | None = Field(
        default=None,
        description="a configured CRM adapter (422 `unknown_adapter`); default: the only one "
        "configured, else `generic`",
    )
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
    pending_state: str | None = Field(
        description="a not ready or log out asked for while the agent held work here: no new "
        "offers on the channel, and it applies when the last work ends"
    )
    pending_reason: str | None

    @staticmethod
    def fields_of(c: ChannelState, now: datetime) -> dict[str, Any]:
        """The fields as plain values, in this model's order (written out rather than through
        ``ChannelState``'s properties: a page of agents builds hundreds of these). Strings, not
        ``StrEnum`` members: pydantic's serialiser writes a page of members four times slower."""
        capacity, load, wrap_up_until = c.capacity, c.load, c.wrap_up_until
        return {
            "state": c.status.value,
            "reason": c.reason,
            "since": c.since,
            "capacity": capacity,
            "load": load,
            "free": capacity - load if capacity > load else 0,
            "over_capacity": load > capacity,
            "wrap_up_until": wrap_up_until,
            "in_wrap_up": wrap_up_until is not None and wrap_up_until > now,
            "pending_state": c.next_status.value if c.next_status else None,
            "pending_reason": c.next_reason,
        }


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

    @staticmethod
    def fields_of(agent: Agent, now: datetime) -> dict[str, Any]:
        """The fields as plain values (channels too), in this model's order: a page of agents
        written from these skips building and validating a model per agent and channel."""
        return {
            "id": agent.id,
            "name": agent.name,
            "crm_adapter": agent.crm_adapter,
            "crm_agent_id": agent.crm_agent_id,
            "acd_agent_id": agent.acd_agent_id,
            "skills": agent.skills,
            "profile": agent.profile,
            "presence": presence(agent.channels.values(), now).value,
            "login_failures": agent.login_failures,
            "channels": {
                channel.value: ChannelOut.fields_of(c, now)
                for channel, c in sorted(agent.channels.items())
            },
        }

    @classmethod
    def of(cls, agent: Agent, now: datetime) -> AgentOut:
        return cls.model_validate(cls.fields_of(agent, now))


class AgentPage(BaseModel):
    items: list[AgentOut]
    next_cursor: str | None

    @staticmethod
    def fields_of(page: Page[Agent], now: datetime) -> dict[str, Any]:
        """The page as plain values, exactly what this model would write (a unit test holds
        the two equal), for ``json_response``."""
        items = [AgentOut.fields_of(agent, now) for agent in page.items]
        return {"items": items, "next_cursor": page.next_cursor}


class AgentStateIn(InboundModel):
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

    @staticmethod
    def fields_of(e: AgentStateEntry) -> dict[str, Any]:
        """The fields as plain values, in this model's order."""
        return {
            "at": e.at,
            "channel": e.channel.value if e.channel else None,
            "source": e.source,
            "source_at": e.source_at,
            "sequence": e.sequence,
            "event": e.event,
            "outcome": e.outcome.value,
            "state": e.status.value if e.status else None,
            "reason": e.reason,
            "load": e.load,
            "capacity": e.capacity,
            "wrap_up_until": e.wrap_up_until,
            "detail": e.detail,
        }

    @classmethod
    def of(cls, e: AgentStateEntry) -> AgentStateEntryOut:
        return cls.model_validate(cls.fields_of(e))


class AgentHistoryPage(BaseModel):
    items: list[AgentStateEntryOut]
    next_cursor: str | None

    @staticmethod
    def fields_of(page: Page[AgentStateEntry]) -> dict[str, Any]:
        """The page as plain values, exactly what this model would write (a unit test holds
        the two equal), for ``json_response``."""
        items = [AgentStateEntryOut.fields_of(entry) for entry in page.items]
        return {"items": items, "next_cursor": page.next_cursor}


class TransferIn(InboundModel):
    """Where a supervisor sends accepted work: a queue, an agent, or an agent in a queue."""

    model_config = ConfigDict(extra="forbid")
    queue: Name | None = Field(default=None, description="the queue to route it in again")
    agent_id: Name | None = Field(
        default=None, description="Harmony's id of the agent to route it to (ready, with room)"
    )


class ProfileIn(InboundModel):
    model_config = ConfigDict(extra="forbid")
    capacity: ChannelCapacities
    wrap_up_seconds: dict[AnyChannel, WrapUpSeconds] = Field(default_factory=dict)
    blocks: dict[AnyChannel, Annotated[list[AnyChannel], Field(max_length=3)]] = Field(
        default_factory=dict,
        description="work on the key channel blocks offers on the listed channels",
    )
    rona_after: Annotated[int, Field(ge=0, le=100), JSON_INTEGER] = Field(
        default=1,
        description="RONA: after this many offers missed in a row on a channel the agent is "
        "made not ready there with reason 'rona', on both sides (0: never)",
    )
    rona_counts_decline: bool = Field(
        default=False, description="whether a declined offer counts as a miss (a timeout does)"
    )
    return_accepted_email: bool = Field(
        default=False,
        description="accepted email goes back to its queue when its agent goes not ready or "
        "logs out on email (accepted chats always stay with the agent)",
    )


class ProfileOut(BaseModel):
    name: str
    capacity: dict[str, int]
    wrap_up_seconds: dict[str, int]
    blocks: dict[str, list[str]]
    rona_after: int
    rona_counts_decline: bool
    return_accepted_email: bool

    @classmethod
    def of(cls, p: Profile) -> ProfileOut:
        return cls(
            name=p.name,
            **p.as_names(),
            rona_after=p.rona_after,
            rona_counts_decline=p.rona_counts_decline,
            return_accepted_email=p.return_accepted_email,
        )


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
    offers_made: int
    overflows: int
    max_wait_at: datetime | None

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
            "offers_made": interaction.offers_made,
            "overflows": interaction.overflows,
            "max_wait_at": interaction.max_wait_at,
        }

    @classmethod
    def of(cls, interaction: Interaction) -> InteractionOut:
        return cls(**cls.fields_of(interaction))


class OfferOut(BaseModel):
    id: str
    agent_id: str
    channel: str
    status: str
    offered_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    reason: str | None

    @classmethod
    def of(cls, offer: Offer) -> OfferOut:
        return cls(
            id=offer.id,
            agent_id=offer.agent_id,
            channel=offer.channel.value,
            status=offer.status.value,
            offered_at=offer.offered_at,
            expires_at=offer.expires_at,
            decided_at=offer.decided_at,
            reason=offer.reason,
        )


class InteractionDetail(InteractionOut):
    offers: list[OfferOut]
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
