"""The unhappy paths on the SQL store: declines, offer and routing timeouts, RONA, maximum
waits, overflow, abandon and cancel. Time moves on a fake clock; timers fire through the
scheduler as in a running replica."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import update

from harmony.db.tables import interactions as interactions_table
from harmony.errors import Conflict, Refused, ValidationFailed
from harmony.routing import agents, interactions, rerouting
from harmony.routing.agent_state import default_profile
from harmony.routing.messages import (
    AGENT_STATE,
    INTERACTION_FALLBACK,
    OFFER_DECLINED,
    OFFER_RESCINDED,
    OFFER_TIMED_OUT,
    REQUEST_CANCELLED,
    ROUTING_REQUESTED,
    WORK_ENDED,
    TargetKind,
)
from harmony.routing.model import Channel, ChannelStatus, InteractionState, OfferStatus, Queue
from harmony.routing.ports import Timer
from harmony.testing import FakeClock
from tests.usecases.conftest import World, settle_outbox

S = InteractionState


async def offered(world: World, external_id: str, acd_agent_id: str = "acd-2") -> str:
    created = await world.create(external_id)
    await world.select(created.interaction_id, acd_agent_id)
    return created.interaction_id


async def set_queue(world: World, **policy: object) -> Queue:
    queue = dataclasses.replace(
        Queue("support-chat", Channel.CHAT, ["support"]),
        **policy,  # type: ignore[arg-type]
    )
    await interactions.upsert_queue(world.store.uow(), queue)
    return queue


async def set_rona(world: World, rona_after: int, counts_decline: bool = False) -> None:
    profile = dataclasses.replace(
        default_profile(), rona_after=rona_after, rona_counts_decline=counts_decline
    )
    await agents.upsert_profile(world.store.uow(), world.clock, profile, acd_adapter="generic")


async def chat_status(world: World, agent_id: str) -> tuple[ChannelStatus, str | None]:
    agent = await world.store.agent(agent_id)
    assert agent is not None
    state = agent.capacity_on(Channel.CHAT)
    return state.status, state.reason


# --- declines ------------------------------------------------------------------------------


async def test_a_decline_frees_the_agent_and_asks_the_acd_again_with_the_original_age(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1")
    received_at = (await world.interaction(interaction_id)).received_at
    world.clock.advance(4)

    await world.decline("chat-1", "crm-2", reason="busy with a customer")

    interaction = await world.interaction(interaction_id)
    assert (interaction.state, interaction.agent_id) == (S.ROUTING, None)
    assert interaction.received_at == received_at
    assert await world.load("agent-2") == 0
    [offer] = await world.store.offers(interaction_id)
    assert (offer.status, offer.reason, offer.decided_at) == (
        OfferStatus.DECLINED,
        "busy with a customer",
        world.clock.now(),
    )
    [again] = await world.outbox_of(interaction_id, OFFER_DECLINED)
    assert again.message.target_kind == TargetKind.ACD
    assert again.message.payload == {
        "request_id": interaction.request_id,
        "interaction_id": interaction_id,
        "agent_id": "acd-2",
        "agents_tried": ["acd-2"],
        "reason": "busy with a customer",
        "received_at": received_at.isoformat(),
        "offers_made": 1,
    }
    # Waiting for the ACD again: the routing timeout runs from now.
    timer = await world.store.timer_of(interaction_id)
    assert timer is not None
    assert timer.due_at == world.clock.now() + timedelta(seconds=60)
    assert timer.detail == {"deadline": "routing_timeout", "placements": 1}
    # A decline is no miss by default: the agent stays ready.
    assert await chat_status(world, "agent-2") == (ChannelStatus.READY, None)
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.from_state, last.to_state) == ("declined", S.OFFERED, S.ROUTING)


async def test_the_next_offer_names_every_agent_tried(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.decline("chat-1")
    world.clock.advance(1)
    await world.select(interaction_id, "acd-1")
    await world.decline("chat-1")

    messages = await world.outbox_of(interaction_id, OFFER_DECLINED)
    assert [m.message.payload["agents_tried"] for m in messages] == [
        ["acd-2"],
        ["acd-2", "acd-1"],
    ]
    offers = await world.store.offers(interaction_id)
    assert [(o.agent_id, o.status) for o in offers] == [
        ("agent-2", OfferStatus.DECLINED),
        ("agent-1", OfferStatus.DECLINED),
    ]
    assert (await world.interaction(interaction_id)).offers_made == 2


async def test_a_decline_by_another_agent_than_the_one_offered_is_refused(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    before = await world.store.dump()
    with pytest.raises(ValidationFailed) as refused:
        await world.decline("chat-1", "crm-1")
    assert refused.value.code == "not_offered_to_agent"
    after = await world.store.dump()
    del before["inbox"], after["inbox"]  # the refusal is recorded there by the caller
    assert after == before
    assert (await world.interaction(interaction_id)).state == S.OFFERED


# --- offer timeouts and RONA ------------------------------------------------------------------


async def test_an_unanswered_offer_times_out_once_and_the_agent_goes_not_ready_rona(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await settle_outbox(world.store, world.clock)

    assert await world.after(29) == 0
    assert (await world.interaction(interaction_id)).state == S.OFFERED
    assert await world.after(1) == 1

    interaction = await world.interaction(interaction_id)
    assert (interaction.state, interaction.agent_id) == (S.ROUTING, None)
    assert await world.load("agent-2") == 0
    [offer] = await world.store.offers(interaction_id)
    assert offer.status == OfferStatus.TIMED_OUT
    [timed_out] = await world.outbox_of(interaction_id, OFFER_TIMED_OUT)
    assert timed_out.message.payload["agents_tried"] == ["acd-2"]
    [rescinded] = await world.outbox_of(interaction_id, OFFER_RESCINDED)
    assert rescinded.message.target_kind == TargetKind.CRM
    assert rescinded.message.payload["agent_id"] == "crm-2"
    # RONA after one miss (the default profile): not ready on chat, told to both sides.
    assert await chat_status(world, "agent-2") == (ChannelStatus.NOT_READY, "rona")
    mirrors = [
        (m.message.target_kind, m.message.payload["state"], m.message.payload["reason"])
        for m in await world.store.outbox(type=AGENT_STATE, status="pending")
        if m.message.payload["agent_id"] in ("acd-2", "crm-2")
    ]
    assert sorted(mirrors) == [
        (TargetKind.ACD, "not_ready", "rona"),
        (TargetKind.CRM, "not_ready", "rona"),
    ]
    # Fired once: nothing more is due until the routing timeout.
    assert await world.after(59) == 0
    assert len(await world.outbox_of(interaction_id, OFFER_TIMED_OUT)) == 1


async def test_rona_waits_for_the_profiles_number_of_misses_in_a_row(world: World) -> None:
    await set_rona(world, rona_after=2)
    first = await offered(world, "chat-1", "acd-2")
    await world.after(30)
    assert await chat_status(world, "agent-2") == (ChannelStatus.READY, None)
    await world.select(first, "acd-2")
    await world.after(30)
    assert await chat_status(world, "agent-2") == (ChannelStatus.NOT_READY, "rona")


async def test_an_accepted_offer_breaks_the_run_of_misses(world: World) -> None:
    await set_rona(world, rona_after=2)
    first = await offered(world, "chat-1", "acd-2")
    await world.after(30)  # a miss
    await world.select(first, "acd-2")
    await world.accept("chat-1")  # taken: the run is broken
    await world.complete("chat-1")
    await offered(world, "chat-2", "acd-2")
    await world.after(30)  # one miss in a row again
    assert await chat_status(world, "agent-2") == (ChannelStatus.READY, None)


async def test_rona_with_accepted_work_in_hand_waits_for_it_to_end(world: World) -> None:
    await offered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    await offered(world, "chat-2", "acd-2")
    await world.after(30)  # chat-2's offer missed: RONA, while chat-1 is with the agent

    agent = await world.store.agent("agent-2")
    assert agent is not None
    state = agent.capacity_on(Channel.CHAT)
    assert (state.status, state.next_status, state.next_reason, state.load) == (
        ChannelStatus.READY,
        ChannelStatus.NOT_READY,
        "rona",
        1,
    )
    await world.complete("chat-1")
    assert await chat_status(world, "agent-2") == (ChannelStatus.NOT_READY, "rona")


async def test_declines_count_toward_rona_only_where_the_profile_says(world: World) -> None:
    await set_rona(world, rona_after=1, counts_decline=True)
    await offered(world, "chat-1", "acd-2")
    await world.decline("chat-1")
    assert await chat_status(world, "agent-2") == (ChannelStatus.NOT_READY, "rona")


async def test_a_profile_without_rona_leaves_the_agent_ready(world: World) -> None:
    await set_rona(world, rona_after=0)
    await offered(world, "chat-1", "acd-2")
    await world.after(30)
    assert await chat_status(world, "agent-2") == (ChannelStatus.READY, None)


async def test_acceptance_after_the_timeout_is_refused_and_a_late_decline_noted(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.after(30)

    with pytest.raises(Refused) as refused:
        await world.accept("chat-1")
    assert (refused.value.code, refused.value.state) == ("no_offer_pending", "routing")
    await world.decline("chat-1")

    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.to_state) == ("late_decline", S.ROUTING)
    assert len(await world.outbox_of(interaction_id, OFFER_DECLINED)) == 0


async def test_an_accepted_offer_has_no_timer_and_its_completion_closes_the_offer(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    assert await world.store.timer_of(interaction_id) is None
    assert await world.after(3600) == 0
    await world.complete("chat-1")
    [offer] = await world.store.offers(interaction_id)
    assert offer.status == OfferStatus.COMPLETED
    assert await world.load("agent-2") == 0


async def test_completed_before_accepted_closes_the_offer_and_its_timer(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.complete("chat-1")
    assert await world.store.timer_of(interaction_id) is None
    [offer] = await world.store.offers(interaction_id)
    assert offer.status == OfferStatus.COMPLETED


# --- max offers, routing timeout, maximum wait, overflow --------------------------------------


async def test_the_queues_last_offer_hands_the_work_back_to_the_crm(world: World) -> None:
    await set_queue(world, max_offers=2)
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.decline("chat-1")
    await world.select(interaction_id, "acd-1")
    await world.decline("chat-1")

    interaction = await world.interaction(interaction_id)
    assert interaction.state == S.FALLBACK
    [fallback] = await world.outbox_of(interaction_id, INTERACTION_FALLBACK)
    assert fallback.message.target_kind == TargetKind.CRM
    assert fallback.message.payload == {
        "interaction_id": interaction_id,
        "external_id": "chat-1",
        "channel": "chat",
        "queue": "support-chat",
        "reason": "max_offers",
    }
    [cancel] = await world.outbox_of(interaction_id, REQUEST_CANCELLED)
    # The ACD still holds the last agent's unit for the request: the cancel names that agent.
    assert (cancel.message.payload["reason"], cancel.message.payload["agent_id"]) == (
        "max_offers",
        "acd-1",
    )
    assert len(await world.outbox_of(interaction_id, OFFER_DECLINED)) == 1
    assert await world.store.timer_of(interaction_id) is None
    assert (await world.load("agent-1"), await world.load("agent-2")) == (0, 0)


async def test_an_unanswered_request_is_placed_again_once_then_handed_back(
    world: World,
) -> None:
    created = await world.create("chat-1")
    interaction_id = created.interaction_id
    assert await world.after(60) == 1
    requests = await world.outbox_of(interaction_id, ROUTING_REQUESTED)
    assert len(requests) == 2
    assert requests[0].message.payload == requests[1].message.payload
    assert (await world.interaction(interaction_id)).state == S.ROUTING

    assert await world.after(60) == 1
    interaction = await world.interaction(interaction_id)
    assert interaction.state == S.FALLBACK
    [fallback] = await world.outbox_of(interaction_id, INTERACTION_FALLBACK)
    assert fallback.message.payload["reason"] == "routing_timeout"


async def test_a_queued_request_waits_until_the_queues_maximum_wait(world: World) -> None:
    await set_queue(world, max_wait_seconds=300)
    created = await world.create("chat-1")
    world.clock.advance(5)
    await world.queued(created.interaction_id)
    timer = await world.store.timer_of(created.interaction_id)
    assert timer is not None
    assert timer.detail == {"deadline": "max_wait"}
    assert timer.due_at == FakeClock.DEFAULT_START + timedelta(seconds=300)

    assert await world.after(200) == 0  # queued: the routing timeout no longer applies
    assert await world.after(95) == 1
    interaction = await world.interaction(created.interaction_id)
    assert interaction.state == S.FALLBACK
    [fallback] = await world.outbox_of(created.interaction_id, INTERACTION_FALLBACK)
    assert fallback.message.payload["reason"] == "max_wait"


async def test_overflow_moves_the_work_to_the_next_queue_with_its_age(world: World) -> None:
    await interactions.upsert_queue(
        world.store.uow(), Queue("overflow-chat", Channel.CHAT, [], max_wait_seconds=600)
    )
    await set_queue(world, max_wait_seconds=120, overflow_queue="overflow-chat")
    created = await world.create("chat-1")
    interaction_id = created.interaction_id
    first_request = await world.request_id(interaction_id)
    received_at = (await world.interaction(interaction_id)).received_at
    await world.queued(interaction_id)

    assert await world.after(120) == 1

    interaction = await world.interaction(interaction_id)
    assert (interaction.state, interaction.queue) == (S.ROUTING, "overflow-chat")
    assert interaction.received_at == received_at
    assert interaction.request_id != first_request
    assert interaction.max_wait_at == world.clock.now() + timedelta(seconds=600)
    [cancel] = await world.outbox_of(interaction_id, REQUEST_CANCELLED)
    assert cancel.message.payload["request_id"] == first_request
    requests = await world.outbox_of(interaction_id, ROUTING_REQUESTED)
    assert [r.message.payload["queue"] for r in requests] == ["support-chat", "overflow-chat"]
    assert requests[1].message.payload["request_id"] == interaction.request_id
    assert requests[1].message.payload["received_at"] == received_at.isoformat()
    waiting = {s.queue.name: s.waiting for s in await world.store.queue_stats()}
    assert (waiting["support-chat"], waiting["overflow-chat"]) == (0, 1)
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.detail["from_queue"], last.detail["to_queue"]) == (
        "overflowed",
        "support-chat",
        "overflow-chat",
    )


async def test_queues_overflowing_into_each_other_give_the_work_back_in_the_end(
    world: World,
) -> None:
    await interactions.upsert_queue(
        world.store.uow(),
        Queue("other-chat", Channel.CHAT, [], max_wait_seconds=60, overflow_queue="support-chat"),
    )
    await set_queue(world, max_wait_seconds=60, overflow_queue="other-chat")
    created = await world.create("chat-1")
    await world.queued(created.interaction_id)
    for _ in range(3):
        assert await world.after(60) == 1
        await world.queued(created.interaction_id)
    assert (await world.interaction(created.interaction_id)).overflows == 3
    assert await world.after(60) == 1
    assert (await world.interaction(created.interaction_id)).state == S.FALLBACK


# --- abandon and cancel ---------------------------------------------------------------------


async def test_a_customer_leaving_while_waiting_cancels_the_request(world: World) -> None:
    created = await world.create("chat-1")
    world.clock.advance(42)
    await world.abandon("chat-1")

    interaction = await world.interaction(created.interaction_id)
    assert interaction.state == S.ABANDONED
    [cancel] = await world.outbox_of(created.interaction_id, REQUEST_CANCELLED)
    assert cancel.message.payload == {
        "request_id": interaction.request_id,
        "interaction_id": interaction.id,
        "reason": "abandoned",
    }
    assert await world.store.timer_of(created.interaction_id) is None
    last = (await world.store.history(created.interaction_id))[-1]
    assert (last.event, last.detail) == ("abandoned", {"waited_seconds": 42.0})


async def test_a_customer_leaving_an_offer_rescinds_it_and_frees_the_agent(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.abandon("chat-1")

    assert (await world.interaction(interaction_id)).state == S.ABANDONED
    assert await world.load("agent-2") == 0
    [offer] = await world.store.offers(interaction_id)
    assert offer.status == OfferStatus.ABANDONED
    [cancel] = await world.outbox_of(interaction_id, REQUEST_CANCELLED)
    assert cancel.message.payload["agent_id"] == "acd-2"
    assert await world.store.timer_of(interaction_id) is None
    # A selection arriving for it now is refused: the request is closed.
    with pytest.raises(Refused) as refused:
        await world.select(interaction_id, "acd-1")
    assert refused.value.code == "request_closed"


async def test_a_customer_leaving_accepted_work_is_noted_and_the_agent_keeps_it(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    await world.abandon("chat-1")

    assert (await world.interaction(interaction_id)).state == S.ACCEPTED
    assert await world.load("agent-2") == 1
    last = (await world.store.history(interaction_id))[-1]
    assert last.event == "abandoned_with_agent"
    assert await world.outbox_of(interaction_id, REQUEST_CANCELLED) == []


async def test_a_cancel_from_the_crm_ends_the_work_cancelled(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.abandon("chat-1", cancelled=True)
    assert (await world.interaction(interaction_id)).state == S.CANCELLED
    assert await world.load("agent-2") == 0


async def test_a_check_timer_arms_what_the_interactions_state_needs(world: World) -> None:
    """What migration 0009 arms for work stored before timers: a check, due at once."""
    created = await world.create("chat-1")
    await world.queued(created.interaction_id)
    async with world.store.db.engine.begin() as conn:
        await conn.execute(
            update(interactions_table)
            .where(interactions_table.c.id == created.interaction_id)
            .values(max_wait_at=None)
        )
    async with world.store.uow() as uow:
        check = Timer("interaction", created.interaction_id, world.clock.now(), "", {})
        await uow.timers.arm(
            dataclasses.replace(check, detail={"deadline": "check"}), world.clock.now()
        )
        await uow.commit()

    assert await world.fire_due() == 1

    interaction = await world.interaction(created.interaction_id)
    assert interaction.max_wait_at == interaction.received_at + timedelta(seconds=600)
    timer = await world.store.timer_of(created.interaction_id)
    assert timer is not None
    assert (timer.detail, timer.due_at) == ({"deadline": "max_wait"}, interaction.max_wait_at)


# --- transfer -------------------------------------------------------------------------------


async def transfer(world: World, ref: str, **target: str) -> interactions.Outcome:
    return await rerouting.transfer_interaction(
        world.store.uow(),
        world.clock,
        interaction_ref=ref,
        target=rerouting.TransferTarget(**target),
        by="operator",
    )


async def test_a_transfer_frees_the_agent_and_routes_the_work_again_with_its_age(
    world: World,
) -> None:
    await interactions.upsert_queue(world.store.uow(), Queue("vip-chat", Channel.CHAT, ["vip"]))
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    before = await world.interaction(interaction_id)
    world.clock.advance(30)

    await transfer(world, interaction_id, queue="vip-chat")

    interaction = await world.interaction(interaction_id)
    assert (interaction.state, interaction.queue, interaction.agent_id) == (
        S.ROUTING,
        "vip-chat",
        None,
    )
    assert interaction.received_at == before.received_at
    assert interaction.request_id != before.request_id
    assert await world.load("agent-2") == 0
    [offer] = await world.store.offers(interaction_id)
    assert offer.status == OfferStatus.TRANSFERRED
    [ended] = await world.outbox_of(interaction_id, WORK_ENDED)
    assert (ended.message.payload["agent_id"], ended.message.payload["reason"]) == (
        "acd-2",
        "transferred",
    )
    [request] = [
        r.message
        for r in await world.outbox_of(interaction_id, ROUTING_REQUESTED)
        if r.message.payload["request_id"] == interaction.request_id
    ]
    assert request.payload["queue"] == "vip-chat"
    assert request.payload["received_at"] == before.received_at.isoformat()
    assert "agent_id" not in request.payload
    timer = await world.store.timer_of(interaction_id)
    assert timer is not None and timer.detail["deadline"] == "routing_timeout"
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.from_state, last.to_state) == (
        "transfer_requested",
        S.ACCEPTED,
        S.ROUTING,
    )
    assert (last.detail["from_agent_id"], last.detail["to_queue"], last.detail["by"]) == (
        "agent-2",
        "vip-chat",
        "operator",
    )
    # The next agent's offer and acceptance make a second offer record.
    await world.select(interaction_id, "acd-1")
    offers = await world.store.offers(interaction_id)
    assert [(o.agent_id, o.status) for o in offers] == [
        ("agent-2", OfferStatus.TRANSFERRED),
        ("agent-1", OfferStatus.PENDING),
    ]


async def test_a_transfer_to_a_named_agent_asks_the_acd_for_that_agent(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    await transfer(world, interaction_id, agent_id="agent-1")
    now_placed = (await world.interaction(interaction_id)).request_id
    [request] = [
        r
        for r in await world.outbox_of(interaction_id, ROUTING_REQUESTED)
        if r.message.payload["request_id"] == now_placed
    ]
    assert request.message.payload["agent_id"] == "acd-1"
    last = (await world.store.history(interaction_id))[-1]
    assert last.detail["to_agent_id"] == "agent-1"


async def test_a_transfer_to_an_agent_who_cannot_take_it_is_refused_with_the_reason(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    await world.report("crm-1", ChannelStatus.NOT_READY, reason="lunch")
    before = await world.store.dump()
    with pytest.raises(Conflict) as refused:
        await transfer(world, interaction_id, agent_id="agent-1")
    assert refused.value.code == "agent_unavailable"
    assert "not_ready (lunch) on chat" in refused.value.detail
    assert await world.store.dump() == before


async def test_only_accepted_work_can_be_transferred(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    with pytest.raises(Refused) as refused:
        await transfer(world, interaction_id, queue="support-chat")
    assert (refused.value.code, refused.value.state) == ("not_accepted", "offered")


async def test_a_transfer_from_the_crm_is_claimed_once_and_checks_who_asks(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    with pytest.raises(Conflict) as refused:
        await rerouting.transfer_interaction(
            world.store.uow(),
            world.clock,
            interaction_ref="chat-1",
            target=rerouting.TransferTarget(queue="support-chat"),
            by="crm:generic",
            crm_adapter="generic",
            event_id="evt-t0",
            crm_agent_id="crm-1",
        )
    assert refused.value.code == "invalid_transition"
    for _ in range(2):
        outcome = await rerouting.transfer_interaction(
            world.store.uow(),
            world.clock,
            interaction_ref="chat-1",
            target=rerouting.TransferTarget(queue="support-chat"),
            by="crm:generic",
            crm_adapter="generic",
            event_id="evt-t1",
            crm_agent_id="crm-2",
        )
    assert outcome.duplicate
    assert len(await world.outbox_of(interaction_id, WORK_ENDED)) == 1


# --- found by the state machine -------------------------------------------------------------


async def test_a_named_agents_transfer_placed_again_still_names_the_agent(world: World) -> None:
    interaction_id = await offered(world, "chat-1", "acd-2")
    await world.accept("chat-1")
    await transfer(world, interaction_id, agent_id="agent-1")
    assert await world.after(60) == 1  # the ACD answered nothing: placed again once

    request_id = (await world.interaction(interaction_id)).request_id
    placed = [
        r.message.payload
        for r in await world.outbox_of(interaction_id, ROUTING_REQUESTED)
        if r.message.payload["request_id"] == request_id
    ]
    assert len(placed) == 2
    assert [p["agent_id"] for p in placed] == ["acd-1", "acd-1"]


async def test_a_selection_repeated_after_its_request_was_replaced_is_a_duplicate(
    world: World,
) -> None:
    created = await world.create("chat-1")
    first_request = await world.request_id(created.interaction_id)
    await world.select(created.interaction_id, "acd-2", event_id="sel-1")
    await world.accept("chat-1")
    await transfer(world, created.interaction_id, queue="support-chat")

    again = await interactions.select_agent(
        world.store.uow(),
        world.clock,
        acd_adapter="generic",
        event_id="sel-1",
        request_id=first_request,
        acd_agent_id="acd-2",
    )
    assert again == interactions.Outcome(created.interaction_id, duplicate=True)


async def test_misses_in_a_row_follow_when_offers_ended_not_when_they_were_made(
    world: World,
) -> None:
    first = await world.create("mail-a", Channel.EMAIL)
    await world.select(first.interaction_id, "acd-1")
    world.clock.advance(1)
    second = await world.create("mail-b", Channel.EMAIL)
    await world.select(second.interaction_id, "acd-1")
    await world.accept("mail-b")  # taken before mail-a's offer times out: that one is the miss

    assert await world.after(119) == 1

    agent = await world.store.agent("agent-1")
    assert agent is not None
    email = agent.capacity_on(Channel.EMAIL)
    # Missed once in a row (the default profile's RONA), with mail-b still in hand: pending.
    assert (email.status, email.next_status, email.next_reason) == (
        ChannelStatus.READY,
        ChannelStatus.NOT_READY,
        "rona",
    )
