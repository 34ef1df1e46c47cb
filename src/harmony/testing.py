"""In-memory fakes of Harmony's ports, for Harmony's own tests and for yours.

Nothing here touches a database, the network or the wall clock::

    store = InMemoryStore()
    clock = FakeClock()
    acd = FakeAdapter(TargetKind.ACD)
    crm = FakeAdapter(TargetKind.CRM)
    registry = AdapterRegistry()
    registry.register(acd)
    registry.register(crm)

    await service.upsert_queue(store.uow(), Queue("support-chat", Channel.CHAT, []))
    await service.receive_interaction(store.uow(), clock, ...)
    await Relay(store.uow, registry, clock).drain()
    assert acd.sent_of_type("routing.requested")
    assert store.interactions()[0].state == "routing"

``InMemoryStore`` keeps the committed state (it starts like a migrated database: empty but for
the default profile); ``store.uow()`` hands out an ``InMemoryUnitOfWork`` that implements every
port of ``harmony.routing.ports`` with the same observable behaviour as the SQL implementation
in ``harmony.db``:

- a unit of work sees a snapshot of the store taken when it begins; its changes become visible
  to others only on ``commit()``; leaving ``async with`` without committing discards them all;
- two units of work that change the same row concurrently cannot both commit: the second
  ``commit()`` raises ``Conflict(code="concurrent_update")``, as does ``interactions.save()`` on
  a version mismatch;
- writes the SQL schema would refuse (an unknown queue or agent, a negative load, a duplicate
  id) raise ``IntegrityError`` instead of being stored.

``FakeClock`` is a settable clock; ``FakeAdapter`` is a CRM or ACD that records what it is sent
and fails on demand.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar

from harmony.adapters.base import AdapterError, PermanentAdapterError, TransientAdapterError
from harmony.adapters.generic_http.signing import Signer
from harmony.errors import Conflict, ValidationFailed
from harmony.routing.agent_state import AgentStateEntry, Profile, default_profile, presence
from harmony.routing.messages import OutboundMessage, OutboxEntry, TargetKind
from harmony.routing.model import (
    WAITING_STATES,
    Agent,
    Channel,
    ChannelState,
    ChannelStatus,
    HistoryEntry,
    Interaction,
    InteractionState,
    Queue,
)
from harmony.routing.ports import (
    AgentFilter,
    InboxEntry,
    InteractionFilter,
    Page,
    QueueStats,
    UnitOfWorkFactory,
    VoiceCall,
)

__all__ = [
    "FakeAdapter",
    "FakeClock",
    "InMemoryAgents",
    "InMemoryInbox",
    "InMemoryInteractions",
    "InMemoryOutbox",
    "InMemoryProfiles",
    "InMemoryQueues",
    "InMemoryStore",
    "InMemoryUnitOfWork",
    "InboxRecord",
    "IntegrityError",
    "MirrorRecord",
    "OutboxRecord",
    "OutboxStatus",
]

# States in which the SQL schema requires an agent (CHECK agent_matches_state).
_STATES_WITH_AGENT = frozenset(
    {
        InteractionState.OFFERED,
        InteractionState.DELIVERED,
        InteractionState.ACCEPTED,
        InteractionState.COMPLETED,
    }
)
_MAX_ERROR_CHARS = 2000


class IntegrityError(Exception):
    """A write the SQL schema would refuse: a dangling reference, a duplicate key, a bad value.

    It means the code under test has a bug; Harmony never raises it on purpose.
    """


class OutboxStatus(StrEnum):
    """Where an outbox message is in its life."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class InboxRecord:
    """One incoming event the inbox has seen."""

    source: str
    event_id: str
    event_type: str
    received_at: datetime
    interaction_id: str | None = None


@dataclass(frozen=True)
class OutboxRecord:
    """One outbox row: a promised message and how its delivery is going."""

    message: OutboundMessage
    status: OutboxStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None = None
    last_error: str | None = None
    claim_token: str | None = None


@dataclass(frozen=True)
class MirrorRecord:
    """An agent state change Harmony told a CRM or ACD, kept to recognise its echo."""

    id: str
    agent_id: str
    channel: Channel
    target_kind: TargetKind
    status: ChannelStatus
    reason: str | None
    sent_at: datetime
    echoed_at: datetime | None = None


@dataclass(frozen=True)
class _AgentRecord:
    """An agent as stored, with the channels whose capacity it sets itself (not its profile)."""

    agent: Agent
    overrides: Mapping[Channel, int]


# --------------------------------------------------------------------------------------------
# Copies: stored values are never shared with callers, so nothing changes behind a commit.


def _copy_interaction(interaction: Interaction, **changes: Any) -> Interaction:
    fresh: dict[str, Any] = {
        "skills": list(interaction.skills),
        "customer": copy.deepcopy(interaction.customer),
        "state_times": dict(interaction.state_times),
        "new_history": [],
    }
    return dataclasses.replace(interaction, **{**fresh, **changes})


def _copy_agent(agent: Agent, **changes: Any) -> Agent:
    fresh: dict[str, Any] = {"skills": list(agent.skills), "channels": dict(agent.channels)}
    return dataclasses.replace(agent, **{**fresh, **changes})


def _copy_profile(profile: Profile) -> Profile:
    return Profile(
        name=profile.name,
        capacity=dict(profile.capacity),
        wrap_up_seconds=dict(profile.wrap_up_seconds),
        blocks={channel: frozenset(blocked) for channel, blocked in profile.blocks.items()},
    )


def _copy_queue(queue: Queue) -> Queue:
    return dataclasses.replace(queue, skills=list(queue.skills))


def _copy_message(message: OutboundMessage, **changes: Any) -> OutboundMessage:
    fresh: dict[str, Any] = {"payload": copy.deepcopy(message.payload)}
    return dataclasses.replace(message, **{**fresh, **changes})


