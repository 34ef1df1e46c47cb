"""The ACD simulator: a longest-idle, skills-based agent selector speaking the generic protocol.

Harmony sends ``routing.requested``, ``work.ended``, ``agent.state`` and ``agent.capacity`` to
``POST /events``; the simulator answers 202 at once and reports its decisions later as signed
``agent.selected`` / ``request.queued`` callbacks to ``{harmony_url}/v1/acd/{adapter}/events``, as
a real ACD would. Agents come from the same seed file Harmony is provisioned with, so both sides
agree on ids, skills, capacity and the profile's wrap-up and cross-channel rules; a later change
of capacity or rules reaches it as ``agent.capacity``. ``agent.state`` and ``agent.capacity`` are
applied only when their ``sequence`` is newer than the last applied (per agent and channel, and
per agent for capacity), so a message that overtook another does not undo it.

Every agent starts logged out on every channel. It becomes selectable on a channel once Harmony
reports it ready there (``agent.state``, which the simulator echoes back as
``agent.state_changed`` with ``echo_of``, the way a real ACD publishes every change to its
subscribers), and stays selectable while it is out of wrap-up, under capacity and not blocked
by work on another channel (``blocks``). Voice calls happen at the ACD itself: on demand with
``POST /simulate/voice`` or as a steady rate, each reported as ``voice.started`` /
``voice.ended``.

All state lives in memory and is exposed on ``GET /state`` so that tests and load runs can check
what the ACD decided (assignments, peak load per agent and channel, refusals, rejections).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from harmony.adapters.generic_http.protocol import (
    AGENT_CAPACITY,
    AGENT_SELECTED,
    AGENT_STATE,
    AGENT_STATE_CHANGED,
    OFFER_DECLINED,
    OFFER_RESCINDED,
    OFFER_TIMED_OUT,
    REQUEST_CANCELLED,
    REQUEST_QUEUED,
    ROUTING_REQUESTED,
    VOICE_ENDED,
    VOICE_STARTED,
    WORK_ENDED,
    Envelope,
)
from harmony.dev.simulators._common import (
    LOGGED_OUT,
    READY,
    AgentStateMessage,
    Answer,
    ChannelName,
    EventError,
    SequenceGuard,
    SimConfig,
    SimulatorBase,
    read_body,
    simulator_app,
)
from harmony.seed import CHANNELS, Seed, SeedAgent

log = structlog.get_logger()

VOICE = "voice"
# Seconds added to a wrap-up's end before re-dispatching, so the timer never looks too early.
WAKE_MARGIN = 0.005
# Harmony's built-in "default" profile, for agents whose profile the seed does not define: work
# on the key channel blocks offers on the listed ones (a call blocks chat and email, chat blocks
# email; email may be interrupted).
DEFAULT_BLOCKS: dict[str, frozenset[str]] = {
    "voice": frozenset({"chat", "email"}),
    "chat": frozenset({"email"}),
    "email": frozenset(),
}


@dataclass
class AcdSimConfig(SimConfig):
    """Settings of one ACD simulator instance.

    ``secret`` is the ``whsec_...`` secret shared with Harmony's ACD adapter: it verifies what
    Harmony sends and signs the callbacks. The ``retry_*`` fields tune how callbacks are retried
    after a network error or 5xx (the defaults follow the brief: 0.2 s doubling, capped at 5 s,
    10 attempts); tests shrink them. ``voice_calls_per_minute`` > 0 starts calls at that rate on
    random agents free on voice, each lasting about ``voice_call_seconds`` (+-50%).
    """

    refusal_cooldown: float = 2.0
    retry_attempts: int = 10
    voice_calls_per_minute: float = 0.0
    voice_call_seconds: float = 20.0


# --- inbound events -------------------------------------------------------------------------


class RoutingRequested(BaseModel):
    """``data`` of ``routing.requested``; only the fields the selection needs are kept."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=200)
    interaction_id: str = Field(min_length=1, max_length=200)
    channel: Literal["chat", "email"]
    queue: str = Field(min_length=1)
    priority: int = Field(default=0, ge=0, le=100)
    skills: list[str] = Field(default_factory=list)
    # Optional so an older sender still works; a missing value means "now" (FIFO by arrival).
    received_at: AwareDatetime | None = None
    # A transfer to a named agent: only that agent may be selected.
    agent_id: str | None = Field(default=None, min_length=1, max_length=200)


class WorkEnded(BaseModel):
    """``data`` of ``work.ended``."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1)
    interaction_id: str = ""
    agent_id: str = Field(min_length=1)
    channel: Literal["chat", "email"]
    reason: str = "completed"
    # The channel's wrap-up, which starts when the work ends (absent from older senders).
    wrap_up_seconds: int = Field(default=0, ge=0, le=3600)


class OfferEnded(BaseModel):
    """``data`` of ``offer.declined`` / ``offer.timed_out``: the request is open again."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=200)
    interaction_id: str = ""
    agent_id: str = Field(min_length=1, max_length=200)
    agents_tried: list[str] = Field(default_factory=list)
    received_at: AwareDatetime | None = None


