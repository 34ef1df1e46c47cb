"""The routing domain: interactions, agents, queues and the rules that bind them.

No I/O here. Persistence and transport live behind the ports in ``ports.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

from harmony.errors import Conflict, Refused, ValidationFailed
from harmony.routing.lifecycle import (
    Event,
    Move,
    Note,
    Refuse,
    Rule,
    allowed_moves,
    rule_for,
    terminal_states,
)

# The lifecycle table's rows, exported here too with the rest of the model.
from harmony.routing.lifecycle import (
    InteractionState as InteractionState,
)


class Channel(StrEnum):
    VOICE = "voice"
    CHAT = "chat"
    EMAIL = "email"


# Interactions Harmony routes; voice belongs to the ACD but counts toward an agent's state.
ROUTABLE_CHANNELS = frozenset({Channel.CHAT, Channel.EMAIL})


S = InteractionState
# Derived from the lifecycle table (routing/lifecycle.py), the one place the rules are written.
ALLOWED_TRANSITIONS: dict[InteractionState, frozenset[InteractionState]] = allowed_moves()
TERMINAL_STATES = terminal_states()
# States in which the ACD may still answer a routing request with a selection.
AWAITING_SELECTION = frozenset({S.ROUTING, S.QUEUED})
# States in which an interaction waits in its queue for an agent (queue statistics count them).
WAITING_STATES = frozenset({S.RECEIVED, S.ROUTING, S.QUEUED})
# States in which an agent holds a unit of capacity for the interaction.
HOLDS_CAPACITY = frozenset({S.OFFERED, S.DELIVERED, S.ACCEPTED})


@dataclass(frozen=True)
class GuardedMove:
    """A transition for a store to apply where it writes, without reading first: each
    interaction found in ``source`` moves to ``target`` (history event ``event``); one found in
    any other state keeps it and has ``otherwise`` noted. For records that must not wait on a
    read (the relay's acknowledgements), and that are right whichever way a concurrent event
    went: the store decides on the state it holds locked."""

    source: InteractionState
    target: InteractionState
    event: str
    otherwise: str

    def __post_init__(self) -> None:
        if self.target not in ALLOWED_TRANSITIONS[self.source]:
            raise ValueError(f"{self.source} -> {self.target} is not a transition")


@dataclass(frozen=True)
class HistoryEntry:
    """One append-only line of an interaction's history: a state move or a noted event."""

    interaction_id: str
    at: datetime
    event: str
    from_state: InteractionState | None
    to_state: InteractionState | None
    cause: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Interaction:
    """One unit of customer work (a chat or an email) and where it is in its life."""

    id: str
    crm_adapter: str
    external_id: str
    channel: Channel
    queue: str
    priority: int
    skills: list[str]
    customer: dict[str, Any]
    subject: str | None
    acd_adapter: str
    state: InteractionState
    received_at: datetime
    updated_at: datetime
    state_times: dict[InteractionState, datetime] = field(default_factory=dict)
    request_id: str | None = None
    agent_id: str | None = None
    version: int = 0
    offers_made: int = 0
    overflows: int = 0
    # When the current queue's maximum wait runs out (its overflow rule then applies).
    max_wait_at: datetime | None = None
    new_history: list[HistoryEntry] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def receive(
        cls,
        *,
        interaction_id: str,
        crm_adapter: str,
        external_id: str,
        channel: Channel,
        queue: Queue,
        priority: int,
        skills: list[str],
        customer: dict[str, Any],
        subject: str | None,
        acd_adapter: str,
        at: datetime,
        cause: str,
    ) -> Interaction:
        """Create an interaction in ``received``; its required skills include the queue's."""
        if channel not in ROUTABLE_CHANNELS:
            raise ValidationFailed(f"channel '{channel}' is not routed by Harmony (chat or email)")
        if queue.channel != channel:
            raise ValidationFailed(
                f"queue '{queue.name}' takes {queue.channel} interactions, not {channel}",
                code="queue_channel_mismatch",
            )
        required = sorted(set(queue.skills) | set(skills))
        interaction = cls(
            id=interaction_id,
            crm_adapter=crm_adapter,
            external_id=external_id,
            channel=channel,
            queue=queue.name,
            priority=priority,
            skills=required,
            customer=customer,
            subject=subject,
            acd_adapter=acd_adapter,
            state=S.RECEIVED,
            received_at=at,
            updated_at=at,
            state_times={S.RECEIVED: at},
            max_wait_at=at + timedelta(seconds=queue.policy.max_wait_seconds),
        )
        interaction._record("received", None, S.RECEIVED, at, cause, {"queue": queue.name})
        return interaction

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def can_move_to(self, target: InteractionState) -> bool:
        return target in ALLOWED_TRANSITIONS[self.state]

    def move_to(
        self,
        target: InteractionState,
        at: datetime,
        *,
        event: str,
        cause: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Apply one allowed transition and record it; raise Conflict if it is not allowed."""
        if not self.can_move_to(target):
            raise Conflict(
                f"interaction {self.id} is {self.state}; cannot move to {target}",
                code="invalid_transition",
            )
        previous = self.state
        self.state = target
        self.state_times[target] = at
        self.updated_at = at
        self._record(event, previous, target, at, cause, detail or {})

    def apply(
        self,
        event: Event,
        at: datetime,
        *,
        cause: str,
        detail: dict[str, Any] | None = None,
    ) -> Rule:
        """Do what the lifecycle table says ``event`` does here, and return that rule: move
        (recording each step), note (recording the event under the note's name), or raise
        ``Refused`` (nothing recorded) naming the refusal and the current state."""
        rule = rule_for(self.state, event)
        if isinstance(rule, Move):
            for step in (*rule.via, rule.target):
                implied = step != rule.target
                self.move_to(
                    step,
                    at,
                    event=f"{step.value}_implied" if implied else event.value,
                    cause=f"implied by {cause}" if implied else cause,
                    detail=None if implied else detail,
                )
        elif isinstance(rule, Note):
            self.note(rule.name, at, cause, detail or {})
        else:
            raise self._refused(event, rule)
        return rule

    def refuse_unless_allowed(self, event: Event) -> None:
        """Raise ``Refused`` now if the lifecycle table refuses ``event`` here (before work that
        would be wasted on it); ``apply`` does the rest."""
        rule = rule_for(self.state, event)
        if isinstance(rule, Refuse):
            raise self._refused(event, rule)

    def _refused(self, event: Event, rule: Refuse) -> Refused:
        return Refused(
            f"interaction {self.id} is {self.state}: {event.value} refused ({rule.name})",
            code=rule.name,
            state=self.state.value,
        )

    def note(self, event: str, at: datetime, cause: str, detail: dict[str, Any]) -> None:
        """Record something that happened without a state change (e.g. a refused selection)."""
        self._record(event, self.state, self.state, at, cause, detail)

    def _record(
        self,
        event: str,
        from_state: InteractionState | None,
        to_state: InteractionState | None,
        at: datetime,
        cause: str,
        detail: dict[str, Any],
    ) -> None:
        self.new_history.append(
            HistoryEntry(self.id, at, event, from_state, to_state, cause, dict(detail))
        )


class ChannelStatus(StrEnum):
    LOGGED_OUT = "logged_out"
    NOT_READY = "not_ready"
    READY = "ready"


DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class ChannelState:
    """One agent's standing on one channel.

    ``load`` counts all the work held, including work a peer reported beyond ``capacity`` (a
    call the ACD put through anyway): Harmony records such facts, it never offers beyond it.
    """

    channel: Channel
    capacity: int
    load: int
    status: ChannelStatus = ChannelStatus.LOGGED_OUT
    reason: str | None = None
    since: datetime | None = None
    source_at: datetime | None = None
    wrap_up_until: datetime | None = None
    # A not ready or log out asked for while the agent held work here: no new offers, and it
    # applies when the last work on the channel ends; a later change replaces it.
    next_status: ChannelStatus | None = None
    next_reason: str | None = None

    @property
    def free(self) -> int:
        return max(self.capacity - self.load, 0)

    @property
    def over_capacity(self) -> bool:
        return self.load > self.capacity

    def in_wrap_up(self, now: datetime) -> bool:
        return self.wrap_up_until is not None and self.wrap_up_until > now

    def busy(self, now: datetime) -> bool:
        """Holding work or wrapping up: what the other side's media bar shows as busy."""
        return self.load > 0 or self.in_wrap_up(now)


@dataclass
class Agent:
    """A person who takes work, known by different ids to the CRM and the ACD."""

    id: str
    name: str
    crm_agent_id: str
    acd_agent_id: str
    skills: list[str]
    channels: dict[Channel, ChannelState]
    profile: str = DEFAULT_PROFILE
    crm_adapter: str = "generic"
    login_failures: int = 0

    def capacity_on(self, channel: Channel) -> ChannelState:
        return self.channels.get(channel, ChannelState(channel, 0, 0))


@dataclass(frozen=True)
class QueueDefaults:
    """A channel's queue policy where a queue sets none: seconds an offer waits for the CRM's
    answer, seconds the ACD has to select or queue a request, the longest wait before the
    overflow rule, and how many offers before it."""

    offer_timeout_seconds: int
    routing_timeout_seconds: int
    max_wait_seconds: int
    max_offers: int


# Routing timeout: 60 s, the bound Salesforce Omni-Channel puts on an external router. A chat
# customer waits minutes, an email days.
QUEUE_DEFAULTS = {
    Channel.CHAT: QueueDefaults(30, 60, 10 * 60, 5),
    Channel.EMAIL: QueueDefaults(120, 60, 24 * 3600, 5),
}
# Moves to an overflow queue one interaction may make; then it goes back to the CRM, so queues
# whose overflow rules point at each other cannot pass work around for ever.
MAX_OVERFLOWS = 3


@dataclass(frozen=True)
class Queue:
    """Where interactions of one channel wait; its skills are required of every agent.

    The policy fields left ``None`` take the channel's default (``QUEUE_DEFAULTS``).
    ``overflow_queue`` is where work goes when the queue gives up on it (its maximum wait, its
    maximum offers, or the ACD not answering twice); ``None`` hands it back to the CRM's own
    routing."""

    name: str
    channel: Channel
    skills: list[str]
    offer_timeout_seconds: int | None = None
    routing_timeout_seconds: int | None = None
    max_wait_seconds: int | None = None
    max_offers: int | None = None
    overflow_queue: str | None = None

    @cached_property
    def policy(self) -> QueueDefaults:
        """The queue's effective timeouts and limits, defaults filled in."""
        default = QUEUE_DEFAULTS[self.channel]
        return QueueDefaults(
            offer_timeout_seconds=self.offer_timeout_seconds or default.offer_timeout_seconds,
            routing_timeout_seconds=(
                self.routing_timeout_seconds or default.routing_timeout_seconds
            ),
            max_wait_seconds=self.max_wait_seconds or default.max_wait_seconds,
            max_offers=self.max_offers or default.max_offers,
        )


class OfferStatus(StrEnum):
    """Where an offer of work to an agent stands (like a TaskRouter reservation)."""

    PENDING = "pending"  # made; the CRM has not answered
    ACCEPTED = "accepted"
    DECLINED = "declined"
    TIMED_OUT = "timed_out"  # nobody answered within the queue's offer timeout
    RESCINDED = "rescinded"  # Harmony took it back: the agent left, the delivery failed
    ABANDONED = "abandoned"  # the customer left or the CRM withdrew the work
    COMPLETED = "completed"  # accepted, and the agent finished the work
    TRANSFERRED = "transferred"  # accepted, and the work left the agent by a transfer


# An offer in these holds a unit of the agent's capacity; one per interaction at most.
LIVE_OFFERS = frozenset({OfferStatus.PENDING, OfferStatus.ACCEPTED})


@dataclass(frozen=True)
class Offer:
    """One offer of an interaction to an agent."""

    id: str
    interaction_id: str
    agent_id: str
    channel: Channel
    status: OfferStatus
    offered_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    reason: str | None = None


MAX_CAPACITY = {Channel.VOICE: 1, Channel.CHAT: 20, Channel.EMAIL: 20}


def validate_capacity(capacity: dict[Channel, int]) -> None:
    """Refuse capacities outside what the channel allows (voice is one call at a time)."""
    for channel, value in capacity.items():
        limit = MAX_CAPACITY[channel]
        if not 0 <= value <= limit:
            raise ValidationFailed(f"capacity on {channel} must be between 0 and {limit}")
