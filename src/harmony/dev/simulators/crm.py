"""The CRM simulator: creates chats/emails and plays each agent's accept/complete cycle.

It reports ``interaction.created`` to ``{harmony_url}/v1/crm/{adapter}/events`` (on demand via
``POST /simulate/interactions`` or as a steady trickle), and receives ``interaction.deliver`` on
``POST /events``. Every delivery is answered 202 at once; a background task then waits
``accept_delay`` and reports ``interaction.accepted``, waits ``complete_delay`` and reports
``interaction.completed``, the way a human agent would in a real CRM.

It is also every agent's media bar: at start-up it logs each seed agent in, ready on every
channel it has capacity on (``agent.logged_in``), and ``POST /simulate/agent-state`` plays an
agent clicking ready, not ready or log out. What Harmony reports back about each channel
(``agent.state``, received on ``POST /events``) is shown on the media bar.

All state lives in memory and is exposed on ``GET /state``: what was created, who got what, the
peak number of interactions each agent held at once per channel (to check that Harmony never
exceeds an agent's capacity), and each agent's media bar.
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
from pydantic import BaseModel, ConfigDict, Field

from harmony.adapters.generic_http.protocol import (
    AGENT_LOGGED_IN,
    AGENT_LOGGED_OUT,
    AGENT_STATE,
    AGENT_STATE_CHANGED,
    INTERACTION_ABANDONED,
    INTERACTION_ACCEPTED,
    INTERACTION_COMPLETED,
    INTERACTION_CREATED,
    INTERACTION_DECLINED,
    INTERACTION_DELIVER,
    INTERACTION_FALLBACK,
    INTERACTION_TRANSFER_REQUESTED,
    OFFER_RESCINDED,
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
    StateName,
    read_body,
    simulator_app,
)
from harmony.seed import CHANNELS as AGENT_CHANNELS

log = structlog.get_logger()

CHANNELS = ("chat", "email")


@dataclass
class CrmSimConfig(SimConfig):
    """Settings of one CRM simulator instance.

    ``secret`` is the ``whsec_...`` secret shared with Harmony's CRM adapter: it signs what the
    CRM sends and verifies deliveries. ``jitter`` spreads both delays by a uniform random fraction
    (0.2 = +-20%). The ``retry_*`` fields tune how events are retried after a network error or
    5xx; ``max_concurrency`` bounds simultaneous posts. ``login_agents`` logs every seed agent
    in, ready, once the simulator starts (retrying until Harmony answers).
    """

    accept_delay: float = 0.5
    complete_delay: float = 2.0
    jitter: float = 0.0
    trickle_per_second: float = 0.0
    max_concurrency: int = 20
    login_agents: bool = True
    # Shares of the unhappy paths: of offers, declined after the accept delay or never answered
    # (Harmony's offer timeout takes them back); of interactions, abandoned by the customer at
    # a random moment within ``abandon_within`` seconds, or transferred once by the agent who
    # accepted them (to another queue of the channel if the seed has one, else the same).
    decline_share: float = 0.0
    ignore_share: float = 0.0
    abandon_share: float = 0.0
    transfer_share: float = 0.0
    abandon_within: float = 5.0


# --- inbound events -------------------------------------------------------------------------


class InteractionDeliver(BaseModel):
    """``data`` of ``interaction.deliver``."""

    model_config = ConfigDict(extra="ignore")

    interaction_id: str = Field(min_length=1)
    external_id: str = Field(min_length=1, max_length=200)
    channel: Literal["chat", "email"]
    queue: str = ""
    agent_id: str = Field(min_length=1)
    offer_id: str | None = None


class OfferRescinded(BaseModel):
    """``data`` of ``offer.rescinded``: Harmony took an unanswered offer back."""

    model_config = ConfigDict(extra="ignore")

    external_id: str = Field(min_length=1, max_length=200)
    agent_id: str = Field(min_length=1)
    reason: str = ""


class InteractionFallback(BaseModel):
    """``data`` of ``interaction.fallback``: the CRM's own routing takes the work back."""

    model_config = ConfigDict(extra="ignore")

    external_id: str = Field(min_length=1, max_length=200)
    queue: str = ""
    reason: str = ""


