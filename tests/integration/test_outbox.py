"""The outbox relay on the real store: fenced claims, ordering of mirrors, and its give-ups.

The concurrency tests run two replicas (two apps, each with its own engine and relay) on one
PostgreSQL database, sharing a clock that only moves when the test moves it and a peer whose
answers the test releases by hand, so "the lease ran out while the peer was slow" is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from harmony.db.tables import outbox
from harmony.main import create_app
from harmony.outbox.relay import Relay
from tests.conftest import Harness, HostRouter, RecordingPeer, ShiftedClock, make_settings

LEASE = 30.0


@dataclass
class Gate:
    """One held request: the test waits for it to arrive, then lets it answer."""

    message_type: str
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 202
    used: bool = False

    def answer(self, status: int) -> None:
        self.status = status
        self.released.set()


class SlowPeers(httpx.AsyncBaseTransport):
    """The recording peers behind a transport that can hold chosen requests until released."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.gates: list[Gate] = []
        self.sent_ids: list[str] = []
        self.on_answer: list[Any] = []

    def hold(self, message_type: str) -> Gate:
        gate = Gate(message_type)
        self.gates.append(gate)
        return gate

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        self.sent_ids.append(body["id"])
        gate = next((g for g in self.gates if not g.used and g.message_type == body["type"]), None)
        if gate is not None:
            gate.used = True
            gate.arrived.set()
            await gate.released.wait()
            if gate.status >= 300:
                return httpx.Response(
                    gate.status, json={"error": "refused", "detail": "held and refused"}
                )
        response = await self._inner.handle_async_request(request)
        for hook in self.on_answer:
            hook()
        return response


@dataclass
class Replicas:
    """Two Harmony replicas on one database; ``a`` also serves the API the test talks to."""

    a: Harness
    b_app: FastAPI
    peers: SlowPeers

    @property
    def relay_a(self) -> Relay:
        relay: Relay = self.a.container.relay
        return relay

    @property
    def relay_b(self) -> Relay:
        relay: Relay = self.b_app.state.container.relay
        return relay

    async def rows(self) -> list[Any]:
        async with self.a.container.db.engine.connect() as conn:
            return list((await conn.execute(select(outbox).order_by(outbox.c.created_at))).all())

    async def row(self, message_id: str) -> Any:
        [found] = [r for r in await self.rows() if r.id == message_id]
        return found


@contextlib.asynccontextmanager
async def replicas(url: str, **overrides: Any) -> AsyncIterator[Replicas]:
    acd, crm = RecordingPeer(), RecordingPeer()
    peers = SlowPeers(HostRouter({"acd.test": acd.app(), "crm.test": crm.app()}))
    clock = ShiftedClock()
    settings = make_settings(url, relay_lease_seconds=LEASE, **overrides)
    app_a = create_app(settings, clock=clock, transport=peers, run_relay=False)
    app_b = create_app(settings, clock=clock, transport=peers, run_relay=False)
    async with (
        app_a.router.lifespan_context(app_a),
        app_b.router.lifespan_context(app_b),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app_a), base_url="http://h") as c,
    ):
        harness = Harness(app_a, c, acd, crm, clock)
        await harness.login_everyone()
        await harness.drain()
        acd.received.clear()
        crm.received.clear()
        peers.sent_ids.clear()
        yield Replicas(harness, app_b, peers)


async def offered_chat(h: Harness, external_id: str, acd_agent_id: str = "acd-002") -> str:
    created = await h.create(external_id)
    assert created.status_code == 202, created.text
    interaction_id = str(created.json()["interaction_id"])
    await h.drain()
    selected = await h.post_event(
        "acd",
        "agent.selected",
        {"request_id": h.request_id_for(interaction_id), "agent_id": acd_agent_id},
    )
    assert selected.status_code == 202, selected.text
    return interaction_id


async def chat_load(h: Harness, agent_id: str) -> int:
    agent = (await h.client.get(f"/v1/agents/{agent_id}")).json()
    return int(agent["channels"]["chat"]["load"])