# --------------------------------------------------------------------------------------------
# State and transactions


@dataclass
class _State:
    """Every table of the store. Values are replaced on change, never mutated in place."""

    queues: dict[str, Queue] = dataclasses.field(default_factory=dict)
    profiles: dict[str, Profile] = dataclasses.field(default_factory=dict)
    agents: dict[str, _AgentRecord] = dataclasses.field(default_factory=dict)
    agent_history: dict[str, tuple[tuple[int, AgentStateEntry], ...]] = dataclasses.field(
        default_factory=dict
    )
    agent_sequences: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    agent_mirrors: dict[str, MirrorRecord] = dataclasses.field(default_factory=dict)
    voice_calls: dict[tuple[str, str], VoiceCall] = dataclasses.field(default_factory=dict)
    interactions: dict[str, Interaction] = dataclasses.field(default_factory=dict)
    history: dict[str, tuple[HistoryEntry, ...]] = dataclasses.field(default_factory=dict)
    inbox: dict[tuple[str, str], InboxRecord] = dataclasses.field(default_factory=dict)
    outbox: dict[str, OutboxRecord] = dataclasses.field(default_factory=dict)
    outbox_sequences: dict[str, int] = dataclasses.field(default_factory=dict)

    def tables(self) -> dict[str, dict[Any, Any]]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def snapshot(self) -> _State:
        """A copy whose tables can change without touching this one (values are shared)."""
        return _State(**{name: dict(table) for name, table in self.tables().items()})


_ABSENT: Any = object()
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Transaction:
    """A working copy of the store plus the rows it changed."""

    def __init__(self, base: _State, next_id: Callable[[], int]) -> None:
        self.base = base
        self.work = base.snapshot()
        # Changed rows in the order first changed (a dict as an ordered set), so that rows
        # added together keep their order once published.
        self.dirty: dict[tuple[str, Hashable], None] = {}
        self.outbox_added = False
        self.active = True
        self.next_id = next_id

    def put(self, table: dict[K, V], name: str, key: K, value: V) -> None:
        self.check_active()
        table[key] = value
        self.dirty[(name, key)] = None

    def check_active(self) -> None:
        if not self.active:
            raise RuntimeError("this unit of work is not active: use it inside `async with uow:`")


# --------------------------------------------------------------------------------------------
# Repositories


