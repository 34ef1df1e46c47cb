"""The CRM simulator: creates chats/emails and plays each agent's accept/complete cycle.

It reports ``interaction.created`` to ``{harmony_url}/v1/crm/{adapter}/events`` (on demand via
``POST /simulate/interactions`` or as a steady trickle), and receives ``interaction.deliver`` on
``POST /events``. Every delivery is answered 202 at once; a background task then waits
``accept_delay`` and reports ``interaction.accepted``, waits ``complete_delay`` and reports
``interaction.completed``, the way a human agent would in a real CRM.

All state lives in memory and is exposed on ``GET /state``: what was created, who got what, and
the peak number of interactions each agent held at once per channel (to check that Harmony never
exceeds an agent's capacity).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harmony.protocol import (
    INTERACTION_ACCEPTED,
    INTERACTION_COMPLETED,
    INTERACTION_CREATED,
    INTERACTION_DELIVER,
    Envelope,
)
from harmony.seed import Seed
from harmony.simulators._common import (
    Answer,
    EventError,
    SimulatorBase,
    describe_validation_error,
    parse_json,
    read_event,
    simulator_app,
)

log = structlog.get_logger()

CHANNELS = ("chat", "email")


@dataclass
class CrmSimConfig:
    """Settings of one CRM simulator instance.

    ``secret`` is the ``whsec_...`` secret shared with Harmony's CRM adapter: it signs what the
    CRM sends and verifies deliveries. ``jitter`` spreads both delays by a uniform random fraction
    (0.2 = +-20%). The ``retry_*`` fields tune how events are retried after a network error or
    5xx; ``max_concurrency`` bounds simultaneous ``interaction.created`` posts.
    """

    harmony_url: str
    secret: str
    seed: Seed
    adapter: str = "generic"
    accept_delay: float = 0.5
    complete_delay: float = 2.0
    jitter: float = 0.0
    trickle_per_second: float = 0.0
    max_concurrency: int = 20
    retry_attempts: int = 5
    retry_base_delay: float = 0.2
    retry_max_delay: float = 5.0
    request_timeout: float = 10.0


# --- inbound events -------------------------------------------------------------------------


class InteractionDeliver(BaseModel):
    """``data`` of ``interaction.deliver``."""

    model_config = ConfigDict(extra="ignore")

    interaction_id: str = Field(min_length=1)
    external_id: str = Field(min_length=1, max_length=200)
    channel: Literal["chat", "email"]
    queue: str = ""
    agent_id: str = Field(min_length=1)


class SimulateRequest(BaseModel):
    """Body of ``POST /simulate/interactions``."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, le=10_000)
    channel: Literal["chat", "email", "mixed"] = "mixed"
    queue: str | None = Field(default=None, min_length=1)


INBOUND_MODELS: dict[str, type[BaseModel]] = {INTERACTION_DELIVER: InteractionDeliver}


# --- simulator ------------------------------------------------------------------------------