class BehaviourRequest(BaseModel):
    """Body of ``POST /simulate/behaviour``: the shares of the unhappy paths from now on."""

    model_config = ConfigDict(extra="forbid")

    decline_share: float | None = Field(default=None, ge=0, le=1)
    ignore_share: float | None = Field(default=None, ge=0, le=1)
    abandon_share: float | None = Field(default=None, ge=0, le=1)
    transfer_share: float | None = Field(default=None, ge=0, le=1)


class AbandonRequest(BaseModel):
    """Body of ``POST /simulate/abandon``: the customer of this interaction leaves now."""

    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(min_length=1, max_length=200)


class TransferRequest(BaseModel):
    """Body of ``POST /simulate/transfer``: the agent holding it transfers it now."""

    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(min_length=1, max_length=200)
    queue: str | None = Field(default=None, min_length=1, max_length=100)
    to_agent_id: str | None = Field(default=None, min_length=1, max_length=200)


class SimulateRequest(BaseModel):
    """Body of ``POST /simulate/interactions``."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, le=10_000)
    channel: Literal["chat", "email", "mixed"] = "mixed"
    queue: str | None = Field(default=None, min_length=1)


class AgentStateRequest(BaseModel):
    """Body of ``POST /simulate/agent-state``: an agent clicks on its media bar."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1, max_length=200)
    state: StateName
    channels: list[ChannelName] | None = Field(default=None, min_length=1)
    reason: str | None = Field(default=None, min_length=1, max_length=64)


