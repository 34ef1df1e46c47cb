"""The outbox relay on the SQL store (SQLite), with fake adapters and a fake clock.

Time only moves when a test moves it, so "not before it is due" is checked exactly.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from harmony.adapters.base import AdapterError, AdapterRegistry, TransientAdapterError
from harmony.outbox.relay import MAX_BACKOFF_SECONDS, Relay
from harmony.routing.messages import (
    INTERACTION_DELIVER,
    ROUTING_REQUESTED,
    WORK_ENDED,
    OutboundMessage,
    TargetKind,
)
from harmony.routing.model import Channel, InteractionState
from harmony.testing import FakeAdapter, FakeClock
from tests.sql_store import DEAD, PENDING, SENT, OutboxRow, SqlStore
from tests.usecases.conftest import World

S = InteractionState
MAX_ATTEMPTS = 3
BASE_BACKOFF = 1.0
LEASE = 30.0


@pytest.fixture
def acd() -> FakeAdapter:
    return FakeAdapter(TargetKind.ACD)


@pytest.fixture
def crm() -> FakeAdapter:
    return FakeAdapter(TargetKind.CRM)


@pytest.fixture
def relay(store: SqlStore, clock: FakeClock, acd: FakeAdapter, crm: FakeAdapter) -> Relay:
    registry = AdapterRegistry()
    registry.register(acd)
    registry.register(crm)
    return Relay(
        store.uow,
        registry,
        clock,
        max_attempts=MAX_ATTEMPTS,
        base_backoff_seconds=BASE_BACKOFF,
        lease_seconds=LEASE,
    )


async def only(store: SqlStore, message_type: str) -> OutboxRow:
    [record] = await store.outbox(type=message_type)
    return record


async def test_due_messages_are_sent_and_their_outcome_recorded(
    world: World, relay: Relay, acd: FakeAdapter, crm: FakeAdapter
) -> None:
    created = await world.create("chat-1")

    await relay.drain()

    [routing] = acd.sent
    record = await only(world.store, ROUTING_REQUESTED)
    assert routing.id == record.message.id
    assert routing.payload == record.message.payload
    assert routing.payload["interaction_id"] == created.interaction_id
    assert (record.status, record.attempts, record.sent_at) == (
        SENT,
        1,
        world.clock.now(),
    )
    assert crm.attempts == []

    await world.select(created.interaction_id, "acd-2")
    await relay.drain()

    [delivery] = crm.sent
    assert delivery.type == INTERACTION_DELIVER
    assert delivery.payload["agent_id"] == "crm-2"
    interaction = await world.interaction(created.interaction_id)
    assert interaction.state == S.DELIVERED
    assert delivery.id in (await world.store.history(interaction.id))[-1].cause
    assert await world.store.outbox(status=PENDING) == []
    assert len(acd.attempts) == 1  # nothing is sent twice


async def test_run_once_sends_nothing_when_nothing_is_due(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    assert await relay.run_once() == 0
    await world.create("chat-1")
    assert await relay.run_once() == 1
    assert await relay.run_once() == 0
    assert len(acd.attempts) == 1


async def test_a_transient_failure_is_retried_with_backoff_and_never_early(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    created = await world.create("chat-1")
    acd.fail_next(2, reason="HTTP 503")
    start = world.clock.now()

    await relay.drain()

    record = await only(world.store, ROUTING_REQUESTED)
    assert record.status == PENDING
    assert record.attempts == 1
    assert record.next_attempt_at == start + timedelta(seconds=BASE_BACKOFF)
    assert record.last_error is not None and "HTTP 503" in record.last_error
    assert (await world.interaction(created.interaction_id)).state == S.ROUTING

    world.clock.advance(BASE_BACKOFF - 0.001)
    assert await relay.run_once() == 0
    assert len(acd.attempts) == 1

    world.clock.advance(0.001)
    await relay.drain()  # second attempt fails too: the wait doubles
    record = await only(world.store, ROUTING_REQUESTED)
    assert (record.attempts, record.status) == (2, PENDING)
    assert record.next_attempt_at == world.clock.now() + timedelta(seconds=2 * BASE_BACKOFF)

    world.clock.advance(2 * BASE_BACKOFF - 0.001)
    await relay.drain()
    assert len(acd.attempts) == 2

    world.clock.advance(0.001)
    await relay.drain()
    record = await only(world.store, ROUTING_REQUESTED)
    assert (record.status, record.attempts, record.last_error) == (SENT, 3, None)
    assert [m.id for m in acd.attempts] == [record.message.id] * 3  # same idempotency key
    assert acd.sent == [acd.attempts[-1]]


async def test_retry_after_is_honoured_when_longer_than_the_backoff(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    await world.create("chat-1")
    acd.fail_next(retry_after=45)

    await relay.drain()

    record = await only(world.store, ROUTING_REQUESTED)
    assert record.next_attempt_at == world.clock.now() + timedelta(seconds=45)
    world.clock.advance(44)
    assert await relay.run_once() == 0
    world.clock.advance(1)
    await relay.drain()
    assert (await only(world.store, ROUTING_REQUESTED)).status == SENT


async def test_a_short_retry_after_does_not_shorten_the_backoff(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    await world.create("chat-1")
    acd.fail_next(retry_after=0.1)
    await relay.drain()
    record = await only(world.store, ROUTING_REQUESTED)
    assert record.next_attempt_at == world.clock.now() + timedelta(seconds=BASE_BACKOFF)


async def test_a_huge_retry_after_is_capped(world: World, relay: Relay, acd: FakeAdapter) -> None:
    await world.create("chat-1")
    acd.fail_next(retry_after=86_400)
    await relay.drain()
    record = await only(world.store, ROUTING_REQUESTED)
    cap = timedelta(seconds=MAX_BACKOFF_SECONDS * 10)
    assert record.next_attempt_at == world.clock.now() + cap


async def test_the_backoff_is_capped(store: SqlStore, clock: FakeClock) -> None:
    acd = FakeAdapter(TargetKind.ACD)
    registry = AdapterRegistry()
    registry.register(acd)
    relay = Relay(store.uow, registry, clock, max_attempts=20, base_backoff_seconds=10)
    world = World(store, clock)
    await world.create("chat-1")
    acd.fail_next(20)
    waits = []
    for _ in range(5):
        await relay.drain()
        record = await only(store, ROUTING_REQUESTED)
        waits.append((record.next_attempt_at - clock.now()).total_seconds())
        clock.set(record.next_attempt_at)
    assert waits == [10, 20, 40, 60, 60]


async def test_a_message_failing_every_attempt_is_given_up_and_fails_the_interaction(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    created = await world.create("chat-1")
    acd.fail_next(MAX_ATTEMPTS, reason="connection refused")

    for _ in range(MAX_ATTEMPTS):
        await relay.drain()
        world.clock.advance(MAX_BACKOFF_SECONDS)

    record = await only(world.store, ROUTING_REQUESTED)
    assert record.status == DEAD
    assert record.attempts == MAX_ATTEMPTS
    assert record.last_error is not None
    assert "connection refused" in record.last_error
    assert f"after {MAX_ATTEMPTS} tries" in record.last_error
    interaction = await world.interaction(created.interaction_id)
    assert interaction.state == S.FAILED
    assert "connection refused" in (await world.store.history(interaction.id))[-1].cause
    assert acd.sent == []
    world.clock.advance(timedelta(days=1))
    assert await relay.run_once() == 0  # a dead message is never tried again


async def test_a_delivery_given_up_releases_the_agent_and_tells_the_acd(
    world: World, relay: Relay, acd: FakeAdapter, crm: FakeAdapter
) -> None:
    created = await world.create("chat-1")
    await relay.drain()
    await world.select(created.interaction_id, "acd-1")
    assert await world.load("agent-1") == 1
    crm.fail_next(MAX_ATTEMPTS, reason="HTTP 502")

    for _ in range(MAX_ATTEMPTS):
        await relay.drain()
        world.clock.advance(MAX_BACKOFF_SECONDS)

    assert (await only(world.store, INTERACTION_DELIVER)).status == DEAD
    assert (await world.interaction(created.interaction_id)).state == S.FAILED
    assert await world.load("agent-1") == 0
    await relay.drain()
    [ended] = acd.sent_of_type(WORK_ENDED)
    assert ended.payload["reason"] == "delivery_failed"
    assert ended.payload["agent_id"] == "acd-1"
    assert (await only(world.store, WORK_ENDED)).status == SENT


async def test_a_permanent_failure_gives_up_at_once(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    created = await world.create("chat-1")
    acd.fail_next(permanent=True, reason="HTTP 400 unknown skill")

    await relay.drain()

    record = await only(world.store, ROUTING_REQUESTED)
    assert (record.status, record.attempts) == (DEAD, 1)
    assert record.last_error is not None and "HTTP 400 unknown skill" in record.last_error
    assert (await world.interaction(created.interaction_id)).state == S.FAILED
    world.clock.advance(timedelta(hours=1))
    assert await relay.run_once() == 0
    assert len(acd.attempts) == 1


async def test_a_message_for_an_unknown_adapter_fails_at_once(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    created = await world.create("chat-1", acd_adapter="retired-acd")

    await relay.drain()

    record = await only(world.store, ROUTING_REQUESTED)
    assert (record.status, record.attempts) == (DEAD, 1)
    assert record.last_error is not None and "retired-acd" in record.last_error
    assert (await world.interaction(created.interaction_id)).state == S.FAILED
    assert acd.attempts == []


async def test_a_generic_adapter_error_is_treated_as_transient(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    await world.create("chat-1")
    acd.fail_with(AdapterError("odd failure"))
    await relay.drain()
    record = await only(world.store, ROUTING_REQUESTED)
    assert (record.status, record.attempts) == (PENDING, 1)
    assert record.next_attempt_at == world.clock.now() + timedelta(seconds=BASE_BACKOFF)


async def test_a_message_claimed_by_a_relay_that_died_waits_for_its_lease(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    await world.create("chat-1")
    async with world.store.uow() as uow:  # another relay claims, then never reports back
        [claimed] = await uow.outbox.claim_due(world.clock.now(), 10, LEASE)
        await uow.commit()

    assert await relay.run_once() == 0
    world.clock.advance(LEASE - 1)
    assert await relay.run_once() == 0
    world.clock.advance(1)
    await relay.drain()

    [sent] = acd.sent
    assert sent.id == claimed.message.id
    record = await only(world.store, ROUTING_REQUESTED)
    assert (record.status, record.attempts) == (SENT, 2)


async def test_messages_go_out_in_the_order_they_became_due(
    world: World, relay: Relay, acd: FakeAdapter
) -> None:
    first = await world.create("chat-1")
    world.clock.advance(1)
    second = await world.create("mail-1", Channel.EMAIL)
    await relay.drain()
    assert [m.interaction_id for m in acd.sent] == [first.interaction_id, second.interaction_id]


async def test_fake_adapter_failures_are_consumed_in_order() -> None:
    adapter = FakeAdapter(TargetKind.CRM, "vendor")
    adapter.fail_next(retry_after=3)
    adapter.fail_next(permanent=True)
    assert adapter.pending_failures == 2
    adapter.clear_failures()
    adapter.fail_next()
    message = OutboundMessage(TargetKind.CRM, "vendor", INTERACTION_DELIVER, "i-1", {})
    with pytest.raises(TransientAdapterError) as caught:
        await adapter.send(message)
    assert caught.value.retry_after is None
    assert "crm:vendor" in str(caught.value)
    await adapter.send(message)
    assert adapter.sent == [message]
    assert adapter.attempts == [message, message]