class CrmSimulator(SimulatorBase[CrmSimConfig]):
    """The CRM's in-memory state and behaviour, independent of the HTTP layer.

    Every state change happens between two awaits, so asyncio's single thread already makes
    each one atomic; no lock is needed.
    """

    def __init__(self, config: CrmSimConfig) -> None:
        self.events_url = f"{config.harmony_url.rstrip('/')}/v1/crm/{config.adapter}/events"
        super().__init__(
            config,
            name="CRM",
            log_prefix="crm_sim",
            post_url=self.events_url,
            retry_event="event_retry",
        )
        self._semaphore = asyncio.Semaphore(max(1, config.max_concurrency))
        self._random = random.Random()
        self._queues = {q.name: q for q in config.seed.queues}
        queue_names = {
            ch: [q.name for q in config.seed.queues if q.channel == ch] for ch in CHANNELS
        }
        self._channels_with_queues = [ch for ch in CHANNELS if queue_names[ch]]
        self._round_robin: dict[str, Iterator[str]] = {
            ch: itertools.cycle(names) for ch, names in queue_names.items() if names
        }
        self._mixed_turn = itertools.count()
        self._numbers = itertools.count(1)
        self._seen_ids: set[str] = set()
        self._in_progress: set[str] = set()
        self._created: dict[str, dict[str, Any]] = {}
        self._deliveries: dict[str, dict[str, Any]] = {}
        self._accepted: list[str] = []
        self._completed: list[str] = []
        self._active: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CHANNELS, 0))
        self._peak_active: dict[str, dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(CHANNELS, 0)
        )
        self._errors: list[dict[str, Any]] = []

    # -- lifecycle

    async def start(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Open the outbound HTTP client and start the trickle, if configured."""
        await super().start(transport)
        if self.config.trickle_per_second > 0:
            self._spawn(self._trickle(self.config.trickle_per_second))

    # -- outbound (SimulatorBase._post sends and retries each event)

    def _record_error(self, event_type: str, external_id: str, answer: Answer) -> None:
        self._errors.append(
            {
                "type": event_type,
                "external_id": external_id,
                "status_code": answer.status,
                "error": answer.error,
                "detail": answer.detail,
            }
        )
        log.warning(
            "crm_sim.event_failed",
            type=event_type,
            external_id=external_id,
            status=answer.status,
            error=answer.error,
        )

    # -- creating interactions

    def plan(self, count: int, channel: str, queue: str | None) -> list[tuple[str, str]]:
        """Choose (channel, queue) for ``count`` new interactions; raise ``EventError`` if none fit.

        A queue named in the seed fixes the channel. A queue unknown to the seed is passed through
        as asked, so Harmony's own validation can be exercised.
        """
        if queue is not None and queue in self._queues:
            queue_channel = self._queues[queue].channel
            if channel not in ("mixed", queue_channel):
                raise EventError(
                    422,
                    "validation_error",
                    f"queue: {queue!r} is a {queue_channel} queue, not {channel}",
                )
            return [(queue_channel, queue)] * count
        if queue is not None:
            choices = list(CHANNELS) if channel == "mixed" else [channel]
            return [(self._next_channel(choices), queue) for _ in range(count)]
        choices = self._channels_with_queues if channel == "mixed" else [channel]
        missing = [ch for ch in choices if ch not in self._round_robin]
        if not choices or missing:
            raise EventError(
                422,
                "validation_error",
                f"channel: the seed has no {' or '.join(missing or CHANNELS)} queue",
            )
        planned = []
        for _ in range(count):
            ch = self._next_channel(choices)
            planned.append((ch, next(self._round_robin[ch])))
        return planned

    def _next_channel(self, choices: list[str]) -> str:
        # One shared counter so "mixed" keeps alternating across calls and the trickle.
        return choices[next(self._mixed_turn) % len(choices)]

    def _new_external_id(self, channel: str) -> str:
        # Eight hex digits collide now and then over thousands of ids; a collision would make
        # Harmony treat a new interaction as a duplicate, so draw again.
        while True:
            external_id = f"{channel}-{uuid.uuid4().hex[:8]}"
            if external_id not in self._created:
                return external_id

    async def create(self, planned: list[tuple[str, str]]) -> list[str]:
        """Report one ``interaction.created`` per (channel, queue); return the external ids.

        Returns once Harmony answered every post; at most ``max_concurrency`` run at once.
        """
        external_ids = []
        posts = []
        for channel, queue in planned:
            external_id = self._new_external_id(channel)
            # Recorded before posting: Harmony may deliver it before its 202 comes back.
            self._created[external_id] = {
                "channel": channel,
                "queue": queue,
                "interaction_id": None,
                "status_code": None,
            }
            external_ids.append(external_id)
            posts.append(self._post_created(external_id, channel, queue))
        await asyncio.gather(*posts)
        return external_ids

    async def _post_created(self, external_id: str, channel: str, queue: str) -> None:
        number = next(self._numbers)
        data = {
            "external_id": external_id,
            "channel": channel,
            "queue": queue,
            "priority": 0,
            "skills": [],
            "customer": {"name": f"Customer {number}", "email": f"customer{number}@example.com"},
            "subject": f"Simulated {channel} #{number}",
        }
        async with self._semaphore:
            answer = await self._post(INTERACTION_CREATED, data)
        record = self._created[external_id]
        record["status_code"] = answer.status
        interaction_id = answer.body.get("interaction_id")
        record["interaction_id"] = interaction_id if isinstance(interaction_id, str) else None
        if not answer.ok:
            self._record_error(INTERACTION_CREATED, external_id, answer)

    async def _trickle(self, per_second: float) -> None:
        """Create one interaction every ``1/per_second`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / per_second
        next_at = loop.time()
        while True:
            try:
                planned = self.plan(1, "mixed", None)
            except EventError as exc:
                log.error("crm_sim.trickle_stopped", detail=exc.detail)
                return
            # Not awaited: a slow Harmony must not slow the arrival rate down.
            self._spawn(self._create_quietly(planned))
            # Scheduled from the previous tick, not from now, so the rate does not drift.
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _create_quietly(self, planned: list[tuple[str, str]]) -> None:
        await self.create(planned)

    # -- deliveries and the agent's cycle

    def handle_delivery(self, message: Envelope, data: InteractionDeliver) -> dict[str, Any]:
        """Record a verified delivery and start the agent's accept/complete cycle."""
        if message.id in self._seen_ids:
            return {"status": "duplicate"}
        self._seen_ids.add(message.id)
        if data.external_id in self._in_progress:
            # The same work delivered again under a new id: counting it twice would inflate the
            # agent's load, and the running cycle will accept and complete it anyway.
            log.warning("crm_sim.already_in_progress", external_id=data.external_id)
            return {"status": "duplicate"}
        self._deliveries[data.external_id] = {
            "agent_id": data.agent_id,
            "interaction_id": data.interaction_id,
            "channel": data.channel,
            "delivered_at": datetime.now(UTC).isoformat(),
        }
        active = self._active[data.agent_id]
        active[data.channel] = active.get(data.channel, 0) + 1
        peak = self._peak_active[data.agent_id]
        peak[data.channel] = max(peak.get(data.channel, 0), active[data.channel])
        self._in_progress.add(data.external_id)
        log.info("crm_sim.delivered", external_id=data.external_id, agent_id=data.agent_id)
        self._spawn(self._work(data.external_id, data.agent_id, data.channel))
        return {"status": "accepted"}

    def _delay(self, base: float) -> float:
        jitter = self.config.jitter
        if jitter <= 0:
            return base
        return max(0.0, base * (1 + self._random.uniform(-jitter, jitter)))

    async def _work(self, external_id: str, agent_id: str, channel: str) -> None:
        """Accept after ``accept_delay``, complete after ``complete_delay``."""
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                self._active[agent_id][channel] -= 1
                self._in_progress.discard(external_id)

        try:
            await asyncio.sleep(self._delay(self.config.accept_delay))
            answer = await self._post(
                INTERACTION_ACCEPTED, {"external_id": external_id, "agent_id": agent_id}
            )
            if not answer.ok:
                self._record_error(INTERACTION_ACCEPTED, external_id, answer)
                return
            self._accepted.append(external_id)
            await asyncio.sleep(self._delay(self.config.complete_delay))
            # The agent is done before Harmony hears of it: Harmony may hand this agent new work
            # before our POST returns, and counting both would report a load never really held.
            finish()
            answer = await self._post(INTERACTION_COMPLETED, {"external_id": external_id})
            if not answer.ok:
                self._record_error(INTERACTION_COMPLETED, external_id, answer)
                return
            self._completed.append(external_id)
        finally:
            finish()

    # -- reporting

    def snapshot(self) -> dict[str, Any]:
        """Everything ``GET /state`` reports."""
        return {
            "created": {eid: dict(record) for eid, record in self._created.items()},
            "deliveries": {eid: dict(record) for eid, record in self._deliveries.items()},
            "accepted": list(self._accepted),
            "completed": list(self._completed),
            "peak_active": {agent: dict(per) for agent, per in self._peak_active.items()},
            "active": {agent: dict(per) for agent, per in self._active.items()},
            "errors": [dict(error) for error in self._errors],
        }


def create_app(config: CrmSimConfig, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the CRM simulator app; ``transport`` replaces the network for outbound events."""
    sim = CrmSimulator(config)
    app = simulator_app("Harmony CRM simulator", sim, transport)

    @app.post("/events")
    async def events(request: Request) -> JSONResponse:
        """Receive one signed ``interaction.deliver`` from Harmony."""
        try:
            message, data = await read_event(request, sim.signer, INBOUND_MODELS, "a CRM")
        except EventError as exc:
            log.warning("crm_sim.event_refused", status=exc.status, error=exc.error)
            return exc.response()
        # INBOUND_MODELS admits interaction.deliver alone, so this only narrows the type.
        assert isinstance(data, InteractionDeliver)
        return JSONResponse(sim.handle_delivery(message, data), status_code=202)

    @app.post("/simulate/interactions")
    async def simulate(request: Request) -> JSONResponse:
        """Create ``count`` interactions and report each to Harmony."""
        try:
            try:
                body = SimulateRequest.model_validate(parse_json(await request.body()))
            except ValidationError as exc:
                raise EventError(422, "validation_error", describe_validation_error(exc)) from exc
            planned = sim.plan(body.count, body.channel, body.queue)
        except EventError as exc:
            return exc.response()
        return JSONResponse({"external_ids": await sim.create(planned)}, status_code=202)

    @app.get("/state")
    async def state() -> JSONResponse:
        """The simulator's whole in-memory state."""
        return JSONResponse(sim.snapshot())

    return app