class RequestCancelled(BaseModel):
    """``data`` of ``request.cancelled``: forget the request (and free the agent it names)."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=200)
    agent_id: str | None = Field(default=None, min_length=1, max_length=200)
    reason: str = ""


class AgentCapacity(BaseModel):
    """``data`` of ``agent.capacity``: an agent's capacities and its profile's rules, sent by
    Harmony when a profile or the agent changes; applied only if its sequence is newer."""

    model_config = ConfigDict(extra="ignore")

    agent_id: str = Field(min_length=1, max_length=200)
    profile: str | None = Field(default=None, max_length=100)
    capacity: dict[ChannelName, int] = Field(default_factory=dict)
    blocks: dict[ChannelName, list[ChannelName]] | None = None
    wrap_up_seconds: dict[ChannelName, int] | None = None
    changed_at: AwareDatetime | None = None
    sequence: int | None = Field(default=None, ge=0, le=2**63 - 1)


INBOUND_MODELS: dict[str, type[BaseModel]] = {
    ROUTING_REQUESTED: RoutingRequested,
    OFFER_DECLINED: OfferEnded,
    OFFER_TIMED_OUT: OfferEnded,
    OFFER_RESCINDED: OfferEnded,
    REQUEST_CANCELLED: RequestCancelled,
    WORK_ENDED: WorkEnded,
    AGENT_STATE: AgentStateMessage,
    AGENT_CAPACITY: AgentCapacity,
}


class VoiceRequest(BaseModel):
    """Body of ``POST /simulate/voice``: a call reaches an agent, or ends."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1, max_length=200)
    action: Literal["start", "end"]
    # Generated on start when absent; on end, absent means the agent's oldest call.
    call_id: str | None = Field(default=None, min_length=1, max_length=128)


# --- simulator state ------------------------------------------------------------------------


@dataclass
class SimAgent:
    """One agent as the ACD sees it: per channel its state, capacity, load and wrap-up."""

    agent_id: str
    skills: frozenset[str]
    capacity: dict[str, int]
    order: int
    load: dict[str, int]
    peak_load: dict[str, int]
    last_activity: float
    # blocks[c]: channels that get no offers while the agent holds work on c.
    blocks: dict[str, frozenset[str]] = field(default_factory=lambda: dict(DEFAULT_BLOCKS))
    wrap_up_seconds: dict[str, int] = field(default_factory=dict)
    # channel -> logged_out | not_ready | ready, as Harmony last reported it.
    state: dict[str, str] = field(default_factory=dict)
    reason: dict[str, str | None] = field(default_factory=dict)
    # channel -> a not ready or log out waiting for the channel's work to end (no offers).
    pending: dict[str, str | None] = field(default_factory=dict)
    # channel -> monotonic time its wrap-up ends.
    wrap_up_until: dict[str, float] = field(default_factory=dict)
    # Ids of the voice calls the agent is on, oldest first.
    calls: list[str] = field(default_factory=list)
    # Breaks ties between activities that share one monotonic clock reading, so the agent
    # touched first is still the one idle longest.
    activity_seq: int = 0

    @classmethod
    def from_seed(cls, seed: Seed, seed_agent: SeedAgent, order: int, now: float) -> SimAgent:
        """The agent as the seed defines it (its profile's rules, else Harmony's default)."""
        capacity = seed.capacity_of(seed_agent)
        profile = seed.profile_of(seed_agent)
        channels = list(dict.fromkeys([*CHANNELS, *capacity]))
        blocks = (
            {ch: frozenset(bs) for ch, bs in profile.blocks.items()}
            if profile
            else dict(DEFAULT_BLOCKS)
        )
        return cls(
            agent_id=seed_agent.acd_agent_id,
            skills=frozenset(seed_agent.skills),
            capacity={ch: capacity.get(ch, 0) for ch in channels},
            order=order,
            load=dict.fromkeys(channels, 0),
            peak_load=dict.fromkeys(channels, 0),
            last_activity=now,
            blocks=blocks,
            wrap_up_seconds=dict(profile.wrap_up_seconds) if profile else {},
            state=dict.fromkeys(channels, LOGGED_OUT),
            reason=dict.fromkeys(channels),
        )

    def has_room(self, channel: str) -> bool:
        """True if the agent can take one more interaction on ``channel``."""
        return self.load.get(channel, 0) < self.capacity.get(channel, 0)

    def in_wrap_up(self, channel: str, now: float) -> bool:
        """True while the wrap-up after work on ``channel`` runs."""
        return self.wrap_up_until.get(channel, 0.0) > now

    def blocker(self, channel: str) -> str | None:
        """The other channel whose work blocks offers on ``channel``, if any."""
        for other, load in self.load.items():
            if other != channel and load > 0 and channel in self.blocks.get(other, ()):
                return other
        return None

    def offerable(self, channel: str, now: float) -> bool:
        """Ready on ``channel``, out of wrap-up, under capacity and not blocked."""
        return (
            self.state.get(channel, LOGGED_OUT) == READY
            and self.pending.get(channel) is None
            and not self.in_wrap_up(channel, now)
            and self.has_room(channel)
            and self.blocker(channel) is None
        )

    def idle_key(self) -> tuple[float, int, int]:
        """Sort key: smallest means idle longest; seed order breaks exact ties."""
        return (self.last_activity, self.activity_seq, self.order)

    def as_json(self, now: float, wall_now: datetime) -> dict[str, Any]:
        """The agent as reported by ``GET /state`` (``now`` is monotonic, ``wall_now`` UTC)."""
        return {
            "agent_id": self.agent_id,
            "skills": sorted(self.skills),
            "capacity": dict(self.capacity),
            "load": dict(self.load),
            "peak_load": dict(self.peak_load),
            "state": dict(self.state),
            "reason": dict(self.reason),
            "pending": dict(self.pending),
            "wrap_up_until": {
                ch: (wall_now + timedelta(seconds=self.wrap_up_until[ch] - now)).isoformat()
                if self.in_wrap_up(ch, now)
                else None
                for ch in self.state
            },
            "voice_calls": list(self.calls),
        }


