"""Random interleavings of CRM, ACD and relay events never break the routing invariants.

A hypothesis state machine drives the use cases and the relay over the SQL store (a copy of a
migrated SQLite file per example) with
several agents and interactions, including duplicates, unknown agents, full or unready agents,
wrap-up, chat blocking email, late notices, failed deliveries and capacity changes. After every
step it checks that:

- no agent's load is negative or above its capacity;
- each agent's load on a channel equals the interactions offered/delivered/accepted to it there;
- no interaction holding capacity names an agent without capacity on its channel;
- every interaction's history, replayed, ends in its current state;
- every agent's applied state history replays to its current channel states;
- the outbox holds exactly one routing request per interaction;
- each queue's waiting count and oldest waiting interaction (kept apart from the interactions,
  by triggers) equal what the interactions themselves say.

Each rule also checks its own outcome against a small model: the error code it predicts, or the
state it predicts; and an event that fails changes nothing stored.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
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
from harmony.routing import agents, interactions
from harmony.routing.agent_state import DEFAULT_NOT_READY_REASONS, Profile, replay
from harmony.routing.lifecycle import Event, Move, Refuse, rule_for
from harmony.routing.messages import (
    AGENT_STATE,
    INTERACTION_DELIVER,
    ROUTING_REQUESTED,
    WORK_ENDED,
    TargetKind,
)
from harmony.routing.model import (
    ALLOWED_TRANSITIONS,
    AWAITING_SELECTION,
    HOLDS_CAPACITY,
    WAITING_STATES,
    Agent,
    Channel,
    ChannelStatus,
    Interaction,
    InteractionState,
    Queue,
)
from harmony.testing import FakeAdapter, FakeClock
from tests.databases import sqlite_copy
from tests.sql_store import DEAD, PENDING, SENT, SqlStore
from tests.usecases.conftest import settle_outbox

S = InteractionState
T = TypeVar("T")

AGENT_IDS = ("a0", "a1", "a2")
UNKNOWN_AGENT = "acd-ghost"
EXTERNAL_IDS = tuple(f"x{n}" for n in range(6))
CREATE_EVENT_IDS = tuple(f"created-{n}" for n in range(8))  # few, so that ids repeat
ROUTED = (Channel.CHAT, Channel.EMAIL)
QUEUE_OF = {Channel.CHAT: "chat-q", Channel.EMAIL: "email-q"}
CHAT_WRAP_UP = 2
# Chat work blocks email offers; a finished chat leaves a short wrap-up; no voice here.
PROFILE = Profile(
    name="lifecycle",
    capacity={Channel.VOICE: 0, Channel.CHAT: 2, Channel.EMAIL: 2},
    wrap_up_seconds={Channel.CHAT: CHAT_WRAP_UP},
    blocks={Channel.CHAT: frozenset({Channel.EMAIL})},
)
MAX_ATTEMPTS = 3


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
    rule = rule_for(interaction.state, event)
    return rule.target if isinstance(rule, Move) else interaction.state


class Stored:
    """The SQL store's readers, run to completion on the state machine's event loop."""

    def __init__(self, store: SqlStore, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._store = store
        self._run = run

    def __getattr__(self, name: str) -> Callable[..., Any]:
        reader = getattr(self._store, name)
        return lambda *args, **kwargs: self._run(reader(*args, **kwargs))


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
        self.event_counter = 0
        self.created_by_event: dict[str, str] = {}
        self.created_by_external: dict[str, str] = {}
        # Events that were applied, to be delivered again: (replay, interaction id).
        self.applied: list[tuple[Callable[[], Awaitable[interactions.Outcome]], str]] = []

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
        """The model of who may be offered work: ready, not wrapping up, room, not blocked."""
        state = agent.capacity_on(channel)
        if state.status != ChannelStatus.READY:
            return "not ready"
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
        self.applied.append((call, outcome.interaction_id))
        return outcome

    def report(self, agent_id: str, status: ChannelStatus, channels: tuple[Channel, ...]) -> None:
        """The CRM's media bar reports a login or a readiness change."""
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

    # Set-up -------------------------------------------------------------------------------

    @initialize(
        capacities=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=3, max_size=3)
    )
    def seed(self, capacities: list[tuple[int, int]]) -> None:
        for channel, name in QUEUE_OF.items():
            self.run(interactions.upsert_queue(self.store.uow(), Queue(name, channel, ["support"])))
        self.run(agents.upsert_profile(self.store.uow(), self.clock, PROFILE))
        for agent_id, (chat, email) in zip(AGENT_IDS, capacities, strict=True):
            self.upsert_agent(agent_id, chat, email)
            self.report(agent_id, ChannelStatus.READY, ROUTED)
        self.run(self.settle_outbox())  # the ACD heard of the logins before the first step

    async def settle_outbox(self) -> None:
        await settle_outbox(self.store, self.clock)

    # CRM events ---------------------------------------------------------------------------

    @rule(
        external_id=st.sampled_from(EXTERNAL_IDS),
        channel=st.sampled_from(ROUTED),
        event_id=st.sampled_from(CREATE_EVENT_IDS),
    )
    def create(self, external_id: str, channel: Channel, event_id: str) -> None:
        outcome = self.run(
            interactions.receive_interaction(
                self.store.uow,
                self.clock,
                crm_adapter="generic",
                acd_adapter="generic",
                event_id=event_id,
                new=interactions.NewInteraction(
                    external_id=external_id, channel=channel, queue=QUEUE_OF[channel]
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
        self.created_by_event[event_id] = outcome.interaction_id

    @rule(data=st.data(), who=st.sampled_from(["nobody", "assigned", "other"]))
    def accept(self, data: st.DataObject, who: str) -> None:
        self.do_accept(self.draw_external_id(data), who)

    def do_accept(self, external_id: str, who: str) -> None:
        interaction = self.interaction(external_id)
        assigned = self.agent(interaction.agent_id if interaction else None)
        crm_agent_id = {
            "nobody": None,
            "assigned": assigned.crm_agent_id if assigned else crm_id("a0"),
            "other": "crm-someone-else",
        }[who]
        wrong_agent = (
            crm_agent_id is not None and assigned and assigned.crm_agent_id != crm_agent_id
        )
        if interaction is None:
            expected: str | None = "unknown_interaction"
        elif wrong_agent:
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
        ended_before = len(self.stored.outbox(type=WORK_ENDED))
        if self.apply("completed", call, expected) is not None:
            assert interaction is not None
            after = self.interaction(external_id)
            assert after is not None
            assert after.state == state_after(interaction, Event.COMPLETED)
            if not isinstance(rule_for(interaction.state, Event.COMPLETED), Move):
                # Completed again, or after the work failed: noted, nothing released.
                assert self._load_of(after) == load_before
                assert len(self.stored.outbox(type=WORK_ENDED)) == ended_before
                return
            assert self._load_of(after) == load_before - 1
            wrap_up = CHAT_WRAP_UP if after.channel == Channel.CHAT else 0
            [ended] = self.stored.outbox(type=WORK_ENDED, interaction_id=after.id)
            assert ended.message.payload["reason"] == "completed"
            assert ended.message.payload["wrap_up_seconds"] == wrap_up
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
        before = self.agent(agent_id)
        assert before is not None
        self.report(agent_id, status, (channel,))
        after = self.agent(agent_id)
        assert after is not None
        assert after.capacity_on(channel).status == status
        assert after.capacity_on(channel).load == before.capacity_on(channel).load

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

        if self.apply("selected", call, expected) is not None:
            assert interaction is not None and agent is not None
            after = self.interaction(external_id)
            assert after is not None
            assert (after.state, after.agent_id) == (S.OFFERED, agent.id)
            [deliver] = self.stored.outbox(type=INTERACTION_DELIVER, interaction_id=after.id)
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

        if self.apply("queued", call, expected) is not None:
            assert interaction is not None
            after = self.interaction(external_id)
            assert after is not None
            moved = S.QUEUED if interaction.state == S.ROUTING else interaction.state
            assert after.state == moved

    # Progress, replays, relay, time, operators -------------------------------------------

    @precondition(lambda self: bool(self.created_by_external))
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        """Take one interaction one step down the happy path (deep states are rare otherwise):
        select an agent who can take it, deliver, accept, complete."""
        external_id = data.draw(st.sampled_from(sorted(self.created_by_external)))
        interaction = self.interaction(external_id)
        assert interaction is not None
        if interaction.state in AWAITING_SELECTION:
            self.do_select(external_id, "free")
        elif interaction.state == S.OFFERED:
            self.send_due(["ok"] * 4)
        elif interaction.state == S.DELIVERED:
            self.do_accept(external_id, "assigned")
        elif interaction.state == S.ACCEPTED:
            self.do_complete(external_id)

    @precondition(lambda self: bool(self.applied))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """An event already applied arrives again: a duplicate with no effect."""
        call, interaction_id = data.draw(st.sampled_from(self.applied))
        before = self.snapshot()
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
        self.clock.advance(seconds)

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
            assert after.capacity_on(channel).status == agent.capacity_on(channel).status

    # Invariants ---------------------------------------------------------------------------

    @invariant()
    def stored_state_keeps_the_routing_invariants(self) -> None:
        """Read what is stored once per step, then check each invariant on it."""
        interactions, agents = self.stored.interactions(), self.stored.agents()
        self.loads_are_within_capacity_and_match_assignments(interactions, agents)
        self.work_is_only_with_agents_who_have_capacity(interactions, agents)
        self.history_replays_to_the_current_state(interactions, agents)
        self.agent_history_replays_to_the_current_channel_states(interactions, agents)
        self.one_routing_request_per_interaction(interactions, agents)
        self.queue_counts_match_the_interactions(interactions, agents)

    def loads_are_within_capacity_and_match_assignments(
        self, interactions: list[Interaction], agents: list[Agent]
    ) -> None:
        holding = Counter(
            (i.agent_id, i.channel) for i in interactions if i.state in HOLDS_CAPACITY
        )
        for agent in agents:
            for channel, held in agent.channels.items():
                assert 0 <= held.load <= held.capacity, f"{agent.id} {channel}: {held}"
                assert held.load == holding[(agent.id, channel)], (
                    f"{agent.id} holds {held.load} {channel}, "
                    f"assigned {holding[(agent.id, channel)]}"
                )

    def work_is_only_with_agents_who_have_capacity(
        self, interactions: list[Interaction], agents: list[Agent]
    ) -> None:
        for interaction in interactions:
            if interaction.state in HOLDS_CAPACITY:
                agent = next((a for a in agents if a.id == interaction.agent_id), None)
                assert agent is not None, f"{interaction.id} held by a missing agent"
                assert agent.capacity_on(interaction.channel).capacity >= 1

    def history_replays_to_the_current_state(
        self, interactions: list[Interaction], agents: list[Agent]
    ) -> None:
        for interaction in interactions:
            state: InteractionState | None = None
            for entry in self.stored.history(interaction.id):
                assert entry.from_state == state, f"{entry} does not follow {state}"
                if entry.to_state != entry.from_state:
                    assert entry.to_state is not None
                    assert state is None or entry.to_state in ALLOWED_TRANSITIONS[state]
                state = entry.to_state
            assert state == interaction.state, f"history ends in {state}, not {interaction.state}"

    def agent_history_replays_to_the_current_channel_states(
        self, interactions: list[Interaction], agents: list[Agent]
    ) -> None:
        for agent in agents:
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

    def one_routing_request_per_interaction(
        self, interactions: list[Interaction], agents: list[Agent]
    ) -> None:
        interaction_ids = {i.id for i in interactions}
        assert len(interaction_ids) == len(self.created_by_external)
        outbox = self.stored.outbox()
        requests = Counter(
            r.message.interaction_id for r in outbox if r.message.type == ROUTING_REQUESTED
        )
        assert requests == Counter(interaction_ids)
        for message_type in (INTERACTION_DELIVER, WORK_ENDED):
            per_interaction = Counter(
                r.message.interaction_id for r in outbox if r.message.type == message_type
            )
            assert all(count <= 1 for count in per_interaction.values()), message_type
        about_interactions = {
            r.message.interaction_id for r in outbox if r.message.type != AGENT_STATE
        }
        assert about_interactions <= interaction_ids

    def queue_counts_match_the_interactions(
        self, interactions: list[Interaction], agents: list[Agent]
    ) -> None:
        waiting = [i for i in interactions if i.state in WAITING_STATES]
        for stats in self.stored.queue_stats():
            mine = [i for i in waiting if i.queue == stats.queue.name]
            assert stats.waiting == len(mine), f"{stats.queue.name}: {stats.waiting} != {mine}"
            oldest = min((i.received_at for i in mine), default=None)
            assert stats.oldest_received_at == oldest, stats.queue.name


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