@pytest.mark.postgres
async def test_an_outcome_from_a_relay_whose_lease_was_taken_over_is_dropped(
    postgres_url: str,
) -> None:
    async with replicas(postgres_url) as r:
        h = r.a
        interaction_id = await offered_chat(h, "chat-1")
        assert await chat_load(h, "agent-002") == 1
        first, second = r.peers.hold("interaction.deliver"), r.peers.hold("interaction.deliver")

        sending_a = asyncio.create_task(r.relay_a.run_once())
        await first.arrived.wait()  # A holds the claim and the CRM is slow to answer
        h.clock.advance(LEASE + 1)  # A's lease runs out while its request hangs
        sending_b = asyncio.create_task(r.relay_b.run_once())
        await second.arrived.wait()  # B claimed the row anew and sends it too
        first.answer(404)  # A's stale request is refused
        await sending_a
        second.answer(202)  # B's, the claim holder's, is delivered
        await sending_b

        interaction = (await h.client.get(f"/v1/interactions/{interaction_id}")).json()
        assert interaction["state"] == "delivered"
        assert await chat_load(h, "agent-002") == 1
        assert "failed" not in [line["event"] for line in interaction["history"]]
        [deliver] = [row for row in await r.rows() if row.type == "interaction.deliver"]
        assert (deliver.status, deliver.attempts, deliver.last_error) == ("sent", 2, None)
        assert deliver.claimed_by == r.relay_b.name
        assert h.acd.of_type("work.ended") == []
        await h.drain()
        assert h.acd.of_type("work.ended") == []  # the ACD is not told the work ended


@pytest.mark.postgres
async def test_a_relay_does_not_send_a_row_whose_lease_it_lost_while_waiting_to_send(
    postgres_url: str,
) -> None:
    async with replicas(postgres_url, relay_concurrency=1) as r:
        h = r.a
        for external_id in ("chat-1", "chat-2"):
            assert (await h.create(external_id)).status_code == 202
        gate = r.peers.hold("routing.requested")

        sending_a = asyncio.create_task(r.relay_a.run_once())  # claims both, sends one at a time
        await gate.arrived.wait()
        h.clock.advance(LEASE + 1)
        assert await r.relay_b.run_once() == 2  # both leases expired: B takes and sends both
        gate.answer(202)
        assert await sending_a == 2

        routing = [row for row in await r.rows() if row.type == "routing.requested"]
        # The one A was sending went out twice (its request hung past its lease); the other
        # only from B, which held its claim.
        assert sorted(r.peers.sent_ids.count(row.id) for row in routing) == [1, 2]
        assert [row.status for row in routing] == ["sent", "sent"]
        assert {row.claimed_by for row in routing} == {r.relay_b.name}


class BreaksAfterAnswers:
    """A unit-of-work factory whose next unit of work fails after each answer from a peer:
    the outcome of that send cannot be recorded (the database went away meanwhile)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.armed = False
        self.failures = 0

    def arm(self) -> None:
        self.armed = True

    def __call__(self) -> Any:
        if self.armed:
            self.armed = False
            self.failures += 1
            return _FailingUow()
        return self._real()


class _FailingUow:
    async def __aenter__(self) -> Any:
        raise ConnectionError("database connection lost")

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_an_outcome_that_cannot_be_recorded_is_not_resent_forever(
    database_url: str,
) -> None:
    async with replicas(database_url) as r:
        h = r.a
        created = await h.create("chat-1")
        interaction_id = created.json()["interaction_id"]
        container = h.container
        factory = BreaksAfterAnswers(container.db.uow)
        r.peers.on_answer.append(factory.arm)
        relay = Relay(factory, container.registry, h.clock, max_attempts=3, lease_seconds=LEASE)

        for _ in range(6):
            await relay.run_once()
            h.clock.advance(LEASE + 1)

        [routing] = [row for row in await r.rows() if row.type == "routing.requested"]
        assert r.peers.sent_ids.count(routing.id) == 3
        assert factory.failures == 3
        assert routing.status == "dead"
        assert "no outcome recorded" in routing.last_error
        interaction = (await h.client.get(f"/v1/interactions/{interaction_id}")).json()
        assert interaction["state"] == "failed"


@pytest.mark.postgres
async def test_two_relays_never_have_two_mirrors_of_one_agent_to_one_peer_in_flight(
    postgres_url: str,
) -> None:
    async with replicas(postgres_url) as r:
        h = r.a
        gate = r.peers.hold("agent.state")

        async def crm_reports(state: dict[str, Any]) -> None:
            data = {"agent_id": "crm-001", "channels": ["chat"], **state}
            response = await h.post_event("crm", "agent.state_changed", data)
            assert response.json()["status"] == "applied", response.text

        await crm_reports({"state": "not_ready", "reason": "break"})
        sending_a = asyncio.create_task(r.relay_a.run_once())
        await gate.arrived.wait()  # A is sending the not-ready mirror to the ACD
        await crm_reports({"state": "ready"})
        assert await r.relay_b.run_once() == 0  # B leaves the newer one until A is done
        gate.answer(202)
        await sending_a
        await r.relay_b.drain()

        mirrored = [
            (m["data"]["state"], m["data"]["sequence"])
            for m in h.acd.of_type("agent.state")
            if m["data"]["agent_id"] == "acd-001"
        ]
        assert [state for state, _ in mirrored] == ["not_ready", "ready"]
        assert mirrored[1][1] == mirrored[0][1] + 1
