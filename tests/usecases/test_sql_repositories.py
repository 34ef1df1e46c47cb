"""Harmony's SQL repositories and unit of work, on a seeded SQLite copy: what the use cases rely
on and what no use-case test pins down on its own (rollback, versions, bounds, paging, echoes)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy.exc

from harmony.errors import Conflict, InvalidCursor
from harmony.routing.agent_state import AgentStateEntry, Presence
from harmony.routing.messages import ROUTING_REQUESTED, TargetKind
from harmony.routing.model import Channel, ChannelStatus, InteractionState
from harmony.routing.ports import AgentFilter, InteractionFilter, VoiceCall
from harmony.testing import FakeClock
from tests.sql_store import SqlStore
from tests.usecases.conftest import World

S = InteractionState


async def offered(world: World, external_id: str, acd_agent_id: str = "acd-1") -> str:
    outcome = await world.create(external_id)
    await world.select(outcome.interaction_id, acd_agent_id)
    return outcome.interaction_id


async def test_a_unit_of_work_left_without_commit_discards_everything(
    store: SqlStore, clock: FakeClock
) -> None:
    before = await store.dump()
    async with store.uow() as uow:
        assert await uow.inbox.claim("crm:generic", "evt-1", "interaction.created", clock.now())
        assert await uow.agents.reserve("agent-1", Channel.CHAT)
        # Its own changes are visible to itself...
        assert not await uow.inbox.claim("crm:generic", "evt-1", "interaction.created", clock.now())
    # ...and gone once it ends.
    assert await store.dump() == before


async def test_save_detects_a_stale_version_and_bumps_it(world: World) -> None:
    created = await world.create("chat-1")
    async with world.store.uow() as uow:
        stale = await uow.interactions.get(created.interaction_id)
    async with world.store.uow() as uow:
        mine = await uow.interactions.get(created.interaction_id, for_update=True)
        assert mine is not None and stale is not None
        mine.note("first", world.clock.now(), "test", {})
        await uow.interactions.save(mine)
        assert mine.version == 1 and mine.new_history == []
        await uow.commit()
    async with world.store.uow() as uow:
        stale.note("second", world.clock.now(), "test", {})
        with pytest.raises(Conflict) as caught:
            await uow.interactions.save(stale)
        assert caught.value.code == "concurrent_update"
        # The stale save's history must not be committed with anything else of this unit.
        with pytest.raises(Conflict):
            await uow.commit()
    assert (await world.interaction(created.interaction_id)).version == 1
    assert [h.event for h in await world.store.history(created.interaction_id)][-1] == "first"


async def test_reserve_and_release_stay_within_bounds(store: SqlStore) -> None:
    async with store.uow() as uow:
        assert await uow.agents.reserve("agent-1", Channel.CHAT)
        assert not await uow.agents.reserve("agent-1", Channel.CHAT)
        assert not await uow.agents.reserve("agent-3", Channel.CHAT)  # no capacity
        assert not await uow.agents.reserve("agent-404", Channel.CHAT)
        await uow.agents.release("agent-1", Channel.CHAT)
        await uow.agents.release("agent-1", Channel.CHAT)  # none held: nothing below zero
        await uow.agents.release("agent-1", Channel.EMAIL)
        # Read back in the same unit of work: releases written later are written before it.
        read_back = await uow.agents.get("agent-1")
        assert read_back is not None
        assert read_back.capacity_on(Channel.CHAT).load == 0
        await uow.commit()
    agent = await store.agent("agent-1")
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
    [record] = await world.store.outbox(type=ROUTING_REQUESTED)
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
        [stat_chat, stat_mail] = await uow.queues.stats(world.clock.now())
        with pytest.raises(InvalidCursor):
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
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await uow.interactions.save(interaction)


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
        with pytest.raises(InvalidCursor):
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
    assert seen == await world.store.agent_history("agent-1")
    assert [e.event for e in seen][:3] == ["capacity_changed"] * 3
    assert seen[-1].event == "agent.logged_in"


async def test_voice_calls_are_stored_and_updated(store: SqlStore) -> None:
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
    assert await store.voice_calls() == [ended]


async def test_an_echo_is_taken_once_and_only_when_it_matches(store: SqlStore) -> None:
    now = FakeClock().now()
    async with store.uow() as uow:
        await uow.agents.add_mirror(
            "msg-1", "agent-1", Channel.CHAT, TargetKind.CRM, ChannelStatus.NOT_READY, "lunch", now
        )

        async def echo(
            status: ChannelStatus, reason: str | None, since: datetime, echo_of: str | None = None
        ) -> bool:
            return await uow.agents.take_echo(
                "agent-1", Channel.CHAT, TargetKind.CRM, status, reason, since, echo_of, now
            )

        not_ready = ChannelStatus.NOT_READY
        assert not await echo(not_ready, "break", now)  # another reason
        assert not await echo(ChannelStatus.READY, None, now)  # another status
        assert not await echo(
            not_ready, "lunch", now + timedelta(seconds=1)
        )  # mirrored too long ago
        assert await echo(not_ready, "lunch", now)
        assert not await echo(not_ready, "lunch", now)  # consumed
        await uow.agents.add_mirror(
            "msg-2", "agent-1", Channel.CHAT, TargetKind.CRM, ChannelStatus.READY, None, now
        )
        later = now + timedelta(minutes=5)
        # An echo naming its mirror may come late, but it must still say what was mirrored.
        assert not await echo(not_ready, "lunch", later, echo_of="msg-2")
        assert await echo(ChannelStatus.READY, None, later, echo_of="msg-2")
        await uow.commit()
    mine = [(m.id, m.echoed_at) for m in await store.mirrors() if m.id.startswith("msg-")]
    assert mine == [("msg-1", now), ("msg-2", now)]
