"""Every use case in harmony.routing.interactions against the in-memory store.

Assertions are on what was stored (interactions, history, agents' loads, inbox, outbox), never on
which calls were made.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import pytest

from harmony.errors import Conflict, NotFound, ValidationFailed
from harmony.routing import agents, interactions
from harmony.routing.agent_state import AgentStateEntry, Presence, Profile, StateOutcome
from harmony.routing.messages import (
    INTERACTION_DELIVER,
    ROUTING_REQUESTED,
    WORK_ENDED,
    OutboundMessage,
    TargetKind,
)
from harmony.routing.model import Channel, ChannelStatus, InteractionState, Queue
from harmony.routing.ports import AgentFilter, InteractionFilter, VoiceCall
from harmony.testing import (
    FakeClock,
    InMemoryStore,
    IntegrityError,
    OutboxStatus,
)
from tests.unit.conftest import World

S = InteractionState


def snapshot(store: InMemoryStore) -> tuple[Any, ...]:
    """Everything a use case could change, comparable with ==."""
    interactions = store.interactions()
    return (
        interactions,
        {i.id: store.history(i.id) for i in interactions},
        store.agents(),
        {a.id: store.agent_history(a.id) for a in store.agents()},
        store.queue("support-chat"),
        store.inbox(),
        store.outbox(),
    )


def message(world: World, interaction_id: str, message_type: str) -> OutboundMessage:
    [record] = world.outbox_of(interaction_id, message_type)
    return record.message


async def claimed(world: World, message: OutboundMessage) -> str:
    """Claim ``message`` as a relay would; its claim token."""
    async with world.store.uow() as uow:
        entries = await uow.outbox.claim_due(world.clock.now(), 10_000, 30, "test")
        await uow.commit()
    [entry] = [e for e in entries if e.message.id == message.id]
    return entry.claim_token


async def offered(world: World, external_id: str, acd_agent_id: str = "acd-1") -> str:
    """Create a chat and have the ACD pick ``acd_agent_id``; returns the interaction id."""
    outcome = await world.create(external_id)
    await world.select(outcome.interaction_id, acd_agent_id)
    return outcome.interaction_id


async def delivered(world: World, external_id: str, acd_agent_id: str = "acd-1") -> str:
    interaction_id = await offered(world, external_id, acd_agent_id)
    deliver = message(world, interaction_id, INTERACTION_DELIVER)
    await interactions.message_sent(
        world.store.uow(), world.clock, deliver, claim_token=await claimed(world, deliver)
    )
    return interaction_id


# ------------------------------------------------------------------------------------------
# interaction.created


async def test_create_stores_the_interaction_routing_and_promises_a_routing_request(
    world: World,
) -> None:
    outcome = await world.create(
        "chat-1",
        event_id="evt-c1",
        priority=7,
        skills=["billing"],
        customer={"name": "Ann"},
        subject="Where is my order?",
    )

    assert not outcome.duplicate
    interaction = world.interaction(outcome.interaction_id)
    assert interaction.state == S.ROUTING
    assert (interaction.crm_adapter, interaction.external_id) == ("generic", "chat-1")
    assert interaction.skills == ["billing", "support"]
    assert interaction.received_at == world.clock.now()
    assert interaction.request_id is not None and interaction.agent_id is None
    history = world.store.history(interaction.id)
    assert [(h.event, h.from_state, h.to_state) for h in history] == [
        ("received", None, S.RECEIVED),
        ("routing_requested", S.RECEIVED, S.ROUTING),
    ]
    assert "evt-c1" in history[0].cause
    assert history[1].detail == {"request_id": interaction.request_id}

    [record] = world.store.outbox(status=OutboxStatus.PENDING)
    assert record.status == OutboxStatus.PENDING
    assert record.next_attempt_at == world.clock.now()
    assert record.message.target_kind == TargetKind.ACD
    assert record.message.target == "generic"
    assert record.message.type == ROUTING_REQUESTED
    assert record.message.payload == {
        "request_id": interaction.request_id,
        "interaction_id": interaction.id,
        "channel": "chat",
        "queue": "support-chat",
        "priority": 7,
        "skills": ["billing", "support"],
        "customer": {"name": "Ann"},
        "subject": "Where is my order?",
        "received_at": world.clock.now().isoformat(),
    }
    [seen] = world.events_seen()
    assert (seen.source, seen.event_id, seen.event_type) == (
        "crm:generic",
        "evt-c1",
        "interaction.created",
    )
    assert seen.interaction_id == interaction.id


async def test_the_same_event_twice_is_one_interaction_and_one_routing_request(
    world: World,
) -> None:
    first = await world.create("chat-1", event_id="evt-1")
    world.clock.advance(5)
    second = await world.create("chat-1", event_id="evt-1")

    assert second == interactions.Outcome(first.interaction_id, duplicate=True)
    assert [i.id for i in world.store.interactions()] == [first.interaction_id]
    assert len(world.store.outbox(type=ROUTING_REQUESTED)) == 1
    assert len(world.events_seen()) == 1


async def test_a_replayed_event_id_wins_over_its_changed_content(world: World) -> None:
    first = await world.create("chat-1", event_id="evt-1")
    second = await world.create("chat-2", Channel.EMAIL, event_id="evt-1")

    assert second == interactions.Outcome(first.interaction_id, duplicate=True)
    assert [i.external_id for i in world.store.interactions()] == ["chat-1"]


async def test_the_same_external_id_under_a_new_event_id_is_a_duplicate(world: World) -> None:
    first = await world.create("chat-1", event_id="evt-1")
    second = await world.create("chat-1", event_id="evt-2", priority=99)

    assert second == interactions.Outcome(first.interaction_id, duplicate=True)
    [interaction] = world.store.interactions()
    assert interaction.priority == 0
    assert len(world.store.outbox(type=ROUTING_REQUESTED)) == 1
    assert len(world.store.history(interaction.id)) == 2
    # Both events are remembered and point at the one interaction, so their replays answer too.
    assert {(r.event_id, r.interaction_id) for r in world.events_seen()} == {
        ("evt-1", first.interaction_id),
        ("evt-2", first.interaction_id),
    }
    third = await world.create("chat-1", event_id="evt-2")
    assert third == interactions.Outcome(first.interaction_id, duplicate=True)


async def test_the_same_external_id_from_another_crm_is_another_interaction(
    world: World,
) -> None:
    first = await world.create("chat-1", event_id="evt-1")
    second = await world.create("chat-1", event_id="evt-1", crm_adapter="other-crm")

    assert not second.duplicate
    assert second.interaction_id != first.interaction_id
    assert len(world.store.outbox(type=ROUTING_REQUESTED)) == 2


async def test_an_unknown_queue_stores_nothing_and_the_event_can_be_retried(
    world: World,
) -> None:
    before = snapshot(world.store)

    with pytest.raises(ValidationFailed, match=r"data\.queue") as caught:
        await world.create("mail-1", Channel.EMAIL, event_id="evt-1", queue="sales-email")

    assert caught.value.code == "unknown_queue"
    assert snapshot(world.store) == before
    assert world.events_seen() == []  # the inbox claim was rolled back with the rest

    await interactions.upsert_queue(
        world.store.uow(), Queue("sales-email", Channel.EMAIL, ["sales"])
    )
    retried = await world.create("mail-1", Channel.EMAIL, event_id="evt-1", queue="sales-email")

    assert not retried.duplicate
    interaction = world.interaction(retried.interaction_id)
    assert (interaction.queue, interaction.skills, interaction.state) == (
        "sales-email",
        ["sales"],
        S.ROUTING,
    )
    assert len(world.store.outbox(type=ROUTING_REQUESTED)) == 1


async def test_a_queue_of_another_channel_is_refused_and_nothing_stored(world: World) -> None:
    before = snapshot(world.store)
    with pytest.raises(ValidationFailed, match="support-chat"):
        await world.create("mail-1", Channel.EMAIL, queue="support-chat")
    assert snapshot(world.store) == before


# ------------------------------------------------------------------------------------------
# agent.selected


async def test_selection_reserves_capacity_offers_and_promises_the_delivery(
    world: World,
) -> None:
    created = await world.create("chat-1")
    request_id = world.request_id(created.interaction_id)
    world.clock.advance(3)

    outcome = await world.select(created.interaction_id, "acd-2", event_id="evt-sel")

    assert outcome == interactions.Outcome(created.interaction_id)
    assert world.load("agent-2") == 1
    assert world.load("agent-1") == 0
    interaction = world.interaction(created.interaction_id)
    assert interaction.state == S.OFFERED
    assert interaction.agent_id == "agent-2"
    assert interaction.request_id == request_id
    assert interaction.state_times[S.OFFERED] == world.clock.now()
    last = world.store.history(interaction.id)[-1]
    assert (last.event, last.from_state, last.to_state) == ("agent_selected", S.ROUTING, S.OFFERED)
    assert last.detail == {
        "agent_id": "agent-2",
        "acd_agent_id": "acd-2",
        "crm_agent_id": "crm-2",
        "load": 1,
        "capacity": 2,
    }
    [deliver] = world.outbox_of(interaction.id, INTERACTION_DELIVER)
    assert deliver.message.target_kind == TargetKind.CRM
    assert deliver.message.target == "generic"
    assert deliver.message.payload == {
        "interaction_id": interaction.id,
        "external_id": "chat-1",
        "channel": "chat",
        "queue": "support-chat",
        "agent_id": "crm-2",
    }
    assert ("acd:generic", "evt-sel") in {(r.source, r.event_id) for r in world.events_seen()}


async def test_selection_of_a_queued_request_offers_it(world: World) -> None:
    created = await world.create("chat-1")
    await interactions.queue_request(
        world.store.uow(),
        world.clock,
        acd_adapter="generic",
        event_id="evt-q",
        request_id=world.request_id(created.interaction_id),
        position=2,
    )
    await world.select(created.interaction_id, "acd-1")

    interaction = world.interaction(created.interaction_id)
    assert (interaction.state, interaction.agent_id) == (S.OFFERED, "agent-1")
    assert [h.to_state for h in world.store.history(interaction.id)][-2:] == [S.QUEUED, S.OFFERED]


async def test_a_replayed_selection_reserves_once(world: World) -> None:
    created = await world.create("chat-1")
    await world.select(created.interaction_id, "acd-2", event_id="evt-sel")
    replay = await world.select(created.interaction_id, "acd-2", event_id="evt-sel")

    assert replay == interactions.Outcome(created.interaction_id, duplicate=True)
    assert world.load("agent-2") == 1
    assert len(world.outbox_of(created.interaction_id, INTERACTION_DELIVER)) == 1


async def test_selection_for_an_unknown_request_is_not_found(world: World) -> None:
    await world.create("chat-1")
    before = snapshot(world.store)

    with pytest.raises(NotFound) as caught:
        await interactions.select_agent(
            world.store.uow(),
            world.clock,
            acd_adapter="generic",
            event_id="evt-x",
            request_id="rr_nobody",
            acd_agent_id="acd-1",
        )

    assert caught.value.code == "unknown_interaction"
    assert "rr_nobody" in caught.value.detail
    assert snapshot(world.store) == before


async def test_selection_of_an_unknown_agent_is_not_found(world: World) -> None:
    created = await world.create("chat-1")
    before = snapshot(world.store)

    with pytest.raises(NotFound) as caught:
        await world.select(created.interaction_id, "acd-ghost")

    assert caught.value.code == "unknown_agent"
    assert snapshot(world.store) == before


async def test_selection_of_a_full_agent_changes_nothing_and_the_acd_may_pick_again(
    world: World,
) -> None:
    await offered(world, "chat-1", "acd-1")  # agent-1 holds its one chat slot
    second = await world.create("chat-2")
    before = snapshot(world.store)

    with pytest.raises(Conflict) as caught:
        await world.select(second.interaction_id, "acd-1", event_id="evt-pick")

    assert caught.value.code == "agent_unavailable"
    assert "1/1" in caught.value.detail
    assert snapshot(world.store) == before
    assert world.interaction(second.interaction_id).state == S.ROUTING

    # Nothing was remembered, not even the event id: the ACD's next pick goes through.
    await world.select(second.interaction_id, "acd-2", event_id="evt-pick")
    assert world.interaction(second.interaction_id).agent_id == "agent-2"
    assert (world.load("agent-1"), world.load("agent-2")) == (1, 1)


async def test_selection_of_an_agent_without_the_channel_is_unavailable(world: World) -> None:
    created = await world.create("chat-1")
    with pytest.raises(Conflict) as caught:
        await world.select(created.interaction_id, "acd-3")
    assert caught.value.code == "agent_unavailable"
    assert world.interaction(created.interaction_id).state == S.ROUTING


async def test_selection_when_not_awaiting_an_agent_is_an_invalid_transition(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1", "acd-1")
    before = snapshot(world.store)

    with pytest.raises(Conflict) as caught:
        await world.select(interaction_id, "acd-2")

    assert caught.value.code == "invalid_transition"
    assert snapshot(world.store) == before
    assert world.load("agent-2") == 0


async def test_selection_of_an_agent_not_ready_on_the_channel_is_unavailable(
    world: World,
) -> None:
    await world.report("crm-2", ChannelStatus.NOT_READY, reason="lunch", channels=(Channel.CHAT,))
    created = await world.create("chat-1")
    before = snapshot(world.store)

    with pytest.raises(Conflict) as caught:
        await world.select(created.interaction_id, "acd-2")

    assert caught.value.code == "agent_unavailable"
    assert "not_ready (lunch) on chat" in caught.value.detail
    assert snapshot(world.store) == before

    await world.report("crm-2", ChannelStatus.READY, channels=(Channel.CHAT,))
    await world.select(created.interaction_id, "acd-2")
    assert world.load("agent-2") == 1


async def test_selection_of_a_logged_out_agent_is_unavailable(world: World) -> None:
    await world.report("crm-1", ChannelStatus.LOGGED_OUT, event="agent.logged_out")
    created = await world.create("mail-1", Channel.EMAIL)
    with pytest.raises(Conflict) as caught:
        await world.select(created.interaction_id, "acd-1")
    assert caught.value.code == "agent_unavailable"
    assert "logged_out" in caught.value.detail


async def test_chat_work_blocks_email_offers_under_the_default_profile(world: World) -> None:
    await offered(world, "chat-1", "acd-1")
    mail = await world.create("mail-1", Channel.EMAIL)

    with pytest.raises(Conflict) as caught:
        await world.select(mail.interaction_id, "acd-1")

    assert caught.value.code == "agent_unavailable"
    assert "busy on chat" in caught.value.detail
    assert world.load("agent-1", Channel.EMAIL) == 0
    await world.complete("chat-1")
    await world.select(mail.interaction_id, "acd-1")
    assert world.load("agent-1", Channel.EMAIL) == 1


async def test_a_request_placed_with_another_acd_is_unknown_to_this_one(world: World) -> None:
    created = await world.create("chat-1", acd_adapter="other-acd")
    with pytest.raises(NotFound) as caught:
        await world.select(created.interaction_id, "acd-1")
    assert caught.value.code == "unknown_interaction"
    assert world.interaction(created.interaction_id).state == S.ROUTING


async def test_selection_and_completion_are_recorded_in_the_agents_history(
    world: World,
) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    await world.complete("chat-1")

    reserved, completed = world.store.agent_history("agent-2")[-2:]
    assert (reserved.event, reserved.channel, reserved.load, reserved.capacity) == (
        "offer_reserved",
        Channel.CHAT,
        1,
        2,
    )
    assert (completed.event, completed.load) == ("work_completed", 0)
    for entry in (reserved, completed):
        assert entry.outcome == StateOutcome.APPLIED
        assert entry.detail == {"interaction_id": interaction_id}
        assert entry.status == ChannelStatus.READY


async def test_completion_starts_the_profiles_wrap_up_and_tells_the_acd(world: World) -> None:
    await agents.upsert_profile(
        world.store.uow(),
        world.clock,
        Profile("slow", capacity={Channel.CHAT: 2}, wrap_up_seconds={Channel.CHAT: 30}),
    )
    await interactions.upsert_agent(
        world.store.uow(),
        world.clock,
        agent_id="agent-2",
        name="Agent-2",
        crm_agent_id="crm-2",
        acd_agent_id="acd-2",
        skills=["support"],
        profile="slow",
    )
    interaction_id = await delivered(world, "chat-1", "acd-2")
    next_chat = await world.create("chat-2")

    await world.complete("chat-1")

    [ended] = world.outbox_of(interaction_id, WORK_ENDED)
    assert ended.message.payload["wrap_up_seconds"] == 30
    agent = world.store.agent("agent-2")
    assert agent is not None
    wrap_up_until = world.clock.now() + timedelta(seconds=30)
    assert agent.capacity_on(Channel.CHAT).wrap_up_until == wrap_up_until
    assert world.store.agent_history("agent-2")[-1].wrap_up_until == wrap_up_until
    with pytest.raises(Conflict, match="wrap-up") as caught:
        await world.select(next_chat.interaction_id, "acd-2")
    assert caught.value.code == "agent_unavailable"

    world.clock.advance(30)
    await world.select(next_chat.interaction_id, "acd-2")
    assert world.load("agent-2") == 1


# ------------------------------------------------------------------------------------------
# request.queued


async def test_queued_notices_move_routing_to_queued_then_are_noted(world: World) -> None:
    created = await world.create("chat-1")
    request_id = world.request_id(created.interaction_id)

    async def queued(event_id: str, position: int | None) -> interactions.Outcome:
        return await interactions.queue_request(
            world.store.uow(),
            world.clock,
            acd_adapter="generic",
            event_id=event_id,
            request_id=request_id,
            position=position,
        )

    assert await queued("evt-q1", 3) == interactions.Outcome(created.interaction_id)
    assert await queued("evt-q2", None) == interactions.Outcome(created.interaction_id)
    assert await queued("evt-q1", 3) == interactions.Outcome(created.interaction_id, duplicate=True)
    await world.select(created.interaction_id, "acd-1")
    await queued("evt-q3", 1)

    interaction = world.interaction(created.interaction_id)
    assert interaction.state == S.OFFERED
    tail = [
        (h.event, h.from_state, h.to_state, h.detail) for h in world.store.history(interaction.id)
    ][2:]
    assert tail == [
        ("queued", S.ROUTING, S.QUEUED, {"position": 3}),
        ("queue_position", S.QUEUED, S.QUEUED, {}),
        ("agent_selected", S.QUEUED, S.OFFERED, tail[2][3]),
        ("late_queued_notice", S.OFFERED, S.OFFERED, {"position": 1}),
    ]


async def test_a_queued_notice_for_an_unknown_request_is_not_found(world: World) -> None:
    with pytest.raises(NotFound) as caught:
        await interactions.queue_request(
            world.store.uow(),
            world.clock,
            acd_adapter="generic",
            event_id="evt-q",
            request_id="rr_unknown",
            position=None,
        )
    assert caught.value.code == "unknown_interaction"
    assert world.events_seen() == []


# ------------------------------------------------------------------------------------------
# Relay outcomes: message_sent / message_failed


async def test_a_delivery_ack_moves_offered_to_delivered(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    deliver = message(world, interaction_id, INTERACTION_DELIVER)
    world.clock.advance(2)

    await interactions.message_sent(
        world.store.uow(), world.clock, deliver, claim_token=await claimed(world, deliver)
    )

    interaction = world.interaction(interaction_id)
    assert interaction.state == S.DELIVERED
    assert interaction.state_times[S.DELIVERED] == world.clock.now()
    last = world.store.history(interaction_id)[-1]
    assert (last.event, last.to_state) == ("delivered", S.DELIVERED)
    assert deliver.id in last.cause
    record = world.store.outbox_record(deliver.id)
    assert record is not None
    assert (record.status, record.sent_at) == (OutboxStatus.SENT, world.clock.now())


async def test_a_routing_request_ack_only_marks_the_message_sent(world: World) -> None:
    created = await world.create("chat-1")
    routing = message(world, created.interaction_id, ROUTING_REQUESTED)
    history = world.store.history(created.interaction_id)

    await interactions.message_sent(
        world.store.uow(), world.clock, routing, claim_token=await claimed(world, routing)
    )

    assert world.interaction(created.interaction_id).state == S.ROUTING
    assert world.store.history(created.interaction_id) == history
    record = world.store.outbox_record(routing.id)
    assert record is not None and record.status == OutboxStatus.SENT


async def test_a_delivery_ack_after_acceptance_is_only_noted(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    await world.accept("chat-1")
    deliver = message(world, interaction_id, INTERACTION_DELIVER)

    await interactions.message_sent(
        world.store.uow(), world.clock, deliver, claim_token=await claimed(world, deliver)
    )

    assert world.interaction(interaction_id).state == S.ACCEPTED
    last = world.store.history(interaction_id)[-1]
    assert (last.event, last.from_state, last.to_state) == (
        "delivery_acknowledged",
        S.ACCEPTED,
        S.ACCEPTED,
    )


async def test_a_lost_delivery_fails_releases_and_tells_the_acd(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    deliver = message(world, interaction_id, INTERACTION_DELIVER)
    request_id = world.request_id(interaction_id)

    await interactions.message_failed(
        world.store.uow(),
        world.clock,
        deliver,
        "HTTP 404 no agent",
        claim_token=await claimed(world, deliver),
    )

    interaction = world.interaction(interaction_id)
    assert interaction.state == S.FAILED
    assert world.load("agent-2") == 0
    last = world.store.history(interaction_id)[-1]
    assert (last.from_state, last.to_state) == (S.OFFERED, S.FAILED)
    assert "HTTP 404 no agent" in last.cause
    dead = world.store.outbox_record(deliver.id)
    assert dead is not None
    assert (dead.status, dead.last_error) == (OutboxStatus.DEAD, "HTTP 404 no agent")
    [ended] = world.outbox_of(interaction_id, WORK_ENDED)
    assert ended.status == OutboxStatus.PENDING
    assert ended.message.target_kind == TargetKind.ACD
    assert ended.message.payload == {
        "request_id": request_id,
        "interaction_id": interaction_id,
        "agent_id": "acd-2",
        "channel": "chat",
        "reason": "delivery_failed",
        "wrap_up_seconds": 0,
    }


async def test_a_lost_routing_request_fails_the_interaction(world: World) -> None:
    created = await world.create("chat-1")
    routing = message(world, created.interaction_id, ROUTING_REQUESTED)

    await interactions.message_failed(
        world.store.uow(),
        world.clock,
        routing,
        "HTTP 400 bad skills",
        claim_token=await claimed(world, routing),
    )

    interaction = world.interaction(created.interaction_id)
    assert interaction.state == S.FAILED
    assert "HTTP 400 bad skills" in world.store.history(interaction.id)[-1].cause
    assert world.outbox_of(interaction.id, WORK_ENDED) == []
    assert [a.capacity_on(Channel.CHAT).load for a in world.store.agents()] == [0, 0, 0]


async def test_a_lost_routing_request_after_selection_is_only_noted(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    routing = message(world, interaction_id, ROUTING_REQUESTED)

    await interactions.message_failed(
        world.store.uow(),
        world.clock,
        routing,
        "gave up",
        claim_token=await claimed(world, routing),
    )

    assert world.interaction(interaction_id).state == S.OFFERED
    assert world.load("agent-1") == 1
    last = world.store.history(interaction_id)[-1]
    assert (last.event, last.detail) == ("message_lost", {"message_id": routing.id})


async def test_a_lost_delivery_after_acceptance_keeps_the_agent(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    await world.accept("chat-1")
    deliver = message(world, interaction_id, INTERACTION_DELIVER)

    await interactions.message_failed(
        world.store.uow(),
        world.clock,
        deliver,
        "late 500",
        claim_token=await claimed(world, deliver),
    )

    assert world.interaction(interaction_id).state == S.ACCEPTED
    assert world.load("agent-1") == 1
    assert world.outbox_of(interaction_id, WORK_ENDED) == []


async def test_a_lost_work_ended_is_only_noted(world: World) -> None:
    interaction_id = await delivered(world, "chat-1")
    await world.complete("chat-1")
    ended = message(world, interaction_id, WORK_ENDED)

    await interactions.message_failed(
        world.store.uow(),
        world.clock,
        ended,
        "acd down",
        claim_token=await claimed(world, ended),
    )

    assert world.interaction(interaction_id).state == S.COMPLETED
    assert world.store.history(interaction_id)[-1].event == "message_lost"
    assert world.load("agent-1") == 0


# ------------------------------------------------------------------------------------------
# interaction.accepted / interaction.completed


async def test_accept_moves_delivered_to_accepted(world: World) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    world.clock.advance(10)

    outcome = await world.accept("chat-1", "crm-2", event_id="evt-acc")

    assert outcome == interactions.Outcome(interaction_id)
    interaction = world.interaction(interaction_id)
    assert interaction.state == S.ACCEPTED
    assert interaction.state_times[S.ACCEPTED] == world.clock.now()
    last = world.store.history(interaction_id)[-1]
    assert (last.event, last.cause) == ("accepted", "interaction.accepted evt-acc")


async def test_accept_from_offered_fills_in_delivered(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    await world.accept("chat-1")
    assert [h.event for h in world.store.history(interaction_id)][-2:] == [
        "delivered_implied",
        "accepted",
    ]


async def test_accept_by_another_agent_is_refused(world: World) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    before = snapshot(world.store)

    with pytest.raises(Conflict) as caught:
        await world.accept("chat-1", "crm-1")

    assert caught.value.code == "invalid_transition"
    assert "crm-2" in caught.value.detail and "crm-1" in caught.value.detail
    assert snapshot(world.store) == before
    assert world.interaction(interaction_id).state == S.DELIVERED


async def test_accept_before_any_agent_is_an_invalid_transition(world: World) -> None:
    await world.create("chat-1")
    with pytest.raises(Conflict) as caught:
        await world.accept("chat-1", "crm-1")
    assert caught.value.code == "invalid_transition"


async def test_accept_of_an_unknown_interaction_is_not_found(world: World) -> None:
    with pytest.raises(NotFound) as caught:
        await world.accept("chat-404")
    assert caught.value.code == "unknown_interaction"
    assert world.events_seen() == []


async def test_complete_releases_capacity_and_tells_the_acd(world: World) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    request_id = world.request_id(interaction_id)

    outcome = await world.complete("chat-1", event_id="evt-done")

    assert outcome == interactions.Outcome(interaction_id)
    assert world.interaction(interaction_id).state == S.COMPLETED
    assert world.load("agent-2") == 0
    [ended] = world.outbox_of(interaction_id, WORK_ENDED)
    assert ended.message.target == "generic"
    assert ended.message.payload == {
        "request_id": request_id,
        "interaction_id": interaction_id,
        "agent_id": "acd-2",
        "channel": "chat",
        "reason": "completed",
        "wrap_up_seconds": 0,
    }
    replay = await world.complete("chat-1", event_id="evt-done")
    assert replay.duplicate
    assert len(world.outbox_of(interaction_id, WORK_ENDED)) == 1


async def test_complete_from_delivered_fills_in_accepted(world: World) -> None:
    interaction_id = await delivered(world, "chat-1")
    await world.complete("chat-1")
    events = [h.event for h in world.store.history(interaction_id)]
    assert events[-2:] == ["accepted_implied", "completed"]
    assert world.load("agent-1") == 0


async def test_a_second_completion_is_refused_and_releases_nothing(world: World) -> None:
    await delivered(world, "chat-1", "acd-2")
    await delivered(world, "chat-2", "acd-2")
    await world.complete("chat-1")
    assert world.load("agent-2") == 1
    before = snapshot(world.store)

    with pytest.raises(Conflict) as caught:
        await world.complete("chat-1")

    assert caught.value.code == "invalid_transition"
    assert snapshot(world.store) == before
    assert world.load("agent-2") == 1


async def test_completing_unrouted_work_is_refused(world: World) -> None:
    await world.create("chat-1")
    before = snapshot(world.store)
    with pytest.raises(Conflict) as caught:
        await world.complete("chat-1")
    assert caught.value.code == "invalid_transition"
    assert snapshot(world.store) == before


async def test_an_email_uses_the_email_slot(world: World) -> None:
    created = await world.create("mail-1", Channel.EMAIL)
    await world.select(created.interaction_id, "acd-1")
    assert (world.load("agent-1", Channel.EMAIL), world.load("agent-1", Channel.CHAT)) == (1, 0)
    await world.complete("mail-1")
    assert world.load("agent-1", Channel.EMAIL) == 0
    [ended] = world.outbox_of(created.interaction_id, WORK_ENDED)
    assert ended.message.payload["channel"] == "email"


# ------------------------------------------------------------------------------------------
# Operators: agents and queues


async def test_upsert_agent_keeps_the_load_it_holds(world: World) -> None:
    await offered(world, "chat-1", "acd-2")

    stored = await interactions.upsert_agent(
        world.store.uow(),
        world.clock,
        agent_id="agent-2",
        name="Renamed",
        crm_agent_id="crm-2",
        acd_agent_id="acd-2",
        skills=["b", "a", "a"],
        capacity={Channel.CHAT: 5, Channel.EMAIL: 1},
    )

    assert stored == world.store.agent("agent-2")
    assert stored.name == "Renamed"
    assert stored.skills == ["a", "b"]
    assert (stored.capacity_on(Channel.CHAT).capacity, world.load("agent-2")) == (5, 1)
    assert stored.capacity_on(Channel.EMAIL).capacity == 1


async def test_upsert_agent_below_its_load_is_refused(world: World) -> None:
    await offered(world, "chat-1", "acd-2")
    before = snapshot(world.store)

    with pytest.raises(Conflict) as caught:
        await interactions.upsert_agent(
            world.store.uow(),
            world.clock,
            agent_id="agent-2",
            name="Agent-2",
            crm_agent_id="crm-2",
            acd_agent_id="acd-2",
            skills=[],
            capacity={Channel.CHAT: 0},
        )

    assert caught.value.code == "capacity_below_load"
    assert snapshot(world.store) == before


async def test_upsert_agent_with_another_agents_id_is_refused(world: World) -> None:
    before = snapshot(world.store)
    with pytest.raises(Conflict) as caught:
        await interactions.upsert_agent(
            world.store.uow(),
            world.clock,
            agent_id="agent-9",
            name="New",
            crm_agent_id="crm-9",
            acd_agent_id="acd-1",
            skills=[],
            capacity={},
        )
    assert caught.value.code == "agent_id_taken"
    assert snapshot(world.store) == before


async def test_upsert_agent_refuses_capacity_beyond_the_channel_limit(world: World) -> None:
    with pytest.raises(ValidationFailed):
        await interactions.upsert_agent(
            world.store.uow(),
            world.clock,
            agent_id="agent-9",
            name="New",
            crm_agent_id="crm-9",
            acd_agent_id="acd-9",
            skills=[],
            capacity={Channel.VOICE: 2},
        )
    assert world.store.agent("agent-9") is None


async def test_upsert_agent_with_an_unknown_profile_is_refused(world: World) -> None:
    before = snapshot(world.store)
    with pytest.raises(ValidationFailed, match="profile"):
        await interactions.upsert_agent(
            world.store.uow(),
            world.clock,
            agent_id="agent-9",
            name="New",
            crm_agent_id="crm-9",
            acd_agent_id="acd-9",
            skills=[],
            profile="night-shift",
        )
    assert snapshot(world.store) == before


async def test_a_new_agent_takes_its_profiles_capacity_logged_out(world: World) -> None:
    stored = await interactions.upsert_agent(
        world.store.uow(),
        world.clock,
        agent_id="agent-9",
        name="New",
        crm_agent_id="crm-9",
        acd_agent_id="acd-9",
        skills=["b", "a"],
        capacity={Channel.EMAIL: 5},
    )
    assert {c: (s.capacity, s.load, s.status) for c, s in stored.channels.items()} == {
        Channel.VOICE: (1, 0, ChannelStatus.LOGGED_OUT),
        Channel.CHAT: (3, 0, ChannelStatus.LOGGED_OUT),
        Channel.EMAIL: (5, 0, ChannelStatus.LOGGED_OUT),
    }
    history = world.store.agent_history("agent-9")
    assert [(e.event, e.channel, e.capacity) for e in history] == [
        ("capacity_changed", Channel.VOICE, 1),
        ("capacity_changed", Channel.CHAT, 3),
        ("capacity_changed", Channel.EMAIL, 5),
    ]


async def test_upsert_queue_replaces_its_definition(world: World) -> None:
    await interactions.upsert_queue(world.store.uow(), Queue("support-chat", Channel.CHAT, ["vip"]))
    assert world.store.queue("support-chat") == Queue("support-chat", Channel.CHAT, ["vip"])
    created = await world.create("chat-1", skills=["x"])
    assert world.interaction(created.interaction_id).skills == ["vip", "x"]


# ------------------------------------------------------------------------------------------
# The in-memory store keeps the SQL unit of work's contract (the tests above rely on it).


async def test_a_unit_of_work_left_without_commit_discards_everything(
    store: InMemoryStore, clock: FakeClock
) -> None:
    before = snapshot(store)
    async with store.uow() as uow:
        assert await uow.inbox.claim("crm:generic", "evt-1", "interaction.created", clock.now())
        assert await uow.agents.reserve("agent-1", Channel.CHAT)
        await interactions.upsert_queue(store.uow(), Queue("other", Channel.CHAT, []))  # commits
        # Its own changes are visible to itself...
        assert not await uow.inbox.claim("crm:generic", "evt-1", "interaction.created", clock.now())
    # ...and gone once it ends; the other unit of work's commit stays.
    after = snapshot(store)
    assert after == before
    assert store.queue("other") == Queue("other", Channel.CHAT, [])


async def test_changes_are_invisible_to_others_until_commit(store: InMemoryStore) -> None:
    async with store.uow() as writer:
        assert await writer.agents.reserve("agent-2", Channel.CHAT)
        async with store.uow() as reader:
            agent = await reader.agents.get("agent-2")
            assert agent is not None and agent.capacity_on(Channel.CHAT).load == 0
        await writer.commit()
    agent = store.agent("agent-2")
    assert agent is not None and agent.capacity_on(Channel.CHAT).load == 1


async def test_concurrent_writers_of_one_row_cannot_both_commit(store: InMemoryStore) -> None:
    first, second = store.uow(), store.uow()
    async with first, second:
        assert await first.agents.reserve("agent-2", Channel.CHAT)
        assert await second.agents.reserve("agent-2", Channel.CHAT)
        await first.commit()
        with pytest.raises(Conflict) as caught:
            await second.commit()
    assert caught.value.code == "concurrent_update"
    agent = store.agent("agent-2")
    assert agent is not None and agent.capacity_on(Channel.CHAT).load == 1


async def test_save_detects_a_stale_version_and_bumps_it(world: World) -> None:
    created = await world.create("chat-1")
    async with world.store.uow() as uow:
        mine = await uow.interactions.get(created.interaction_id, for_update=True)
        stale = await uow.interactions.get(created.interaction_id)
        assert mine is not None and stale is not None
        mine.note("first", world.clock.now(), "test", {})
        await uow.interactions.save(mine)
        assert mine.version == 1 and mine.new_history == []
        stale.note("second", world.clock.now(), "test", {})
        with pytest.raises(Conflict) as caught:
            await uow.interactions.save(stale)
        assert caught.value.code == "concurrent_update"
        await uow.commit()
    assert world.interaction(created.interaction_id).version == 1
    assert [h.event for h in world.store.history(created.interaction_id)][-1] == "first"


async def test_returned_objects_are_copies(world: World) -> None:
    created = await world.create("chat-1", customer={"name": "Ann"})
    async with world.store.uow() as uow:
        loaded = await uow.interactions.get(created.interaction_id)
        assert loaded is not None
        loaded.customer["name"] = "Bob"
        loaded.state = S.FAILED
        await uow.commit()
    interaction = world.interaction(created.interaction_id)
    assert (interaction.customer, interaction.state) == ({"name": "Ann"}, S.ROUTING)


async def test_reserve_and_release_stay_within_bounds(store: InMemoryStore) -> None:
    async with store.uow() as uow:
        assert await uow.agents.reserve("agent-1", Channel.CHAT)
        assert not await uow.agents.reserve("agent-1", Channel.CHAT)
        assert not await uow.agents.reserve("agent-3", Channel.CHAT)  # no capacity
        assert not await uow.agents.reserve("agent-404", Channel.CHAT)
        assert await uow.agents.release("agent-1", Channel.CHAT)
        assert not await uow.agents.release("agent-1", Channel.CHAT)
        assert not await uow.agents.release("agent-1", Channel.EMAIL)
        await uow.commit()
    agent = store.agent("agent-1")
    assert agent is not None
    assert agent.capacity_on(Channel.CHAT).load == agent.capacity_on(Channel.EMAIL).load == 0


async def test_claim_due_leases_and_counts_attempts(world: World) -> None:
    created = await world.create("chat-1")
    start = world.clock.now()
    async with world.store.uow() as uow:
        [entry] = await uow.outbox.claim_due(start, limit=10, lease_seconds=30, claimer="test")
        assert await uow.outbox.claim_due(start, limit=10, lease_seconds=30, claimer="test") == []
        await uow.commit()
    assert entry.attempts == entry.message.attempts == 1
    assert entry.message.interaction_id == created.interaction_id
    [record] = world.store.outbox(type=ROUTING_REQUESTED)
    assert (record.attempts, record.next_attempt_at) == (1, start + timedelta(seconds=30))
    async with world.store.uow() as uow:
        later = start + timedelta(seconds=30)
        [again] = await uow.outbox.claim_due(later, limit=10, lease_seconds=30, claimer="test")
        assert again.attempts == 2
        assert await uow.outbox.pending_count() == 1


async def test_search_pages_oldest_first_with_a_cursor(world: World) -> None:
    ids = []
    for n in range(5):
        ids.append((await world.create(f"chat-{n}")).interaction_id)
        world.clock.advance(1)
    mail = await world.create("mail-1", Channel.EMAIL)
    seen: list[str] = []
    cursor = None
    async with world.store.uow() as uow:
        while True:
            page = await uow.interactions.search(InteractionFilter(channel=Channel.CHAT), 2, cursor)
            seen += [i.id for i in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        [stat_chat, stat_mail] = await uow.queues.stats()
        with pytest.raises(ValidationFailed):
            await uow.interactions.search(InteractionFilter(), 2, "garbage!")
    assert seen == ids
    assert mail.interaction_id not in seen
    assert (stat_chat.queue.name, stat_chat.waiting) == ("support-chat", 5)
    assert (stat_mail.queue.name, stat_mail.waiting) == ("support-email", 1)


async def test_writes_the_schema_would_refuse_raise_integrity_error(world: World) -> None:
    created = await world.create("chat-1")
    async with world.store.uow() as uow:
        interaction = await uow.interactions.get(created.interaction_id)
        assert interaction is not None
        interaction.agent_id = "agent-404"
        with pytest.raises(IntegrityError):
            await uow.interactions.save(interaction)


async def test_a_unit_of_work_cannot_be_used_after_it_ends(store: InMemoryStore) -> None:
    uow = store.uow()
    async with uow:
        pass
    with pytest.raises(RuntimeError):
        await uow.agents.get("agent-1")


async def test_agent_search_filters_and_pages_by_id(world: World) -> None:
    await world.report("crm-2", ChannelStatus.NOT_READY, reason="break", channels=(Channel.CHAT,))
    await offered(world, "chat-1", "acd-1")
    now = world.clock.now()
    async with world.store.uow() as uow:
        busy = await uow.agents.search(AgentFilter(presence=Presence.BUSY), now, 10, None)
        not_ready = await uow.agents.search(
            AgentFilter(channel=Channel.CHAT, status=ChannelStatus.NOT_READY), now, 10, None
        )
        first = await uow.agents.search(AgentFilter(skills=("support",)), now, 2, None)
        assert first.next_cursor is not None
        rest = await uow.agents.search(AgentFilter(skills=("support",)), now, 2, first.next_cursor)
        nobody = await uow.agents.search(AgentFilter(skills=("support", "french")), now, 2, None)
        with pytest.raises(ValidationFailed):
            await uow.agents.search(AgentFilter(), now, 2, "_w")  # not UTF-8 inside
    assert [a.id for a in busy.items] == ["agent-1"]
    assert [a.id for a in not_ready.items] == ["agent-2"]
    assert [a.id for a in first.items + rest.items] == ["agent-1", "agent-2", "agent-3"]
    assert rest.next_cursor is None
    assert nobody.items == []


async def test_agent_history_pages_oldest_first(world: World) -> None:
    seen: list[AgentStateEntry] = []
    cursor = None
    async with world.store.uow() as uow:
        while True:
            page = await uow.agents.history("agent-1", 2, cursor)
            seen += page.items
            cursor = page.next_cursor
            if cursor is None:
                break
    assert seen == world.store.agent_history("agent-1")
    assert [e.event for e in seen][:3] == ["capacity_changed"] * 3
    assert seen[-1].event == "agent.logged_in"


async def test_an_echo_is_taken_once_and_only_when_it_matches(store: InMemoryStore) -> None:
    now = FakeClock().now()
    async with store.uow() as uow:
        await uow.agents.add_mirror(
            "msg-1", "agent-1", Channel.CHAT, TargetKind.CRM, ChannelStatus.NOT_READY, "lunch", now
        )

        async def echo(reason: str | None, since: datetime, echo_of: str | None = None) -> bool:
            return await uow.agents.take_echo(
                "agent-1",
                Channel.CHAT,
                TargetKind.CRM,
                ChannelStatus.NOT_READY,
                reason,
                since,
                echo_of,
                now,
            )

        assert not await echo("break", now)  # another reason
        assert not await echo("lunch", now + timedelta(seconds=1))  # mirrored too long ago
        assert await echo("lunch", now)
        assert not await echo("lunch", now)  # consumed
        await uow.agents.add_mirror(
            "msg-2", "agent-1", Channel.CHAT, TargetKind.CRM, ChannelStatus.READY, None, now
        )
        assert await echo(None, now, echo_of="msg-2")  # named: status and reason not compared
        await uow.commit()
    mine = [(m.id, m.echoed_at) for m in store.mirrors() if m.id.startswith("msg-")]
    assert mine == [("msg-1", now), ("msg-2", now)]


async def test_a_profile_change_reaches_the_agents_following_it(world: World) -> None:
    await interactions.upsert_agent(
        world.store.uow(),
        world.clock,
        agent_id="agent-9",
        name="Follower",
        crm_agent_id="crm-9",
        acd_agent_id="acd-9",
        skills=["support"],
    )
    await world.report("crm-9", ChannelStatus.READY, event="agent.logged_in")
    await offered(world, "chat-1", "acd-9")
    default = world.store.profile("default")
    assert default is not None

    wider = dataclasses.replace(default, capacity={**default.capacity, Channel.CHAT: 5})
    await agents.upsert_profile(world.store.uow(), world.clock, wider)

    # agent-9 follows the profile; agent-1 set its own chat capacity and keeps it.
    assert (world.store.agent("agent-9") or pytest.fail()).capacity_on(Channel.CHAT).capacity == 5
    assert (world.store.agent("agent-1") or pytest.fail()).capacity_on(Channel.CHAT).capacity == 1
    last = world.store.agent_history("agent-9")[-1]
    assert (last.event, last.channel, last.capacity, last.load) == (
        "profile_changed",
        Channel.CHAT,
        5,
        1,
    )

    before = snapshot(world.store)
    closed = dataclasses.replace(default, capacity={**default.capacity, Channel.CHAT: 0})
    with pytest.raises(Conflict) as caught:
        await agents.upsert_profile(world.store.uow(), world.clock, closed)
    assert caught.value.code == "capacity_below_load"
    assert "agent-9" in caught.value.detail
    assert snapshot(world.store) == before
    assert world.store.profile("default") == wider


async def test_voice_calls_are_stored_and_updated(store: InMemoryStore) -> None:
    start = FakeClock().now()
    call = VoiceCall("generic", "call-1", "agent-1", start, None)
    async with store.uow() as uow:
        await uow.agents.save_voice_call(call)
        ended = VoiceCall("generic", "call-1", "agent-1", start, start + timedelta(minutes=3))
        await uow.agents.save_voice_call(ended)
        assert await uow.agents.voice_call("generic", "call-1") == ended
        assert await uow.agents.voice_call("other", "call-1") is None
        await uow.agents.set_sequence("agent-1", "crm:generic", 7)
        assert await uow.agents.last_sequence("agent-1", "crm:generic") == 7
        assert await uow.agents.last_sequence("agent-1", "acd:generic") is None
        await uow.commit()
    assert store.voice_calls() == [ended]