@dataclass
class SimRequest:
    """A routing request the ACD holds until it finds an agent."""

    request_id: str
    interaction_id: str
    channel: str
    queue: str
    priority: int
    skills: frozenset[str]
    received_at: datetime
    seq: int
    # agent_id -> monotonic time until which that agent may not be offered this request again.
    excluded: dict[str, float] = field(default_factory=dict)
    # Agents whose offer of this request ended unanswered or declined, or who had the work under
    # an earlier request (a transfer, an overflow): offered it again only when no other agent
    # qualifies for it at all.
    tried: frozenset[str] = frozenset()
    # Only this agent may take it (a transfer to a named agent).
    required_agent: str | None = None
    queued_reported: bool = False
    queued_task: asyncio.Task[None] | None = None

    def sort_key(self) -> tuple[int, datetime, int]:
        """Dispatch order: higher priority first, then oldest, then arrival order."""
        return (-self.priority, self.received_at, self.seq)

    def excludes(self, agent_id: str, now: float) -> bool:
        """True if ``agent_id`` refused this request less than a cooldown ago."""
        until = self.excluded.get(agent_id)
        return until is not None and until > now

    def waited_past(self, max_wait_seconds: float | None, wall_now: datetime) -> bool:
        """True once the request has waited (since ``received_at``) beyond the queue's bound."""
        if max_wait_seconds is None:
            return False
        return (wall_now - self.received_at).total_seconds() > max_wait_seconds


@dataclass
class Selection:
    """An ``agent.selected`` callback that is on its way; the slot is already reserved."""

    request: SimRequest
    agent: SimAgent
    selected_at: datetime
    # work.ended can overtake the callback's answer (Harmony delivers, the CRM completes and
    # Harmony reports work.ended before our POST returns); the slot is then already free.
    ended: bool = False
    # The offer ended (declined, timed out, cancelled) before the answer came: the request is
    # back in the queue or gone, and this selection is over.
    offer_ended: bool = False


@dataclass
class Assignment:
    """A selection Harmony accepted."""

    agent_id: str
    interaction_id: str
    channel: str
    selected_at: datetime
    ended_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """The assignment as reported by ``GET /state``."""
        return {
            "agent_id": self.agent_id,
            "interaction_id": self.interaction_id,
            "channel": self.channel,
            "selected_at": self.selected_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
        }


