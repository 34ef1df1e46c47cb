"""The ports the routing core needs, implemented by ``harmony.db`` and the adapters."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from harmony.routing.agent_state import AgentStateEntry, Presence, Profile
from harmony.routing.messages import OutboundMessage, OutboxEntry, TargetKind
from harmony.routing.model import (
    Agent,
    Channel,
    ChannelState,
    ChannelStatus,
    GuardedMove,
    HistoryEntry,
    Interaction,
    InteractionState,
    Offer,
    OfferStatus,
    Queue,
)


@dataclass(frozen=True)
class InteractionFilter:
    """What an operator asks to see; ``None`` means any."""

    state: InteractionState | None = None
    channel: Channel | None = None
    queue: str | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page of results in a stable order, with the cursor for the next page if any."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class AgentFilter:
    """Which agents an operator asks for; every given criterion must hold."""

    presence: Presence | None = None
    channel: Channel | None = None
    status: ChannelStatus | None = None
    skills: tuple[str, ...] = ()
    profile: str | None = None


@dataclass(frozen=True)
class VoiceCall:
    """A voice call the ACD reported, as far as Harmony has heard of it."""

    acd_adapter: str
    call_id: str
    agent_id: str
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class QueueStats:
    """A queue's definition, what waits in it now and what is offered to agents, and how many
    customers left it while waiting in the last 24 hours."""

    queue: Queue
    waiting: int
    oldest_received_at: datetime | None
    offered: int = 0
    abandoned_24h: int = 0


@dataclass(frozen=True)
class EventClaim:
    """An incoming event to claim as applied (see ``Inbox.claim``)."""

    source: str
    event_id: str
    event_type: str
    at: datetime


@dataclass(frozen=True)
class Acknowledged:
    """An outbound message its receiver acknowledged, sent under ``claim_token``; for a
    message whose acknowledgement moves its interaction on, that interaction and the cause
    to record."""

    message_id: str
    claim_token: str
    interaction_id: str | None = None
    cause: str = ""


class InteractionRepository(Protocol):
    async def get_by_external_id_claiming(
        self, crm_adapter: str, external_id: str, claim: EventClaim
    ) -> tuple[Interaction | None, bool]:
        """Lock the interaction a CRM knows by ``external_id``, then claim the event for it
        (``Inbox.claim``): the lock order's interaction before inbox row, in one statement
        where the store can. ``(None, False)`` with nothing claimed when there is no such
        interaction; the flag is False when the event was applied before."""
        ...

    async def get_by_request_id_claiming(
        self, request_id: str, claim: EventClaim
    ) -> tuple[Interaction | None, bool]:
        """As ``get_by_external_id_claiming``, for the interaction of a routing request."""
        ...

    async def add_if_absent(self, interaction: Interaction) -> bool:
        """Store a new interaction; False (nothing stored) if its CRM external id exists."""
        ...

    async def add(self, interaction: Interaction) -> None:
        """Store a new interaction and its history; a CRM external id stored before makes the
        write fail (``Collided`` on leaving a one-write unit of work)."""
        ...

    async def get(self, interaction_id: str, *, for_update: bool = False) -> Interaction | None:
        """Load one interaction; ``for_update`` locks it until the unit of work ends."""
        ...

    async def get_many(
        self, interaction_ids: Collection[str], *, for_update: bool = False
    ) -> list[Interaction]:
        """Load several interactions in id order; with ``for_update`` their locks are taken in
        that order. Ids not found are left out."""
        ...

    async def get_by_external_id(
        self, crm_adapter: str, external_id: str, *, for_update: bool = False
    ) -> Interaction | None:
        """Load the interaction a CRM knows by ``external_id``."""
        ...

    async def get_by_request_id(
        self, request_id: str, *, for_update: bool = False
    ) -> Interaction | None:
        """Load the interaction whose routing request has this id."""
        ...

    async def save(self, interaction: Interaction) -> None:
        """Persist state and append its new history; Conflict if another writer won the race."""
        ...

    async def save_many(self, changed: Sequence[Interaction]) -> None:
        """``save`` for several interactions at once (each loaded in this unit of work)."""
        ...

    async def record_acknowledged(
        self, acknowledged: Sequence[Acknowledged], at: datetime, move: GuardedMove
    ) -> set[str]:
        """Mark the messages sent, each only while its claim token still holds it, and apply
        ``move`` to the interaction of each one recorded that names one: in one statement
        where the store can (no read first), the interactions locked after the outbox rows,
        in id order. Returns the ids of the messages recorded."""
        ...

    async def search(
        self, flt: InteractionFilter, limit: int, cursor: str | None
    ) -> Page[Interaction]:
        """Page through interactions oldest first; ``cursor`` comes from the previous page."""
        ...

    async def history(self, interaction_id: str) -> list[HistoryEntry]:
        """The interaction's history in the order it happened."""
        ...


