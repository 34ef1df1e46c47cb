"""The ACD simulator: a longest-idle, skills-based agent selector speaking the generic protocol.

Harmony sends ``routing.requested`` and ``work.ended`` to ``POST /events``; the simulator answers
202 at once and reports its decisions later as signed ``agent.selected`` / ``request.queued``
callbacks to ``{harmony_url}/v1/acd/{adapter}/events``, as a real ACD would. Agents come from the
same seed file Harmony is provisioned with, so both sides agree on ids, skills and capacity.

All state lives in memory and is exposed on ``GET /state`` so that tests and load runs can check
what the ACD decided (assignments, peak load per agent and channel, refusals, rejections).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from harmony.protocol import (
    AGENT_SELECTED,
    REQUEST_QUEUED,
    ROUTING_REQUESTED,
    WORK_ENDED,
    Envelope,
)
from harmony.seed import Seed
from harmony.simulators._common import (
    Answer,
    EventError,
    SimulatorBase,
    read_event,
    simulator_app,
)

log = structlog.get_logger()

CHANNELS = ("chat", "email")


@dataclass
class AcdSimConfig:
    """Settings of one ACD simulator instance.

    ``secret`` is the ``whsec_...`` secret shared with Harmony's ACD adapter: it verifies what
    Harmony sends and signs the callbacks. The ``retry_*`` fields tune how callbacks are retried
    after a network error or 5xx (the defaults follow the brief: 0.2 s doubling, capped at 5 s,
    10 attempts); tests shrink them.
    """

    harmony_url: str
    secret: str
    seed: Seed
    adapter: str = "generic"
    refusal_cooldown: float = 2.0
    retry_attempts: int = 10
    retry_base_delay: float = 0.2
    retry_max_delay: float = 5.0
    request_timeout: float = 10.0


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


class WorkEnded(BaseModel):
    """``data`` of ``work.ended``."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1)
    interaction_id: str = ""
    agent_id: str = Field(min_length=1)
    channel: Literal["chat", "email"]
    reason: str = "completed"


INBOUND_MODELS: dict[str, type[BaseModel]] = {
    ROUTING_REQUESTED: RoutingRequested,
    WORK_ENDED: WorkEnded,
}


# --- simulator state ------------------------------------------------------------------------


