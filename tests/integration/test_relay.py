"""The outbox relay on the real SQL store (SQLite and PostgreSQL), fake adapters, a fake clock.

Time only moves when a test moves it, so "not before it is due" is checked exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from harmony.adapters.base import AdapterError, AdapterRegistry
from harmony.db.engine import Database
from harmony.db.tables import outbox
from harmony.dev.bench.served import SqlCounter
from harmony.errors import TryAgain
from harmony.outbox.relay import MAX_BACKOFF_SECONDS, Relay, full_jitter
from harmony.routing import agents, interactions
from harmony.routing.agent_state import DEFAULT_NOT_READY_REASONS
from harmony.routing.lifecycle import Event
from harmony.routing.messages import (
    AGENT_STATE,
    INTERACTION_DELIVER,
    ROUTING_REQUESTED,
    WORK_ENDED,
    OutboundMessage,
)
from harmony.routing.messages import TargetKind as K
from harmony.routing.model import Channel, ChannelStatus, InteractionState, Queue
from harmony.testing import FakeAdapter, FakeClock
from tests.sql_sent import statements_sent

S = InteractionState
MAX_ATTEMPTS = 3
BASE_BACKOFF = 1.0
LEASE = 30.0


@dataclass
class World:
    """A migrated database with two queues and two ready agents, a fake clock and fake peers."""

    db: Database
    clock: FakeClock
    acd: FakeAdapter
    crm: FakeAdapter
    registry: AdapterRegistry
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def relay(self, **overrides: Any) -> Relay:
        options: dict[str, Any] = {
            "max_attempts": MAX_ATTEMPTS,
            "base_backoff_seconds": BASE_BACKOFF,
            "lease_seconds": LEASE,
            # The top of each jittered range, so a test knows the wait it asserts.
            "jitter": lambda ceiling: ceiling,
            **overrides,
        }
        return Relay(self.db.uow, self.registry, self.clock, **options)

    async def create(
        self, external_id: str, channel: Channel = Channel.CHAT, acd_adapter: str = "generic"
    ) -> str:
        outcome = await interactions.receive_interaction(
            self.db.uow,
            self.clock,
            crm_adapter="generic",
            acd_adapter=acd_adapter,
            event_id=f"evt-{next(self._ids)}",
            new=interactions.NewInteraction(
                external_id=external_id, channel=channel, queue=f"support-{channel.value}"
            ),
        )
        return outcome.interaction_id

    async def select(self, interaction_id: str, acd_agent_id: str) -> None:
        rows = await self.rows(ROUTING_REQUESTED)
        [routing] = [r for r in rows if r.interaction_id == interaction_id]
        await interactions.select_agent(
            self.db.uow(),
            self.clock,
            acd_adapter="generic",
            event_id=f"evt-{next(self._ids)}",
            request_id=routing.payload["request_id"],
            acd_agent_id=acd_agent_id,
        )

    async def rows(self, message_type: str) -> list[Any]:
        async with self.db.engine.connect() as conn:
            query = select(outbox).where(outbox.c.type == message_type)
            return list((await conn.execute(query.order_by(outbox.c.created_at))).all())

    async def only(self, message_type: str) -> Any:
        [row] = await self.rows(message_type)
        return row

    async def state(self, interaction_id: str) -> InteractionState:
        async with self.db.reader() as uow:
            found = await uow.interactions.get(interaction_id)
        assert found is not None
        return found.state

    async def last_cause(self, interaction_id: str) -> str:
        async with self.db.reader() as uow:
            return (await uow.interactions.history(interaction_id))[-1].cause

    async def load(self, agent_id: str) -> int:
        async with self.db.reader() as uow:
            agent = await uow.agents.get(agent_id)
        assert agent is not None
        return agent.capacity_on(Channel.CHAT).load


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    clock = FakeClock()
    db = Database(database_url, clock.now)
    try:
        await db.migrate()
        yield await _seeded(db, clock)
    finally:
        await db.dispose()


async def _seeded(db: Database, clock: FakeClock) -> World:
    acd, crm = FakeAdapter(K.ACD), FakeAdapter(K.CRM)
    registry = AdapterRegistry()
    registry.register(acd)
    registry.register(crm)
    for name, channel in (("support-chat", Channel.CHAT), ("support-email", Channel.EMAIL)):
        await interactions.upsert_queue(db.uow(), Queue(name, channel, []))
    for n in (1, 2):
        await interactions.upsert_agent(
            db.uow(),
            clock,
            agent_id=f"agent-{n}",
            name=f"Agent {n}",
            crm_agent_id=f"crm-{n}",
            acd_agent_id=f"acd-{n}",
            skills=[],
        )
        await agents.report_state(
            db.uow(),
            clock,
            reporter=agents.Reporter(K.CRM, "generic"),
            event_id=f"login-{n}",
            agent_ref=f"crm-{n}",
            report=agents.StateReport(event="agent.logged_in", status=ChannelStatus.READY),
            reasons=DEFAULT_NOT_READY_REASONS,
            acd_adapter="generic",
        )
    world = World(db, clock, acd, crm, registry)
    await world.relay().drain()  # the peers heard of the logins
    acd.attempts.clear()
    acd.sent.clear()
    crm.attempts.clear()
    crm.sent.clear()
    return world


async def test_due_messages_are_sent_and_their_outcome_recorded(world: World) -> None:
    relay = world.relay()
    interaction_id = await world.create("chat-1")

    await relay.drain()

    [routing] = world.acd.sent
    row = await world.only(ROUTING_REQUESTED)
    assert routing.id == row.id
    assert routing.payload == row.payload
    assert routing.payload["interaction_id"] == interaction_id
    assert (row.status, row.attempts, row.sent_at) == ("sent", 1, world.clock.now())
    assert row.claimed_by == relay.name
    assert world.crm.attempts == []

    await world.select(interaction_id, "acd-2")
    await relay.drain()

    [delivery] = world.crm.sent
    assert delivery.type == INTERACTION_DELIVER
    assert delivery.payload["agent_id"] == "crm-2"
    assert await world.state(interaction_id) == S.DELIVERED
    assert delivery.id in await world.last_cause(interaction_id)
    assert (await world.only(INTERACTION_DELIVER)).status == "sent"
    assert len(world.acd.attempts) == 1  # nothing is sent twice


async def test_run_once_sends_nothing_when_nothing_is_due(world: World) -> None:
    relay = world.relay()
    assert await relay.run_once() == 0
    await world.create("chat-1")
    assert await relay.run_once() == 1
    assert await relay.run_once() == 0
    assert len(world.acd.attempts) == 1


async def test_a_transient_failure_is_retried_with_backoff_and_never_early(world: World) -> None:
    relay = world.relay()
    interaction_id = await world.create("chat-1")
    world.acd.fail_next(2, reason="HTTP 503")
    start = world.clock.now()

    await relay.drain()

    row = await world.only(ROUTING_REQUESTED)
    assert (row.status, row.attempts, row.claim_token) == ("pending", 1, None)
    assert row.next_attempt_at == start + timedelta(seconds=BASE_BACKOFF)
    assert "HTTP 503" in row.last_error
    assert await world.state(interaction_id) == S.ROUTING

    world.clock.advance(BASE_BACKOFF - 0.001)
    assert await relay.run_once() == 0
    assert len(world.acd.attempts) == 1

    world.clock.advance(0.001)
    await relay.drain()  # second attempt fails too: the wait doubles
    row = await world.only(ROUTING_REQUESTED)
    assert (row.attempts, row.status) == (2, "pending")
    assert row.next_attempt_at == world.clock.now() + timedelta(seconds=2 * BASE_BACKOFF)

    world.clock.advance(2 * BASE_BACKOFF - 0.001)
    await relay.drain()
    assert len(world.acd.attempts) == 2

    world.clock.advance(0.001)
    await relay.drain()
    row = await world.only(ROUTING_REQUESTED)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert [m.id for m in world.acd.attempts] == [row.id] * 3  # same idempotency key
    assert world.acd.sent == [world.acd.attempts[-1]]


@pytest.mark.parametrize(
    ("retry_after", "expected_wait"),
    [(45, 45), (0.1, BASE_BACKOFF), (86_400, MAX_BACKOFF_SECONDS * 10)],
    ids=["honoured", "never-shortens-the-backoff", "capped"],
)
async def test_retry_after(world: World, retry_after: float, expected_wait: float) -> None:
    relay = world.relay()
    await world.create("chat-1")
    world.acd.fail_next(retry_after=retry_after)

    await relay.drain()

    row = await world.only(ROUTING_REQUESTED)
    assert row.next_attempt_at == world.clock.now() + timedelta(seconds=expected_wait)
    world.clock.advance(expected_wait - 0.001)
    assert await relay.run_once() == 0
    world.clock.advance(0.001)
    await relay.drain()
    assert (await world.only(ROUTING_REQUESTED)).status == "sent"


async def test_a_retry_waits_a_jittered_time_under_the_ceiling_and_never_under_retry_after(
    world: World,
) -> None:
    ceilings: list[float] = []

    def quarter(ceiling: float) -> float:
        ceilings.append(ceiling)
        return ceiling / 4

    relay = world.relay(jitter=quarter, base_backoff_seconds=8)
    await world.create("chat-1")
    world.acd.fail_next(1)
    await relay.drain()
    row = await world.only(ROUTING_REQUESTED)
    assert row.next_attempt_at == world.clock.now() + timedelta(seconds=2)
    world.clock.set(row.next_attempt_at)
    world.acd.fail_next(1, retry_after=30)
    await relay.drain()
    row = await world.only(ROUTING_REQUESTED)
    assert row.next_attempt_at == world.clock.now() + timedelta(seconds=30)
    assert ceilings == [8, 16]


def test_full_jitter_spreads_waits_over_the_whole_range() -> None:
    waits = [full_jitter(10.0) for _ in range(2000)]
    assert all(0 <= wait <= 10 for wait in waits)
    assert min(waits) < 1 and max(waits) > 9
    assert 4 < sum(waits) / len(waits) < 6


async def test_the_backoff_is_capped(world: World) -> None:
    relay = world.relay(max_attempts=20, base_backoff_seconds=10)
    await world.create("chat-1")
    world.acd.fail_next(20)
    waits = []
    for _ in range(5):
        await relay.drain()
        row = await world.only(ROUTING_REQUESTED)
        waits.append((row.next_attempt_at - world.clock.now()).total_seconds())
        world.clock.set(row.next_attempt_at)
    assert waits == [10, 20, 40, 60, 60]


async def test_a_message_failing_every_attempt_is_given_up_and_fails_the_interaction(
    world: World,
) -> None:
    relay = world.relay()
    interaction_id = await world.create("chat-1")
    world.acd.fail_next(MAX_ATTEMPTS, reason="connection refused")

    for _ in range(MAX_ATTEMPTS):
        await relay.drain()
        world.clock.advance(MAX_BACKOFF_SECONDS)

    row = await world.only(ROUTING_REQUESTED)
    assert (row.status, row.attempts) == ("dead", MAX_ATTEMPTS)
    assert "connection refused" in row.last_error
    assert f"after {MAX_ATTEMPTS} tries" in row.last_error
    assert await world.state(interaction_id) == S.FAILED
    assert "connection refused" in await world.last_cause(interaction_id)
    assert world.acd.sent == []
    world.clock.advance(timedelta(days=1))
    assert await relay.run_once() == 0  # a dead message is never tried again


async def test_a_delivery_given_up_releases_the_agent_and_tells_the_acd(world: World) -> None:
    relay = world.relay()
    interaction_id = await world.create("chat-1")
    await relay.drain()
    await world.select(interaction_id, "acd-1")
    assert await world.load("agent-1") == 1
    world.crm.fail_next(MAX_ATTEMPTS, reason="HTTP 502")

    for _ in range(MAX_ATTEMPTS):
        await relay.drain()
        world.clock.advance(MAX_BACKOFF_SECONDS)

    assert (await world.only(INTERACTION_DELIVER)).status == "dead"
    assert await world.state(interaction_id) == S.FAILED
    assert await world.load("agent-1") == 0
    await relay.drain()
    [ended] = world.acd.sent_of_type(WORK_ENDED)
    assert ended.payload["reason"] == "delivery_failed"
    assert ended.payload["agent_id"] == "acd-1"
    assert (await world.only(WORK_ENDED)).status == "sent"


async def test_a_permanent_failure_gives_up_at_once(world: World) -> None:
    relay = world.relay()
    interaction_id = await world.create("chat-1")
    world.acd.fail_next(permanent=True, reason="HTTP 400 unknown skill")

    await relay.drain()

    row = await world.only(ROUTING_REQUESTED)
    assert (row.status, row.attempts) == ("dead", 1)
    assert "HTTP 400 unknown skill" in row.last_error
    assert await world.state(interaction_id) == S.FAILED
    world.clock.advance(timedelta(hours=1))
    assert await relay.run_once() == 0
    assert len(world.acd.attempts) == 1


async def test_a_message_for_an_unknown_adapter_fails_at_once(world: World) -> None:
    relay = world.relay()
    interaction_id = await world.create("chat-1", acd_adapter="retired-acd")

    await relay.drain()

    row = await world.only(ROUTING_REQUESTED)
    assert (row.status, row.attempts) == ("dead", 1)
    assert "retired-acd" in row.last_error
    assert await world.state(interaction_id) == S.FAILED
    assert world.acd.attempts == []


async def test_a_generic_adapter_error_is_treated_as_transient(world: World) -> None:
    relay = world.relay()
    await world.create("chat-1")
    world.acd.fail_with(AdapterError("odd failure"))
    await relay.drain()
    row = await world.only(ROUTING_REQUESTED)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.next_attempt_at == world.clock.now() + timedelta(seconds=BASE_BACKOFF)


async def test_a_message_claimed_by_a_relay_that_died_waits_for_its_lease(world: World) -> None:
    relay = world.relay()
    await world.create("chat-1")
    async with world.db.uow() as uow:  # another relay claims, then never reports back
        [claimed] = await uow.outbox.claim_due(world.clock.now(), 10, LEASE, "died")
        await uow.commit()

    assert await relay.run_once() == 0
    world.clock.advance(LEASE - 1)
    assert await relay.run_once() == 0
    world.clock.advance(1)
    await relay.drain()

    [sent] = world.acd.sent
    assert sent.id == claimed.message.id
    row = await world.only(ROUTING_REQUESTED)
    assert (row.status, row.attempts, row.claimed_by) == ("sent", 2, relay.name)
    async with world.db.uow() as uow:  # the dead relay's late outcome changes nothing
        assert not await uow.outbox.mark_dead(
            claimed.message.id, claimed.claim_token, world.clock.now(), "late"
        )
        await uow.commit()
    assert (await world.only(ROUTING_REQUESTED)).status == "sent"


async def test_messages_go_out_in_the_order_they_became_due(world: World) -> None:
    relay = world.relay()
    first = await world.create("chat-1")
    world.clock.advance(1)
    second = await world.create("mail-1", Channel.EMAIL)
    await relay.drain()
    assert [m.interaction_id for m in world.acd.sent] == [first, second]


async def test_a_relay_claims_no_more_than_it_can_send_within_its_lease(world: World) -> None:
    relay = world.relay(concurrency=2, lease_seconds=10, send_timeout_seconds=5, batch_size=100)
    for n in range(7):
        await world.create(f"chat-{n}")
    assert await relay.run_once() == 4  # 2 at a time, 2 rounds of 5 s in a 10 s lease


# Mirrors of agent state: ordered per agent and target, the newest superseding unsent ones


async def crm_reports(
    world: World, crm_agent_id: str, status: ChannelStatus, *channels: Channel
) -> None:
    await agents.report_state(
        world.db.uow(),
        world.clock,
        reporter=agents.Reporter(K.CRM, "generic"),
        event_id=f"evt-{next(world._ids)}",
        agent_ref=crm_agent_id,
        report=agents.StateReport(
            event="agent.state_changed",
            status=status,
            reason="break" if status == ChannelStatus.NOT_READY else None,
            channels=channels or None,
        ),
        reasons=DEFAULT_NOT_READY_REASONS,
        acd_adapter="generic",
    )


def states_sent(adapter: FakeAdapter, acd_agent_id: str, channel: str) -> list[str]:
    return [
        m.payload["state"]
        for m in adapter.sent_of_type(AGENT_STATE)
        if m.payload["agent_id"] == acd_agent_id and m.payload["channel"] == channel
    ]


async def test_a_mirror_carries_its_change_time_and_a_sequence_per_agent_and_target(
    world: World,
) -> None:
    relay = world.relay()
    changed_first = world.clock.now()
    await crm_reports(world, "crm-1", ChannelStatus.NOT_READY, Channel.CHAT)
    world.clock.advance(5)
    await crm_reports(world, "crm-1", ChannelStatus.NOT_READY, Channel.EMAIL)
    await crm_reports(world, "crm-2", ChannelStatus.NOT_READY, Channel.CHAT)
    world.clock.advance(5)
    await relay.drain()

    mirrors = world.acd.sent_of_type(AGENT_STATE)
    first, second = [m for m in mirrors if m.payload["agent_id"] == "acd-1"]
    [other] = [m for m in mirrors if m.payload["agent_id"] == "acd-2"]
    assert second.payload["sequence"] == first.payload["sequence"] + 1
    assert first.payload["changed_at"] == changed_first.isoformat()
    assert second.payload["changed_at"] == (changed_first + timedelta(seconds=5)).isoformat()
    # acd-2's numbers are its own: 3 logins (voice, chat, email) came before.
    assert other.payload["sequence"] == 4


async def test_a_newer_mirror_supersedes_an_unsent_older_one(world: World) -> None:
    relay = world.relay()
    await crm_reports(world, "crm-1", ChannelStatus.NOT_READY, Channel.CHAT)
    world.acd.fail_next(reason="HTTP 503")
    await relay.drain()  # the not-ready mirror failed once and waits for its retry
    await crm_reports(world, "crm-1", ChannelStatus.READY, Channel.CHAT)
    world.clock.advance(MAX_BACKOFF_SECONDS)

    await relay.drain()

    assert states_sent(world.acd, "acd-1", "chat") == ["ready"]
    older, newer = [r for r in await world.rows(AGENT_STATE) if r.payload["agent_id"] == "acd-1"][
        -2:
    ]
    assert (older.payload["state"], older.status) == ("not_ready", "superseded")
    assert (newer.payload["state"], newer.status) == ("ready", "sent")
    async with world.db.reader() as uow:  # no echo is awaited for what was never sent
        assert not await uow.agents.take_echo(
            "agent-1",
            Channel.CHAT,
            K.ACD,
            ChannelStatus.NOT_READY,
            "break",
            world.clock.now() - timedelta(hours=1),
            None,
            world.clock.now(),
        )


async def test_a_mirror_waits_while_an_older_one_for_the_same_agent_and_target_is_in_flight(
    world: World,
) -> None:
    relay = world.relay()
    await crm_reports(world, "crm-1", ChannelStatus.NOT_READY, Channel.CHAT)
    async with world.db.uow() as uow:  # another relay is sending the not-ready mirror
        [in_flight] = await uow.outbox.claim_due(world.clock.now(), 10, LEASE, "other")
        await uow.commit()
    await crm_reports(world, "crm-1", ChannelStatus.READY, Channel.CHAT)
    await crm_reports(world, "crm-2", ChannelStatus.NOT_READY, Channel.CHAT)

    await relay.drain()

    assert states_sent(world.acd, "acd-1", "chat") == []  # the newer one waits its turn
    assert states_sent(world.acd, "acd-2", "chat") == ["not_ready"]  # others do not wait
    async with world.db.uow() as uow:
        assert await uow.outbox.mark_sent(
            in_flight.message.id, in_flight.claim_token, world.clock.now()
        )
        await uow.commit()
    await relay.drain()
    assert states_sent(world.acd, "acd-1", "chat") == ["ready"]


class SlowAdapter(FakeAdapter):
    """A peer that takes ``seconds`` of fake time per send, during which ``meanwhile`` runs
    (another relay's claim): what that relay claimed is kept in ``claimed_meanwhile``."""

    def __init__(self, clock: FakeClock, seconds: float, meanwhile: Relay) -> None:
        super().__init__(K.ACD, "slow-acd")
        self._clock = clock
        self._seconds = seconds
        self._meanwhile = meanwhile
        self.claimed_meanwhile: list[int] = []

    async def send(self, message: Any) -> None:
        self._clock.advance(self._seconds)
        self.claimed_meanwhile.append(await self._meanwhile.run_once())
        await super().send(message)


async def test_a_lease_that_would_run_out_during_a_send_is_renewed_first(world: World) -> None:
    relay = world.relay(concurrency=1, lease_seconds=10, send_timeout_seconds=5)
    slow = SlowAdapter(world.clock, 6, meanwhile=world.relay())
    world.registry.register(slow)
    first = await world.create("chat-1", acd_adapter="slow-acd")
    second = await world.create("chat-2", acd_adapter="slow-acd")

    assert await relay.run_once() == 2  # the second send starts 6 s into a 10 s lease

    assert slow.claimed_meanwhile == [0, 0]  # so no other relay could take it meanwhile
    assert [m.interaction_id for m in slow.sent] == [first, second]
    rows = await world.rows(ROUTING_REQUESTED)
    assert [(r.status, r.attempts, r.claimed_by) for r in rows] == [("sent", 1, relay.name)] * 2


class SilentAdapter(FakeAdapter):
    """A peer that accepts the connection and never answers."""

    async def send(self, message: OutboundMessage) -> None:
        """Record the attempt, then wait for ever."""
        self.attempts.append(message)
        await asyncio.Event().wait()


async def test_a_send_that_never_ends_is_cut_at_the_send_deadline(world: World) -> None:
    silent = SilentAdapter(K.ACD)
    registry = AdapterRegistry()
    registry.register(silent)
    registry.register(world.crm)
    await world.create("chat-silent")
    relay = Relay(
        world.db.uow,
        registry,
        world.clock,
        max_attempts=MAX_ATTEMPTS,
        base_backoff_seconds=BASE_BACKOFF,
        lease_seconds=LEASE,
        send_timeout_seconds=0.05,
    )

    # The outer bound only keeps a broken relay from hanging the suite.
    assert await asyncio.wait_for(relay.run_once(), 30) == 1

    row = await world.only(ROUTING_REQUESTED)
    assert row.status == "pending"
    assert "no answer within 0.05 s" in (row.last_error or "")
    assert len(silent.attempts) == 1


# Outcomes recorded in batches: one transaction for what was acknowledged meanwhile, fenced
# message by message.


class CountingUnitsOfWork:
    """The database's unit-of-work factory, counting the units of work it opens; the n-th one
    can be made to fail on entry (the database aborted it, or went away)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.opened = 0
        self._failures: dict[int, BaseException] = {}

    def fail_nth(self, n: int, error: BaseException) -> None:
        self._failures[n] = error

    def __call__(self) -> Any:
        self.opened += 1
        failure = self._failures.pop(self.opened, None)
        return _FailsOnEntry(failure) if failure is not None else self._db.uow()


class _FailsOnEntry:
    def __init__(self, error: BaseException) -> None:
        self._error = error

    def single_statement(self) -> Any:
        return self

    async def __aenter__(self) -> Any:
        raise self._error

    async def __aexit__(self, *exc: object) -> None:
        return None


def counted_relay(world: World, units: CountingUnitsOfWork) -> Relay:
    return Relay(
        units,
        world.registry,
        world.clock,
        max_attempts=MAX_ATTEMPTS,
        base_backoff_seconds=BASE_BACKOFF,
        lease_seconds=LEASE,
    )


async def test_acknowledgements_sent_together_are_recorded_in_one_transaction(
    world: World,
) -> None:
    first, second = await world.create("chat-1"), await world.create("chat-2")
    await world.relay().drain()
    await world.select(first, "acd-1")
    await world.select(second, "acd-2")
    mail = await world.create("mail-1", Channel.EMAIL)
    units = CountingUnitsOfWork(world.db)
    relay = counted_relay(world, units)

    assert await relay.run_once() == 3  # two deliveries and a routing request

    assert units.opened == 2  # the claim, then one transaction for the three outcomes
    deliveries = await world.rows(INTERACTION_DELIVER)
    assert [(r.status, r.claimed_by) for r in deliveries] == [("sent", relay.name)] * 2
    for delivery in deliveries:
        assert await world.state(delivery.interaction_id) == S.DELIVERED
        assert delivery.id in await world.last_cause(delivery.interaction_id)
    [routing] = [r for r in await world.rows(ROUTING_REQUESTED) if r.interaction_id == mail]
    assert routing.status == "sent"
    assert await world.state(mail) == S.ROUTING
    assert await relay.run_once() == 0


async def two_deliveries_claimed(world: World) -> list[Any]:
    """Two chats offered, their deliveries claimed by relay A (sent, not yet recorded)."""
    first, second = await world.create("chat-1"), await world.create("chat-2")
    await world.relay().drain()
    await world.select(first, "acd-1")
    await world.select(second, "acd-2")
    async with world.db.uow() as uow:
        claimed = await uow.outbox.claim_due(world.clock.now(), 10, LEASE, "relay-a")
        await uow.commit()
    assert {entry.message.type for entry in claimed} == {INTERACTION_DELIVER}
    return claimed


async def two_deliveries_one_taken_over(world: World) -> tuple[Any, Any, Any]:
    """Relay A claims two deliveries and hangs; once its leases ran out, relay B takes one
    over. Returns A's claim of the one taken over, A's claim of the other, and B's claim."""
    claimed = await two_deliveries_claimed(world)
    world.clock.advance(LEASE + 1)
    async with world.db.uow() as uow:
        [taken] = await uow.outbox.claim_due(world.clock.now(), 1, LEASE, "relay-b")
        await uow.commit()
    [lost] = [e for e in claimed if e.message.id == taken.message.id]
    [kept] = [e for e in claimed if e.message.id != taken.message.id]
    return lost, kept, taken


async def test_a_batch_leaves_a_message_whose_claim_was_lost_to_the_relay_holding_it(
    world: World,
) -> None:
    lost, kept, taken = await two_deliveries_one_taken_over(world)
    # B's request is refused: the delivery is given up on, its interaction failed.
    assert await interactions.message_failed(
        world.db.uow(), world.clock, taken.message, "HTTP 404", claim_token=taken.claim_token
    )

    # A's answers come late, both in one batch.
    recorded = await interactions.messages_sent(
        world.db.uow(),
        world.clock,
        [(lost.message, lost.claim_token), (kept.message, kept.claim_token)],
    )

    assert recorded == {kept.message.id}
    rows = {row.id: row for row in await world.rows(INTERACTION_DELIVER)}
    lost_row, kept_row = rows[lost.message.id], rows[kept.message.id]
    assert (lost_row.status, lost_row.claimed_by, lost_row.last_error) == (
        "dead",
        "relay-b",
        "HTTP 404",
    )
    assert (kept_row.status, kept_row.claimed_by) == ("sent", "relay-a")
    assert await world.state(lost.message.interaction_id) == S.FAILED
    assert await world.state(kept.message.interaction_id) == S.DELIVERED
    loads = {agent: await world.load(agent) for agent in ("agent-1", "agent-2")}
    assert sorted(loads.values()) == [0, 1]  # the failed delivery's agent was released


async def test_a_batch_does_not_record_a_message_another_relay_is_still_sending(
    world: World,
) -> None:
    lost, kept, taken = await two_deliveries_one_taken_over(world)

    recorded = await interactions.messages_sent(
        world.db.uow(),
        world.clock,
        [(lost.message, lost.claim_token), (kept.message, kept.claim_token)],
    )

    assert recorded == {kept.message.id}
    row = {r.id: r for r in await world.rows(INTERACTION_DELIVER)}[lost.message.id]
    assert (row.status, row.claim_token, row.sent_at) == ("pending", taken.claim_token, None)
    assert await world.state(lost.message.interaction_id) == S.OFFERED  # B's answer decides
    assert await world.state(kept.message.interaction_id) == S.DELIVERED
    recorded = await interactions.messages_sent(
        world.db.uow(), world.clock, [(taken.message, taken.claim_token)]
    )
    assert recorded == {taken.message.id}
    assert await world.state(lost.message.interaction_id) == S.DELIVERED


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_batch_of_deliveries_is_recorded_in_one_statement_on_postgresql(
    world: World,
) -> None:
    claimed = await two_deliveries_claimed(world)
    world.clock.advance(1)

    with statements_sent() as sent:
        recorded = await interactions.messages_sent(
            world.db.uow(), world.clock, [(e.message, e.claim_token) for e in claimed]
        )

    assert recorded == {entry.message.id for entry in claimed}
    assert len(sent) == 1, sent  # no BEGIN, no COMMIT: one statement is atomic by itself
    for entry in claimed:
        interaction_id = entry.message.interaction_id
        async with world.db.reader() as uow:
            found = await uow.interactions.get(interaction_id)
            history = await uow.interactions.history(interaction_id)
        assert found is not None
        assert found.state == S.DELIVERED
        assert found.state_times[S.DELIVERED] == world.clock.now()
        last = history[-1]
        assert (last.event, last.from_state, last.to_state, last.at) == (
            "delivered",
            S.OFFERED,
            S.DELIVERED,
            world.clock.now(),
        )
        assert entry.message.id in last.cause
    rows = {row.id: row for row in await world.rows(INTERACTION_DELIVER)}
    assert {(rows[e.message.id].status, rows[e.message.id].sent_at) for e in claimed} == {
        ("sent", world.clock.now())
    }


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_delivery_recorded_while_the_crm_accepts_notes_the_state_it_waited_for(
    world: World,
) -> None:
    """The acceptance holds the interaction's lock when the relay records the delivery: the
    record waits for it and notes the accepted state, not the offered one it could have read
    before."""
    claimed = await two_deliveries_claimed(world)
    entry = claimed[0]
    interaction_id = entry.message.interaction_id
    accepting = world.db.uow()
    async with accepting as uow:
        interaction = await uow.interactions.get(interaction_id, for_update=True)
        assert interaction is not None
        interaction.apply(Event.ACCEPTED, world.clock.now(), cause="test")
        await uow.interactions.save(interaction)
        recording = asyncio.create_task(
            interactions.messages_sent(
                world.db.uow(), world.clock, [(entry.message, entry.claim_token)]
            )
        )
        await asyncio.sleep(0.3)  # the record reaches the interaction's lock and waits
        assert not recording.done()
        await uow.commit()

    assert await recording == {entry.message.id}
    assert await world.state(interaction_id) == S.ACCEPTED
    async with world.db.reader() as uow:
        history = await uow.interactions.history(interaction_id)
    assert [(h.event, h.from_state, h.to_state) for h in history[-2:]] == [
        ("accepted", S.DELIVERED, S.ACCEPTED),
        ("delivery_acknowledged", S.ACCEPTED, S.ACCEPTED),
    ]


@pytest.mark.parametrize(
    ("failure", "units_opened"),
    [
        (TryAgain("deadlock"), 3),  # the claim, the aborted batch, the batch again
        (ConnectionError("database connection lost"), 2 + 3),  # then one message at a time
    ],
    ids=["aborted-batch-is-retried", "failing-batch-is-recorded-one-by-one"],
)
async def test_a_batch_that_fails_is_not_lost(
    world: World, failure: BaseException, units_opened: int
) -> None:
    for n in range(3):
        await world.create(f"chat-{n}")
    units = CountingUnitsOfWork(world.db)
    units.fail_nth(2, failure)  # the first unit of work is the claim, the second the batch
    relay = counted_relay(world, units)

    assert await relay.run_once() == 3

    assert units.opened == units_opened
    rows = await world.rows(ROUTING_REQUESTED)
    assert [(r.status, r.attempts) for r in rows] == [("sent", 1)] * 3
    assert len(world.acd.attempts) == 3  # recorded, not sent again


async def test_a_running_relay_is_handed_what_a_commit_promised_without_a_claim(
    world: World,
) -> None:
    relay = world.relay(poll_seconds=3600)  # never polls: only the hand-off can send
    world.db.handoff = relay
    claims: list[int] = []
    claim = relay._claim

    async def counted_claim(limit: int) -> list[Any]:
        entries = await claim(limit)
        claims.append(len(entries))
        return entries

    relay._claim = counted_claim  # type: ignore[method-assign]
    running = asyncio.create_task(relay.run())
    try:
        await _until(lambda: claims == [0])  # the relay's first look found nothing
        interaction_id = await world.create("chat-1")
        await _until(lambda: len(world.acd.sent) == 1)
        row = await world.only(ROUTING_REQUESTED)
        await _until_async(lambda: _status(world, ROUTING_REQUESTED), "sent")
    finally:
        relay.stop()
        await running

    [routing] = world.acd.sent
    assert routing.id == row.id and routing.payload["interaction_id"] == interaction_id
    sent = await world.only(ROUTING_REQUESTED)
    assert (sent.status, sent.attempts, sent.claimed_by) == ("sent", 1, relay.name)
    assert claims == [0]  # sent without a claim of its own


async def test_a_handed_message_whose_relay_died_is_claimed_again_when_its_lease_ends(
    world: World,
) -> None:
    dead = world.relay()
    world.db.handoff = dead
    dead.stop()  # a relay that takes nothing: as if its process died after the commit
    await world.create("chat-1")
    world.db.handoff = None
    held = await world.only(ROUTING_REQUESTED)
    assert (held.status, held.claimed_by, held.attempts) == ("pending", dead.name, 1)

    survivor = world.relay()
    assert await survivor.run_once() == 0  # leased to the dead relay
    world.clock.advance(LEASE)
    await survivor.drain()

    [sent] = world.acd.sent
    assert sent.id == held.id
    row = await world.only(ROUTING_REQUESTED)
    assert (row.status, row.attempts, row.claimed_by) == ("sent", 2, survivor.name)


async def test_ordered_messages_are_not_handed_over_but_claimed(world: World) -> None:
    relay = world.relay()
    world.db.handoff = relay
    relay.stop()  # takes nothing handed to it
    await agents.report_state(
        world.db.uow(),
        world.clock,
        reporter=agents.Reporter(K.CRM, "generic"),
        event_id="not-ready-1",
        agent_ref="crm-1",
        report=agents.StateReport(
            event="agent.state_changed", status=ChannelStatus.NOT_READY, reason="break"
        ),
        reasons=DEFAULT_NOT_READY_REASONS,
        acd_adapter="generic",
    )
    mirrors = [row for row in await world.rows(AGENT_STATE) if row.status == "pending"]
    assert mirrors
    assert {(m.claim_token, m.attempts) for m in mirrors} == {(None, 0)}
    world.db.handoff = None
    await world.relay().drain()
    assert sorted(m.id for m in world.acd.sent) == sorted(m.id for m in mirrors)


async def _status(world: World, message_type: str) -> str:
    return str((await world.only(message_type)).status)


async def _until(condition: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def _until_async(read: Any, expected: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if await read() == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never became {expected!r}")


async def test_handed_messages_waiting_for_a_send_slot_count_as_relay_lag(world: World) -> None:
    silent = SilentAdapter(K.ACD)
    registry = AdapterRegistry()
    registry.register(silent)
    registry.register(world.crm)
    relay = Relay(
        world.db.uow,
        registry,
        world.clock,
        concurrency=1,
        poll_seconds=3600,
        lease_seconds=LEASE,
        send_timeout_seconds=1.0,  # the checks below take milliseconds; stopping waits 3 s
    )
    world.db.handoff = relay
    running = asyncio.create_task(relay.run())
    try:
        assert relay.oldest_waiting() is None
        await world.create("chat-1")  # its send takes the one slot and never ends
        await _until(lambda: len(silent.attempts) == 1)
        assert relay.oldest_waiting() is None
        second_at = world.clock.now()
        await world.create("chat-2")
        world.clock.advance(5)
        await world.create("chat-3")
        # Both wait in memory for the slot: the older one is the lag admission control sees.
        assert relay.oldest_waiting() == second_at
        async with world.db.reader() as uow:  # the database knows nothing due
            assert await uow.outbox.oldest_due(world.clock.now()) is None
        assert len(silent.attempts) == 1
    finally:
        relay.stop()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_acknowledgements_with_no_delivery_are_recorded_in_one_statement(
    world: World, database_url: str
) -> None:
    mail = await world.create("mail-1", Channel.EMAIL)
    async with world.db.uow() as uow:
        [claimed] = await uow.outbox.claim_due(world.clock.now(), 10, LEASE, "relay-a")
        await uow.commit()
    counter = SqlCounter()
    counter.install()
    try:
        recorded = await interactions.messages_sent(
            world.db.uow(), world.clock, [(claimed.message, claimed.claim_token)]
        )
    finally:
        counter.uninstall()

    assert recorded == {claimed.message.id}
    routing = await world.only(ROUTING_REQUESTED)
    assert (routing.status, routing.interaction_id) == ("sent", mail)
    if "postgresql" in database_url:
        # No BEGIN and COMMIT around it: the one UPDATE is atomic by itself.
        assert (counter.statements, counter.commits) == (1, 0)


@pytest.mark.postgres
async def test_a_single_statement_unit_of_work_refuses_a_second_statement(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, FakeClock().now)
    try:
        await db.migrate()
        async with db.uow().single_statement() as uow:
            assert await uow.outbox.pending_count() == 0
            with pytest.raises(RuntimeError, match="second statement"):
                await uow.outbox.pending_count()
    finally:
        await db.dispose()