class AgentRepository(Protocol):
    async def get(self, agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by Harmony's id; ``for_update`` serialises changes to this agent."""
        ...

    async def get_by_acd_id(self, acd_agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by the id the ACD uses."""
        ...

    async def get_by_crm_id(self, crm_agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by the id the CRM uses."""
        ...

    async def crm_agent_id_of(self, agent_id: str) -> str | None:
        """The id the CRM knows the agent by (None for no such agent), without a lock: read
        along with an interaction's lock-and-claim where the store can, so it costs no round
        trip of its own."""
        ...

    async def get_by_acd_id_reserving(
        self, acd_agent_id: str, channel: Channel
    ) -> tuple[Agent | None, bool]:
        """Lock the agent the ACD knows by ``acd_agent_id`` and ``reserve`` one unit of
        ``channel`` for it, in one statement where the store can: the agent as it was before
        the reservation, and whether the reservation was made. A use case that then refuses
        the offer raises, and its unit of work's rollback takes the reservation back."""
        ...

    async def search(
        self, flt: AgentFilter, now: datetime, limit: int, cursor: str | None
    ) -> Page[Agent]:
        """Page through agents by id, filtered in the database (no per-agent queries)."""
        ...

    async def upsert(
        self, agent: Agent, capacity_override: dict[Channel, int]
    ) -> list[ChannelState]:
        """Create or update ids, skills and profile, keeping states and loads.

        Effective capacity per channel is the override if given, else the profile's. Returns
        the channels created or whose capacity changed. Raises Conflict when a capacity would
        drop below the load held now, when the profile does not exist, or when the CRM or ACD
        id already belongs to another agent.
        """
        ...

    async def save_channel(self, agent_id: str, state: ChannelState) -> None:
        """Store a channel's status, reason, since, source time and wrap-up (not its load)."""
        ...

    async def reserve(self, agent_id: str, channel: Channel, *, require_ready: bool = True) -> bool:
        """Take one unit of capacity atomically; False if none is free (or not ready)."""
        ...

    async def hold_over_capacity(self, agent_id: str, channel: Channel) -> None:
        """Record one unit of work a peer reports beyond the channel's capacity (a fact, such
        as a call the ACD put through): it counts in the load and blocks like any work, but the
        capacity that guards what Harmony offers is left as it was."""
        ...

    async def release(
        self, agent_id: str, channel: Channel, wrap_up_until: datetime | None = None
    ) -> None:
        """Give one unit back (none when none is held), starting wrap-up if given. The store
        may write it with the unit of work's next write: the agent is held locked, and
        nothing reads the channel back before then."""
        ...

    async def count_login_failure(self, agent_id: str) -> None:
        """Add one to the agent's login failure count."""
        ...

    async def append_history(self, entries: list[AgentStateEntry]) -> None:
        """Append lines to agents' state history."""
        ...

    async def history(self, agent_id: str, limit: int, cursor: str | None) -> Page[AgentStateEntry]:
        """Page through one agent's state history, oldest first."""
        ...

    async def last_sequence(self, agent_id: str, source: str) -> int | None:
        """The highest sequence number applied from ``source`` for this agent."""
        ...

    async def set_sequence(self, agent_id: str, source: str, sequence: int) -> None:
        """Remember the highest sequence number applied from ``source``."""
        ...

    async def add_mirror(
        self,
        message_id: str,
        agent_id: str,
        channel: Channel,
        target: TargetKind,
        status: ChannelStatus,
        reason: str | None,
        at: datetime,
    ) -> None:
        """Remember a state change Harmony told ``target``, to know its echo later."""
        ...

    async def take_echo(
        self,
        agent_id: str,
        channel: Channel,
        source: TargetKind,
        status: ChannelStatus,
        reason: str | None,
        since: datetime,
        echo_of: str | None,
        at: datetime,
    ) -> bool:
        """If this report repeats a change Harmony mirrored to ``source``, consume it: True."""
        ...

    async def voice_call(self, acd_adapter: str, call_id: str) -> VoiceCall | None:
        """A call Harmony heard of, if any."""
        ...

    async def save_voice_call(self, call: VoiceCall) -> None:
        """Insert or update a call's start and end."""
        ...


class ProfileRepository(Protocol):
    async def get(self, name: str) -> Profile | None:
        """Load a profile by name."""
        ...

    async def all(self) -> list[Profile]:
        """Every profile, ordered by name."""
        ...

    async def upsert(self, profile: Profile) -> list[tuple[str, ChannelState]]:
        """Create or replace a profile and apply its capacities to its agents.

        Returns each (agent id, channel state) whose capacity changed. Raises Conflict when an
        agent of the profile holds more than the new capacity.
        """
        ...


class QueueRepository(Protocol):
    async def get(self, name: str) -> Queue | None:
        """Load a queue by name."""
        ...

    async def get_recent(self, name: str) -> Queue | None:
        """A queue as stored at most a moment ago (about a second; a change made through this
        process is seen at once): for the hot path, where a definition read that late is as
        if the work had arrived that much earlier. A queue not found is looked up each time."""
        ...

    async def upsert(self, queue: Queue) -> None:
        """Create or replace a queue's definition."""
        ...

    async def stats(self, now: datetime) -> list[QueueStats]:
        """Every queue with the count and age of interactions waiting for an agent, the count
        offered to one now, and the count abandoned in the 24 hours before ``now``."""
        ...


class InboxStatus(StrEnum):
    """Where an incoming event stands: stored and not yet applied, applied, or refused."""

    PENDING = "pending"
    APPLIED = "applied"
    FAILED = "failed"


@dataclass(frozen=True)
class InboxEntry:
    """One incoming event as the inbox holds it; ``payload`` is None for events stored
    before payloads were kept."""

    source: str
    event_id: str
    event_type: str
    received_at: datetime
    status: InboxStatus
    handled_at: datetime | None
    error: str | None
    interaction_id: str | None
    payload: str | None


@dataclass(frozen=True)
class ReceivedEvent:
    """A verified event a unit of work applies: what its inbox row keeps besides the outcome."""

    source: str
    event_id: str
    event_type: str
    payload: str


class Inbox(Protocol):
    async def claim_with_next_write(
        self, source: str, event_id: str, event_type: str, at: datetime, interaction_id: str
    ) -> None:
        """Store an incoming event as applied, with the unit of work's next write; an event
        stored before, applied or refused, makes that write fail (``Collided`` on leaving a
        one-write unit of work), where ``claim`` would have answered or flipped it."""
        ...

    async def claim(
        self,
        source: str,
        event_id: str,
        event_type: str,
        at: datetime,
        interaction_id: str | None = None,
    ) -> bool:
        """Mark an incoming event applied in this unit of work; False if it was applied before.

        One write: the row is stored (with the payload of the event the unit of work is
        ``receiving``, and the interaction it concerns) or a refused one flipped to applied. A
        concurrent claim of the same event waits for this one's transaction, then sees it.
        """
        ...

    async def mark_failed(self, source: str, event_id: str, error: str, at: datetime) -> None:
        """Note why applying an event was refused, unless it has been applied since; the event
        the unit of work is ``receiving`` is stored with its payload if the inbox lacks it."""
        ...

    async def get(self, source: str, event_id: str) -> InboxEntry | None:
        """The stored event, if the inbox holds it."""
        ...

    async def prune(self, received_before: datetime, limit: int) -> int:
        """Forget up to ``limit`` events received before the cutoff; how many went."""
        ...

    async def link(self, source: str, event_id: str, interaction_id: str) -> None:
        """Note which interaction the event concerned, to answer its duplicates."""
        ...

    async def interaction_for(self, source: str, event_id: str) -> str | None:
        """The interaction a previously applied event concerned, if any."""
        ...


class Outbox(Protocol):
    """Promised messages. A claim carries a token; outcomes are fenced by it: each ``mark_*``
    writes only while the row is still pending under that token and returns False otherwise
    (the claim expired and another relay took the row), changing nothing."""

    async def add(self, message: OutboundMessage, at: datetime) -> None:
        """Promise to send ``message``; it becomes due at once. An unsent, unclaimed message
        with the same ``supersede_key`` is superseded: it will never be sent."""
        ...

    async def next_sequence(self, ordering_key: str) -> int:
        """The next sequence number for messages with ``ordering_key`` (1, 2, ...), in the
        order of the transactions that take them."""
        ...

    async def claim_due(
        self, now: datetime, limit: int, lease_seconds: float, claimer: str
    ) -> list[OutboxEntry]:
        """Lease up to ``limit`` due messages under a new claim token, so no other relay sends
        them meanwhile; a message waits while an earlier one with its ordering key is unsent."""
        ...

    async def renew(self, message_id: str, claim_token: str, lease_until: datetime) -> bool:
        """Extend a lease still held under ``claim_token``."""
        ...

    async def mark_sent(self, message_id: str, claim_token: str, at: datetime) -> bool:
        """The receiver acknowledged the message."""
        ...

    async def mark_retry(
        self, message_id: str, claim_token: str, next_attempt_at: datetime, error: str
    ) -> bool:
        """The attempt failed but may succeed later: release the claim until then."""
        ...

    async def mark_dead(self, message_id: str, claim_token: str, at: datetime, error: str) -> bool:
        """The message will never be sent."""
        ...

    async def pending_count(self) -> int:
        """Messages not yet sent nor given up on."""
        ...

    async def oldest_due(self, now: datetime) -> datetime | None:
        """When the longest-waiting message a relay could send now became due (None if none
        is): how far the relays are behind."""
        ...


@dataclass(frozen=True)
class Timer:
    """A durable timer: when ``due_at`` passes, the use case of ``kind`` runs once for
    ``subject`` (an interaction, an agent's channel), provided what it was armed for still
    holds (``guard``: the version of that thing when it was armed). One timer of a kind per
    subject: arming again replaces it."""

    kind: str
    subject: str
    due_at: datetime
    guard: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClaimedTimer:
    """A due timer leased to one scheduler: only the holder of ``claim_token`` may fire it."""

    id: str
    timer: Timer
    claim_token: str
    attempts: int


class OfferRepository(Protocol):
    """Offers of work to agents, written in the transaction of the selection or answer."""

    async def add(self, offer: Offer) -> None:
        """Store a new pending offer; the store may write it with the unit of work's next
        write. A second live offer for the interaction makes that write fail."""
        ...

    async def decide(
        self,
        interaction_id: str,
        status: OfferStatus,
        at: datetime,
        reason: str | None = None,
    ) -> None:
        """Record how the interaction's live offer ended, or that it was accepted; the store
        may write it with the unit of work's next write (the interaction is held locked)."""
        ...

    async def live(self, interaction_id: str) -> Offer | None:
        """The interaction's pending or accepted offer, if any."""
        ...

    async def of_interaction(self, interaction_id: str) -> list[Offer]:
        """Every offer the interaction received, oldest first."""
        ...

    async def agents_tried(self, interaction_id: str) -> list[str]:
        """The ACD ids of the agents the interaction was offered to, in the order of their
        first offer."""
        ...

    async def live_of_agent(self, agent_id: str, channel: Channel) -> list[Offer]:
        """The agent's pending and accepted offers on ``channel``, oldest first."""
        ...

    async def misses_in_a_row(
        self, agent_id: str, channel: Channel, *, up_to: int, declines_count: bool
    ) -> int:
        """How many of the agent's latest offers on ``channel`` were missed in a row (timed
        out, or declined when ``declines_count``), counting at most ``up_to``."""
        ...


class TimerRepository(Protocol):
    """Durable timers, written in the transaction of the state that needs them."""

    async def arm(self, timer: Timer, now: datetime) -> None:
        """Schedule ``timer``, replacing any timer of its kind for its subject. The store may
        write it with the unit of work's next write: nothing reads timers back meanwhile."""
        ...

    async def arm_first(self, timer: Timer, now: datetime) -> None:
        """Schedule the first timer of its kind for a new subject (one that can have none
        yet), as a plain insert the store may write with the unit of work's next write."""
        ...

    def firing(self, claimed: ClaimedTimer) -> None:
        """Say which claimed timer this unit of work fires: arming or disarming its kind for
        its subject then takes effect after ``finish`` removed the fired one, so what the
        handler schedules next cannot be mistaken for it."""
        ...

    async def disarm(self, kind: str, subject: str) -> None:
        """Remove the timer of ``kind`` for ``subject``, if any (what it guarded ended)."""
        ...

    async def claim_due(
        self, now: datetime, limit: int, lease_seconds: float, claimer: str
    ) -> list[ClaimedTimer]:
        """Lease up to ``limit`` timers due at ``now`` (earliest first) under a new claim
        token, skipping those another scheduler holds; a lease that ran out may be taken."""
        ...

    async def finish(self, timer_id: str, claim_token: str) -> bool:
        """Remove a fired timer, in the transaction of what it did; False (nothing removed)
        when the claim was lost or the timer was replaced since."""
        ...

    async def pending(self) -> list[Timer]:
        """Every timer still to fire, earliest first (for operators and tests)."""
        ...


class UnitOfWork(Protocol):
    """One transaction. ``async with uow:`` begins it; leaving without commit rolls back.

    Implementations take row locks in one order (``harmony.db.uow.SqlUnitOfWork`` states it).
    When the store aborts the transaction to break a deadlock, leaving raises ``TryAgain``:
    nothing was stored, and ``harmony.routing.retry`` runs the use case again in a new one.
    """

    # Read-only, so an implementation may narrow each to its own concrete repository type.
    @property
    def interactions(self) -> InteractionRepository: ...

    @property
    def agents(self) -> AgentRepository: ...

    @property
    def queues(self) -> QueueRepository: ...

    @property
    def profiles(self) -> ProfileRepository: ...

    @property
    def inbox(self) -> Inbox: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def timers(self) -> TimerRepository: ...

    @property
    def offers(self) -> OfferRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Make everything done in this unit of work durable at once."""
        ...

    def receiving(self, event: ReceivedEvent) -> Self:
        """Say which verified event this unit of work applies, before it begins: the inbox
        writes its payload in the same statement as the claim (or the refusal)."""
        ...

    def single_statement(self) -> Self:
        """Say, before it begins, that this unit of work runs one statement only, which is
        atomic by itself: the store may run it without a transaction around it (a second
        statement is then a programming error, refused)."""
        ...

    def one_write(self) -> Self:
        """Say, before it begins, that this unit of work reads, then writes once: that write
        carries every row added before it (``Inbox.claim_with_next_write``, outbox messages,
        history), so it is atomic by itself and the store may run the reads and the write
        without a transaction around them (a second write is a programming error, refused).
        When the write meets a constraint, nothing was stored and leaving raises ``Collided``;
        reads take no locks, so only rows the write inserts, or updates under a version
        check, may depend on them."""
        ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> UnitOfWork: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


JsonDict = dict[str, Any]
