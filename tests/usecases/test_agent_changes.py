"""An agent who changes state with work in hand, on the SQL store: offers not yet answered go
back at once, accepted work stays (email goes back where the profile says), and the change
waits as the channel's pending state until the last work there ends; a wrap-up's end is told
to both sides."""

from __future__ import annotations

import dataclasses

import pytest

from harmony.errors import Conflict
from harmony.routing import agents
from harmony.routing.agent_state import default_profile
from harmony.routing.messages import AGENT_STATE, OFFER_RESCINDED, TargetKind
from harmony.routing.model import Channel, ChannelStatus, InteractionState, OfferStatus
from tests.usecases.conftest import World, settle_outbox

S = InteractionState
NOT_READY, READY, LOGGED_OUT = (
    ChannelStatus.NOT_READY,
    ChannelStatus.READY,
    ChannelStatus.LOGGED_OUT,
)


async def offered(world: World, external_id: str, acd_agent_id: str = "acd-2") -> str:
    created = await world.create(external_id)
    await world.select(created.interaction_id, acd_agent_id)
    return created.interaction_id


async def chat(world: World, agent_id: str = "agent-2") -> tuple[object, ...]:
    agent = await world.store.agent(agent_id)
    assert agent is not None
    state = agent.capacity_on(Channel.CHAT)
    return state.status, state.reason, state.next_status, state.next_reason, state.load


async def mirrors_of(world: World, *ids: str) -> list[tuple[object, ...]]:
    return sorted(
        (
            m.message.target_kind,
            m.message.payload["state"],
            m.message.payload["reason"],
            m.message.payload["pending_state"],
        )
        for m in await world.store.outbox(type=AGENT_STATE, status="pending")
        if m.message.payload["agent_id"] in ids and m.message.payload["channel"] == "chat"
    )


async def test_an_offer_not_yet_answered_goes_back_at_once_when_the_agent_leaves(
    world: World,
) -> None:
    interaction_id = await offered(world, "chat-1")
    await world.report("crm-2", NOT_READY, reason="lunch")
    # Nothing held but the offer: the change applies now, and the offer falls due now.
    assert await chat(world) == (NOT_READY, "lunch", None, None, 1)

    assert await world.fire_due() == 1

    interaction = await world.interaction(interaction_id)
    assert (interaction.state, interaction.agent_id) == (S.ROUTING, None)
    [offer] = await world.store.offers(interaction_id)
    assert (offer.status, offer.reason) == (OfferStatus.RESCINDED, "agent_left")
    assert await chat(world) == (NOT_READY, "lunch", None, None, 0)  # no RONA for leaving
    told = {m.message.target_kind for m in await world.outbox_of(interaction_id, OFFER_RESCINDED)}
    assert told == {TargetKind.ACD, TargetKind.CRM}
    last = (await world.store.history(interaction_id))[-1]
    assert (last.event, last.from_state, last.to_state) == ("offer_rescinded", S.OFFERED, S.ROUTING)


async def test_a_not_ready_with_an_accepted_chat_waits_for_it_to_end(world: World) -> None:
    interaction_id = await offered(world, "chat-1")
    await world.accept("chat-1")
    await settle_outbox(world.store, world.clock)

    await world.report("crm-2", NOT_READY, reason="lunch")

    assert await chat(world) == (READY, None, NOT_READY, "lunch", 1)
    assert await mirrors_of(world, "acd-2") == [(TargetKind.ACD, "ready", None, "not_ready")]
    [entry] = [e for e in await world.store.agent_history("agent-2") if "pending" in e.detail]
    assert (entry.channel, entry.detail["pending"], entry.detail["holding"]) == (
        Channel.CHAT,
        "not_ready",
        1,
    )
    assert interaction_id in entry.detail["warning"]
    # No new offers meanwhile.
    second = await world.create("chat-2")
    with pytest.raises(Conflict) as refused:
        await world.select(second.interaction_id, "acd-2")
    assert refused.value.code == "agent_unavailable"
    assert "once its work there ends" in refused.value.detail
    await settle_outbox(world.store, world.clock)

    await world.complete("chat-1")

    assert await chat(world) == (NOT_READY, "lunch", None, None, 0)
    assert await mirrors_of(world, "acd-2", "crm-2") == [
        (TargetKind.ACD, "not_ready", "lunch", None),
        (TargetKind.CRM, "not_ready", "lunch", None),
    ]
    last = (await world.store.agent_history("agent-2"))[-1]
    assert (last.event, last.channel, last.status) == (
        "pending_state_applied",
        Channel.CHAT,
        NOT_READY,
    )