def _encode_cursor(at: datetime, interaction_id: str) -> str:
    """An opaque page cursor, in the same form as the SQL repository's."""
    raw = json.dumps([at.isoformat(), interaction_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Reverse ``_encode_cursor``; ValidationFailed for anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_text, interaction_id = json.loads(raw)
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None or not isinstance(interaction_id, str):
            raise ValueError("bad cursor")
    except (ValueError, TypeError) as exc:
        raise ValidationFailed("cursor: not a cursor this API returned") from exc
    return at, interaction_id


class _Repository:
    """A repository working inside one transaction (swapped for the next after a commit)."""

    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx


class InMemoryInteractions(_Repository):
    """Interactions and their append-only history (``InteractionRepository``)."""

    @property
    def _rows(self) -> dict[str, Interaction]:
        self._tx.check_active()
        return self._tx.work.interactions

    def _find(self, match: Callable[[Interaction], bool]) -> Interaction | None:
        for interaction in self._rows.values():
            if match(interaction):
                return interaction
        return None

    def _check_integrity(self, interaction: Interaction) -> None:
        work = self._tx.work
        if interaction.queue not in work.queues:
            raise IntegrityError(f"interaction {interaction.id}: no queue '{interaction.queue}'")
        if interaction.agent_id is not None and interaction.agent_id not in work.agents:
            raise IntegrityError(f"interaction {interaction.id}: no agent '{interaction.agent_id}'")
        has_agent = interaction.agent_id is not None
        if interaction.state != InteractionState.FAILED and has_agent != (
            interaction.state in _STATES_WITH_AGENT
        ):
            raise IntegrityError(
                f"interaction {interaction.id}: state {interaction.state} with "
                f"agent_id={interaction.agent_id!r}"
            )
        if not 0 <= interaction.priority <= 100:
            raise IntegrityError(f"interaction {interaction.id}: priority {interaction.priority}")
        if interaction.request_id is not None:
            holder = self._find(
                lambda other: (
                    other.request_id == interaction.request_id and other.id != interaction.id
                )
            )
            if holder is not None:
                raise IntegrityError(
                    f"request_id {interaction.request_id} already belongs to {holder.id}"
                )

    def _append_history(self, interaction: Interaction) -> None:
        if not interaction.new_history:
            return
        history = self._tx.work.history
        entries = history.get(interaction.id, ()) + tuple(interaction.new_history)
        self._tx.put(history, "history", interaction.id, entries)
        interaction.new_history.clear()

    async def add_if_absent(self, interaction: Interaction) -> bool:
        """Store a new interaction; False (nothing stored) if its CRM external id exists."""
        existing = self._find(
            lambda other: (
                other.crm_adapter == interaction.crm_adapter
                and other.external_id == interaction.external_id
            )
        )
        if existing is not None:
            return False
        if interaction.id in self._rows:
            raise IntegrityError(f"interaction id {interaction.id} is taken")
        self._check_integrity(interaction)
        self._tx.put(
            self._rows, "interactions", interaction.id, _copy_interaction(interaction, version=0)
        )
        self._append_history(interaction)
        return True

    async def get(self, interaction_id: str, *, for_update: bool = False) -> Interaction | None:
        """Load one interaction (a copy). ``for_update`` changes nothing here: see ``commit``."""
        found = self._rows.get(interaction_id)
        return _copy_interaction(found) if found is not None else None

    async def get_by_external_id(
        self, crm_adapter: str, external_id: str, *, for_update: bool = False
    ) -> Interaction | None:
        """Load the interaction a CRM knows by ``external_id``."""
        found = self._find(lambda i: i.crm_adapter == crm_adapter and i.external_id == external_id)
        return _copy_interaction(found) if found is not None else None

    async def get_by_request_id(
        self, request_id: str, *, for_update: bool = False
    ) -> Interaction | None:
        """Load the interaction whose routing request has this id (as the SQL store does)."""
        found = self._find(lambda i: i.request_id == request_id)
        return _copy_interaction(found) if found is not None else None

    async def save(self, interaction: Interaction) -> None:
        """Persist state and append new history; Conflict if the stored version moved on."""
        stored = self._rows.get(interaction.id)
        if stored is None or stored.version != interaction.version:
            raise Conflict(
                f"interaction {interaction.id} was changed concurrently; retry",
                code="concurrent_update",
            )
        self._check_integrity(interaction)
        # Only what the SQL row holds changes; the interaction's identity fields stay put.
        updated = _copy_interaction(
            stored,
            state=interaction.state,
            request_id=interaction.request_id,
            agent_id=interaction.agent_id,
            updated_at=interaction.updated_at,
            state_times=dict(interaction.state_times),
            version=stored.version + 1,
        )
        self._tx.put(self._rows, "interactions", interaction.id, updated)
        interaction.version += 1
        self._append_history(interaction)

    async def search(
        self, flt: InteractionFilter, limit: int, cursor: str | None
    ) -> Page[Interaction]:
        """Page through interactions oldest first (by received_at, then id)."""
        after = _decode_cursor(cursor) if cursor is not None else None
        matching = sorted(
            (
                i
                for i in self._rows.values()
                if (flt.state is None or i.state == flt.state)
                and (flt.channel is None or i.channel == flt.channel)
                and (flt.queue is None or i.queue == flt.queue)
                and (after is None or (i.received_at, i.id) > after)
            ),
            key=lambda i: (i.received_at, i.id),
        )
        items = [_copy_interaction(i) for i in matching[:limit]]
        next_cursor = None
        if len(matching) > limit and items:
            next_cursor = _encode_cursor(items[-1].received_at, items[-1].id)
        return Page(items, next_cursor)

    async def history(self, interaction_id: str) -> list[HistoryEntry]:
        """The interaction's history in the order it was recorded."""
        self._tx.check_active()
        return list(self._tx.work.history.get(interaction_id, ()))


def _encode_key(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _decode_key(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor: not a cursor this API returned") from exc


class InMemoryAgents(_Repository):
    """Agents, their channel states, state history, mirrors and calls (``AgentRepository``)."""

    @property
    def _rows(self) -> dict[str, _AgentRecord]:
        self._tx.check_active()
        return self._tx.work.agents

    def _require_agent(self, agent_id: str, what: str) -> None:
        if agent_id not in self._rows:
            raise IntegrityError(f"{what}: no agent '{agent_id}'")

    def _find(self, match: Callable[[Agent], bool]) -> Agent | None:
        for record in self._rows.values():
            if match(record.agent):
                return _copy_agent(record.agent)
        return None

    async def get(self, agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by Harmony's id (a copy; ``for_update`` changes nothing here)."""
        record = self._rows.get(agent_id)
        return _copy_agent(record.agent) if record is not None else None

    async def get_by_acd_id(self, acd_agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by the id the ACD uses."""
        return self._find(lambda agent: agent.acd_agent_id == acd_agent_id)

    async def get_by_crm_id(self, crm_agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by the id the CRM uses."""
        return self._find(lambda agent: agent.crm_agent_id == crm_agent_id)

    async def search(
        self, flt: AgentFilter, now: datetime, limit: int, cursor: str | None
    ) -> Page[Agent]:
        """Page through agents by id; every criterion of ``flt`` must hold."""
        after = _decode_key(cursor) if cursor is not None else None

        def matches(agent: Agent) -> bool:
            if after is not None and agent.id <= after:
                return False
            if flt.profile is not None and agent.profile != flt.profile:
                return False
            if (flt.channel is not None or flt.status is not None) and not any(
                (flt.channel is None or state.channel == flt.channel)
                and (flt.status is None or state.status == flt.status)
                for state in agent.channels.values()
            ):
                return False
            if not set(flt.skills) <= set(agent.skills):
                return False
            return flt.presence is None or presence(agent.channels.values(), now) == flt.presence

        found = [
            self._rows[agent_id].agent
            for agent_id in sorted(self._rows)
            if matches(self._rows[agent_id].agent)
        ][: limit + 1]
        items = [_copy_agent(agent) for agent in found[:limit]]
        next_cursor = _encode_key(items[-1].id) if len(found) > limit and items else None
        return Page(items, next_cursor)

    async def upsert(
        self, agent: Agent, capacity_override: dict[Channel, int]
    ) -> list[ChannelState]:
        """Create or update ids, skills and profile, keeping states and loads.

        The capacity on each channel is the override if given, else the profile's. Returns the
        channels created or whose capacity changed. Raises Conflict ``agent_id_taken`` or
        ``capacity_below_load``, and ValidationFailed for an unknown profile.
        """
        for record in self._rows.values():
            other = record.agent
            if other.id != agent.id and (
                other.crm_agent_id == agent.crm_agent_id or other.acd_agent_id == agent.acd_agent_id
            ):
                raise Conflict(
                    f"crm_agent_id '{agent.crm_agent_id}' or acd_agent_id "
                    f"'{agent.acd_agent_id}' already belongs to agent {other.id}",
                    code="agent_id_taken",
                )
        profile = self._tx.work.profiles.get(agent.profile)
        if profile is None:
            raise ValidationFailed(f"profile: unknown profile '{agent.profile}'")
        existing = self._rows.get(agent.id)
        channels = dict(existing.agent.channels) if existing is not None else {}
        overrides: dict[Channel, int] = {}
        changed: list[ChannelState] = []
        for channel in Channel:
            override = capacity_override.get(channel)
            wanted = override if override is not None else profile.capacity.get(channel, 0)
            if wanted < 0:
                raise IntegrityError(f"capacity.{channel.value} is negative")
            if override is not None:
                overrides[channel] = override
            current = channels.get(channel)
            if current is None:
                channels[channel] = ChannelState(channel, wanted, 0)
                changed.append(channels[channel])
                continue
            if current.load > wanted:
                raise Conflict(
                    f"capacity.{channel.value}: {wanted} is below the {current.load} "
                    "interaction(s) the agent holds now",
                    code="capacity_below_load",
                )
            if current.capacity != wanted:
                channels[channel] = dataclasses.replace(current, capacity=wanted)
                changed.append(channels[channel])
        stored = Agent(
            id=agent.id,
            name=agent.name,
            crm_agent_id=agent.crm_agent_id,
            acd_agent_id=agent.acd_agent_id,
            skills=sorted(set(agent.skills)),
            channels=channels,
            profile=agent.profile,
            crm_adapter=agent.crm_adapter,
            login_failures=existing.agent.login_failures if existing is not None else 0,
        )
        self._tx.put(self._rows, "agents", agent.id, _AgentRecord(stored, overrides))
        return changed

    def _put_channel(self, agent_id: str, state: ChannelState) -> None:
        record = self._rows[agent_id]
        channels = {**record.agent.channels, state.channel: state}
        updated = _AgentRecord(_copy_agent(record.agent, channels=channels), record.overrides)
        self._tx.put(self._rows, "agents", agent_id, updated)

    def _channel(self, agent_id: str, channel: Channel) -> ChannelState | None:
        record = self._rows.get(agent_id)
        return record.agent.channels.get(channel) if record is not None else None

    async def save_channel(self, agent_id: str, state: ChannelState) -> None:
        """Store status, reason, since, source time and wrap-up; load and capacity stay."""
        current = self._channel(agent_id, state.channel)
        if current is None:
            return
        self._put_channel(
            agent_id,
            dataclasses.replace(
                current,
                status=state.status,
                reason=state.reason,
                since=state.since,
                source_at=state.source_at,
                wrap_up_until=state.wrap_up_until,
            ),
        )

    async def reserve(self, agent_id: str, channel: Channel, *, require_ready: bool = True) -> bool:
        """Take one unit of capacity; False if none is free, or if not ready when required."""
        current = self._channel(agent_id, channel)
        if current is None or current.load >= current.capacity:
            return False
        if require_ready and current.status != ChannelStatus.READY:
            return False
        self._put_channel(agent_id, dataclasses.replace(current, load=current.load + 1))
        return True

    async def hold_over_capacity(self, agent_id: str, channel: Channel) -> None:
        """Count one unit beyond capacity."""
        current = self._channel(agent_id, channel)
        if current is not None:
            self._put_channel(agent_id, dataclasses.replace(current, load=current.load + 1))

    async def release(
        self, agent_id: str, channel: Channel, wrap_up_until: datetime | None = None
    ) -> bool:
        """Give one unit back (never below zero), starting wrap-up if given."""
        current = self._channel(agent_id, channel)
        if current is None or current.load <= 0:
            return False
        released = dataclasses.replace(current, load=current.load - 1)
        if wrap_up_until is not None:
            released = dataclasses.replace(released, wrap_up_until=wrap_up_until)
        self._put_channel(agent_id, released)
        return True

    async def count_login_failure(self, agent_id: str) -> None:
        """Add one to the agent's login failure count."""
        record = self._rows.get(agent_id)
        if record is not None:
            failures = record.agent.login_failures + 1
            agent = _copy_agent(record.agent, login_failures=failures)
            self._tx.put(self._rows, "agents", agent_id, _AgentRecord(agent, record.overrides))

    async def append_history(self, entries: list[AgentStateEntry]) -> None:
        """Append lines to agents' state history."""
        history = self._tx.work.agent_history
        for entry in entries:
            self._require_agent(entry.agent_id, "agent state history")
            line = (self._tx.next_id(), dataclasses.replace(entry, detail=dict(entry.detail)))
            self._tx.put(
                history, "agent_history", entry.agent_id, (*history.get(entry.agent_id, ()), line)
            )

    async def history(self, agent_id: str, limit: int, cursor: str | None) -> Page[AgentStateEntry]:
        """Page through one agent's state history, oldest first."""
        after = 0
        if cursor is not None:
            decoded = _decode_key(cursor)
            if not decoded.isdigit():
                raise ValidationFailed("cursor: not a cursor this API returned")
            after = int(decoded)
        self._tx.check_active()
        lines = [line for line in self._tx.work.agent_history.get(agent_id, ()) if line[0] > after]
        items = [entry for _, entry in lines[:limit]]
        next_cursor = _encode_key(str(lines[limit - 1][0])) if len(lines) > limit else None
        return Page(items, next_cursor)

    async def last_sequence(self, agent_id: str, source: str) -> int | None:
        """The highest sequence number applied from ``source`` for this agent."""
        self._tx.check_active()
        return self._tx.work.agent_sequences.get((agent_id, source))

    async def set_sequence(self, agent_id: str, source: str, sequence: int) -> None:
        """Remember the highest sequence number applied from ``source``."""
        self._require_agent(agent_id, "agent sequence")
        self._tx.put(self._tx.work.agent_sequences, "agent_sequences", (agent_id, source), sequence)

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
        self._require_agent(agent_id, "agent mirror")
        mirrors = self._tx.work.agent_mirrors
        if message_id in mirrors:
            raise IntegrityError(f"agent mirror id {message_id} is taken")
        mirror = MirrorRecord(message_id, agent_id, channel, target, status, reason, at)
        self._tx.put(mirrors, "agent_mirrors", message_id, mirror)

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
        """Consume the oldest unconsumed matching mirror (or the one named by ``echo_of``)."""
        self._tx.check_active()
        mirrors = self._tx.work.agent_mirrors
        candidates = [
            mirror
            for mirror in mirrors.values()
            if mirror.agent_id == agent_id
            and mirror.channel == channel
            and mirror.target_kind == source
            and mirror.echoed_at is None
            and (
                mirror.id == echo_of
                if echo_of is not None
                else mirror.status == status and mirror.reason == reason and mirror.sent_at >= since
            )
        ]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda mirror: mirror.sent_at)  # first added on a tie
        consumed = dataclasses.replace(oldest, echoed_at=at)
        self._tx.put(mirrors, "agent_mirrors", oldest.id, consumed)
        return True

    async def voice_call(self, acd_adapter: str, call_id: str) -> VoiceCall | None:
        """A call Harmony heard of, if any."""
        self._tx.check_active()
        return self._tx.work.voice_calls.get((acd_adapter, call_id))

    async def save_voice_call(self, call: VoiceCall) -> None:
        """Insert or update a call's start and end."""
        self._require_agent(call.agent_id, "voice call")
        key = (call.acd_adapter, call.call_id)
        self._tx.put(self._tx.work.voice_calls, "voice_calls", key, call)


class InMemoryProfiles(_Repository):
    """Channel profiles (``ProfileRepository``); the store starts with the default one."""

    @property
    def _rows(self) -> dict[str, Profile]:
        self._tx.check_active()
        return self._tx.work.profiles

    async def get(self, name: str) -> Profile | None:
        """Load a profile by name."""
        found = self._rows.get(name)
        return _copy_profile(found) if found is not None else None

    async def all(self) -> list[Profile]:
        """Every profile, ordered by name."""
        return [_copy_profile(self._rows[name]) for name in sorted(self._rows)]

    async def upsert(self, profile: Profile) -> list[tuple[str, ChannelState]]:
        """Create or replace a profile and carry its capacities to the agents that follow it.

        Agents with their own capacity on a channel keep it. Returns each (agent id, channel
        state) whose capacity changed; Conflict ``capacity_below_load`` when an agent holds
        more than the new capacity, and then nothing changes.
        """
        existed = profile.name in self._rows
        stored = _copy_profile(profile)
        if not existed:
            self._tx.put(self._rows, "profiles", profile.name, stored)
            return []
        agents = self._tx.work.agents
        members = [agents[a] for a in sorted(agents) if agents[a].agent.profile == profile.name]
        updates: dict[str, dict[Channel, ChannelState]] = {}
        changed: list[tuple[str, ChannelState]] = []
        for channel in Channel:
            wanted = profile.capacity.get(channel, 0)
            for record in members:
                state = record.agent.channels.get(channel)
                if state is None or channel in record.overrides:
                    continue
                if state.load > wanted:
                    raise Conflict(
                        f"capacity.{channel.value}: {wanted} is below the {state.load} "
                        f"interaction(s) agent {record.agent.id} holds now",
                        code="capacity_below_load",
                    )
                if state.capacity != wanted:
                    updated = dataclasses.replace(state, capacity=wanted)
                    updates.setdefault(record.agent.id, {})[channel] = updated
                    changed.append((record.agent.id, updated))
        self._tx.put(self._rows, "profiles", profile.name, stored)
        for agent_id, channels in updates.items():
            record = agents[agent_id]
            agent = _copy_agent(record.agent, channels={**record.agent.channels, **channels})
            self._tx.put(agents, "agents", agent_id, _AgentRecord(agent, record.overrides))
        return changed


class InMemoryQueues(_Repository):
    """Queue definitions and waiting counts (``QueueRepository``)."""

    @property
    def _rows(self) -> dict[str, Queue]:
        self._tx.check_active()
        return self._tx.work.queues

    async def get(self, name: str) -> Queue | None:
        """Load a queue by name."""
        found = self._rows.get(name)
        return _copy_queue(found) if found is not None else None

    async def upsert(self, queue: Queue) -> None:
        """Create or replace a queue's definition."""
        if queue.channel not in (Channel.CHAT, Channel.EMAIL):
            raise IntegrityError(f"queue {queue.name}: channel {queue.channel} is not routable")
        self._tx.put(self._rows, "queues", queue.name, _copy_queue(queue))

    async def stats(self) -> list[QueueStats]:
        """Every queue, by name, with the count and age of interactions not yet offered."""
        waiting: dict[str, list[datetime]] = {}
        for interaction in self._tx.work.interactions.values():
            if interaction.state in WAITING_STATES:
                waiting.setdefault(interaction.queue, []).append(interaction.received_at)
        return [
            QueueStats(
                _copy_queue(self._rows[name]),
                waiting=len(waiting.get(name, [])),
                oldest_received_at=min(waiting[name]) if waiting.get(name) else None,
            )
            for name in sorted(self._rows)
        ]


class InMemoryInbox(_Repository):
    """Seen incoming events, unique on (source, event id) (``Inbox``)."""

    @property
    def _rows(self) -> dict[tuple[str, str], InboxRecord]:
        self._tx.check_active()
        return self._tx.work.inbox

    async def claim(self, source: str, event_id: str, event_type: str, at: datetime) -> bool:
        """Record that an event is being applied; False if it was seen before."""
        if (source, event_id) in self._rows:
            return False
        record = InboxRecord(source, event_id, event_type, at)
        self._tx.put(self._rows, "inbox", (source, event_id), record)
        return True

    async def link(self, source: str, event_id: str, interaction_id: str) -> None:
        """Note which interaction the event concerned (nothing happens for an unseen event)."""
        record = self._rows.get((source, event_id))
        if record is not None:
            linked = dataclasses.replace(record, interaction_id=interaction_id)
            self._tx.put(self._rows, "inbox", (source, event_id), linked)

    async def interaction_for(self, source: str, event_id: str) -> str | None:
        """The interaction a previously applied event concerned, if any."""
        record = self._rows.get((source, event_id))
        return record.interaction_id if record is not None else None

    # Stored payloads and re-drive exist only in the SQL inbox, which their tests use.
    async def record(
        self, source: str, event_id: str, event_type: str, payload: str, at: datetime
    ) -> None:
        """Not kept in memory."""
        raise NotImplementedError("use the SQL store for inbox payloads")

    async def mark_failed(self, source: str, event_id: str, error: str, at: datetime) -> None:
        """Not kept in memory."""
        raise NotImplementedError("use the SQL store for inbox payloads")

    async def get(self, source: str, event_id: str) -> InboxEntry | None:
        """Not kept in memory."""
        raise NotImplementedError("use the SQL store for inbox payloads")

    async def prune(self, received_before: datetime, limit: int) -> int:
        """Not kept in memory."""
        raise NotImplementedError("use the SQL store for inbox payloads")


class InMemoryOutbox(_Repository):
    """Promised outbound messages, leased by pushing ``next_attempt_at`` forward (``Outbox``)."""

    @property
    def _rows(self) -> dict[str, OutboxRecord]:
        self._tx.check_active()
        return self._tx.work.outbox

    def _update(self, message_id: str, **changes: Any) -> None:
        record = self._rows.get(message_id)
        if record is not None:
            self._tx.put(self._rows, "outbox", message_id, dataclasses.replace(record, **changes))

    async def add(self, message: OutboundMessage, at: datetime) -> None:
        """Promise to send ``message``; it is due at once; supersede an unclaimed older one."""
        if message.id in self._rows:
            raise IntegrityError(f"outbox message id {message.id} is taken")
        if message.supersede_key is not None:
            for old in list(self._rows.values()):
                if (
                    old.message.supersede_key == message.supersede_key
                    and old.status == OutboxStatus.PENDING
                    and old.claim_token is None
                ):
                    self._update(
                        old.message.id,
                        status=OutboxStatus.SUPERSEDED,
                        last_error=f"superseded by {message.id}",
                    )
        record = OutboxRecord(
            message=_copy_message(message, attempts=0),
            status=OutboxStatus.PENDING,
            attempts=0,
            created_at=at,
            next_attempt_at=at,
        )
        self._tx.put(self._rows, "outbox", message.id, record)
        self._tx.outbox_added = True

    async def next_sequence(self, ordering_key: str) -> int:
        """The next number for ``ordering_key``."""
        self._tx.check_active()
        sequences = self._tx.work.outbox_sequences
        number = sequences.get(ordering_key, 0) + 1
        self._tx.put(sequences, "outbox_sequences", ordering_key, number)
        return number

    def _waits_for_earlier(self, record: OutboxRecord) -> bool:
        key, sequence = record.message.ordering_key, record.message.sequence or 0
        return key is not None and any(
            other.message.ordering_key == key
            and other.status == OutboxStatus.PENDING
            and (other.message.sequence or 0) < sequence
            for other in self._rows.values()
        )

    async def claim_due(
        self, now: datetime, limit: int, lease_seconds: float, claimer: str
    ) -> list[OutboxEntry]:
        """Lease up to ``limit`` due messages, oldest due first, and count the attempt."""
        due = [
            record
            for record in self._rows.values()
            if record.status == OutboxStatus.PENDING
            and record.next_attempt_at <= now
            and not self._waits_for_earlier(record)
        ]
        due.sort(key=lambda record: (record.next_attempt_at, record.created_at))
        token = uuid.uuid4().hex
        lease_until = now + timedelta(seconds=lease_seconds)
        entries = []
        for record in due[:limit]:
            attempts = record.attempts + 1
            self._update(
                record.message.id,
                attempts=attempts,
                next_attempt_at=lease_until,
                claim_token=token,
            )
            entries.append(
                OutboxEntry(
                    message=_copy_message(record.message, attempts=attempts),
                    attempts=attempts,
                    created_at=record.created_at,
                    claim_token=token,
                    lease_until=lease_until,
                    last_error=record.last_error,
                )
            )
        return entries

    def _update_held(self, message_id: str, token: str, **changes: Any) -> bool:
        record = self._rows.get(message_id)
        if record is None or record.claim_token != token or record.status != OutboxStatus.PENDING:
            return False
        self._update(message_id, **changes)
        return True

    async def renew(self, message_id: str, claim_token: str, lease_until: datetime) -> bool:
        """Extend a lease still held."""
        return self._update_held(message_id, claim_token, next_attempt_at=lease_until)

    async def mark_sent(self, message_id: str, claim_token: str, at: datetime) -> bool:
        """The receiver acknowledged the message."""
        return self._update_held(
            message_id, claim_token, status=OutboxStatus.SENT, sent_at=at, last_error=None
        )

    async def mark_retry(
        self, message_id: str, claim_token: str, next_attempt_at: datetime, error: str
    ) -> bool:
        """The attempt failed; release the claim and try again at ``next_attempt_at``."""
        return self._update_held(
            message_id,
            claim_token,
            next_attempt_at=next_attempt_at,
            last_error=error[:_MAX_ERROR_CHARS],
            claim_token=None,
        )

    async def mark_dead(self, message_id: str, claim_token: str, at: datetime, error: str) -> bool:
        """The message will never be sent."""
        return self._update_held(
            message_id,
            claim_token,
            status=OutboxStatus.DEAD,
            sent_at=None,
            last_error=error[:_MAX_ERROR_CHARS],
            next_attempt_at=at,
        )

    async def pending_count(self) -> int:
        """Messages not yet sent nor given up on."""
        return sum(1 for record in self._rows.values() if record.status == OutboxStatus.PENDING)


# --------------------------------------------------------------------------------------------
# Unit of work and store


class InMemoryUnitOfWork:
    """One transaction over an ``InMemoryStore`` (implements ``UnitOfWork``).

    ``async with uow:`` takes a snapshot of the store; the repositories read and change that
    snapshot; ``commit()`` publishes the changes; leaving the block discards whatever was not
    committed. Like a SQL transaction, it may commit more than once.
    """

    interactions: InMemoryInteractions
    agents: InMemoryAgents
    profiles: InMemoryProfiles
    queues: InMemoryQueues
    inbox: InMemoryInbox
    outbox: InMemoryOutbox

    def __init__(self, store: InMemoryStore) -> None:
        """A unit of work over ``store``; prefer ``store.uow()``."""
        self._store = store
        self._tx: _Transaction | None = None
        self._repositories: list[_Repository] = []

    def _begin(self) -> None:
        tx = self._tx = _Transaction(self._store._state, self._store._next_id)
        if self._repositories:  # after a commit the same repositories carry on in a new one
            for repository in self._repositories:
                repository._tx = tx
            return
        self.interactions = InMemoryInteractions(tx)
        self.agents = InMemoryAgents(tx)
        self.profiles = InMemoryProfiles(tx)
        self.queues = InMemoryQueues(tx)
        self.inbox = InMemoryInbox(tx)
        self.outbox = InMemoryOutbox(tx)
        self._repositories = [
            self.interactions,
            self.agents,
            self.profiles,
            self.queues,
            self.inbox,
            self.outbox,
        ]

    async def __aenter__(self) -> Self:
        """Begin: take a snapshot of the store's committed state."""
        if self._tx is not None:
            raise RuntimeError("this unit of work has already begun")
        self._begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End: discard every change not committed; the repositories stop working."""
        if self._tx is not None:
            self._tx.active = False
            self._tx = None

    async def commit(self) -> None:
        """Publish every change made so far; Conflict if another commit changed the same rows."""
        if self._tx is None:
            raise RuntimeError("commit() outside `async with uow:`")
        self._tx.check_active()
        tx = self._tx
        self._store._publish(tx)
        tx.active = False
        self._begin()
        if tx.outbox_added and self._store.on_outbox_commit is not None:
            self._store.on_outbox_commit()


class InMemoryStore:
    """The committed state of an in-memory Harmony, and the factory of its units of work.

    Pass ``store.uow`` wherever a ``UnitOfWorkFactory`` is expected (``Relay(store.uow, ...)``).
    The inspection methods read committed state only and return copies.
    """

    def __init__(self, *, on_outbox_commit: Callable[[], None] | None = None) -> None:
        """``on_outbox_commit`` is called after each commit that added outbox messages.

        The store starts as a migrated database does: empty but for the default profile.
        """
        default = default_profile()
        self._state = _State(profiles={default.name: default})
        self._ids = 0
        self.on_outbox_commit = on_outbox_commit
        self.commits = 0

    def uow(self) -> InMemoryUnitOfWork:
        """A fresh unit of work over this store."""
        return InMemoryUnitOfWork(self)

    def _next_id(self) -> int:
        """Ids for append-only rows: increasing, with gaps where a unit of work rolled back."""
        self._ids += 1
        return self._ids

    def _publish(self, tx: _Transaction) -> None:
        current = self._state
        merged = current.snapshot()
        base_tables, work_tables = tx.base.tables(), tx.work.tables()
        current_tables, merged_tables = current.tables(), merged.tables()
        for name, key in tx.dirty:
            before = base_tables[name].get(key, _ABSENT)
            if current_tables[name].get(key, _ABSENT) is not before:
                raise Conflict(
                    f"{name} {key!r} was changed by another unit of work; retry",
                    code="concurrent_update",
                )
            merged_tables[name][key] = work_tables[name][key]
        _check_unique(merged)
        self._state = merged
        self.commits += 1

    # Inspection ------------------------------------------------------------------------------

    def interaction(self, interaction_id: str) -> Interaction | None:
        """The committed interaction with this id, if any."""
        found = self._state.interactions.get(interaction_id)
        return _copy_interaction(found) if found is not None else None

    def interactions(self) -> list[Interaction]:
        """Every committed interaction, oldest first."""
        rows = sorted(self._state.interactions.values(), key=lambda i: (i.received_at, i.id))
        return [_copy_interaction(i) for i in rows]

    def history(self, interaction_id: str) -> list[HistoryEntry]:
        """The committed history of one interaction, in order."""
        return list(self._state.history.get(interaction_id, ()))

    def agent(self, agent_id: str) -> Agent | None:
        """The committed agent with this id, if any."""
        found = self._state.agents.get(agent_id)
        return _copy_agent(found.agent) if found is not None else None

    def agents(self) -> list[Agent]:
        """Every committed agent, by id."""
        return [_copy_agent(self._state.agents[a].agent) for a in sorted(self._state.agents)]

    def agent_history(self, agent_id: str) -> list[AgentStateEntry]:
        """The committed state history of one agent, oldest first."""
        return [entry for _, entry in self._state.agent_history.get(agent_id, ())]

    def profile(self, name: str) -> Profile | None:
        """The committed profile with this name, if any."""
        found = self._state.profiles.get(name)
        return _copy_profile(found) if found is not None else None

    def mirrors(self) -> list[MirrorRecord]:
        """Every agent state change mirrored to a CRM or ACD, in the order mirrored."""
        return list(self._state.agent_mirrors.values())

    def voice_calls(self) -> list[VoiceCall]:
        """Every voice call Harmony heard of, in the order first heard."""
        return list(self._state.voice_calls.values())

    def queue(self, name: str) -> Queue | None:
        """The committed queue with this name, if any."""
        found = self._state.queues.get(name)
        return _copy_queue(found) if found is not None else None

    def inbox(self) -> list[InboxRecord]:
        """Every incoming event seen, in the order first seen."""
        return list(self._state.inbox.values())

    def outbox(
        self,
        *,
        status: OutboxStatus | None = None,
        type: str | None = None,
        interaction_id: str | None = None,
    ) -> list[OutboxRecord]:
        """Outbox rows in the order they were added, optionally filtered."""
        return [
            dataclasses.replace(record, message=_copy_message(record.message))
            for record in self._state.outbox.values()
            if (status is None or record.status == status)
            and (type is None or record.message.type == type)
            and (interaction_id is None or record.message.interaction_id == interaction_id)
        ]

    def outbox_record(self, message_id: str) -> OutboxRecord | None:
        """One outbox row by message id, if any."""
        record = self._state.outbox.get(message_id)
        if record is None:
            return None
        return dataclasses.replace(record, message=_copy_message(record.message))


def _duplicates(values: Iterable[Hashable]) -> list[Hashable]:
    seen: set[Hashable] = set()
    repeated = []
    for value in values:
        if value in seen:
            repeated.append(value)
        seen.add(value)
    return repeated


def _check_unique(state: _State) -> None:
    """The unique constraints of the SQL schema, checked on the state about to be published."""
    interactions = state.interactions.values()
    agents = [record.agent for record in state.agents.values()]
    checks: dict[str, Iterable[Hashable]] = {
        "interactions (crm_adapter, external_id)": (
            (i.crm_adapter, i.external_id) for i in interactions
        ),
        "interactions.request_id": (i.request_id for i in interactions if i.request_id),
        "agents.crm_agent_id": (a.crm_agent_id for a in agents),
        "agents.acd_agent_id": (a.acd_agent_id for a in agents),
    }
    for what, values in checks.items():
        repeated = _duplicates(values)
        if repeated:
            raise Conflict(
                f"{what} {repeated[0]!r} was taken by another unit of work; retry",
                code="concurrent_update",
            )


# --------------------------------------------------------------------------------------------
# Clock and adapter


def _as_utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"FakeClock needs a timezone-aware datetime, got {at!r}")
    return at.astimezone(UTC)


class FakeClock:
    """A clock that moves only when told to (implements the ``Clock`` port)."""

    DEFAULT_START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

    def __init__(self, start: datetime | None = None) -> None:
        """Start at ``start`` (timezone-aware), or at 2026-01-01 09:00 UTC."""
        self._now = _as_utc(start or self.DEFAULT_START)

    def now(self) -> datetime:
        """The current fake time, timezone-aware UTC."""
        return self._now

    def set(self, at: datetime) -> None:
        """Jump to ``at`` (timezone-aware; kept in UTC), forwards or backwards."""
        self._now = _as_utc(at)

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds) and return the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("FakeClock.advance() only moves forward; use set() to go back")
        self._now += step
        return self._now


class FakeAdapter:
    """A CRM or ACD in memory (implements ``harmony.adapters.base.Adapter``).

    Every call to ``send`` is recorded in ``attempts``; the ones that succeed also in ``sent``.
    ``fail_next`` queues failures that the next sends raise, in order.
    """

    def __init__(
        self, kind: TargetKind, name: str = "generic", *, secret: str | None = None
    ) -> None:
        """``secret`` (``whsec_...``) makes ``verify_inbound`` check Standard Webhooks
        signatures for real; without it every inbound request is accepted."""
        self.kind: TargetKind = kind
        self.name: str = name
        self.sent: list[OutboundMessage] = []
        self.attempts: list[OutboundMessage] = []
        self._failures: deque[AdapterError] = deque()
        self._signer = Signer(secret) if secret is not None else None

    def verify_inbound(self, body: bytes, headers: dict[str, str]) -> None:
        """Raise ``SignatureError`` unless signed with the secret (when one was given)."""
        if self._signer is not None:
            self._signer.verify(body, headers)

    async def send(self, message: OutboundMessage) -> None:
        """Record the message, then raise the next queued failure if there is one."""
        self.attempts.append(message)
        if self._failures:
            raise self._failures.popleft()
        self.sent.append(message)

    def fail_next(
        self,
        count: int = 1,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        reason: str = "simulated failure",
    ) -> None:
        """Make the next ``count`` sends fail, transiently (the default) or permanently."""
        for _ in range(count):
            error: AdapterError
            what = f"{self.kind.value}:{self.name}: {reason}"
            if permanent:
                error = PermanentAdapterError(what)
            else:
                error = TransientAdapterError(what, retry_after)
            self._failures.append(error)

    def fail_with(self, error: AdapterError) -> None:
        """Make the next send raise exactly ``error``."""
        self._failures.append(error)

    def clear_failures(self) -> None:
        """Forget failures queued but not raised yet."""
        self._failures.clear()

    @property
    def pending_failures(self) -> int:
        """How many queued failures the next sends will still raise."""
        return len(self._failures)

    def sent_of_type(self, message_type: str) -> list[OutboundMessage]:
        """The messages of one type this adapter acknowledged, in order."""
        return [message for message in self.sent if message.type == message_type]


def _conforms(store: InMemoryStore) -> UnitOfWorkFactory:
    """Type-level check that the fakes implement the ports (never called)."""
    return store.uow
