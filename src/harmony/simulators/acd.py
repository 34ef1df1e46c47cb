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
import json
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from harmony.protocol import (
    AGENT_SELECTED,
    MAX_BODY_BYTES,
    REQUEST_QUEUED,
    ROUTING_REQUESTED,
    WORK_ENDED,
    Envelope,
    envelope,
    post_event,
)
from harmony.seed import Seed
from harmony.signing import SignatureError, Signer

log = structlog.get_logger()

CHANNELS = ("chat", "email")
# Status codes worth retrying unchanged besides 5xx: the protocol treats them as transient too.
TRANSIENT_4XX = frozenset({408, 425, 429})


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


class EventError(Exception):
    """An inbound message is refused; carries the protocol's status and error code."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> JSONResponse:
        """Render as the protocol's ``{"error", "detail"}`` body."""
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Summarise pydantic errors naming each offending field, as the protocol asks."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts)


async def read_event(request: Request, signer: Signer) -> tuple[Envelope, BaseModel]:
    """Verify, parse and validate one inbound envelope; raise ``EventError`` if it is refused.

    The signature is checked over the raw bytes before anything is parsed, so an unsigned body
    never reaches the JSON parser.
    """
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise EventError(
            413, "body_too_large", f"body is {len(body)} bytes, limit {MAX_BODY_BYTES}"
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise EventError(415, "unsupported_media_type", "content-type must be application/json")
    try:
        signer.verify(body, dict(request.headers))
    except SignatureError as exc:
        raise EventError(401, "invalid_signature", str(exc)) from exc
    try:
        raw = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(400, "malformed_json", f"body is not UTF-8 JSON: {exc}") from exc
    try:
        message = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise EventError(422, "validation_error", describe_validation_error(exc)) from exc
    if message.id != request.headers.get("webhook-id"):
        raise EventError(422, "validation_error", "id: must equal the webhook-id header")
    model = INBOUND_MODELS.get(message.type)
    if model is None:
        raise EventError(
            422, "validation_error", f"type: unknown event type {message.type!r} for an ACD"
        )
    try:
        data = model.model_validate(message.data)
    except ValidationError as exc:
        raise EventError(422, "validation_error", describe_validation_error(exc, "data")) from exc
    return message, data


# --- outbound callbacks ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """Harmony's final answer to one callback; ``status`` is None when it was never reached."""

    status: int | None
    error: str | None = None
    detail: str | None = None
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True for any 2xx."""
        return self.status is not None and 200 <= self.status < 300


def answer_from(response: httpx.Response) -> Answer:
    """Read status and the protocol's error fields from a response, tolerating any body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    error = body.get("error")
    detail = body.get("detail")
    return Answer(
        status=response.status_code,
        error=error if isinstance(error, str) else None,
        detail=detail if isinstance(detail, str) else None,
        body=body,
    )


def is_transient(answer: Answer) -> bool:
    """Whether the same message should be sent again: no answer, 5xx or a transient 4xx."""
    return answer.status is None or answer.status >= 500 or answer.status in TRANSIENT_4XX


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


class AcdSimulator:
    """The ACD's in-memory state and behaviour, independent of the HTTP layer."""

    def __init__(self, config: AcdSimConfig) -> None:
        self.config = config
        self.signer = Signer(config.secret)
        self.callback_url = f"{config.harmony_url.rstrip('/')}/v1/acd/{config.adapter}/events"
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
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

    # -- lifecycle

    async def start(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Open the outbound HTTP client."""
        self._client = httpx.AsyncClient(transport=transport, timeout=self.config.request_timeout)

    async def stop(self) -> None:
        """Cancel background work and close the client; callbacks in flight are abandoned."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background, keeping a reference so it is not garbage collected."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("acd_sim.task_failed", exc_info=task.exception())

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

    # -- callbacks (never under the lock)

    async def _post(self, event_type: str, data: dict[str, Any]) -> Answer:
        """Send one callback, retrying network errors and 5xx with the same envelope id."""
        if self._client is None:
            raise RuntimeError("the ACD simulator is not started")
        # One id for every attempt so Harmony de-duplicates a retry of a message it did store.
        message = envelope(event_type, data)
        delay = self.config.retry_base_delay
        answer = Answer(status=None, error="unreachable")
        for attempt in range(1, self.config.retry_attempts + 1):
            try:
                response = await post_event(self._client, self.callback_url, self.signer, message)
            except httpx.HTTPError as exc:
                answer = Answer(status=None, error="unreachable", detail=str(exc) or repr(exc))
            else:
                answer = answer_from(response)
                if not is_transient(answer):
                    return answer
            if attempt < self.config.retry_attempts:
                log.warning(
                    "acd_sim.callback_retry",
                    type=event_type,
                    attempt=attempt,
                    status=answer.status,
                    detail=answer.detail,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_delay)
        return answer

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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await sim.start(transport)
        try:
            yield
        finally:
            await sim.stop()

    app = FastAPI(title="Harmony ACD simulator", lifespan=lifespan)
    app.state.sim = sim

    @app.post("/events")
    async def events(request: Request) -> JSONResponse:
        """Receive one signed event from Harmony."""
        try:
            message, data = await read_event(request, sim.signer)
        except EventError as exc:
            log.warning("acd_sim.event_refused", status=exc.status, error=exc.error)
            return exc.response()
        return JSONResponse(await sim.handle(message, data), status_code=202)

    @app.get("/state")
    async def state() -> JSONResponse:
        """The simulator's whole in-memory state."""
        return JSONResponse(await sim.snapshot())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness probe."""
        return {"status": "ok"}

    return app
