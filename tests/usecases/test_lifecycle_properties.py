"""Random interleavings of CRM, ACD, timer, operator, agent-state and relay events never break
the routing invariants.

A hypothesis state machine drives the use cases, the scheduler and the relay over the SQL store
(a copy of a migrated SQLite file per example) with several agents, queues (two of which
overflow into the others) and interactions, including duplicates, unknown agents, full or
unready agents, wrap-up, chat blocking email, declines (some by the wrong agent), abandons and
cancels, operator transfers (to a queue, to a named agent who may be unable to take the work),
offer and routing timeouts and maximum waits (the clock moved on and due timers fired one by
one), agents going not ready or logging out with work in hand and coming back, late notices,
failed deliveries and capacity changes. After every step it checks on what is stored that:

- no agent's load is negative or above its capacity;
- each agent's load on a channel equals the interactions offered/delivered/accepted to it there,
  and the live (pending or accepted) offers it holds there;
- at most one offer per interaction is pending or accepted, and it is the one its state and
  agent say: pending while offered or delivered, accepted while accepted, none otherwise;
- no interaction holding capacity names an agent without capacity on its channel;
- a terminal state, once stored, is final;
- every interaction keeps the ``received_at`` it was created with, through declines, timeouts,
  overflows and transfers, and every request or re-offer told to the ACD carries it;
- every interaction not terminal has a live deadline timer that fits its state, or an agent who
  accepted it (nothing can get stuck), and accepted or finished work has none;
- after the scheduler ran, no timer is left due;
- a channel's pending next state exists only while the agent holds work there, and is applied
  exactly when the last of that work ends (unless a report replaced or cancelled it);
- every interaction's history, replayed, ends in its current state;
- every agent's applied state history replays to its current channel states;
- routing requests: one per request id, placed once more only after a routing timeout, and a
  new request id only after an overflow or a transfer; one delivery per offer, one end of work
  per offer that held the work;
- each queue's waiting count and oldest waiting interaction (kept apart from the interactions,
  by triggers) equal what the interactions themselves say.

Each rule also checks its own outcome against a small model built on the lifecycle table: the
error code it predicts, or the state it predicts; and an event that fails changes nothing
stored.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from harmony.adapters.base import AdapterRegistry
from harmony.errors import HarmonyError
from harmony.outbox.relay import Relay
from harmony.routing import agents, interactions, rerouting
from harmony.routing.agent_state import DEFAULT_NOT_READY_REASONS, Profile, replay
from harmony.routing.agents import AGENT_LEFT
from harmony.routing.deadlines import TIMER_KIND, Deadline
from harmony.routing.lifecycle import Event, Move, Refuse, rule_for
from harmony.routing.messages import (
    AGENT_STATE,
    INTERACTION_DELIVER,
    INTERACTION_FALLBACK,
    OFFER_DECLINED,
    REQUEST_CANCELLED,
    ROUTING_REQUESTED,
    WORK_ENDED,
    TargetKind,
)
from harmony.routing.model import (
    ALLOWED_TRANSITIONS,
    AWAITING_SELECTION,
    HOLDS_CAPACITY,
    LIVE_OFFERS,
    MAX_OVERFLOWS,
    TERMINAL_STATES,
    WAITING_STATES,
    Agent,
    Channel,
    ChannelState,
    ChannelStatus,
    HistoryEntry,
    Interaction,
    InteractionState,
    Offer,
    OfferStatus,
    Queue,
)
from harmony.routing.ports import Timer
from harmony.scheduler import Scheduler
from harmony.testing import FakeAdapter, FakeClock
from tests.databases import sqlite_copy
from tests.sql_store import DEAD, PENDING, SENT, OutboxRow, SqlStore
from tests.usecases.conftest import settle_outbox

S = InteractionState
T = TypeVar("T")

AGENT_IDS = ("a0", "a1", "a2")
UNKNOWN_AGENT = "acd-ghost"
EXTERNAL_IDS = tuple(f"x{n}" for n in range(6))
CREATE_EVENT_IDS = tuple(f"created-{n}" for n in range(8))  # few, so that ids repeat
ROUTED = (Channel.CHAT, Channel.EMAIL)
# Each channel's main queue, where the work usually arrives and where its second queue's work
# overflows to; the main queues name no overflow, so they hand work back to the CRM.
QUEUE_OF = {Channel.CHAT: "chat-q", Channel.EMAIL: "email-q"}
QUEUES = (
    Queue("chat-q", Channel.CHAT, ["support"]),
    Queue("email-q", Channel.EMAIL, ["support"]),
    Queue("chat-2", Channel.CHAT, ["support"], overflow_queue="chat-q"),
    Queue("email-2", Channel.EMAIL, ["support"], overflow_queue="email-q"),
)
QUEUE_NAMED = {queue.name: queue for queue in QUEUES}
QUEUES_FOR = {ch: tuple(q.name for q in QUEUES if q.channel == ch) for ch in ROUTED}
CHAT_WRAP_UP = 2
# Chat work blocks email offers; a finished chat leaves a short wrap-up; no voice here. An
# offer let time out makes the agent not ready (RONA after one miss, the default).
PROFILE = Profile(
    name="lifecycle",
    capacity={Channel.VOICE: 0, Channel.CHAT: 2, Channel.EMAIL: 2},
    wrap_up_seconds={Channel.CHAT: CHAT_WRAP_UP},
    blocks={Channel.CHAT: frozenset({Channel.EMAIL})},
)
MAX_ATTEMPTS = 3
# Clock moves before firing due timers: a few seconds, an offer's timeout (30 s chat, 120 s
# email), a routing timeout (60 s), a chat's maximum wait (600 s), an email's (a day).
FIRE_AFTER = (0, 1, 5, 30, 31, 60, 61, 120, 121, 600, 601, 3600, 86_400)
# How far the seed takes each opening interaction: routing, offered (if an agent can take it),
# accepted.
OPENING_DEPTHS = (0, 1, 2, 2)
# What the CRM reports when an agent with work in hand changes state.
LEAVING = (ChannelStatus.NOT_READY, ChannelStatus.LOGGED_OUT, ChannelStatus.READY)
ECHO_WINDOW = agents.ECHO_WINDOW
# The end-of-work messages to the ACD, by what became of the offer.
ENDED_OFFERS = frozenset({OfferStatus.COMPLETED, OfferStatus.TRANSFERRED})


def acd_id(agent_id: str) -> str:
    return f"acd-{agent_id}"


def crm_id(agent_id: str) -> str:
    return f"crm-{agent_id}"


def refusal_of(state: InteractionState, event: Event) -> str | None:
    """The error the lifecycle table answers ``event`` with in ``state``, if it refuses it."""
    rule = rule_for(state, event)
    return rule.name if isinstance(rule, Refuse) else None


def state_after(interaction: Interaction, event: Event) -> InteractionState:
    """Where the lifecycle table takes ``interaction`` on ``event`` (a note keeps it)."""
    return target_of(interaction.state, event)


def target_of(state: InteractionState, event: Event) -> InteractionState:
    rule = rule_for(state, event)
    return rule.target if isinstance(rule, Move) else state


def moves(state: InteractionState, event: Event) -> bool:
    return isinstance(rule_for(state, event), Move)


def given_up(state: InteractionState, queue: str, overflows: int) -> tuple[InteractionState, str]:
    """The queue's overflow rule for waiting work in ``state``: to the overflow queue while the
    work may still overflow, else back to the CRM (the lifecycle table's moves for each)."""
    overflow = QUEUE_NAMED[queue].overflow_queue
    if overflow is not None and overflows < MAX_OVERFLOWS:
        return target_of(state, Event.OVERFLOWED), overflow
    return target_of(state, Event.HANDED_BACK), queue


def live_offer(offers: list[Offer]) -> Offer | None:
    live = [o for o in offers if o.status in LIVE_OFFERS]
    assert len(live) <= 1, f"more than one live offer: {live}"
    return live[0] if live else None


def added(rows: list[OutboxRow], before: list[OutboxRow]) -> list[OutboxRow]:
    """The rows not among ``before`` (rows written in one instant have no set order)."""
    seen = {r.message.id for r in before}
    return [r for r in rows if r.message.id not in seen]


def channel_values(state: ChannelState) -> tuple[Any, ...]:
    return (state.status, state.reason, state.next_status, state.next_reason)


class Stored:
    """The SQL store's readers, run to completion on the state machine's event loop."""

    def __init__(self, store: SqlStore, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._store = store
        self._run = run

    def __getattr__(self, name: str) -> Callable[..., Any]:
        reader = getattr(self._store, name)
        return lambda *args, **kwargs: self._run(reader(*args, **kwargs))


@dataclass(frozen=True)
class Seen:
    """What is stored after a step, read once for all the invariants."""

    interactions: list[Interaction]
    agents: list[Agent]
    offers: dict[str, list[Offer]]
    histories: dict[str, list[HistoryEntry]]
    timers: list[Timer]
    outbox: list[OutboxRow]
    now: datetime

    def deadline_of(self, interaction_id: str) -> Timer | None:
        found = [t for t in self.timers if t.kind == TIMER_KIND and t.subject == interaction_id]
        assert len(found) <= 1, f"{interaction_id} has {len(found)} deadline timers"
        return found[0] if found else None


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.tmp = Path(tempfile.mkdtemp(prefix="harmony-lifecycle-"))
        self.store = SqlStore(sqlite_copy(self.tmp), self.clock.now)
        self.stored = Stored(self.store, self.run)
        self.acd = FakeAdapter(TargetKind.ACD)
        self.crm = FakeAdapter(TargetKind.CRM)
        registry = AdapterRegistry()
        registry.register(self.acd)
        registry.register(self.crm)
        # One message per relay step, so that each message's fate is a separate choice.
        self.relay = Relay(
            self.store.uow,
            registry,
            self.clock,
            batch_size=1,
            max_attempts=MAX_ATTEMPTS,
            base_backoff_seconds=1.0,
            lease_seconds=30.0,
        )
        # One timer per round, so that each timer's outcome is predicted and checked alone.
        self.scheduler = Scheduler(self.store.uow, self.clock, claimer="test", batch_size=1)
        self.event_counter = 0
        self.created_by_event: dict[str, str] = {}
        self.created_by_external: dict[str, str] = {}
        # Each interaction's received_at, as stored when it was created.
        self.received_at: dict[str, datetime] = {}
        # Events that were applied, to be delivered again: (replay, interaction id, the
        # routing request an ACD event answered).
        self.applied: list[
            tuple[Callable[[], Awaitable[interactions.Outcome]], str, str | None]
        ] = []
        # What the previous step left stored, and the agent channels reported on since.
        self.previous_states: dict[str, InteractionState] = {}
        self.previous_channels: dict[tuple[str, Channel], ChannelState] = {}
        self.reported: set[tuple[str, Channel]] = set()

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # Helpers ------------------------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def next_event_id(self, prefix: str) -> str:
        self.event_counter += 1
        return f"{prefix}-{self.event_counter}"

    def draw_external_id(self, data: st.DataObject) -> str:
        """Mostly an interaction that exists; sometimes one the CRM never reported."""
        known = sorted(self.created_by_external)
        if known and data.draw(st.integers(0, 7), label="known") > 0:
            return data.draw(st.sampled_from(known), label="external_id")
        return "x-unknown"

    def interaction(self, external_id: str) -> Interaction | None:
        interaction_id = self.created_by_external.get(external_id)
        return self.stored.interaction(interaction_id) if interaction_id else None

    def agent(self, agent_id: str | None) -> Agent | None:
        return self.stored.agent(agent_id) if agent_id else None

    def refusal(self, agent: Agent, channel: Channel) -> str | None:
        """The model of who may be offered work: ready with nothing pending, not wrapping up,
        room, not blocked."""
        state = agent.capacity_on(channel)
        if state.status != ChannelStatus.READY:
            return "not ready"
        if state.next_status is not None:
            return "leaving"
        if state.wrap_up_until is not None and state.wrap_up_until > self.clock.now():
            return "wrap-up"
        if state.load >= state.capacity:
            return "full"
        if channel == Channel.EMAIL and agent.capacity_on(Channel.CHAT).load > 0:
            return "blocked by chat"
        return None

    def snapshot(self) -> dict[str, Any]:
        """Every stored row: equal before and after an event means it changed nothing."""
        return dict(self.stored.dump())

    def apply(
        self,
        name: str,
        call: Callable[[], Awaitable[interactions.Outcome]],
        expected_error: str | None,
        *,
        replayable: bool = True,
        request_id: str | None = None,
    ) -> interactions.Outcome | None:
        """Run one event; check it fails with ``expected_error`` and no trace, or succeeds."""
        event(f"{name}: {expected_error or 'applied'}")
        # Only a refusal is compared with what was stored before; an unexpected one fails on
        # its code first.
        before = self.snapshot() if expected_error is not None else None
        try:
            outcome = self.run(call())  # type: ignore[arg-type]
        except HarmonyError as exc:
            assert exc.code == expected_error, f"expected {expected_error}, got {exc!r}"
            assert self.snapshot() == before, "a refused event changed stored state"
            return None
        assert expected_error is None, f"expected {expected_error}, but the event applied"
        assert not outcome.duplicate
        if replayable:
            self.applied.append((call, outcome.interaction_id, request_id))
        return outcome

    def report(self, agent_id: str, status: ChannelStatus, channels: tuple[Channel, ...]) -> None:
        """The CRM's media bar reports a login or a readiness change."""
        self.reported.update((agent_id, channel) for channel in channels)
        self.run(
            agents.report_state(
                self.store.uow(),
                self.clock,
                reporter=agents.Reporter(TargetKind.CRM, "generic"),
                event_id=self.next_event_id("state"),
                agent_ref=crm_id(agent_id),
                report=agents.StateReport(
                    event="agent.state_changed",
                    status=status,
                    reason="break" if status == ChannelStatus.NOT_READY else None,
                    channels=channels,
                ),
                reasons=DEFAULT_NOT_READY_REASONS,
                acd_adapter="generic",
            )
        )

    def upsert_agent(self, agent_id: str, chat: int, email: int) -> None:
        self.run(
            interactions.upsert_agent(
                self.store.uow(),
                self.clock,
                agent_id=agent_id,
                name=agent_id.upper(),
                crm_agent_id=crm_id(agent_id),
                acd_agent_id=acd_id(agent_id),
                skills=["support"],
                profile=PROFILE.name,
                capacity={Channel.CHAT: chat, Channel.EMAIL: email},
            )
        )

    def offers_by_agent(self, agent_id: str, channel: Channel) -> list[Offer]:
        """Every offer ever made to the agent on the channel."""
        return [
            offer
            for interaction_id in self.created_by_external.values()
            for offer in self.stored.offers(interaction_id)
            if (offer.agent_id, offer.channel) == (agent_id, channel)
        ]

    def offers_of_agent(self, agent_id: str, channel: Channel) -> list[Offer]:
        """The live offers the agent holds on the channel."""
        return [o for o in self.offers_by_agent(agent_id, channel) if o.status in LIVE_OFFERS]

    # Set-up -------------------------------------------------------------------------------

    @initialize(
        capacities=st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=3, max_size=3
        ),
        opening=st.lists(
            st.tuples(st.sampled_from(ROUTED), st.sampled_from(OPENING_DEPTHS)), max_size=4
        ),
    )
    def seed(self, capacities: list[tuple[int, int]], opening: list[tuple[Channel, int]]) -> None:
        """Queues, agents logged in ready, and a few interactions already some way down
        their lives (the steps then start from work in hand more often)."""
        for queue in QUEUES:
            self.run(interactions.upsert_queue(self.store.uow(), queue))
        self.run(agents.upsert_profile(self.store.uow(), self.clock, PROFILE))
        for agent_id, (chat, email) in zip(AGENT_IDS, capacities, strict=True):
            self.upsert_agent(agent_id, chat, email)
            self.report(agent_id, ChannelStatus.READY, ROUTED)
        self.run(self.settle_outbox())  # the ACD heard of the logins before the first step
        for n, (channel, depth) in enumerate(opening):
            external_id = EXTERNAL_IDS[-1 - n]
            self.create(external_id, channel, False, f"opening-{n}")
            for _ in range(depth):
                interaction = self.interaction(external_id)
                assert interaction is not None
                if interaction.state in AWAITING_SELECTION:
                    self.do_select(external_id, "free")
                elif interaction.state == S.OFFERED:
                    self.do_accept(external_id, "assigned")

    async def settle_outbox(self) -> None:
        await settle_outbox(self.store, self.clock)

    # CRM events ---------------------------------------------------------------------------

    @rule(
        external_id=st.sampled_from(EXTERNAL_IDS),
        channel=st.sampled_from(ROUTED),
        second_queue=st.integers(0, 3).map(lambda n: n == 0),
        event_id=st.sampled_from(CREATE_EVENT_IDS),
    )
    def create(self, external_id: str, channel: Channel, second_queue: bool, event_id: str) -> None:
        queue = QUEUES_FOR[channel][1 if second_queue else 0]
        outcome = self.run(
            interactions.receive_interaction(
                self.store.uow,
                self.clock,
                crm_adapter="generic",
                acd_adapter="generic",
                event_id=event_id,
                new=interactions.NewInteraction(
                    external_id=external_id, channel=channel, queue=queue
                ),
            )
        )
        if event_id in self.created_by_event:
            assert outcome == interactions.Outcome(self.created_by_event[event_id], duplicate=True)
            return
        if external_id in self.created_by_external:
            assert outcome == interactions.Outcome(self.created_by_external[external_id], True)
        else:
            assert not outcome.duplicate
            self.created_by_external[external_id] = outcome.interaction_id
            created = self.stored.interaction(outcome.interaction_id)
            assert created is not None and created.state == S.ROUTING
            assert created.received_at == self.clock.now()
            self.received_at[created.id] = created.received_at
        self.created_by_event[event_id] = outcome.interaction_id

    @rule(data=st.data(), who=st.sampled_from(["nobody", "assigned", "other"]))
    def accept(self, data: st.DataObject, who: str) -> None:
        self.do_accept(self.draw_external_id(data), who)

    def crm_agent_for(self, interaction: Interaction | None, who: str) -> str | None:
        assigned = self.agent(interaction.agent_id if interaction else None)
        return {
            "nobody": None,
            "assigned": assigned.crm_agent_id if assigned else crm_id("a0"),
            "other": "crm-someone-else",
        }[who]

    def is_wrong_agent(self, interaction: Interaction | None, crm_agent_id: str | None) -> bool:
        """The CRM names an agent, and the interaction names another."""
        assigned = self.agent(interaction.agent_id if interaction else None)
        return (
            crm_agent_id is not None
            and assigned is not None
            and (assigned.crm_agent_id != crm_agent_id)
        )

    def do_accept(self, external_id: str, who: str) -> None:
        interaction = self.interaction(external_id)
        crm_agent_id = self.crm_agent_for(interaction, who)
        if interaction is None:
            expected: str | None = "unknown_interaction"
        elif self.is_wrong_agent(interaction, crm_agent_id):
            expected = "invalid_transition"
        else:
            expected = refusal_of(interaction.state, Event.ACCEPTED)
        event_id = self.next_event_id("accepted")

        def call() -> Awaitable[interactions.Outcome]:
            return interactions.accept_interaction(
                self.store.uow(),
                self.clock,
                crm_adapter="generic",
                event_id=event_id,
                external_id=external_id,
                crm_agent_id=crm_agent_id,
            )

        if self.apply("accepted", call, expected) is not None:
            assert interaction is not None
            after = self.interaction(external_id)
            assert after is not None and after.state == state_after(interaction, Event.ACCEPTED)

    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        self.do_complete(self.draw_external_id(data))

    def do_complete(self, external_id: str) -> None:
        interaction = self.interaction(external_id)
        if interaction is None:
            expected: str | None = "unknown_interaction"
        else:
            expected = refusal_of(interaction.state, Event.COMPLETED)
        event_id = self.next_event_id("completed")

        def call() -> Awaitable[interactions.Outcome]:
            return interactions.complete_interaction(
                self.store.uow(),
                self.clock,
                crm_adapter="generic",
                event_id=event_id,
                external_id=external_id,
            )

        load_before = self._load_of(interaction)
        ended_before = self.stored.outbox(type=WORK_ENDED)
        if self.apply("completed", call, expected) is not None:
            assert interaction is not None
            after = self.interaction(external_id)
            assert after is not None
            assert after.state == state_after(interaction, Event.COMPLETED)
            ended = self.stored.outbox(type=WORK_ENDED)
            if not moves(interaction.state, Event.COMPLETED):
                # Completed again, or after the work failed: noted, nothing released.
                assert self._load_of(after) == load_before
                assert len(ended) == len(ended_before)
                return
            assert self._load_of(after) == load_before - 1
            wrap_up = CHAT_WRAP_UP if after.channel == Channel.CHAT else 0
            [new] = added(ended, ended_before)
            assert new.message.interaction_id == after.id
            assert new.message.payload["reason"] == "completed"
            assert new.message.payload["wrap_up_seconds"] == wrap_up
            if wrap_up:
                agent = self.agent(after.agent_id)
                assert agent is not None
                assert agent.capacity_on(after.channel).wrap_up_until == (
                    self.clock.now() + timedelta(seconds=wrap_up)
                )

    def _load_of(self, interaction: Interaction | None) -> int:
        agent = self.agent(interaction.agent_id if interaction else None)
        if agent is None or interaction is None:
            return 0
        return agent.capacity_on(interaction.channel).load

    @rule(data=st.data(), who=st.sampled_from(["assigned", "assigned", "nobody", "other"]))
    def decline(self, data: st.DataObject, who: str) -> None:
        """The agent declines the offer (sometimes another agent than the one offered)."""
        external_id = self.draw_external_id(data)
        interaction = self.interaction(external_id)
        crm_agent_id = self.crm_agent_for(interaction, who)
        if interaction is None:
            expected: str | None = "unknown_interaction"
        elif self.is_wrong_agent(interaction, crm_agent_id):
            expected = "not_offered_to_agent"
        else:
            expected = refusal_of(interaction.state, Event.DECLINED)
        event_id = self.next_event_id("declined")

        def call() -> Awaitable[interactions.Outcome]:
            return rerouting.decline_interaction(
                self.store.uow(),
                self.clock,
                crm_adapter="generic",
                event_id=event_id,
                external_id=external_id,
                crm_agent_id=crm_agent_id,
                reason="busy",
            )

        load_before = self._load_of(interaction)
        live = live_offer(self.stored.offers(interaction.id)) if interaction else None
        told_before = self.stored.outbox(type=OFFER_DECLINED)
        if self.apply("declined", call, expected) is None:
            return
        assert interaction is not None
        after = self.interaction(external_id)
        assert after is not None
        if not moves(interaction.state, Event.DECLINED):
            assert after.state == interaction.state  # a late decline is noted
            return
        # The offer ends; the work waits again, or its queue gives up on it.
        expected_state = state_after(interaction, Event.DECLINED)
        expected_queue = interaction.queue
        if interaction.offers_made >= QUEUE_NAMED[interaction.queue].policy.max_offers:
            expected_state, expected_queue = given_up(
                expected_state, interaction.queue, interaction.overflows
            )
        event(f"declined: {expected_state}")
        assert (after.state, after.queue, after.agent_id) == (expected_state, expected_queue, None)
        assert self._load_of(interaction) == load_before - 1
        assert live is not None
        [ended] = [o for o in self.stored.offers(after.id) if o.id == live.id]
        assert (ended.status, ended.reason) == (OfferStatus.DECLINED, "busy")
        told = added(self.stored.outbox(type=OFFER_DECLINED), told_before)
        if expected_state == S.ROUTING and expected_queue == interaction.queue:
            [again] = told
            assert again.message.payload["request_id"] == after.request_id
            assert again.message.payload["agent_id"] == acd_id(live.agent_id)
        else:
            assert told == []

    @rule(data=st.data(), cancelled=st.booleans())
    def abandon(self, data: st.DataObject, cancelled: bool) -> None:
        """The customer leaves, or the CRM withdraws the work."""
        external_id = self.draw_external_id(data)
        interaction = self.interaction(external_id)
        what = Event.CANCELLED if cancelled else Event.ABANDONED
        if interaction is None:
            expected: str | None = "unknown_interaction"
        else:
            expected = refusal_of(interaction.state, what)
        event_id = self.next_event_id(what.value)

        def call() -> Awaitable[interactions.Outcome]:
            return rerouting.abandon_interaction(
                self.store.uow(),
                self.clock,
                crm_adapter="generic",
                event_id=event_id,
                external_id=external_id,
                cancelled=cancelled,
            )

        load_before = self._load_of(interaction)
        live = live_offer(self.stored.offers(interaction.id)) if interaction else None
        cancels_before = self.stored.outbox(type=REQUEST_CANCELLED)
        if self.apply(what.value, call, expected) is None:
            return
        assert interaction is not None
        after = self.interaction(external_id)
        assert after is not None
        assert after.state == state_after(interaction, what)
        if not moves(interaction.state, what):
            assert self._load_of(after) == load_before
            return
        event(f"{what.value} from {interaction.state}")
        [told] = added(self.stored.outbox(type=REQUEST_CANCELLED), cancels_before)
        assert told.message.payload["request_id"] == interaction.request_id
        if interaction.state in HOLDS_CAPACITY:
            assert self._load_of(interaction) == load_before - 1
            assert live is not None
            [ended] = [o for o in self.stored.offers(after.id) if o.id == live.id]
            assert ended.status == OfferStatus.ABANDONED

    @rule(
        data=st.data(),
        to=st.sampled_from(["queue", "queue", "agent", "agent", "nothing"]),
    )
    def transfer(self, data: st.DataObject, to: str) -> None:
        """A supervisor sends accepted work to a queue or a named agent."""
        known = sorted(self.created_by_external)
        accepted = [
            x for x in known if (i := self.interaction(x)) is not None and i.state == S.ACCEPTED
        ]
        choice = data.draw(st.integers(0, 9), label="which")
        if accepted and choice > 2:
            external_id: str | None = data.draw(st.sampled_from(accepted), label="accepted")
        elif known and choice > 0:
            external_id = data.draw(st.sampled_from(known), label="any")
        else:
            external_id = None
        interaction = self.interaction(external_id) if external_id else None
        ref = interaction.id if interaction else "no-such-interaction"
        queue_name: str | None = None
        named: str | None = None
        if to == "queue":
            queue_name = data.draw(st.sampled_from([q.name for q in QUEUES]), label="queue")
        elif to == "agent":
            named = data.draw(st.sampled_from([*AGENT_IDS, "ghost"]), label="agent")
        expected = self.transfer_refusal(interaction, queue_name, named)
        if expected == "agent_unavailable":
            event("transfer: refused, agent unavailable")

        def call() -> Awaitable[interactions.Outcome]:
            return rerouting.transfer_interaction(
                self.store.uow(),
                self.clock,
                interaction_ref=ref,
                target=rerouting.TransferTarget(queue=queue_name, agent_id=named),
                by="operator",
            )

        holder = self.agent(interaction.agent_id if interaction else None)
        load_before = self._load_of(interaction)
        live = live_offer(self.stored.offers(interaction.id)) if interaction else None
        ended_before = self.stored.outbox(type=WORK_ENDED)
        if self.apply("transferred", call, expected, replayable=False) is None:
            return
        assert interaction is not None and holder is not None
        after = self.stored.interaction(interaction.id)
        assert after is not None
        to_queue = queue_name or interaction.queue
        assert (after.state, after.queue, after.agent_id) == (
            state_after(interaction, Event.TRANSFER_REQUESTED),
            to_queue,
            None,
        )
        assert after.received_at == interaction.received_at
        assert after.request_id != interaction.request_id
        assert self._load_of(interaction) == load_before - 1
        assert live is not None
        [ended_offer] = [o for o in self.stored.offers(after.id) if o.id == live.id]
        assert ended_offer.status == OfferStatus.TRANSFERRED
        [ended] = added(self.stored.outbox(type=WORK_ENDED), ended_before)
        assert ended.message.payload["reason"] == "transferred"
        assert ended.message.payload["agent_id"] == holder.acd_agent_id
        [request] = [
            r
            for r in self.stored.outbox(type=ROUTING_REQUESTED, interaction_id=after.id)
            if r.message.payload["request_id"] == after.request_id
        ]
        assert request.message.payload["queue"] == to_queue
        assert request.message.payload.get("agent_id") == (acd_id(named) if named else None)

    def transfer_refusal(
        self, interaction: Interaction | None, queue_name: str | None, named: str | None
    ) -> str | None:
        """The error a supervisor's transfer gets, in the order the use case checks."""
        if interaction is None:
            return "unknown_interaction"
        if (refused := refusal_of(interaction.state, Event.TRANSFER_REQUESTED)) is not None:
            return refused
        queue = QUEUE_NAMED[queue_name or interaction.queue]
        if queue.channel != interaction.channel:
            return "queue_channel_mismatch"
        if named is not None:
            agent = self.agent(named if named in AGENT_IDS else None)
            if agent is None:
                return "unknown_agent"
            if agent.id == interaction.agent_id:
                return "agent_unavailable"
            if self.refusal(agent, interaction.channel) is not None:
                return "agent_unavailable"
        elif queue_name is None:
            return "transfer_target_missing"
        return None

    # Agent state --------------------------------------------------------------------------

    @rule(
        agent_id=st.sampled_from(AGENT_IDS),
        channel=st.sampled_from(ROUTED),
        status=st.sampled_from(
            [
                ChannelStatus.READY,
                ChannelStatus.READY,
                ChannelStatus.NOT_READY,
                ChannelStatus.LOGGED_OUT,
            ]
        ),
    )
    def readiness(self, agent_id: str, channel: Channel, status: ChannelStatus) -> None:
        """The media bar reports a change; from the CRM it is never refused, only recorded."""
        self.do_report(agent_id, channel, status)

    @rule(data=st.data(), status=st.sampled_from(LEAVING))
    def change_state_with_work(self, data: st.DataObject, status: ChannelStatus) -> None:
        """An agent who holds work on a channel goes not ready, logs out, or is ready again."""
        busy = [
            (agent.id, channel)
            for agent in self.stored.agents()
            for channel, state in sorted(agent.channels.items())
            if channel in ROUTED and state.load > 0
        ]
        if not busy:
            event("state with work: nobody busy")
            return
        working = sorted(
            {
                (i.agent_id, i.channel)
                for i in self.stored.interactions()
                if i.state == S.ACCEPTED and i.agent_id is not None
            }
        )
        if working and data.draw(st.integers(0, 2), label="accepted work") > 0:
            agent_id, channel = data.draw(st.sampled_from(working), label="working")
        else:
            agent_id, channel = data.draw(st.sampled_from(busy), label="busy")
        self.do_report(agent_id, channel, status)

    def do_report(self, agent_id: str, channel: Channel, status: ChannelStatus) -> None:
        """Report a change and check it against the model: an echo of Harmony's own mirror
        changes nothing; a ready cancels a pending change; a not ready or log out with work
        held (beyond offers not yet answered) becomes the pending change, and the offers not
        yet answered fall due at once; anything else applies."""
        before = self.agent(agent_id)
        assert before is not None
        current = before.capacity_on(channel)
        reason = "break" if status == ChannelStatus.NOT_READY else None
        unanswered = [
            o for o in self.offers_of_agent(agent_id, channel) if o.status == OfferStatus.PENDING
        ]
        leaves_with_work = False
        if self.is_echo(agent_id, channel, status, reason):
            expected, what = channel_values(current), "echo"
        elif current.next_status is not None and status == ChannelStatus.READY:
            expected, what = (ChannelStatus.READY, None, None, None), "pending cancelled"
        elif (current.status, current.reason) == (status, reason):
            expected, what = channel_values(current), "unchanged"
        elif status != ChannelStatus.READY and current.load > 0:
            leaves_with_work = True
            if current.load - len(unanswered) > 0:
                expected = (current.status, current.reason, status, reason)
                what = "pending"
            else:
                expected, what = (status, reason, None, None), "applied, offers taken back"
        else:
            expected, what = (status, reason, None, None), "applied"
        event(f"report {status}: {what}")
        self.report(agent_id, status, (channel,))
        after = self.agent(agent_id)
        assert after is not None
        got = after.capacity_on(channel)
        assert channel_values(got) == expected, f"{what}: {got}"
        assert got.load == current.load
        if leaves_with_work:
            for offer in unanswered:
                timer = self.stored.timer_of(offer.interaction_id)
                assert timer is not None, f"{offer.interaction_id}: no timer"
                assert (timer.detail["deadline"], timer.guard, timer.due_at) == (
                    AGENT_LEFT,
                    offer.id,
                    self.clock.now(),
                )

    def is_echo(
        self, agent_id: str, channel: Channel, status: ChannelStatus, reason: str | None
    ) -> bool:
        """Whether Harmony told the CRM this very state lately, and has not seen it back."""
        since = self.clock.now() - ECHO_WINDOW
        return any(
            (m.agent_id, m.channel, m.target_kind, m.status, m.reason)
            == (
                agent_id,
                channel,
                TargetKind.CRM,
                status,
                reason,
            )
            and m.echoed_at is None
            and m.sent_at >= since
            for m in self.stored.mirrors()
        )

    # ACD events ---------------------------------------------------------------------------

    @rule(
        data=st.data(),
        pick=st.sampled_from(["free", "free", *map(acd_id, AGENT_IDS), UNKNOWN_AGENT]),
    )
    def select(self, data: st.DataObject, pick: str) -> None:
        self.do_select(self.draw_external_id(data), pick)

    def do_select(self, external_id: str, pick: str) -> None:
        """The ACD picks an agent: one that can take the work when there is one ("free")."""
        interaction = self.interaction(external_id)
        acd_agent_id = pick
        if pick == "free":
            channel = interaction.channel if interaction else Channel.CHAT
            free = [a for a in self.stored.agents() if self.refusal(a, channel) is None]
            acd_agent_id = free[0].acd_agent_id if free else acd_id(AGENT_IDS[0])
        request_id = interaction.request_id if interaction else "rr_unknown"
        assert request_id is not None
        agent_id = acd_agent_id.removeprefix("acd-")
        agent = self.agent(agent_id if agent_id in AGENT_IDS else None)
        if interaction is None:
            expected: str | None = "unknown_interaction"
        elif agent is None:
            expected = "unknown_agent"
        elif (refused := refusal_of(interaction.state, Event.AGENT_SELECTED)) is not None:
            expected = refused
        elif (why := self.refusal(agent, interaction.channel)) is not None:
            event(f"selected: refused, {why}")
            expected = "agent_unavailable"
        else:
            expected = None
        event_id = self.next_event_id("selected")

        def call() -> Awaitable[interactions.Outcome]:
            return interactions.select_agent(
                self.store.uow(),
                self.clock,
                acd_adapter="generic",
                event_id=event_id,
                request_id=request_id,
                acd_agent_id=acd_agent_id,
            )

        if self.apply("selected", call, expected, request_id=request_id) is not None:
            assert interaction is not None and agent is not None
            after = self.interaction(external_id)
            assert after is not None
            assert (after.state, after.agent_id) == (S.OFFERED, agent.id)
            offer = live_offer(self.stored.offers(after.id))
            assert offer is not None and offer.agent_id == agent.id
            assert offer.expires_at == self.clock.now() + timedelta(
                seconds=QUEUE_NAMED[after.queue].policy.offer_timeout_seconds
            )
            [deliver] = [
                r
                for r in self.stored.outbox(type=INTERACTION_DELIVER, interaction_id=after.id)
                if r.message.payload["offer_id"] == offer.id
            ]
            assert deliver.message.payload["agent_id"] == agent.crm_agent_id

    @rule(data=st.data(), position=st.none() | st.integers(1, 9))
    def queued(self, data: st.DataObject, position: int | None) -> None:
        external_id = self.draw_external_id(data)
        interaction = self.interaction(external_id)
        request_id = interaction.request_id if interaction else "rr_unknown"
        assert request_id is not None
        expected = "unknown_interaction" if interaction is None else None
        event_id = self.next_event_id("queued")

        def call() -> Awaitable[interactions.Outcome]:
            return interactions.queue_request(
                self.store.uow(),
                self.clock,
                acd_adapter="generic",
                event_id=event_id,
                request_id=request_id,
                position=position,
            )

        if self.apply("queued", call, expected, request_id=request_id) is not None:
            assert interaction is not None
            after = self.interaction(external_id)
            assert after is not None
            moved = S.QUEUED if interaction.state == S.ROUTING else interaction.state
            assert after.state == moved

    # Progress, replays, relay, time, operators -------------------------------------------

    @precondition(lambda self: bool(self.created_by_external))
    @rule(data=st.data(), steps=st.integers(1, 3))
    def progress(self, data: st.DataObject, steps: int) -> None:
        """Take one unfinished interaction a few steps down the happy path (deep states are
        rare otherwise): select an agent who can take it, deliver (or accept at once), accept,
        complete."""
        known = sorted(self.created_by_external)
        open_ = [x for x in known if (i := self.interaction(x)) and not i.is_terminal]
        external_id = data.draw(st.sampled_from(open_ or known), label="progress")
        for _ in range(steps):
            interaction = self.interaction(external_id)
            assert interaction is not None
            if interaction.state in AWAITING_SELECTION:
                self.do_select(external_id, "free")
            elif interaction.state == S.OFFERED:
                if data.draw(st.booleans(), label="deliver first"):
                    self.send_due(["ok"] * 4)
                else:
                    self.do_accept(external_id, "assigned")
            elif interaction.state == S.DELIVERED:
                self.do_accept(external_id, "assigned")
            elif interaction.state == S.ACCEPTED:
                self.do_complete(external_id)
            after = self.interaction(external_id)
            if after is None or after.state == interaction.state:
                return

    @precondition(lambda self: bool(self.applied))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """An event already applied arrives again: a duplicate with no effect."""
        call, interaction_id, request_id = data.draw(st.sampled_from(self.applied))
        before = self.snapshot()
        now_placed = self.stored.interaction(interaction_id).request_id
        # Also when the request it answered has been replaced since (an overflow, a transfer).
        if request_id is not None and request_id != now_placed:
            event("replay: request replaced")
        outcome = self.run(call())  # type: ignore[arg-type]
        assert outcome == interactions.Outcome(interaction_id, duplicate=True)
        assert self.snapshot() == before

    @rule(
        fates=st.lists(
            st.sampled_from(["ok", "ok", "ok", "transient", "permanent"]), min_size=1, max_size=4
        )
    )
    def send_due(self, fates: list[str]) -> None:
        """The relay sends the next due messages, one at a time, each with its own fate."""
        for fate in fates:
            self.relay_one(fate)

    def relay_one(self, fate: str) -> None:
        due_before = {r.message.id: r for r in self.stored.outbox(status=PENDING)}
        attempts_before = {adapter: len(adapter.attempts) for adapter in (self.acd, self.crm)}
        for adapter in attempts_before:
            if fate != "ok":
                adapter.fail_next(permanent=fate == "permanent", reason=f"{fate} failure")
        claimed = self.run(self.relay.run_once())
        tried = []
        for adapter, count in attempts_before.items():
            adapter.clear_failures()
            tried += adapter.attempts[count:]
        assert claimed == len(tried) <= 1
        if not tried:
            return
        record = self.stored.outbox_record(tried[0].id)
        assert record is not None and tried[0].id in due_before
        event(f"relay {tried[0].type} {fate}: {record.status}")
        assert record.attempts == due_before[tried[0].id].attempts + 1
        if fate == "ok":
            assert record.status == SENT
        elif fate == "permanent" or record.attempts >= MAX_ATTEMPTS:
            assert record.status == DEAD
        else:
            assert record.status == PENDING
            assert record.next_attempt_at > self.clock.now()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 31.0]))
    def advance_clock(self, seconds: float) -> None:
        """Time passes with no scheduler running: timers may fall due and wait."""
        self.clock.advance(seconds)

    @rule(seconds=st.sampled_from(FIRE_AFTER))
    def advance_and_fire(self, seconds: int) -> None:
        """Time passes and the scheduler fires every timer due, one at a time, each checked
        against what the lifecycle table and the queue's policy say it does."""
        self.clock.advance(seconds)
        for _ in range(200):
            due = [t for t in self.stored.timers() if t.due_at <= self.clock.now()]
            if not due:
                return
            self.fire_one(due[0])
        raise AssertionError("timers kept falling due")

    def fire_one(self, timer: Timer) -> None:
        if timer.kind != TIMER_KIND:
            event(f"timer {timer.kind}")
            assert self.run(self.scheduler.run_once()) == 1, f"{timer} did not fire"
            return
        before = self.stored.interaction(timer.subject)
        assert before is not None
        offers = self.stored.offers(before.id)
        live = live_offer(offers)
        holder = self.agent(before.agent_id)
        held_before = holder.capacity_on(before.channel) if holder else None
        requests_before = self.stored.outbox(type=ROUTING_REQUESTED, interaction_id=before.id)
        now = self.clock.now()
        deadline = timer.detail.get("deadline")
        queue = QUEUE_NAMED[before.queue]
        expected_state, expected_queue = before.state, before.queue
        ended: OfferStatus | None = None
        placed_again = False
        if before.is_terminal:
            what = "after the end"
        elif (
            deadline in (Deadline.OFFER, AGENT_LEFT)
            and before.state in (S.OFFERED, S.DELIVERED)
            and live is not None
            and (live.id, live.status) == (timer.guard, OfferStatus.PENDING)
        ):
            left = deadline == AGENT_LEFT
            what = "offer rescinded" if left else "offer timed out"
            happened = Event.OFFER_RESCINDED if left else Event.OFFER_TIMED_OUT
            ended = OfferStatus.RESCINDED if left else OfferStatus.TIMED_OUT
            expected_state = state_after(before, happened)
            if before.offers_made >= queue.policy.max_offers:
                expected_state, expected_queue = given_up(
                    expected_state, before.queue, before.overflows
                )
        elif deadline == Deadline.ROUTING and before.state == S.ROUTING:
            if int(timer.detail.get("placements", 1)) >= 2:
                what = "routing timed out twice"
                expected_state, expected_queue = given_up(
                    before.state, before.queue, before.overflows
                )
            else:
                what = "routing placed again"
                expected_state = state_after(before, Event.ROUTING_TIMED_OUT)
                placed_again = True
        elif (
            deadline == Deadline.MAX_WAIT
            and before.state in WAITING_STATES
            and before.max_wait_at is not None
            and before.max_wait_at <= now
        ):
            what = "max wait"
            expected_state, expected_queue = given_up(before.state, before.queue, before.overflows)
        else:
            what = "stale"
        event(f"timer {deadline} in {before.state}: {what} -> {expected_state}")

        assert self.run(self.scheduler.run_once()) == 1, f"{timer} did not fire"

        after = self.stored.interaction(before.id)
        assert after is not None
        assert (after.state, after.queue) == (expected_state, expected_queue), what
        assert after.received_at == before.received_at
        requests = added(
            self.stored.outbox(type=ROUTING_REQUESTED, interaction_id=before.id), requests_before
        )
        if placed_again:
            [request] = requests
            assert request.message.payload["request_id"] == before.request_id
        elif expected_queue != before.queue:  # overflowed: a new request in the new queue
            [request] = requests
            assert after.request_id != before.request_id
            assert request.message.payload["request_id"] == after.request_id
            assert request.message.payload["queue"] == expected_queue
        else:
            assert requests == []
        if expected_state == S.FALLBACK and before.state != S.FALLBACK:
            fallback = self.stored.outbox(type=INTERACTION_FALLBACK, interaction_id=before.id)
            assert len(fallback) == 1
        if ended is None:
            return
        assert live is not None and holder is not None and held_before is not None
        [decided] = [o for o in self.stored.offers(before.id) if o.id == live.id]
        assert decided.status == ended
        assert after.agent_id is None
        held = self.agent(holder.id)
        assert held is not None
        held_after = held.capacity_on(before.channel)
        assert held_after.load == held_before.load - 1
        if (
            ended == OfferStatus.TIMED_OUT
            and held_before.status == ChannelStatus.READY
            and held_before.next_status is None
        ):
            # RONA after one miss: misses are counted in the order offers ended, so the one
            # that just timed out comes first; unless another offer made later ended at the
            # same instant (the order of a tie is the later-made first).
            tied = [
                o
                for o in self.offers_by_agent(holder.id, before.channel)
                if o.id != live.id
                and o.decided_at is not None
                and o.decided_at >= now
                and o.offered_at > live.offered_at
            ]
            if tied:
                event("timer offer_timeout: RONA not predicted, a tie")
                return
            # As any change away from ready: the agent's other unanswered offers there go back
            # at once, and with accepted work still held, not ready waits as the pending state.
            live_now = self.offers_of_agent(holder.id, before.channel)
            unanswered = [o for o in live_now if o.status == OfferStatus.PENDING]
            if len(live_now) > len(unanswered):
                event("timer offer_timeout: RONA pending")
                wanted = (ChannelStatus.READY, None, ChannelStatus.NOT_READY, "rona")
            else:
                event("timer offer_timeout: RONA applied")
                wanted = (ChannelStatus.NOT_READY, "rona", None, None)
            assert channel_values(held_after) == wanted, held_after
            for offer in unanswered:
                timer_now = self.stored.timer_of(offer.interaction_id)
                assert timer_now is not None, offer
                assert (timer_now.detail["deadline"], timer_now.guard, timer_now.due_at) == (
                    AGENT_LEFT,
                    offer.id,
                    now,
                )

    @rule(agent_id=st.sampled_from(AGENT_IDS), chat=st.integers(0, 3), email=st.integers(0, 3))
    def set_capacity(self, agent_id: str, chat: int, email: int) -> None:
        agent = self.agent(agent_id)
        assert agent is not None
        wanted = {Channel.CHAT: chat, Channel.EMAIL: email}
        below = any(agent.capacity_on(ch).load > cap for ch, cap in wanted.items())
        before = self.snapshot() if below else None
        try:
            self.upsert_agent(agent_id, chat, email)
        except HarmonyError as exc:
            assert below and exc.code == "capacity_below_load", repr(exc)
            assert self.snapshot() == before
            return
        assert not below
        after = self.agent(agent_id)
        assert after is not None
        for channel in ROUTED:
            assert after.capacity_on(channel).capacity == wanted[channel]
            assert after.capacity_on(channel).load == agent.capacity_on(channel).load
            assert channel_values(after.capacity_on(channel)) == channel_values(
                agent.capacity_on(channel)
            )

    # Invariants ---------------------------------------------------------------------------

    @invariant()
    def stored_state_keeps_the_routing_invariants(self) -> None:
        """Read what is stored once per step, then check each invariant on it."""
        stored = self.stored.interactions()
        seen = Seen(
            interactions=stored,
            agents=self.stored.agents(),
            offers={i.id: self.stored.offers(i.id) for i in stored},
            histories={i.id: self.stored.history(i.id) for i in stored},
            timers=self.stored.timers(),
            outbox=self.stored.outbox(),
            now=self.clock.now(),
        )
        self.loads_are_within_capacity_and_match_assignments(seen)
        self.one_live_offer_per_interaction_where_its_state_says(seen)
        self.work_is_only_with_agents_who_have_capacity(seen)
        self.terminal_states_are_final(seen)
        self.received_at_is_kept(seen)
        self.nothing_is_stuck(seen)
        self.pending_states_apply_when_the_last_work_ends(seen)
        self.history_replays_to_the_current_state(seen)
        self.agent_history_replays_to_the_current_channel_states(seen)
        self.requests_and_deliveries_follow_the_offers(seen)
        self.queue_counts_match_the_interactions(seen)
        self.previous_states = {i.id: i.state for i in seen.interactions}
        self.previous_channels = {
            (a.id, channel): state for a in seen.agents for channel, state in a.channels.items()
        }
        self.reported.clear()

    def loads_are_within_capacity_and_match_assignments(self, seen: Seen) -> None:
        holding = Counter(
            (i.agent_id, i.channel) for i in seen.interactions if i.state in HOLDS_CAPACITY
        )
        offered = Counter(
            (o.agent_id, o.channel)
            for offers in seen.offers.values()
            for o in offers
            if o.status in LIVE_OFFERS
        )
        for agent in seen.agents:
            for channel, held in agent.channels.items():
                assert 0 <= held.load <= held.capacity, f"{agent.id} {channel}: {held}"
                assert held.load == holding[(agent.id, channel)], (
                    f"{agent.id} holds {held.load} {channel}, "
                    f"assigned {holding[(agent.id, channel)]}"
                )
                assert held.load == offered[(agent.id, channel)], (
                    f"{agent.id} holds {held.load} {channel}, "
                    f"live offers {offered[(agent.id, channel)]}"
                )

    def one_live_offer_per_interaction_where_its_state_says(self, seen: Seen) -> None:
        for interaction in seen.interactions:
            offers = seen.offers[interaction.id]
            live = [o for o in offers if o.status in LIVE_OFFERS]
            assert len(live) <= 1, f"{interaction.id} has live offers {live}"
            if interaction.state in (S.OFFERED, S.DELIVERED):
                wanted: OfferStatus | None = OfferStatus.PENDING
            elif interaction.state == S.ACCEPTED:
                wanted = OfferStatus.ACCEPTED
            else:
                wanted = None
            got = [(o.status, o.agent_id, o.channel) for o in live]
            expected = [(wanted, interaction.agent_id, interaction.channel)] if wanted else []
            assert got == expected, f"{interaction.id} {interaction.state}: live offers {got}"

    def work_is_only_with_agents_who_have_capacity(self, seen: Seen) -> None:
        for interaction in seen.interactions:
            if interaction.state in HOLDS_CAPACITY:
                agent = next((a for a in seen.agents if a.id == interaction.agent_id), None)
                assert agent is not None, f"{interaction.id} held by a missing agent"
                assert agent.capacity_on(interaction.channel).capacity >= 1

    def terminal_states_are_final(self, seen: Seen) -> None:
        for interaction in seen.interactions:
            before = self.previous_states.get(interaction.id)
            if before in TERMINAL_STATES:
                assert interaction.state == before, f"{interaction.id}: {before} -> {interaction}"

    def received_at_is_kept(self, seen: Seen) -> None:
        """Declines, timeouts, overflows and transfers keep the work's age, here and in what
        the ACD is told."""
        for interaction in seen.interactions:
            received_at = self.received_at[interaction.id]
            assert interaction.received_at == received_at, interaction.id
        for row in seen.outbox:
            message = row.message
            if message.target_kind == TargetKind.ACD and "received_at" in message.payload:
                wanted = self.received_at[message.interaction_id].isoformat()
                assert message.payload["received_at"] == wanted, message

    def nothing_is_stuck(self, seen: Seen) -> None:
        """Work not finished has an agent who accepted it, or a deadline that fits its state:
        the live offer's expiry (or at once, if its agent left), the ACD's answer or the
        queue's maximum wait, whichever is sooner."""
        ids = {i.id for i in seen.interactions}
        for timer in seen.timers:
            assert timer.kind != TIMER_KIND or timer.subject in ids, timer
        for interaction in seen.interactions:
            timer = seen.deadline_of(interaction.id)
            state = interaction.state
            if state in TERMINAL_STATES or state == S.ACCEPTED:
                assert timer is None, f"{interaction.id} is {state} with a deadline: {timer}"
                continue
            assert timer is not None, f"{interaction.id} is {state} with no deadline: stuck"
            deadline = timer.detail.get("deadline")
            if state in (S.OFFERED, S.DELIVERED):
                live = live_offer(seen.offers[interaction.id])
                assert live is not None and timer.guard == live.id, (interaction.id, timer)
                if deadline == AGENT_LEFT:
                    assert timer.due_at <= seen.now
                else:
                    assert (deadline, timer.due_at) == (Deadline.OFFER, live.expires_at), timer
                continue
            max_wait = interaction.max_wait_at
            assert max_wait is not None, interaction.id
            if state == S.ROUTING:
                assert deadline in (Deadline.ROUTING, Deadline.MAX_WAIT), timer
                assert timer.due_at <= max_wait, timer
            else:
                assert state == S.QUEUED, interaction
                assert (deadline, timer.due_at) == (Deadline.MAX_WAIT, max_wait), timer

    def pending_states_apply_when_the_last_work_ends(self, seen: Seen) -> None:
        """A channel's pending next state waits while the agent holds work there, and is
        applied exactly when the last of it ends; only a report replaces or cancels it."""
        for agent in seen.agents:
            for channel, now in agent.channels.items():
                if now.next_status is not None:
                    assert now.load > 0, f"{agent.id} {channel}: pending with no work: {now}"
                before = self.previous_channels.get((agent.id, channel))
                if (
                    before is None
                    or before.next_status is None
                    or (agent.id, channel) in self.reported
                ):
                    continue
                if now.load > 0:  # not yet: still pending, nothing applied
                    assert channel_values(now) == channel_values(before), (
                        f"{agent.id} {channel}: {before} -> {now} with work held"
                    )
                else:  # the last work ended: applied
                    event("pending state applied")
                    assert (now.status, now.reason, now.next_status) == (
                        before.next_status,
                        before.next_reason,
                        None,
                    ), f"{agent.id} {channel}: {before} -> {now} when the last work ended"

    def history_replays_to_the_current_state(self, seen: Seen) -> None:
        for interaction in seen.interactions:
            state: InteractionState | None = None
            for entry in seen.histories[interaction.id]:
                assert entry.from_state == state, f"{entry} does not follow {state}"
                if entry.to_state != entry.from_state:
                    assert entry.to_state is not None
                    assert state is None or entry.to_state in ALLOWED_TRANSITIONS[state]
                state = entry.to_state
            assert state == interaction.state, f"history ends in {state}, not {interaction.state}"

    def agent_history_replays_to_the_current_channel_states(self, seen: Seen) -> None:
        for agent in seen.agents:
            replayed = replay(self.stored.agent_history(agent.id))
            for channel, state in agent.channels.items():
                assert channel in replayed, f"{agent.id} {channel} has no history"
                got = replayed[channel]
                assert (got.status, got.reason, got.load, got.capacity, got.wrap_up_until) == (
                    state.status,
                    state.reason,
                    state.load,
                    state.capacity,
                    state.wrap_up_until,
                ), f"{agent.id} {channel}: history says {got}, state is {state}"

    def requests_and_deliveries_follow_the_offers(self, seen: Seen) -> None:
        """Each request id is placed once, and once more only after a routing timeout; a new
        request id comes only with an overflow or a transfer, and the current one is the
        latest; each offer was delivered once, and each offer that held the work to its end
        (completed, transferred) or lost its delivery ended once at the ACD."""
        interaction_ids = {i.id for i in seen.interactions}
        assert len(interaction_ids) == len(self.created_by_external)
        by_interaction: dict[str, dict[str, list[OutboxRow]]] = defaultdict(dict)
        for row in seen.outbox:
            message = row.message
            if message.type != AGENT_STATE:
                assert message.interaction_id in interaction_ids, message
            by_interaction[message.interaction_id].setdefault(message.type, []).append(row)
        for interaction in seen.interactions:
            sent = by_interaction[interaction.id]
            history = seen.histories[interaction.id]
            placed: dict[str, list[dict[str, Any]]] = {}
            for row in sent.get(ROUTING_REQUESTED, []):
                payload = row.message.payload
                placed.setdefault(payload["request_id"], []).append(payload)
            # The request ids in the order the history placed them: the first, then one per
            # overflow or transfer.
            request_ids = [
                e.detail["request_id"]
                for e in history
                if e.event in ("routing_requested", "overflowed", "transfer_requested")
            ]
            assert len(set(request_ids)) == len(request_ids), request_ids
            assert set(placed) == set(request_ids), (interaction.id, list(placed), request_ids)
            assert request_ids[-1] == interaction.request_id
            again = Counter(
                e.detail["request_id"] for e in history if e.event == "routing_placed_again"
            )
            for request_id, payloads in placed.items():
                assert len(payloads) == 1 + again[request_id], (request_id, payloads)
                # The same request placed again, the agent a transfer named included.
                for payload in payloads[1:]:
                    assert payload == payloads[0], (payloads[0], payload)
            offers = seen.offers[interaction.id]
            delivered = [r.message.payload["offer_id"] for r in sent.get(INTERACTION_DELIVER, [])]
            assert sorted(delivered) == sorted(o.id for o in offers), (interaction.id, offers)
            ended = [
                o
                for o in offers
                if o.status in ENDED_OFFERS
                or (o.status == OfferStatus.RESCINDED and o.reason == "delivery_failed")
            ]
            assert len(sent.get(WORK_ENDED, [])) == len(ended), (interaction.id, offers)

    def queue_counts_match_the_interactions(self, seen: Seen) -> None:
        waiting = [i for i in seen.interactions if i.state in WAITING_STATES]
        for stats in self.stored.queue_stats():
            mine = [i for i in waiting if i.queue == stats.queue.name]
            assert stats.waiting == len(mine), f"{stats.queue.name}: {stats.waiting} != {mine}"
            oldest = min((i.received_at for i in mine), default=None)
            assert stats.oldest_received_at == oldest, stats.queue.name


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(
    max_examples=20,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