async def test_a_later_ready_cancels_the_pending_not_ready(world: World) -> None:
    await offered(world, "chat-1")
    await world.accept("chat-1")
    await world.report("crm-2", NOT_READY, reason="break")
    await world.report("crm-2", NOT_READY, reason="lunch")
    assert await chat(world) == (READY, None, NOT_READY, "lunch", 1)  # replaced
    await world.report("crm-2", READY)
    assert await chat(world) == (READY, None, None, None, 1)
    await world.complete("chat-1")
    assert await chat(world) == (READY, None, None, None, 0)


async def test_a_logout_with_accepted_email_returns_it_where_the_profile_says(
    world: World,
) -> None:
    profile = dataclasses.replace(default_profile(), return_accepted_email=True)
    await agents.upsert_profile(world.store.uow(), world.clock, profile, acd_adapter="generic")
    created = await world.create("mail-1", Channel.EMAIL)
    await world.select(created.interaction_id, "acd-1")
    await world.accept("mail-1")

    await world.report("crm-1", LOGGED_OUT, channels=(Channel.EMAIL,))
    agent = await world.store.agent("agent-1")
    assert agent is not None
    assert agent.capacity_on(Channel.EMAIL).next_status == LOGGED_OUT
    assert await world.fire_due() == 1

    interaction = await world.interaction(created.interaction_id)
    assert (interaction.state, interaction.agent_id, interaction.queue) == (
        S.ROUTING,
        None,
        "support-email",
    )
    [offer] = await world.store.offers(created.interaction_id)
    assert offer.status == OfferStatus.TRANSFERRED
    agent = await world.store.agent("agent-1")
    assert agent is not None
    email = agent.capacity_on(Channel.EMAIL)
    assert (email.status, email.next_status, email.load) == (LOGGED_OUT, None, 0)


async def test_accepted_email_stays_without_the_profiles_say_so(world: World) -> None:
    created = await world.create("mail-1", Channel.EMAIL)
    await world.select(created.interaction_id, "acd-1")
    await world.accept("mail-1")
    await world.report("crm-1", LOGGED_OUT, channels=(Channel.EMAIL,))
    assert await world.fire_due() == 0
    assert (await world.interaction(created.interaction_id)).state == S.ACCEPTED


async def test_the_end_of_a_wrap_up_is_told_to_both_sides(world: World) -> None:
    profile = dataclasses.replace(
        default_profile(), wrap_up_seconds={Channel.VOICE: 0, Channel.CHAT: 20, Channel.EMAIL: 0}
    )
    await agents.upsert_profile(world.store.uow(), world.clock, profile, acd_adapter="generic")
    await offered(world, "chat-1")
    await world.accept("chat-1")
    await world.complete("chat-1")
    await settle_outbox(world.store, world.clock)

    assert await world.after(19) == 0
    assert await mirrors_of(world, "acd-2", "crm-2") == []
    assert await world.after(1) == 1

    told = [
        (m.message.target_kind, m.message.payload["busy"], m.message.payload["channel"])
        for m in await world.store.outbox(type=AGENT_STATE, status="pending")
        if m.message.payload["agent_id"] in ("acd-2", "crm-2")
    ]
    assert sorted(told) == [(TargetKind.ACD, False, "chat"), (TargetKind.CRM, False, "chat")]