class AcdSimulator(SimulatorBase[AcdSimConfig]):
    """The ACD's in-memory state and behaviour, independent of the HTTP layer."""

    def __init__(self, config: AcdSimConfig) -> None:
        self.callback_url = f"{config.harmony_url.rstrip('/')}/v1/acd/{config.adapter}/events"
        super().__init__(
            config,
            name="ACD",
            log_prefix="acd_sim",
            post_url=self.callback_url,
            retry_event="callback_retry",
        )
        self._lock = asyncio.Lock()
        self._seq = itertools.count()
        self._activity_seq = itertools.count(1)
        self._random = random.Random()
        start = time.monotonic()
        self._agents = [
            SimAgent.from_seed(config.seed, seed_agent, order, start)
            for order, seed_agent in enumerate(config.seed.agents)
        ]
        self._agents_by_id = {agent.agent_id: agent for agent in self._agents}
        self._seen_ids: set[str] = set()
        # Every request held, by id, to put it back in the queue when its offer ends.
        self._requests: dict[str, SimRequest] = {}
        self._max_wait = {q.name: q.max_wait_seconds for q in config.seed.queues}
        self._offers_ended: list[dict[str, Any]] = []
        self._cancelled: dict[str, str] = {}
        self._expired: list[str] = []
        self._pending: dict[str, SimRequest] = {}
        self._in_flight: dict[str, Selection] = {}
        self._assignments: dict[str, Assignment] = {}
        # interaction id -> the agents Harmony took a selection of for it, over all its requests:
        # work routed again (transferred, overflowed) goes to someone else while anyone can.
        self._had: dict[str, set[str]] = {}
        self._rejected: dict[str, dict[str, Any]] = {}
        self._refusals = 0
        self._unmatched_work_ended = 0
        self._unknown_agent_state = 0
        self._applied_sequences = SequenceGuard()
        self._echoes_sent = 0
        self._voice_started = 0
        self._voice_ended = 0
        self._voice_errors: list[dict[str, Any]] = []

    # -- lifecycle

    async def start(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Open the outbound HTTP client and start voice traffic, if configured."""
        await super().start(transport)
        if self.config.voice_calls_per_minute > 0:
            self._spawn(self._voice_traffic(self.config.voice_calls_per_minute))

    # -- inbound

    async def handle(self, message: Envelope, data: BaseModel) -> dict[str, Any]:
        """Apply one verified event; return the 202 body."""
        async with self._lock:
            if message.id in self._seen_ids:
                return {"status": "duplicate"}
            if isinstance(data, RoutingRequested):
                status = self._on_routing_requested(data)
            elif isinstance(data, OfferEnded):
                status = self._on_offer_ended(message.type, data)
            elif isinstance(data, RequestCancelled):
                status = self._on_request_cancelled(data)
            elif isinstance(data, WorkEnded):
                status = self._on_work_ended(data)
            elif isinstance(data, AgentStateMessage):
                status = self._on_agent_state(message, data)
            elif isinstance(data, AgentCapacity):
                status = self._on_agent_capacity(data)
            else:  # read_event only lets known types through
                raise AssertionError(f"unhandled event data {type(data).__name__}")
            self._seen_ids.add(message.id)
            self._dispatch_locked()
        return {"status": status}

    def _on_routing_requested(self, data: RoutingRequested) -> str:
        rid = data.request_id
        if rid in self._pending or rid in self._in_flight or rid in self._assignments:
            # Same request under a new envelope id: holding it twice would assign it twice.
            log.warning("acd_sim.request_already_held", request_id=rid)
            return "duplicate"
        self._rejected.pop(rid, None)
        request = SimRequest(
            request_id=rid,
            interaction_id=data.interaction_id,
            channel=data.channel,
            queue=data.queue,
            priority=data.priority,
            skills=frozenset(data.skills),
            received_at=data.received_at or datetime.now(UTC),
            seq=next(self._seq),
            tried=frozenset(self._had.get(data.interaction_id, ())),
            required_agent=data.agent_id,
        )
        self._pending[rid] = self._requests[rid] = request
        log.info("acd_sim.request_received", request_id=rid, channel=data.channel)
        return "accepted"

    def _free_offer(self, rid: str, agent_id: str) -> bool:
        """The offer of ``rid`` to ``agent_id`` ended without work: give the slot back."""
        selection = self._in_flight.get(rid)
        if selection and selection.agent.agent_id == agent_id and not selection.ended:
            # Harmony's answer to the selection is still on its way: settle frees nothing more.
            selection.ended = selection.offer_ended = True
            del self._in_flight[rid]
            self._release(selection.agent, selection.request.channel, touch=False)
            return True
        assignment = self._assignments.pop(rid, None)
        if assignment and assignment.agent_id == agent_id and assignment.ended_at is None:
            self._release(self._agents_by_id[agent_id], assignment.channel, touch=False)
            return True
        if assignment is not None:
            self._assignments[rid] = assignment
        return False

    def _on_offer_ended(self, message_type: str, data: OfferEnded) -> str:
        """Free the agent and put the request back in its queue with its original age; the
        agents already tried are left out while another qualifies."""
        rid = data.request_id
        freed = self._free_offer(rid, data.agent_id)
        self._offers_ended.append(
            {"type": message_type, "request_id": rid, "agent_id": data.agent_id, "freed": freed}
        )
        request = self._requests.get(rid)
        if request is None or rid in self._cancelled:
            return "ignored"
        request.tried = request.tried | {data.agent_id, *data.agents_tried}
        if data.received_at is not None:
            request.received_at = data.received_at
        # Harmony waits for the answer again: report queued again if nobody is free.
        request.queued_reported = False
        request.queued_task = None
        self._pending[rid] = request
        log.info("acd_sim.offer_ended", request_id=rid, agent_id=data.agent_id, type=message_type)
        return "accepted"

    def _on_request_cancelled(self, data: RequestCancelled) -> str:
        rid = data.request_id
        self._cancelled[rid] = data.reason
        self._pending.pop(rid, None)
        freed = data.agent_id is not None and self._free_offer(rid, data.agent_id)
        log.info(
            "acd_sim.request_cancelled",
            request_id=rid,
            reason=data.reason,
            agent_id=data.agent_id,
            freed=freed,
        )
        return "accepted"

    def _on_work_ended(self, data: WorkEnded) -> str:
        rid = data.request_id
        agent_id = data.agent_id
        selection = self._in_flight.get(rid)
        if selection and selection.agent.agent_id == agent_id and not selection.ended:
            selection.ended = True
            self._end_work(selection.agent, selection.request.channel, data.wrap_up_seconds)
            log.info("acd_sim.work_ended", request_id=rid, agent_id=agent_id, reason=data.reason)
            return "accepted"
        assignment = self._assignments.get(rid)
        if assignment and assignment.agent_id == agent_id and assignment.ended_at is None:
            assignment.ended_at = datetime.now(UTC)
            self._end_work(self._agents_by_id[agent_id], assignment.channel, data.wrap_up_seconds)
            log.info("acd_sim.work_ended", request_id=rid, agent_id=agent_id, reason=data.reason)
            return "accepted"
        # Unknown request, another agent, or a second end for one request: freeing anything
        # would corrupt the load, so only count it.
        self._unmatched_work_ended += 1
        log.warning(
            "acd_sim.work_ended_unmatched",
            request_id=rid,
            agent_id=data.agent_id,
            reason=data.reason,
        )
        return "accepted"

    def _on_agent_state(self, message: Envelope, data: AgentStateMessage) -> str:
        """Apply Harmony's view of one channel; echo it if it changed anything here."""
        agent = self._agents_by_id.get(data.agent_id)
        if agent is None:
            # Answered 202 all the same: refusing would only make Harmony's relay give up on it.
            self._unknown_agent_state += 1
            log.warning("acd_sim.agent_state_unknown_agent", agent_id=data.agent_id)
            return "ignored"
        channel = data.channel
        if not self._applied_sequences.admit((agent.agent_id, channel), data.sequence):
            log.info("acd_sim.agent_state_stale", agent_id=agent.agent_id, channel=channel)
            return "stale"
        pending_before = agent.pending.get(channel)
        agent.pending[channel] = data.pending_state
        before = (agent.state.get(channel, LOGGED_OUT), agent.reason.get(channel))
        if before == (data.state, data.reason):
            return "unchanged" if pending_before == data.pending_state else "accepted"
        agent.state[channel], agent.reason[channel] = data.state, data.reason
        log.info(
            "acd_sim.agent_state",
            agent_id=agent.agent_id,
            channel=channel,
            state=data.state,
            previous=before[0],
        )
        # Like a real ACD publishing the change to its subscribers, Harmony among them; echo_of
        # lets Harmony recognise its own change rather than apply it a second time.
        self._spawn(self._send_echo(agent.agent_id, channel, data.state, data.reason, message.id))
        return "accepted"

    def _on_agent_capacity(self, data: AgentCapacity) -> str:
        """Choose by the capacities and rules Harmony now holds for the agent."""
        agent = self._agents_by_id.get(data.agent_id)
        if agent is None:
            self._unknown_agent_state += 1
            log.warning("acd_sim.agent_capacity_unknown_agent", agent_id=data.agent_id)
            return "ignored"
        if not self._applied_sequences.admit((agent.agent_id, AGENT_CAPACITY), data.sequence):
            log.info("acd_sim.agent_capacity_stale", agent_id=agent.agent_id)
            return "stale"
        agent.capacity.update({ch: max(n, 0) for ch, n in data.capacity.items()})
        if data.blocks is not None:
            agent.blocks = {ch: frozenset(bs) for ch, bs in data.blocks.items()}
        if data.wrap_up_seconds is not None:
            agent.wrap_up_seconds = {ch: n for ch, n in data.wrap_up_seconds.items()}
        log.info(
            "acd_sim.agent_capacity",
            agent_id=agent.agent_id,
            profile=data.profile,
            capacity=dict(agent.capacity),
        )
        return "accepted"

    # -- capacity bookkeeping (lock held)

    def _touch(self, agent: SimAgent, now: float) -> None:
        agent.last_activity = now
        agent.activity_seq = next(self._activity_seq)

    def _reserve(self, agent: SimAgent, channel: str, now: float) -> None:
        agent.load[channel] = agent.load.get(channel, 0) + 1
        agent.peak_load[channel] = max(agent.peak_load.get(channel, 0), agent.load[channel])
        self._touch(agent, now)

    def _release(self, agent: SimAgent, channel: str, touch: bool) -> None:
        """Give back one slot; ``touch`` marks real work ending (it resets the idle clock)."""
        agent.load[channel] = max(0, agent.load.get(channel, 0) - 1)
        if touch:
            self._touch(agent, time.monotonic())

    def _end_work(self, agent: SimAgent, channel: str, wrap_up_seconds: int) -> None:
        """Work on ``channel`` ended: free its slot and start the channel's wrap-up."""
        self._release(agent, channel, touch=True)
        if wrap_up_seconds <= 0:
            return
        until = time.monotonic() + wrap_up_seconds
        agent.wrap_up_until[channel] = max(agent.wrap_up_until.get(channel, 0.0), until)
        # Nothing else would wake the queue when the wrap-up runs out.
        self._spawn(self._dispatch_at(until))

    # -- dispatch (lock held, no I/O: callbacks go out in background tasks)

    def _pick(self, request: SimRequest, now: float) -> SimAgent | None:
        qualified = [
            agent
            for agent in self._agents
            if agent.capacity.get(request.channel, 0) > 0
            # A transfer to a named agent goes to that agent, skills or not.
            and (
                request.required_agent == agent.agent_id
                if request.required_agent is not None
                else request.skills <= agent.skills
            )
        ]
        # An agent tried before only when nobody else could ever take it.
        untried = [agent for agent in qualified if agent.agent_id not in request.tried]
        candidates = [
            agent
            for agent in (untried or qualified)
            if agent.offerable(request.channel, now) and not request.excludes(agent.agent_id, now)
        ]
        return min(candidates, key=SimAgent.idle_key, default=None)

    def _dispatch_locked(self) -> None:
        """Assign every pending request that has a free qualified agent, in priority order.

        A request nobody can take is skipped rather than blocking the ones behind it, since a
        request needing a rare skill must not stall ordinary work.
        """
        now = time.monotonic()
        wall_now = datetime.now(UTC)
        waiting: list[SimRequest] = []
        for request in sorted(self._pending.values(), key=SimRequest.sort_key):
            if request.waited_past(self._max_wait.get(request.queue), wall_now):
                # Past its queue's maximum wait: Harmony applies the overflow rule; an agent
                # chosen now would only be refused.
                del self._pending[request.request_id]
                self._expired.append(request.request_id)
                continue
            agent = self._pick(request, now)
            if agent is None:
                waiting.append(request)
                continue
            del self._pending[request.request_id]
            self._reserve(agent, request.channel, now)
            selection = Selection(request, agent, datetime.now(UTC))
            self._in_flight[request.request_id] = selection
            log.info(
                "acd_sim.agent_selected", request_id=request.request_id, agent_id=agent.agent_id
            )
            self._spawn(self._send_selection(selection))
        for position, request in enumerate(waiting, start=1):
            if not request.queued_reported:
                request.queued_reported = True
                request.queued_task = self._spawn(self._send_queued(request, position))

    async def _dispatch(self) -> None:
        async with self._lock:
            self._dispatch_locked()

    async def _dispatch_after(self, delay: float) -> None:
        """Re-dispatch once a refusal cooldown has run out."""
        await asyncio.sleep(delay)
        await self._dispatch()

    async def _dispatch_at(self, until: float) -> None:
        """Re-dispatch once the monotonic clock has passed ``until`` (a wrap-up's end)."""
        # A timer may fire a hair early; the margin makes sure the wrap-up is over when we look.
        await asyncio.sleep(max(0.0, until - time.monotonic()) + WAKE_MARGIN)
        await self._dispatch()

    # -- voice calls (they happen at the ACD; Harmony is told of each start and end)

    def _agent(self, agent_id: str) -> SimAgent:
        agent = self._agents_by_id.get(agent_id)
        if agent is None:
            raise EventError(404, "unknown_agent", f"agent_id: no agent {agent_id!r}")
        return agent

    def _record_voice_error(self, event_type: str, call_id: str, answer: Answer) -> None:
        self._voice_errors.append(
            {
                "type": event_type,
                "call_id": call_id,
                "status_code": answer.status,
                "error": answer.error,
                "detail": answer.detail,
            }
        )
        log.warning(
            "acd_sim.voice_event_failed",
            type=event_type,
            call_id=call_id,
            status=answer.status,
            error=answer.error,
        )

    async def start_call(self, agent_id: str, call_id: str | None = None) -> tuple[str, Answer]:
        """A call reaches the agent: take a voice slot, then report ``voice.started``.

        Refused (``EventError`` 409) unless the agent is logged into voice with a free voice
        slot. Returns once Harmony answered; the call stands whatever the answer, since it
        happened at the ACD.
        """
        async with self._lock:
            agent = self._agent(agent_id)
            call_id = self._check_call_start(agent, call_id)
            self._reserve(agent, VOICE, time.monotonic())
            agent.calls.append(call_id)
            self._voice_started += 1
        log.info("acd_sim.voice_started", agent_id=agent_id, call_id=call_id)
        answer = await self._post(VOICE_STARTED, {"agent_id": agent_id, "call_id": call_id})
        if not answer.ok:
            self._record_voice_error(VOICE_STARTED, call_id, answer)
        return call_id, answer

    def _check_call_start(self, agent: SimAgent, call_id: str | None) -> str:
        """The call's id if ``agent`` can take it now; else raise the 409 (lock held)."""
        if agent.state.get(VOICE, LOGGED_OUT) == LOGGED_OUT:
            raise EventError(
                409, "agent_unavailable", f"agent {agent.agent_id} is not logged into voice"
            )
        if not agent.has_room(VOICE):
            raise EventError(
                409,
                "agent_unavailable",
                f"agent {agent.agent_id} has no free voice slot "
                f"({agent.load.get(VOICE, 0)}/{agent.capacity.get(VOICE, 0)})",
            )
        if call_id is None:
            return f"call-{uuid.uuid4().hex[:12]}"
        if any(call_id in other.calls for other in self._agents):
            raise EventError(409, "call_in_progress", f"call_id: call {call_id!r} is in progress")
        return call_id

    async def end_call(self, agent_id: str, call_id: str | None = None) -> tuple[str, Answer]:
        """The call ends: report ``voice.ended`` with the profile's wrap-up, then free the slot.

        The slot is freed only after Harmony answered, so a chat selected at once for the
        freed agent cannot reach Harmony before the end does (and be refused as blocked).
        """
        async with self._lock:
            agent = self._agent(agent_id)
            if call_id is None:
                if not agent.calls:
                    raise EventError(409, "no_call", f"agent {agent_id} is on no call")
                call_id = agent.calls[0]
            elif call_id not in agent.calls:
                raise EventError(
                    404, "unknown_call", f"call_id: agent {agent_id} is not on call {call_id!r}"
                )
            # Off the list at once, so a second end of the same call is refused.
            agent.calls.remove(call_id)
            seconds = agent.wrap_up_seconds.get(VOICE, 0)
            self._voice_ended += 1
        log.info("acd_sim.voice_ended", agent_id=agent_id, call_id=call_id)
        answer = await self._post(
            VOICE_ENDED, {"agent_id": agent_id, "call_id": call_id, "wrap_up_seconds": seconds}
        )
        if not answer.ok:
            self._record_voice_error(VOICE_ENDED, call_id, answer)
        async with self._lock:
            self._end_work(agent, VOICE, seconds)
            self._dispatch_locked()
        return call_id, answer

    async def _voice_traffic(self, per_minute: float) -> None:
        """Start a call every ``60/per_minute`` seconds on a random agent free on voice."""
        loop = asyncio.get_running_loop()
        interval = 60.0 / per_minute
        next_at = loop.time()
        while True:
            # Scheduled from the previous tick, not from now, so the rate does not drift.
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            now = time.monotonic()
            free = [agent for agent in self._agents if agent.offerable(VOICE, now)]
            if not free:
                log.info("acd_sim.voice_call_missed", reason="no agent free on voice")
                continue
            agent = self._random.choice(free)
            seconds = self.config.voice_call_seconds * self._random.uniform(0.5, 1.5)
            self._spawn(self._voice_call(agent.agent_id, seconds))

    async def _voice_call(self, agent_id: str, seconds: float) -> None:
        try:
            call_id, _ = await self.start_call(agent_id)
        except EventError as exc:
            # The agent changed between the pick and the start (another call, a logout).
            log.info("acd_sim.voice_call_missed", agent_id=agent_id, reason=exc.detail)
            return
        await asyncio.sleep(seconds)
        await self.end_call(agent_id, call_id)

    # -- callbacks (never under the lock; SimulatorBase._post sends and retries them)

    async def _send_echo(
        self, agent_id: str, channel: str, state: str, reason: str | None, echo_of: str
    ) -> None:
        data: dict[str, Any] = {
            "agent_id": agent_id,
            "channels": [channel],
            "state": state,
            "reason": reason,
            "echo_of": echo_of,
        }
        answer = await self._post(AGENT_STATE_CHANGED, data)
        self._echoes_sent += 1
        if not answer.ok:
            log.warning(
                "acd_sim.echo_not_accepted",
                agent_id=agent_id,
                channel=channel,
                status=answer.status,
                error=answer.error,
            )

    async def _send_queued(self, request: SimRequest, position: int) -> None:
        answer = await self._post(
            REQUEST_QUEUED, {"request_id": request.request_id, "position": position}
        )
        if not answer.ok:
            # Purely informational for Harmony; the request stays held either way.
            log.warning(
                "acd_sim.queued_not_accepted",
                request_id=request.request_id,
                status=answer.status,
                error=answer.error,
            )

    async def _send_selection(self, selection: Selection) -> None:
        request = selection.request
        if request.queued_task is not None:
            # Keep request.queued ahead of agent.selected for one request, as Harmony expects.
            await asyncio.wait({request.queued_task})
        answer = await self._post(
            AGENT_SELECTED,
            {"request_id": request.request_id, "agent_id": selection.agent.agent_id},
        )
        async with self._lock:
            self._settle(selection, answer)
            self._dispatch_locked()

    def _settle(self, selection: Selection, answer: Answer) -> None:
        """Apply Harmony's answer to an ``agent.selected`` (lock held)."""
        request, agent = selection.request, selection.agent
        rid = request.request_id
        if self._in_flight.get(rid) is selection:
            del self._in_flight[rid]
        if selection.offer_ended:
            return
        if answer.ok:
            self._had.setdefault(request.interaction_id, set()).add(agent.agent_id)
            self._assignments[rid] = Assignment(
                agent_id=agent.agent_id,
                interaction_id=request.interaction_id,
                channel=request.channel,
                selected_at=selection.selected_at,
                ended_at=datetime.now(UTC) if selection.ended else None,
            )
            return
        if not selection.ended:
            # The agent never got this work, so its idle clock is left alone.
            self._release(agent, request.channel, touch=False)
        if answer.status == 409 and answer.error == "agent_unavailable":
            self._refusals += 1
            cooldown = self.config.refusal_cooldown
            request.excluded[agent.agent_id] = time.monotonic() + cooldown
            # Same SimRequest (same seq), so it keeps its place in the queue.
            self._pending[rid] = request
            self._spawn(self._dispatch_after(cooldown))
            log.info("acd_sim.agent_refused", request_id=rid, agent_id=agent.agent_id)
            return
        self._rejected[rid] = {
            "agent_id": agent.agent_id,
            "interaction_id": request.interaction_id,
            "status_code": answer.status,
            "error": answer.error,
            "detail": answer.detail,
        }
        log.warning(
            "acd_sim.selection_rejected", request_id=rid, status=answer.status, error=answer.error
        )

    # -- reporting

    async def snapshot(self) -> dict[str, Any]:
        """Everything ``GET /state`` reports."""
        async with self._lock:
            now, wall_now = time.monotonic(), datetime.now(UTC)
            return {
                "agents": [agent.as_json(now, wall_now) for agent in self._agents],
                "pending": [
                    r.request_id for r in sorted(self._pending.values(), key=SimRequest.sort_key)
                ],
                "in_flight": sorted(self._in_flight),
                "assignments": {rid: a.as_json() for rid, a in self._assignments.items()},
                "refusals": self._refusals,
                "rejected": {rid: dict(r) for rid, r in self._rejected.items()},
                "unmatched_work_ended": self._unmatched_work_ended,
                "offers_ended": [dict(entry) for entry in self._offers_ended],
                "cancelled": dict(self._cancelled),
                "expired": list(self._expired),
                "unknown_agent_state": self._unknown_agent_state,
                "echoes_sent": self._echoes_sent,
                "voice_started": self._voice_started,
                "voice_ended": self._voice_ended,
                "voice_errors": [dict(error) for error in self._voice_errors],
            }


def create_app(config: AcdSimConfig, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the ACD simulator app; ``transport`` replaces the network for outbound callbacks."""
    sim = AcdSimulator(config)
    app = simulator_app(
        "Harmony ACD simulator",
        sim,
        transport,
        inbound=INBOUND_MODELS,
        peer="an ACD",
        handle=sim.handle,
        snapshot=sim.snapshot,
    )

    @app.post("/simulate/voice")
    async def simulate_voice(request: Request) -> JSONResponse:
        """Start or end a voice call; answers once Harmony has answered the voice event."""
        try:
            body = await read_body(request, VoiceRequest)
            if body.action == "start":
                call_id, answer = await sim.start_call(body.agent_id, body.call_id)
            else:
                call_id, answer = await sim.end_call(body.agent_id, body.call_id)
        except EventError as exc:
            return exc.response()
        harmony = {"status_code": answer.status, "error": answer.error, "detail": answer.detail}
        return JSONResponse({"call_id": call_id, "harmony": harmony}, status_code=202)

    return app
