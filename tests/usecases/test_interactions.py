"""The use cases of harmony.routing on the real SQL unit of work (SQLite).

Assertions are on what was stored (interactions, history, agents' loads, inbox, outbox), never on
which calls were made.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from harmony.errors import Conflict, NotFound, Refused, ValidationFailed
from harmony.routing import agents, interactions
from harmony.routing.agent_state import Profile, StateOutcome
from harmony.routing.messages import (
    INTERACTION_DELIVER,
    ROUTING_REQUESTED,
    WORK_ENDED,
    OutboundMessage,
    TargetKind,
)
from harmony.routing.model import Channel, ChannelStatus, InteractionState, Queue
from tests.sql_store import DEAD, PENDING, SENT
from tests.usecases.conftest import World

S = InteractionState


async def message(world: World, interaction_id: str, message_type: str) -> OutboundMessage:
    [record] = await world.outbox_of(interaction_id, message_type)
    return record.message


async def claimed(world: World, message: OutboundMessage) -> str:
    """Claim ``message`` as a relay would; its claim token."""
    async with world.store.uow() as uow:
        entries = await uow.outbox.claim_due(world.clock.now(), 10_000, 30, "test")
        await uow.commit()
    [entry] = [e for e in entries if e.message.id == message.id]
    return entry.claim_token


async def relay_sent(world: World, message: OutboundMessage) -> bool:
    """Claim ``message`` and record its delivery, as a relay would."""
    return await interactions.message_sent(
        world.store.uow(), world.clock, message, claim_token=await claimed(world, message)
    )


async def relay_failed(world: World, message: OutboundMessage, error: str) -> bool:
    """Claim ``message`` and record that it will never be delivered, as a relay would."""
    return await interactions.message_failed(
        world.store.uow(), world.clock, message, error, claim_token=await claimed(world, message)
    )


async def offered(world: World, external_id: str, acd_agent_id: str = "acd-1") -> str:
    """Create a chat and have the ACD pick ``acd_agent_id``; returns the interaction id."""
    outcome = await world.create(external_id)
    await world.select(outcome.interaction_id, acd_agent_id)
    return outcome.interaction_id


async def delivered(world: World, external_id: str, acd_agent_id: str = "acd-1") -> str:
    interaction_id = await offered(world, external_id, acd_agent_id)
    deliver = await message(world, interaction_id, INTERACTION_DELIVER)
    await relay_sent(world, deliver)
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
    interaction = await world.interaction(outcome.interaction_id)
    assert interaction.state == S.ROUTING
    assert (interaction.crm_adapter, interaction.external_id) == ("generic", "chat-1")
    assert interaction.skills == ["billing", "support"]
    assert interaction.received_at == world.clock.now()
    assert interaction.request_id is not None and interaction.agent_id is None
    history = await world.store.history(interaction.id)
    assert [(h.event, h.from_state, h.to_state) for h in history] == [
        ("received", None, S.RECEIVED),
        ("routing_requested", S.RECEIVED, S.ROUTING),
    ]
    assert "evt-c1" in history[0].cause
    assert history[1].detail == {"request_id": interaction.request_id}

    [record] = await world.store.outbox(status=PENDING)
    assert record.status == PENDING
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
    [seen] = await world.events_seen()
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
    assert [i.id for i in await world.store.interactions()] == [first.interaction_id]
    assert len(await world.store.outbox(type=ROUTING_REQUESTED)) == 1
    assert len(await world.events_seen()) == 1


async def test_a_replayed_event_id_wins_over_its_changed_content(world: World) -> None:
    first = await world.create("chat-1", event_id="evt-1")
    second = await world.create("chat-2", Channel.EMAIL, event_id="evt-1")

    assert second == interactions.Outcome(first.interaction_id, duplicate=True)
    assert [i.external_id for i in await world.store.interactions()] == ["chat-1"]


async def test_the_same_external_id_under_a_new_event_id_is_a_duplicate(world: World) -> None:
    first = await world.create("chat-1", event_id="evt-1")
    second = await world.create("chat-1", event_id="evt-2", priority=99)

    assert second == interactions.Outcome(first.interaction_id, duplicate=True)
    [interaction] = await world.store.interactions()
    assert interaction.priority == 0
    assert len(await world.store.outbox(type=ROUTING_REQUESTED)) == 1
    assert len(await world.store.history(interaction.id)) == 2
    # Both events are remembered and point at the one interaction, so their replays answer too.
    assert {(r.event_id, r.interaction_id) for r in await world.events_seen()} == {
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
    assert len(await world.store.outbox(type=ROUTING_REQUESTED)) == 2


async def test_an_unknown_queue_stores_nothing_and_the_event_can_be_retried(
    world: World,
) -> None:
    before = await world.store.dump()

    with pytest.raises(ValidationFailed, match=r"data\.queue") as caught:
        await world.create("mail-1", Channel.EMAIL, event_id="evt-1", queue="sales-email")

    assert caught.value.code == "unknown_queue"
    assert await world.store.dump() == before
    assert await world.events_seen() == []  # the inbox claim was rolled back with the rest

    await interactions.upsert_queue(
        world.store.uow(), Queue("sales-email", Channel.EMAIL, ["sales"])
    )
    retried = await world.create("mail-1", Channel.EMAIL, event_id="evt-1", queue="sales-email")

    assert not retried.duplicate
    interaction = await world.interaction(retried.interaction_id)
    assert (interaction.queue, interaction.skills, interaction.state) == (
        "sales-email",
        ["sales"],
        S.ROUTING,
    )
    assert len(await world.store.outbox(type=ROUTING_REQUESTED)) == 1


async def test_a_queue_of_another_channel_is_refused_and_nothing_stored(world: World) -> None:
    before = await world.store.dump()
    with pytest.raises(ValidationFailed, match="support-chat"):
        await world.create("mail-1", Channel.EMAIL, queue="support-chat")
    assert await world.store.dump() == before


# ------------------------------------------------------------------------------------------
# agent.selected


async def test_selection_reserves_capacity_offers_and_promises_the_delivery(
    world: World,
) -> None:
    created = await world.create("chat-1")
    request_id = await world.request_id(created.interaction_id)
    world.clock.advance(3)

    outcome = await world.select(created.interaction_id, "acd-2", event_id="evt-sel")

    assert outcome == interactions.Outcome(created.interaction_id)
    assert await world.load("agent-2") == 1
    assert await world.load("agent-1") == 0
    interaction = await world.interaction(created.interaction_id)
    assert interaction.state == S.OFFERED
    assert interaction.agent_id == "agent-2"
    assert interaction.request_id == request_id
    assert interaction.state_times[S.OFFERED] == world.clock.now()
    [offer] = await world.store.offers(interaction.id)
    assert (offer.agent_id, offer.channel, offer.status) == ("agent-2", Channel.CHAT, "pending")
    assert offer.offered_at == world.clock.now()
    # The support-chat queue sets no offer timeout: chat's default, 30 s.
    assert offer.expires_at == world.clock.now() + timedelta(seconds=30)
    timer = await world.store.timer_of(interaction.id)
    assert timer is not None
    assert (timer.due_at, timer.guard) == (offer.expires_at, offer.id)
    assert timer.detail == {"deadline": "offer_timeout"}
    assert interaction.offers_made == 1
    last = (await world.store.history(interaction.id))[-1]
    assert (last.event, last.from_state, last.to_state) == ("agent_selected", S.ROUTING, S.OFFERED)
    assert last.detail == {
        "agent_id": "agent-2",
        "acd_agent_id": "acd-2",
        "crm_agent_id": "crm-2",
        "load": 1,
        "capacity": 2,
        "offer_id": offer.id,
        "offer": 1,
    }
    [deliver] = await world.outbox_of(interaction.id, INTERACTION_DELIVER)
    assert deliver.message.target_kind == TargetKind.CRM
    assert deliver.message.target == "generic"
    assert deliver.message.payload == {
        "interaction_id": interaction.id,
        "external_id": "chat-1",
        "channel": "chat",
        "queue": "support-chat",
        "agent_id": "crm-2",
        "offer_id": offer.id,
        "expires_at": offer.expires_at.isoformat(),
    }
    assert ("acd:generic", "evt-sel") in {(r.source, r.event_id) for r in await world.events_seen()}


async def test_selection_of_a_queued_request_offers_it(world: World) -> None:
    created = await world.create("chat-1")
    await interactions.queue_request(
        world.store.uow(),
        world.clock,
        acd_adapter="generic",
        event_id="evt-q",
        request_id=await world.request_id(created.interaction_id),
        position=2,
    )
    await world.select(created.interaction_id, "acd-1")

    interaction = await world.interaction(created.interaction_id)
    assert (interaction.state, interaction.agent_id) == (S.OFFERED, "agent-1")
    assert [h.to_state for h in await world.store.history(interaction.id)][-2:] == [
        S.QUEUED,
        S.OFFERED,
    ]


async def test_a_replayed_selection_reserves_once(world: World) -> None:
    created = await world.create("chat-1")
    await world.select(created.interaction_id, "acd-2", event_id="evt-sel")
    replay = await world.select(created.interaction_id, "acd-2", event_id="evt-sel")

    assert replay == interactions.Outcome(created.interaction_id, duplicate=True)
    assert await world.load("agent-2") == 1
    assert len(await world.outbox_of(created.interaction_id, INTERACTION_DELIVER)) == 1


async def test_selection_for_an_unknown_request_is_not_found(world: World) -> None:
    await world.create("chat-1")
    before = await world.store.dump()

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
    assert await world.store.dump() == before


async def test_selection_of_an_unknown_agent_is_not_found(world: World) -> None:
    created = await world.create("chat-1")
    before = await world.store.dump()

    with pytest.raises(NotFound) as caught:
        await world.select(created.interaction_id, "acd-ghost")

    assert caught.value.code == "unknown_agent"
    assert await world.store.dump() == before


async def test_selection_of_a_full_agent_changes_nothing_and_the_acd_may_pick_again(
    world: World,
) -> None:
    await offered(world, "chat-1", "acd-1")  # agent-1 holds its one chat slot
    second = await world.create("chat-2")
    before = await world.store.dump()

    with pytest.raises(Conflict) as caught:
        await world.select(second.interaction_id, "acd-1", event_id="evt-pick")

    assert caught.value.code == "agent_unavailable"
    assert "1/1" in caught.value.detail
    assert await world.store.dump() == before
    assert (await world.interaction(second.interaction_id)).state == S.ROUTING

    # Nothing was remembered, not even the event id: the ACD's next pick goes through.
    await world.select(second.interaction_id, "acd-2", event_id="evt-pick")
    assert (await world.interaction(second.interaction_id)).agent_id == "agent-2"
    assert (await world.load("agent-1"), await world.load("agent-2")) == (1, 1)


async def test_selection_of_an_agent_without_the_channel_is_unavailable(world: World) -> None:
    created = await world.create("chat-1")
    with pytest.raises(Conflict) as caught:
        await world.select(created.interaction_id, "acd-3")
    assert caught.value.code == "agent_unavailable"
    assert (await world.interaction(created.interaction_id)).state == S.ROUTING


async def test_selection_when_not_awaiting_an_agent_is_refused_with_the_state(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1", "acd-1")
    before = await world.store.dump()

    with pytest.raises(Refused) as caught:
        await world.select(interaction_id, "acd-2")

    assert (caught.value.code, caught.value.state) == ("not_awaiting_selection", "offered")
    assert await world.store.dump() == before
    assert await world.load("agent-2") == 0


async def test_selection_of_an_agent_not_ready_on_the_channel_is_unavailable(
    world: World,
) -> None:
    await world.report("crm-2", ChannelStatus.NOT_READY, reason="lunch", channels=(Channel.CHAT,))
    created = await world.create("chat-1")
    before = await world.store.dump()

    with pytest.raises(Conflict) as caught:
        await world.select(created.interaction_id, "acd-2")

    assert caught.value.code == "agent_unavailable"
    assert "not_ready (lunch) on chat" in caught.value.detail
    assert await world.store.dump() == before

    await world.report("crm-2", ChannelStatus.READY, channels=(Channel.CHAT,))
    await world.select(created.interaction_id, "acd-2")
    assert await world.load("agent-2") == 1


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
    assert await world.load("agent-1", Channel.EMAIL) == 0
    await world.complete("chat-1")
    await world.select(mail.interaction_id, "acd-1")
    assert await world.load("agent-1", Channel.EMAIL) == 1


async def test_a_request_placed_with_another_acd_is_unknown_to_this_one(world: World) -> None:
    created = await world.create("chat-1", acd_adapter="other-acd")
    with pytest.raises(NotFound) as caught:
        await world.select(created.interaction_id, "acd-1")
    assert caught.value.code == "unknown_interaction"
    assert (await world.interaction(created.interaction_id)).state == S.ROUTING


async def test_selection_and_completion_are_recorded_in_the_agents_history(
    world: World,
) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    await world.complete("chat-1")

    reserved, completed = (await world.store.agent_history("agent-2"))[-2:]
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

    [ended] = await world.outbox_of(interaction_id, WORK_ENDED)
    assert ended.message.payload["wrap_up_seconds"] == 30
    agent = await world.store.agent("agent-2")
    assert agent is not None
    wrap_up_until = world.clock.now() + timedelta(seconds=30)
    assert agent.capacity_on(Channel.CHAT).wrap_up_until == wrap_up_until
    assert (await world.store.agent_history("agent-2"))[-1].wrap_up_until == wrap_up_until
    with pytest.raises(Conflict, match="wrap-up") as caught:
        await world.select(next_chat.interaction_id, "acd-2")
    assert caught.value.code == "agent_unavailable"

    world.clock.advance(30)
    await world.select(next_chat.interaction_id, "acd-2")
    assert await world.load("agent-2") == 1


# ------------------------------------------------------------------------------------------
# request.queued


async def test_queued_notices_move_routing_to_queued_then_are_noted(world: World) -> None:
    created = await world.create("chat-1")
    request_id = await world.request_id(created.interaction_id)

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

    interaction = await world.interaction(created.interaction_id)
    assert interaction.state == S.OFFERED
    tail = [
        (h.event, h.from_state, h.to_state, h.detail)
        for h in await world.store.history(interaction.id)
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
    assert await world.events_seen() == []


# ------------------------------------------------------------------------------------------
# Relay outcomes: message_sent / message_failed


async def test_a_delivery_ack_moves_offered_to_delivered(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    deliver = await message(world, interaction_id, INTERACTION_DELIVER)
    world.clock.advance(2)

    await relay_sent(world, deliver)

    interaction = await world.interaction(interaction_id)
    assert interaction.state == S.DELIVERED
    assert interaction.state_times[S.DELIVERED] == world.clock.now()
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.to_state) == ("delivered", S.DELIVERED)
    assert deliver.id in last.cause
    record = await world.store.outbox_record(deliver.id)
    assert record is not None
    assert (record.status, record.sent_at) == (SENT, world.clock.now())


async def test_a_routing_request_ack_only_marks_the_message_sent(world: World) -> None:
    created = await world.create("chat-1")
    routing = await message(world, created.interaction_id, ROUTING_REQUESTED)
    history = await world.store.history(created.interaction_id)

    await relay_sent(world, routing)

    assert (await world.interaction(created.interaction_id)).state == S.ROUTING
    assert await world.store.history(created.interaction_id) == history
    record = await world.store.outbox_record(routing.id)
    assert record is not None and record.status == SENT


async def test_a_delivery_ack_after_acceptance_is_only_noted(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    await world.accept("chat-1")
    deliver = await message(world, interaction_id, INTERACTION_DELIVER)

    await relay_sent(world, deliver)

    assert (await world.interaction(interaction_id)).state == S.ACCEPTED
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.from_state, last.to_state) == (
        "delivery_acknowledged",
        S.ACCEPTED,
        S.ACCEPTED,
    )


async def test_a_lost_delivery_fails_releases_and_tells_the_acd(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    deliver = await message(world, interaction_id, INTERACTION_DELIVER)
    request_id = await world.request_id(interaction_id)

    await relay_failed(world, deliver, "HTTP 404 no agent")

    interaction = await world.interaction(interaction_id)
    assert interaction.state == S.FAILED
    assert await world.load("agent-2") == 0
    last = (await world.store.history(interaction_id))[-1]
    assert (last.from_state, last.to_state) == (S.OFFERED, S.FAILED)
    assert "HTTP 404 no agent" in last.cause
    dead = await world.store.outbox_record(deliver.id)
    assert dead is not None
    assert (dead.status, dead.last_error) == (DEAD, "HTTP 404 no agent")
    [ended] = await world.outbox_of(interaction_id, WORK_ENDED)
    assert ended.status == PENDING
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
    routing = await message(world, created.interaction_id, ROUTING_REQUESTED)

    await relay_failed(world, routing, "HTTP 400 bad skills")

    interaction = await world.interaction(created.interaction_id)
    assert interaction.state == S.FAILED
    assert "HTTP 400 bad skills" in (await world.store.history(interaction.id))[-1].cause
    assert await world.outbox_of(interaction.id, WORK_ENDED) == []
    assert [a.capacity_on(Channel.CHAT).load for a in await world.store.agents()] == [0, 0, 0]


async def test_a_lost_routing_request_after_selection_is_only_noted(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    routing = await message(world, interaction_id, ROUTING_REQUESTED)

    await relay_failed(world, routing, "gave up")

    assert (await world.interaction(interaction_id)).state == S.OFFERED
    assert await world.load("agent-1") == 1
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.detail) == ("message_lost", {"message_id": routing.id})


async def test_a_lost_delivery_after_acceptance_keeps_the_agent(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    await world.accept("chat-1")
    deliver = await message(world, interaction_id, INTERACTION_DELIVER)

    await relay_failed(world, deliver, "late 500")

    assert (await world.interaction(interaction_id)).state == S.ACCEPTED
    assert await world.load("agent-1") == 1
    assert await world.outbox_of(interaction_id, WORK_ENDED) == []


async def test_a_lost_work_ended_is_only_noted(world: World) -> None:
    interaction_id = await delivered(world, "chat-1")
    await world.complete("chat-1")
    ended = await message(world, interaction_id, WORK_ENDED)

    await relay_failed(world, ended, "acd down")

    assert (await world.interaction(interaction_id)).state == S.COMPLETED
    assert (await world.store.history(interaction_id))[-1].event == "message_lost"
    assert await world.load("agent-1") == 0


# ------------------------------------------------------------------------------------------
# interaction.accepted / interaction.completed


async def test_accept_moves_delivered_to_accepted(world: World) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    world.clock.advance(10)

    outcome = await world.accept("chat-1", "crm-2", event_id="evt-acc")

    assert outcome == interactions.Outcome(interaction_id)
    interaction = await world.interaction(interaction_id)
    assert interaction.state == S.ACCEPTED
    assert interaction.state_times[S.ACCEPTED] == world.clock.now()
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.cause) == ("accepted", "interaction.accepted evt-acc")


async def test_accept_from_offered_fills_in_delivered(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    await world.accept("chat-1")
    assert [h.event for h in await world.store.history(interaction_id)][-2:] == [
        "delivered_implied",
        "accepted",
    ]


async def test_accept_by_another_agent_is_refused(world: World) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    before = await world.store.dump()

    with pytest.raises(Conflict) as caught:
        await world.accept("chat-1", "crm-1")

    assert caught.value.code == "invalid_transition"
    assert "crm-2" in caught.value.detail and "crm-1" in caught.value.detail
    assert await world.store.dump() == before
    assert (await world.interaction(interaction_id)).state == S.DELIVERED


async def test_accept_by_another_agent_than_the_one_delivered_to_is_refused(
    world: World,
) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-1")
    before = await world.store.dump()

    with pytest.raises(Conflict) as caught:
        await world.accept("chat-1", "crm-2")

    assert caught.value.code == "invalid_transition"
    assert "delivered to crm-1, not crm-2" in str(caught.value)
    assert await world.store.dump() == before
    outcome = await world.accept("chat-1", "crm-1")
    assert outcome.interaction_id == interaction_id
    assert (await world.interaction(interaction_id)).state == S.ACCEPTED


async def test_accept_before_any_agent_is_refused_as_no_offer_pending(world: World) -> None:
    await world.create("chat-1")
    before = await world.store.dump()
    with pytest.raises(Refused) as caught:
        await world.accept("chat-1", "crm-1")
    assert (caught.value.code, caught.value.state) == ("no_offer_pending", "routing")
    assert await world.store.dump() == before


async def test_accept_of_an_unknown_interaction_is_not_found(world: World) -> None:
    with pytest.raises(NotFound) as caught:
        await world.accept("chat-404")
    assert caught.value.code == "unknown_interaction"
    assert await world.events_seen() == []


async def test_complete_releases_capacity_and_tells_the_acd(world: World) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    request_id = await world.request_id(interaction_id)

    outcome = await world.complete("chat-1", event_id="evt-done")

    assert outcome == interactions.Outcome(interaction_id)
    assert (await world.interaction(interaction_id)).state == S.COMPLETED
    assert await world.load("agent-2") == 0
    [ended] = await world.outbox_of(interaction_id, WORK_ENDED)
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
    assert len(await world.outbox_of(interaction_id, WORK_ENDED)) == 1


async def test_complete_from_delivered_fills_in_accepted(world: World) -> None:
    interaction_id = await delivered(world, "chat-1")
    await world.complete("chat-1")
    events = [h.event for h in await world.store.history(interaction_id)]
    assert events[-2:] == ["accepted_implied", "completed"]
    assert await world.load("agent-1") == 0


async def test_a_second_completion_is_noted_and_releases_nothing(world: World) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    await delivered(world, "chat-2", "acd-2")
    await world.complete("chat-1")
    assert await world.load("agent-2") == 1

    again = await world.complete("chat-1", event_id="evt-done-again")

    assert again == interactions.Outcome(interaction_id)
    assert (await world.interaction(interaction_id)).state == S.COMPLETED
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.from_state, last.to_state) == (
        "completed_again",
        S.COMPLETED,
        S.COMPLETED,
    )
    assert await world.load("agent-2") == 1
    assert len(await world.outbox_of(interaction_id, WORK_ENDED)) == 1


async def test_an_acceptance_after_the_completion_is_noted(world: World) -> None:
    interaction_id = await delivered(world, "chat-1", "acd-2")
    await world.complete("chat-1")

    late = await world.accept("chat-1", "crm-2")

    assert late == interactions.Outcome(interaction_id)
    assert (await world.interaction(interaction_id)).state == S.COMPLETED
    assert (await world.store.history(interaction_id))[-1].event == "late_accepted"


async def test_completing_unrouted_work_is_refused(world: World) -> None:
    await world.create("chat-1")
    before = await world.store.dump()
    with pytest.raises(Refused) as caught:
        await world.complete("chat-1")
    assert (caught.value.code, caught.value.state) == ("not_with_an_agent", "routing")
    assert await world.store.dump() == before


async def test_an_email_uses_the_email_slot(world: World) -> None:
    created = await world.create("mail-1", Channel.EMAIL)
    await world.select(created.interaction_id, "acd-1")
    assert (
        await world.load("agent-1", Channel.EMAIL),
        await world.load("agent-1", Channel.CHAT),
    ) == (1, 0)
    await world.complete("mail-1")
    assert await world.load("agent-1", Channel.EMAIL) == 0
    [ended] = await world.outbox_of(created.interaction_id, WORK_ENDED)
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

    assert stored == await world.store.agent("agent-2")
    assert stored.name == "Renamed"
    assert stored.skills == ["a", "b"]
    assert (stored.capacity_on(Channel.CHAT).capacity, await world.load("agent-2")) == (5, 1)
    assert stored.capacity_on(Channel.EMAIL).capacity == 1


async def test_upsert_agent_below_its_load_is_refused(world: World) -> None:
    await offered(world, "chat-1", "acd-2")
    before = await world.store.dump()

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
    assert await world.store.dump() == before


async def test_upsert_agent_with_another_agents_id_is_refused(world: World) -> None:
    before = await world.store.dump()
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
    assert await world.store.dump() == before


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
    assert await world.store.agent("agent-9") is None


async def test_upsert_agent_with_an_unknown_profile_is_refused(world: World) -> None:
    before = await world.store.dump()
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
    assert await world.store.dump() == before


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
    history = await world.store.agent_history("agent-9")
    # One line per channel, in the store's channel (lock) order, which is not the point here.
    assert sorted((e.event, e.channel, e.capacity) for e in history) == [
        ("capacity_changed", Channel.CHAT, 3),
        ("capacity_changed", Channel.EMAIL, 5),
        ("capacity_changed", Channel.VOICE, 1),
    ]


async def test_upsert_queue_replaces_its_definition(world: World) -> None:
    await interactions.upsert_queue(world.store.uow(), Queue("support-chat", Channel.CHAT, ["vip"]))
    assert await world.store.queue("support-chat") == Queue("support-chat", Channel.CHAT, ["vip"])
    created = await world.create("chat-1", skills=["x"])
    assert (await world.interaction(created.interaction_id)).skills == ["vip", "x"]


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
    default = await world.store.profile("default")
    assert default is not None

    wider = dataclasses.replace(default, capacity={**default.capacity, Channel.CHAT: 5})
    await agents.upsert_profile(world.store.uow(), world.clock, wider)

    # agent-9 follows the profile; agent-1 set its own chat capacity and keeps it.
    follower, own = await world.store.agent("agent-9"), await world.store.agent("agent-1")
    assert follower is not None and own is not None
    assert follower.capacity_on(Channel.CHAT).capacity == 5
    assert own.capacity_on(Channel.CHAT).capacity == 1
    last = (await world.store.agent_history("agent-9"))[-1]
    assert (last.event, last.channel, last.capacity, last.load) == (
        "profile_changed",
        Channel.CHAT,
        5,
        1,
    )

    before = await world.store.dump()
    closed = dataclasses.replace(default, capacity={**default.capacity, Channel.CHAT: 0})
    with pytest.raises(Conflict) as caught:
        await agents.upsert_profile(world.store.uow(), world.clock, closed)
    assert caught.value.code == "capacity_below_load"
    assert "agent-9" in caught.value.detail
    assert await world.store.dump() == before
    assert await world.store.profile("default") == wider