@dataclass
class SimAgent:
    """One agent as the ACD sees it: skills, capacity and current load per channel."""

    agent_id: str
    skills: frozenset[str]
    capacity: dict[str, int]
    order: int
    load: dict[str, int]
    peak_load: dict[str, int]
    last_activity: float
    # Breaks ties between activities that share one monotonic clock reading, so the agent
    # touched first is still the one idle longest.
    activity_seq: int = 0

    def has_room(self, channel: str) -> bool:
        """True if the agent can take one more interaction on ``channel``."""
        return self.load.get(channel, 0) < self.capacity.get(channel, 0)

    def idle_key(self) -> tuple[float, int, int]:
        """Sort key: smallest means idle longest; seed order breaks exact ties."""
        return (self.last_activity, self.activity_seq, self.order)

    def as_json(self) -> dict[str, Any]:
        """The agent as reported by ``GET /state``."""
        return {
            "agent_id": self.agent_id,
            "skills": sorted(self.skills),
            "capacity": dict(self.capacity),
            "load": dict(self.load),
            "peak_load": dict(self.peak_load),
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
    queued_reported: bool = False
    queued_task: asyncio.Task[None] | None = None

    def sort_key(self) -> tuple[int, datetime, int]:
        """Dispatch order: higher priority first, then oldest, then arrival order."""
        return (-self.priority, self.received_at, self.seq)

    def excludes(self, agent_id: str, now: float) -> bool:
        """True if ``agent_id`` refused this request less than a cooldown ago."""
        until = self.excluded.get(agent_id)
        return until is not None and until > now


@dataclass
class Selection:
    """An ``agent.selected`` callback that is on its way; the slot is already reserved."""

    request: SimRequest
    agent: SimAgent
    selected_at: datetime
    # work.ended can overtake the callback's answer (Harmony delivers, the CRM completes and
    # Harmony reports work.ended before our POST returns); the slot is then already free.
    ended: bool = False


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
        start = time.monotonic()
        self._agents: list[SimAgent] = []
        for order, seed_agent in enumerate(config.seed.agents):
            channels = sorted(set(CHANNELS) | set(seed_agent.capacity))
            self._agents.append(
                SimAgent(
                    agent_id=seed_agent.acd_agent_id,
                    skills=frozenset(seed_agent.skills),
                    capacity={ch: seed_agent.capacity.get(ch, 0) for ch in channels},
                    order=order,
                    load=dict.fromkeys(channels, 0),
                    peak_load=dict.fromkeys(channels, 0),
                    last_activity=start,
                )
            )
        self._agents_by_id = {agent.agent_id: agent for agent in self._agents}
        self._seen_ids: set[str] = set()
        self._pending: dict[str, SimRequest] = {}
        self._in_flight: dict[str, Selection] = {}
        self._assignments: dict[str, Assignment] = {}
        self._rejected: dict[str, dict[str, Any]] = {}
        self._refusals = 0
        self._unmatched_work_ended = 0

    # -- inbound

    async def handle(self, message: Envelope, data: BaseModel) -> dict[str, Any]:
        """Apply one verified event; return the 202 body."""
        async with self._lock:
            if message.id in self._seen_ids:
                return {"status": "duplicate"}
            if isinstance(data, RoutingRequested):
                status = self._on_routing_requested(data)
            elif isinstance(data, WorkEnded):
                status = self._on_work_ended(data)
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
        self._pending[rid] = SimRequest(
            request_id=rid,
            interaction_id=data.interaction_id,
            channel=data.channel,
            queue=data.queue,
            priority=data.priority,
            skills=frozenset(data.skills),
            received_at=data.received_at or datetime.now(UTC),
            seq=next(self._seq),
        )
        log.info("acd_sim.request_received", request_id=rid, channel=data.channel)
        return "accepted"

    def _on_work_ended(self, data: WorkEnded) -> str:
        rid = data.request_id
        agent_id = data.agent_id
        selection = self._in_flight.get(rid)
        if selection and selection.agent.agent_id == agent_id and not selection.ended:
            selection.ended = True
            self._release(selection.agent, selection.request.channel, touch=True)
            return "accepted"
        assignment = self._assignments.get(rid)
        if assignment and assignment.agent_id == agent_id and assignment.ended_at is None:
            assignment.ended_at = datetime.now(UTC)
            self._release(self._agents_by_id[agent_id], assignment.channel, touch=True)
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

    # -- dispatch (lock held, no I/O: callbacks go out in background tasks)

    def _pick(self, request: SimRequest, now: float) -> SimAgent | None:
        candidates = [
            agent
            for agent in self._agents
            if request.skills <= agent.skills
            and agent.has_room(request.channel)
            and not request.excludes(agent.agent_id, now)
        ]
        return min(candidates, key=SimAgent.idle_key, default=None)

    def _dispatch_locked(self) -> None:
        """Assign every pending request that has a free qualified agent, in priority order.

        A request nobody can take is skipped rather than blocking the ones behind it, since a
        request needing a rare skill must not stall ordinary work.
        """
        now = time.monotonic()
        waiting: list[SimRequest] = []
        for request in sorted(self._pending.values(), key=SimRequest.sort_key):
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

    # -- callbacks (never under the lock; SimulatorBase._post sends and retries them)

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
        self._in_flight.pop(rid, None)
        if answer.ok:
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
            return {
                "agents": [agent.as_json() for agent in self._agents],
                "pending": [
                    r.request_id for r in sorted(self._pending.values(), key=SimRequest.sort_key)
                ],
                "in_flight": sorted(self._in_flight),
                "assignments": {rid: a.as_json() for rid, a in self._assignments.items()},
                "refusals": self._refusals,
                "rejected": {rid: dict(r) for rid, r in self._rejected.items()},
                "unmatched_work_ended": self._unmatched_work_ended,
            }


def create_app(config: AcdSimConfig, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the ACD simulator app; ``transport`` replaces the network for outbound callbacks."""
    sim = AcdSimulator(config)
    app = simulator_app("Harmony ACD simulator", sim, transport)

    @app.post("/events")
    async def events(request: Request) -> JSONResponse:
        """Receive one signed event from Harmony."""
        try:
            message, data = await read_event(request, sim.signer, INBOUND_MODELS, "an ACD")
        except EventError as exc:
            log.warning("acd_sim.event_refused", status=exc.status, error=exc.error)
            return exc.response()
        return JSONResponse(await sim.handle(message, data), status_code=202)

    @app.get("/state")
    async def state() -> JSONResponse:
        """The simulator's whole in-memory state."""
        return JSONResponse(await sim.snapshot())

    return app
