"""The first delivery of a new interaction is one write: on PostgreSQL the queue read, then one
statement carrying the interaction, its history, the routing request and the inbox row, with no
transaction around them. A repeat meets a stored row, stores nothing, and the careful path
answers it (on both databases, under concurrency too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import update

from harmony.adapters.generic_http.protocol import encode, envelope
from harmony.adapters.generic_http.signing import Signer
from harmony.config import DEV_SECRET
from harmony.db.recent import RecentQueues
from harmony.db.tables import queues
from harmony.errors import Collided
from harmony.routing import interactions
from harmony.routing.messages import ROUTING_REQUESTED, OutboundMessage, TargetKind
from harmony.routing.model import Channel, Interaction, InteractionState, Queue
from harmony.testing import FakeClock
from tests.conftest import Harness
from tests.sql_sent import statements_sent
from tests.sql_store import SqlStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    clock = FakeClock()
    opened = SqlStore(database_url, clock.now)
    await interactions.upsert_queue(opened.uow(), Queue("support-chat", Channel.CHAT, ["support"]))
    yield opened
    await opened.close()


def new_chat(external_id: str) -> interactions.NewInteraction:
    return interactions.NewInteraction(
        external_id=external_id,
        channel=Channel.CHAT,
        queue="support-chat",
        skills=["billing"],
        customer={"name": "Zoë"},
        subject="Refund",
    )


async def receive(store: SqlStore, event_id: str, external_id: str) -> interactions.Outcome:
    return await interactions.receive_interaction(
        store.uow,
        FakeClock(),
        crm_adapter="generic",
        acd_adapter="generic",
        event_id=event_id,
        new=new_chat(external_id),
    )


def received(interaction_id: str, external_id: str, clock: FakeClock) -> Interaction:
    return Interaction.receive(
        interaction_id=interaction_id,
        crm_adapter="generic",
        external_id=external_id,
        channel=Channel.CHAT,
        queue=Queue("support-chat", Channel.CHAT, []),
        priority=0,
        skills=[],
        customer={},
        subject=None,
        acd_adapter="generic",
        at=clock.now(),
        cause="test",
    )


async def test_a_first_delivery_stores_the_interaction_its_request_and_the_event(
    store: SqlStore, database_url: str
) -> None:
    if "postgresql" in database_url:
        async with store.db.engine.connect():
            pass  # the pool's first connection sets itself up: not the use case's statements
    with statements_sent() as sent:
        outcome = await receive(store, "evt-1", "chat-1")

    assert not outcome.duplicate
    interaction = await store.interaction(outcome.interaction_id)
    assert interaction is not None
    assert (interaction.external_id, interaction.state, interaction.skills) == (
        "chat-1",
        InteractionState.ROUTING,
        ["billing", "support"],
    )
    history = await store.history(interaction.id)
    assert [(h.event, h.to_state) for h in history] == [
        ("received", InteractionState.RECEIVED),
        ("routing_requested", InteractionState.ROUTING),
    ]
    [request] = await store.outbox(type=ROUTING_REQUESTED)
    assert request.message.interaction_id == interaction.id
    assert request.message.payload["request_id"] == interaction.request_id
    assert request.message.payload["customer"] == {"name": "Zoë"}
    async with store.db.reader() as reader:
        event = await reader.inbox.get("crm:generic", "evt-1")
    assert event is not None
    assert (event.status, event.interaction_id, event.payload) == ("applied", interaction.id, None)
    if "postgresql" in database_url:
        # The queue read, then one statement: no BEGIN, no COMMIT, nothing else.
        assert len(sent) == 2, sent
        assert sent[0].lstrip().upper().startswith("SELECT")
        assert "FROM queues" in sent[0]
        write = sent[1]
        assert write.lstrip().upper().startswith("WITH")
        for table in ("inbox", "outbox", "interaction_history", "interactions"):
            assert f"INSERT INTO {table} " in write, (table, write)

    # The next one a moment later: the queue as just read, so only the one statement.
    with statements_sent() as sent:
        second = await receive(store, "evt-2", "chat-2")
    second_interaction = await store.interaction(second.interaction_id)
    assert second_interaction is not None
    assert second_interaction.skills == ["billing", "support"]
    if "postgresql" in database_url:
        assert len(sent) == 1, sent
        assert "INSERT INTO interactions " in sent[0]


async def test_a_queue_changed_elsewhere_applies_to_work_received_a_moment_later(
    store: SqlStore,
) -> None:
    ticks = [0.0]
    store.db.recent_queues = RecentQueues(ttl=1.0, monotonic=lambda: ticks[0])
    await receive(store, "evt-1", "chat-1")  # reads support-chat and keeps it
    # Another replica changes the queue's skills: not through this process.
    async with store.db.engine.begin() as conn:
        await conn.execute(
            update(queues).where(queues.c.name == "support-chat").values(skills=["vip"])
        )

    ticks[0] = 0.5
    kept = await receive(store, "evt-2", "chat-2")
    ticks[0] = 1.0
    fresh = await receive(store, "evt-3", "chat-3")

    kept_interaction = await store.interaction(kept.interaction_id)
    assert kept_interaction is not None
    assert kept_interaction.skills == ["billing", "support"]  # as read half a second before
    fresh_interaction = await store.interaction(fresh.interaction_id)
    assert fresh_interaction is not None
    assert fresh_interaction.skills == ["billing", "vip"]


async def test_a_queue_changed_through_this_process_applies_at_once(store: SqlStore) -> None:
    await receive(store, "evt-1", "chat-1")
    await interactions.upsert_queue(store.uow(), Queue("support-chat", Channel.CHAT, ["vip"]))

    after = await receive(store, "evt-2", "chat-2")

    interaction = await store.interaction(after.interaction_id)
    assert interaction is not None
    assert interaction.skills == ["billing", "vip"]


async def test_a_repeated_event_and_a_known_external_id_are_answered_as_duplicates(
    store: SqlStore,
) -> None:
    first = await receive(store, "evt-1", "chat-1")
    before = await store.dump()

    again = await receive(store, "evt-1", "chat-1")
    assert again == interactions.Outcome(first.interaction_id, duplicate=True)
    assert await store.dump() == before

    under_new_id = await receive(store, "evt-2", "chat-1")
    assert under_new_id == interactions.Outcome(first.interaction_id, duplicate=True)
    assert len(await store.interactions()) == 1
    assert len(await store.outbox(type=ROUTING_REQUESTED)) == 1
    assert {(r.event_id, r.interaction_id) for r in await store.inbox()} == {
        ("evt-1", first.interaction_id),
        ("evt-2", first.interaction_id),
    }


async def test_a_one_write_meeting_a_stored_row_stores_nothing(store: SqlStore) -> None:
    await receive(store, "evt-1", "chat-1")
    before = await store.dump()
    clock = FakeClock()
    other = received("00000000-0000-4000-8000-000000000001", "chat-2", clock)
    message = OutboundMessage(
        target_kind=TargetKind.ACD,
        target="generic",
        type=ROUTING_REQUESTED,
        interaction_id=other.id,
        payload={},
    )

    with pytest.raises(Collided):
        async with store.uow().one_write() as uow:
            # evt-1 is stored: the write carrying its claim fails, and with it everything else.
            await uow.inbox.claim_with_next_write(
                "crm:generic", "evt-1", "interaction.created", clock.now(), other.id
            )
            await uow.outbox.add(message, clock.now())
            await uow.interactions.add(other)
            await uow.commit()

    assert await store.dump() == before


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_one_write_unit_of_work_refuses_what_would_not_be_atomic(
    store: SqlStore,
) -> None:
    clock = FakeClock()
    message = OutboundMessage(
        target_kind=TargetKind.ACD,
        target="generic",
        type=ROUTING_REQUESTED,
        interaction_id="00000000-0000-4000-8000-000000000002",
        payload={},
    )
    before = await store.dump()
    async with store.uow().one_write() as uow:
        await uow.outbox.add(message, clock.now())
        # Reading the outbox would first send the message on its own: refused, nothing sent.
        with pytest.raises(RuntimeError, match="one-write unit of work"):
            await uow.outbox.pending_count()
    assert await store.dump() == before

    first = received("00000000-0000-4000-8000-000000000003", "chat-3", clock)
    second = received("00000000-0000-4000-8000-000000000004", "chat-4", clock)
    async with store.uow().one_write() as uow:
        await uow.interactions.add(first)
        with pytest.raises(RuntimeError, match="second time"):
            await uow.interactions.add(second)
    # The one write is atomic by itself: it stays, with its history; the second never went.
    assert [i.id for i in await store.interactions()] == [first.id]
    assert len(await store.history(first.id)) == 1


@pytest.mark.parametrize("copies", [8])
async def test_concurrent_repeats_make_one_interaction_and_one_request(
    harness: Harness, copies: int
) -> None:
    h = harness

    async def post(event_id: str, external_id: str) -> httpx.Response:
        body = encode(
            envelope(
                "interaction.created",
                {"external_id": external_id, "channel": "chat", "queue": "support-chat"},
                event_id=event_id,
            )
        )
        headers = {
            "content-type": "application/json",
            **Signer(DEV_SECRET).headers(event_id, body),
        }
        return await h.client.post("/v1/crm/generic/events", content=body, headers=headers)

    same_event = await asyncio.gather(*(post("evt-same", "chat-same") for _ in range(copies)))
    same_external = await asyncio.gather(
        *(post(f"evt-other-{n}", "chat-other") for n in range(copies))
    )

    for answers in (same_event, same_external):
        assert [a.status_code for a in answers] == [202] * copies, [a.text for a in answers]
        bodies = [a.json() for a in answers]
        assert sorted(b["status"] for b in bodies) == ["accepted"] + ["duplicate"] * (copies - 1)
        assert len({b["interaction_id"] for b in bodies}) == 1
    await h.drain()
    assert len(h.acd.of_type("routing.requested")) == 2
    found = (await h.client.get("/v1/interactions", params={"limit": 100})).json()
    assert sorted(i["external_id"] for i in found["items"]) == ["chat-other", "chat-same"]