INBOUND_MODELS: dict[str, type[BaseModel]] = {
    INTERACTION_DELIVER: InteractionDeliver,
    OFFER_RESCINDED: OfferRescinded,
    INTERACTION_FALLBACK: InteractionFallback,
    AGENT_STATE: AgentStateMessage,
}
# Outcomes in Harmony's answer to an agent event under which the reported state now holds.
HOLDS = frozenset({"applied", "unchanged", "echo"})


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
        self._applied_sequences = SequenceGuard()
        self._in_progress: set[str] = set()
        # external id -> (agent, channel) while an agent holds it, and its cycle's task.
        self._holders: dict[str, tuple[str, str]] = {}
        self._cycles: dict[str, asyncio.Task[None]] = {}
        # external id -> the agents it was offered to, in order.
        self._offers: dict[str, list[str]] = {}
        self._declined: list[str] = []
        self._ignored: list[str] = []
        self._rescinded: list[str] = []
        self._abandoned: list[str] = []
        # Work whose customer left, and of it, work no agent had accepted then: a delivery
        # that crossed the abandon on the wire is not worked (Harmony ends that offer as it
        # applies the abandon).
        self._customer_left: set[str] = set()
        self._left_waiting: set[str] = set()
        self._transferred: list[str] = []
        self._fallback: dict[str, str] = {}
        self._created: dict[str, dict[str, Any]] = {}
        self._deliveries: dict[str, dict[str, Any]] = {}
        self._accepted: list[str] = []
        # Work its holder accepted and still holds (not once transferred onward), and work
        # whose acceptance is on its way to Harmony.
        self._held_accepted: set[str] = set()
        self._accepting: set[str] = set()
        self._completed: list[str] = []
        self._active: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CHANNELS, 0))
        self._peak_active: dict[str, dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(CHANNELS, 0)
        )
        self._errors: list[dict[str, Any]] = []
        # crm agent id -> channel -> {state, reason, busy, load, wrap_up_until}: each media bar.
        self._media_bar: dict[str, dict[str, dict[str, Any]]] = {}
        for agent in config.seed.agents:
            capacity = config.seed.capacity_of(agent)
            self._media_bar[agent.crm_agent_id] = {
                ch: self._blank_channel() for ch in AGENT_CHANNELS if capacity.get(ch, 0) > 0
            }
        self._logins_done: set[str] = set()

    # -- lifecycle

    async def start(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Open the outbound HTTP client; log the agents in and start the trickle, if asked."""
        await super().start(transport)
        if self.config.login_agents:
            self._spawn(self._login_all())
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
        elif self._random.random() < self.config.abandon_share:
            self._spawn(self._abandon_later(external_id))

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
        """Record a verified delivery and start the agent's cycle: decline, ignore, or accept
        and then complete (or transfer), by the configured shares."""
        if message.id in self._seen_ids:
            return {"status": "duplicate"}
        self._seen_ids.add(message.id)
        if data.external_id in self._in_progress:
            # The same work delivered again under a new id while an agent still holds it:
            # counting it twice would inflate the agent's load.
            log.warning("crm_sim.already_in_progress", external_id=data.external_id)
            return {"status": "duplicate"}
        self._deliveries[data.external_id] = {
            "agent_id": data.agent_id,
            "interaction_id": data.interaction_id,
            "channel": data.channel,
            "offer_id": data.offer_id,
            "delivered_at": datetime.now(UTC).isoformat(),
        }
        self._offers.setdefault(data.external_id, []).append(data.agent_id)
        if data.external_id in self._left_waiting:
            log.info("crm_sim.delivered_after_abandon", external_id=data.external_id)
            return {"status": "accepted"}
        active = self._active[data.agent_id]
        active[data.channel] = active.get(data.channel, 0) + 1
        peak = self._peak_active[data.agent_id]
        peak[data.channel] = max(peak.get(data.channel, 0), active[data.channel])
        self._in_progress.add(data.external_id)
        self._holders[data.external_id] = (data.agent_id, data.channel)
        log.info("crm_sim.delivered", external_id=data.external_id, agent_id=data.agent_id)
        roll = self._random.random()
        config = self.config
        if roll < config.decline_share:
            work = self._decline(data.external_id, data.agent_id)
        elif roll < config.decline_share + config.ignore_share:
            # Nobody answers: the agent's slot stays held until Harmony rescinds the offer.
            self._ignored.append(data.external_id)
            return {"status": "accepted"}
        else:
            work = self._work(data.external_id, data.agent_id, data.channel)
        self._cycles[data.external_id] = self._spawn(work)
        return {"status": "accepted"}

    def _release(self, external_id: str) -> None:
        """The agent no longer holds this work (idempotent)."""
        holder = self._holders.pop(external_id, None)
        if holder is None:
            return
        agent_id, channel = holder
        self._active[agent_id][channel] -= 1
        self._in_progress.discard(external_id)

    def _stop_work(self, external_id: str) -> None:
        """Stop the agent's cycle for this work, if one runs, and release it."""
        task = self._cycles.pop(external_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._release(external_id)

    def _delay(self, base: float) -> float:
        jitter = self.config.jitter
        if jitter <= 0:
            return base
        return max(0.0, base * (1 + self._random.uniform(-jitter, jitter)))

    async def _decline(self, external_id: str, agent_id: str) -> None:
        await asyncio.sleep(self._delay(self.config.accept_delay))
        # Released first: Harmony may offer it again before the answer to this post returns.
        self._release(external_id)
        answer = await self._post(
            INTERACTION_DECLINED,
            {"external_id": external_id, "agent_id": agent_id, "reason": "busy"},
        )
        if answer.ok:
            self._declined.append(external_id)
        else:
            self._record_error(INTERACTION_DECLINED, external_id, answer)

    def _transfer_queue(self, external_id: str) -> str | None:
        """Another queue of the work's channel, if the seed has one."""
        created = self._created.get(external_id)
        if created is None:
            return None
        others = [
            q.name
            for q in self.config.seed.queues
            if q.channel == created["channel"] and q.name != created["queue"]
        ]
        return others[0] if others else created["queue"]

    async def _work(self, external_id: str, agent_id: str, channel: str) -> None:
        """Accept after ``accept_delay``; then complete after ``complete_delay``, or, for the
        configured share, transfer it after half that."""
        try:
            await asyncio.sleep(self._delay(self.config.accept_delay))
            self._accepting.add(external_id)
            try:
                answer = await self._post(
                    INTERACTION_ACCEPTED, {"external_id": external_id, "agent_id": agent_id}
                )
            finally:
                self._accepting.discard(external_id)
            if not answer.ok:
                if answer.status == 409 and external_id in self._customer_left:
                    # The customer left as the agent accepted, and Harmony heard of it first.
                    log.info("crm_sim.accept_after_abandon", external_id=external_id)
                    return
                self._record_error(INTERACTION_ACCEPTED, external_id, answer)
                return
            self._accepted.append(external_id)
            self._held_accepted.add(external_id)
            if (
                external_id not in self._transferred
                and self._random.random() < self.config.transfer_share
            ):
                await asyncio.sleep(self._delay(self.config.complete_delay / 2))
                await self.transfer(external_id, self._transfer_queue(external_id), None)
                return
            await asyncio.sleep(self._delay(self.config.complete_delay))
            # The agent is done before Harmony hears of it: Harmony may hand this agent new work
            # before our POST returns, and counting both would report a load never really held.
            self._release(external_id)
            answer = await self._post(INTERACTION_COMPLETED, {"external_id": external_id})
            if not answer.ok:
                self._record_error(INTERACTION_COMPLETED, external_id, answer)
                return
            self._completed.append(external_id)
        finally:
            # Only this cycle's own hold: after a transfer a new cycle may hold the same work.
            if self._cycles.get(external_id) is asyncio.current_task():
                del self._cycles[external_id]
                self._release(external_id)

    async def transfer(
        self, external_id: str, queue: str | None, to_agent_id: str | None
    ) -> Answer:
        """The agent holding the work transfers it (``interaction.transfer_requested``)."""
        holder = self._holders.get(external_id)
        data: dict[str, Any] = {"external_id": external_id}
        if holder is not None:
            data["agent_id"] = holder[0]
        if queue is not None:
            data["queue"] = queue
        if to_agent_id is not None:
            data["to_agent_id"] = to_agent_id
        # Released first: the work may reach its next agent before this post returns. The
        # agent's cycle ends here too (cancelled when this is a /simulate/transfer), so it
        # neither completes work that has moved on nor is cancelled mid-post by an abandon.
        # Work not accepted yet is left as it is: Harmony refuses to transfer it.
        if external_id in self._held_accepted:
            self._held_accepted.discard(external_id)
            self._stop_work(external_id)
        answer = await self._post(INTERACTION_TRANSFER_REQUESTED, data)
        if answer.ok:
            self._transferred.append(external_id)
        else:
            self._record_error(INTERACTION_TRANSFER_REQUESTED, external_id, answer)
        return answer

    async def _abandon_later(self, external_id: str) -> None:
        await asyncio.sleep(self._random.uniform(0, self.config.abandon_within))
        await self.abandon(external_id)

    async def abandon(self, external_id: str) -> Answer:
        """The customer leaves (``interaction.abandoned``); an agent who had not accepted the
        work stops (and a delivery of it arriving later is not worked); one who had keeps it and
        completes it."""
        self._customer_left.add(external_id)
        # An acceptance on its way is left to Harmony to order against this: accepted work stays
        # with its agent (who completes it), else the acceptance is refused and the cycle ends.
        if external_id not in self._held_accepted and external_id not in self._accepting:
            self._left_waiting.add(external_id)
            self._stop_work(external_id)
        answer = await self._post(INTERACTION_ABANDONED, {"external_id": external_id})
        if answer.ok:
            self._abandoned.append(external_id)
        else:
            self._record_error(INTERACTION_ABANDONED, external_id, answer)
        return answer

    def handle_rescinded(self, message: Envelope, data: OfferRescinded) -> dict[str, Any]:
        """Harmony took an offer back: it leaves the agent's screen."""
        if message.id in self._seen_ids:
            return {"status": "duplicate"}
        self._seen_ids.add(message.id)
        holder = self._holders.get(data.external_id)
        if holder is not None and holder[0] == data.agent_id:
            self._stop_work(data.external_id)
        self._rescinded.append(data.external_id)
        return {"status": "accepted"}

    def handle_fallback(self, message: Envelope, data: InteractionFallback) -> dict[str, Any]:
        """The CRM's own routing takes the work back (not simulated further)."""
        if message.id in self._seen_ids:
            return {"status": "duplicate"}
        self._seen_ids.add(message.id)
        self._fallback[data.external_id] = data.reason
        return {"status": "accepted"}

    def set_behaviour(self, request: BehaviourRequest) -> dict[str, float]:
        """Change the shares of the unhappy paths from now on; the shares now in force."""
        changes = {k: v for k, v in request.model_dump().items() if v is not None}
        shares = {
            name: changes.get(name, getattr(self.config, name))
            for name in ("decline_share", "ignore_share", "abandon_share", "transfer_share")
        }
        if shares["decline_share"] + shares["ignore_share"] > 1:
            raise EventError(
                422, "validation_error", "decline_share + ignore_share must not exceed 1"
            )
        for name, value in shares.items():
            setattr(self.config, name, value)
        return shares

    # -- the agents' media bars

    @staticmethod
    def _blank_channel() -> dict[str, Any]:
        return {
            "state": LOGGED_OUT,
            "reason": None,
            "busy": False,
            "load": 0,
            "wrap_up_until": None,
            "pending_state": None,
        }

    def _bar(self, agent_id: str, channel: str) -> dict[str, Any]:
        return self._media_bar.setdefault(agent_id, {}).setdefault(channel, self._blank_channel())

    @property
    def logged_in(self) -> bool:
        """True once Harmony accepted the login of every seed agent."""
        wanted = {agent.crm_agent_id for agent in self.config.seed.agents}
        return self.config.login_agents and wanted <= self._logins_done

    async def _login_all(self) -> None:
        await asyncio.gather(*(self._login(a.crm_agent_id) for a in self.config.seed.agents))
        log.info("crm_sim.agents_logged_in", count=len(self._logins_done))

    async def _login(self, agent_id: str) -> None:
        """Log one agent in, ready on every channel; Harmony may not be up yet, so keep trying."""
        delay = self.config.retry_base_delay
        data = {"agent_id": agent_id, "state": READY}
        while True:
            async with self._semaphore:
                answer = await self._post(AGENT_LOGGED_IN, data)
            if answer.ok:
                self._logins_done.add(agent_id)
                self._show_own_report(agent_id, READY, None, None, answer)
                return
            log.warning(
                "crm_sim.login_retry",
                agent_id=agent_id,
                status=answer.status,
                error=answer.error,
                detail=answer.detail,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.retry_max_delay)

    def _show_own_report(
        self,
        agent_id: str,
        state: str,
        reason: str | None,
        channels: list[str] | None,
        answer: Answer,
    ) -> None:
        """Show on the media bar what the agent clicked, on the channels where Harmony took it.

        Harmony answers with each channel's outcome; a state it ignored as stale is not shown.
        Without that detail, the channels asked for (or the ones already on the bar) are used.
        """
        outcomes = answer.body.get("channels")
        if isinstance(outcomes, dict):
            shown = [ch for ch, outcome in outcomes.items() if outcome in HOLDS]
        else:
            shown = channels or list(self._media_bar.get(agent_id, {}))
        for channel in shown:
            bar = self._bar(agent_id, channel)
            bar["state"], bar["reason"] = state, reason

    def handle_agent_state(self, message: Envelope, data: AgentStateMessage) -> dict[str, Any]:
        """Show Harmony's view of one agent channel on the agent's media bar."""
        if message.id in self._seen_ids:
            return {"status": "duplicate"}
        self._seen_ids.add(message.id)
        if not self._applied_sequences.admit((data.agent_id, data.channel), data.sequence):
            log.info("crm_sim.media_bar_stale", agent_id=data.agent_id, channel=data.channel)
            return {"status": "stale"}
        bar = self._bar(data.agent_id, data.channel)
        bar.update(
            state=data.state,
            reason=data.reason,
            busy=data.busy,
            load=data.load,
            wrap_up_until=data.wrap_up_until,
            pending_state=data.pending_state,
        )
        log.info(
            "crm_sim.media_bar",
            agent_id=data.agent_id,
            channel=data.channel,
            state=data.state,
            busy=data.busy,
        )
        return {"status": "accepted"}

    async def report_agent_state(self, request: AgentStateRequest) -> Answer:
        """Tell Harmony what the agent clicked: ``agent.state_changed`` or ``agent.logged_out``."""
        data: dict[str, Any] = {"agent_id": request.agent_id}
        if request.channels is not None:
            data["channels"] = list(request.channels)
        if request.state == LOGGED_OUT:
            event_type = AGENT_LOGGED_OUT
        else:
            event_type = AGENT_STATE_CHANGED
            data["state"] = request.state
            if request.reason is not None:
                data["reason"] = request.reason
        answer = await self._post(event_type, data)
        if answer.ok:
            reason = request.reason if request.state == "not_ready" else None
            self._show_own_report(
                request.agent_id, request.state, reason, data.get("channels"), answer
            )
        return answer

    # -- reporting

    @staticmethod
    def _bar_now(bar: dict[str, Any], now: datetime) -> dict[str, Any]:
        """One channel of a media bar as shown now.

        Harmony says nothing when a wrap-up runs out, so the bar stops showing busy by itself
        once the wrap-up Harmony reported is over and no work is held.
        """
        until: datetime | None = bar["wrap_up_until"]
        busy = bar["busy"]
        if until is not None:
            busy = bar["load"] > 0 or until > now
        return {**bar, "busy": busy, "wrap_up_until": until.isoformat() if until else None}

    def snapshot(self) -> dict[str, Any]:
        """Everything ``GET /state`` reports."""
        now = datetime.now(UTC)
        return {
            "logged_in": self.logged_in,
            "media_bar": {
                agent: {ch: self._bar_now(bar, now) for ch, bar in channels.items()}
                for agent, channels in self._media_bar.items()
            },
            "created": {eid: dict(record) for eid, record in self._created.items()},
            "deliveries": {eid: dict(record) for eid, record in self._deliveries.items()},
            "accepted": list(self._accepted),
            "completed": list(self._completed),
            "offers": {eid: list(agents) for eid, agents in self._offers.items()},
            "declined": list(self._declined),
            "ignored": list(self._ignored),
            "rescinded": list(self._rescinded),
            "abandoned": list(self._abandoned),
            "transferred": list(self._transferred),
            "fallback": dict(self._fallback),
            "behaviour": {
                name: getattr(self.config, name)
                for name in ("decline_share", "ignore_share", "abandon_share", "transfer_share")
            },
            "peak_active": {agent: dict(per) for agent, per in self._peak_active.items()},
            "active": {agent: dict(per) for agent, per in self._active.items()},
            "errors": [dict(error) for error in self._errors],
        }


def create_app(config: CrmSimConfig, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the CRM simulator app; ``transport`` replaces the network for outbound events."""
    sim = CrmSimulator(config)

    async def handle(message: Envelope, data: BaseModel) -> dict[str, Any]:
        if isinstance(data, AgentStateMessage):
            return sim.handle_agent_state(message, data)
        if isinstance(data, OfferRescinded):
            return sim.handle_rescinded(message, data)
        if isinstance(data, InteractionFallback):
            return sim.handle_fallback(message, data)
        # INBOUND_MODELS admits only these, so this only narrows the type.
        assert isinstance(data, InteractionDeliver)
        return sim.handle_delivery(message, data)

    async def snapshot() -> dict[str, Any]:
        return sim.snapshot()

    app = simulator_app(
        "Harmony CRM simulator",
        sim,
        transport,
        inbound=INBOUND_MODELS,
        peer="a CRM",
        handle=handle,
        snapshot=snapshot,
    )

    @app.post("/simulate/agent-state")
    async def simulate_agent_state(request: Request) -> JSONResponse:
        """An agent changes state on its media bar; answers with Harmony's status and body."""
        try:
            body = await read_body(request, AgentStateRequest)
        except EventError as exc:
            return exc.response()
        answer = await sim.report_agent_state(body)
        if answer.status is None:
            detail = answer.detail or "Harmony could not be reached"
            return JSONResponse({"error": "unreachable", "detail": detail}, status_code=502)
        return JSONResponse(answer.body, status_code=answer.status)

    def harmony_answer(answer: Answer) -> JSONResponse:
        if answer.status is None:
            detail = answer.detail or "Harmony could not be reached"
            return JSONResponse({"error": "unreachable", "detail": detail}, status_code=502)
        return JSONResponse(answer.body, status_code=answer.status)

    @app.post("/simulate/behaviour")
    async def simulate_behaviour(request: Request) -> JSONResponse:
        """Set the shares of declined, ignored, abandoned and transferred work from now on."""
        try:
            body = await read_body(request, BehaviourRequest)
            return JSONResponse(sim.set_behaviour(body))
        except EventError as exc:
            return exc.response()

    @app.post("/simulate/abandon")
    async def simulate_abandon(request: Request) -> JSONResponse:
        """The customer of an interaction leaves now; answers with Harmony's answer."""
        try:
            body = await read_body(request, AbandonRequest)
        except EventError as exc:
            return exc.response()
        return harmony_answer(await sim.abandon(body.external_id))

    @app.post("/simulate/transfer")
    async def simulate_transfer(request: Request) -> JSONResponse:
        """The agent holding an interaction transfers it now; answers with Harmony's answer."""
        try:
            body = await read_body(request, TransferRequest)
        except EventError as exc:
            return exc.response()
        return harmony_answer(await sim.transfer(body.external_id, body.queue, body.to_agent_id))

    @app.post("/simulate/interactions")
    async def simulate(request: Request) -> JSONResponse:
        """Create ``count`` interactions and report each to Harmony."""
        try:
            body = await read_body(request, SimulateRequest)
            planned = sim.plan(body.count, body.channel, body.queue)
        except EventError as exc:
            return exc.response()
        return JSONResponse({"external_ids": await sim.create(planned)}, status_code=202)

    return app
