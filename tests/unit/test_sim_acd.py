"""The ACD simulator against a fake Harmony that verifies signatures and scripts its answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from harmony.protocol import (
    AGENT_SELECTED,
    REQUEST_QUEUED,
    ROUTING_REQUESTED,
    WORK_ENDED,
    envelope,
)
from harmony.seed import Seed, SeedAgent
from harmony.signing import Signer, new_secret
from harmony.simulators.acd import AcdSimConfig, create_app
from tests.unit.sim_support import (
    HARMONY,
    SECRET,
    RecordingHarmony,
    send,
    serving,
    state,
    wait_until,
)

# Decides Harmony's answer to one callback; None means the default 202.
Policy = Callable[[dict[str, Any]], httpx.Response | None]


class FakeHarmony(RecordingHarmony):
    """Harmony's ACD endpoint: checks each callback's signature and records it."""

    def __init__(self) -> None:
        super().__init__("/v1/acd/generic/events")
        self.policy: Policy = lambda message: None

    async def answer(self, message: dict[str, Any]) -> httpx.Response:
        return self.policy(message) or await super().answer(message)

    def selected(self) -> dict[str, str]:
        """request_id -> agent_id over every agent.selected received."""
        return {d["request_id"]: d["agent_id"] for d in self.data(AGENT_SELECTED)}


def agent(agent_id: str, skills: list[str], chat: int = 1, email: int = 1) -> SeedAgent:
    return SeedAgent(
        id=f"agent-{agent_id}",
        crm_agent_id=f"crm-{agent_id}",
        acd_agent_id=agent_id,
        skills=skills,
        capacity={"chat": chat, "email": email},
    )


@asynccontextmanager
async def running_acd(
    harmony: FakeHarmony, *agents: SeedAgent, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    config = AcdSimConfig(
        harmony_url=HARMONY,
        secret=SECRET,
        seed=Seed(agents=list(agents)),
        retry_base_delay=0.01,
        retry_max_delay=0.02,
        **options,
    )
    app = create_app(config, transport=httpx.MockTransport(harmony.handle))
    async with serving(app, "http://acd.test") as client:
        yield client


def routing(
    request_id: str,
    skills: list[str] | None = None,
    channel: str = "chat",
    priority: int = 0,
    received_at: str = "2026-11-22T01:40:00+00:00",
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "interaction_id": f"int-{request_id}",
        "channel": channel,
        "queue": f"q-{channel}",
        "priority": priority,
        "skills": skills or [],
        "customer": {},
        "subject": None,
        "received_at": received_at,
    }


def ended(request_id: str, agent_id: str, channel: str = "chat") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "interaction_id": f"int-{request_id}",
        "agent_id": agent_id,
        "channel": channel,
        "reason": "completed",
    }


async def assigned(client: httpx.AsyncClient, request_id: str) -> str:
    """Wait until Harmony accepted a selection for ``request_id``; return the agent."""
    current = await wait_until(client, lambda s: request_id in s["assignments"])
    return str(current["assignments"][request_id]["agent_id"])


def loads(current: dict[str, Any], channel: str = "chat") -> dict[str, int]:
    return {a["agent_id"]: a["load"][channel] for a in current["agents"]}


async def test_picks_longest_idle_agent_with_all_skills() -> None:
    harmony = FakeHarmony()
    seed_agents = [
        agent("a1", ["support"]),
        agent("a2", ["support", "billing"]),
        agent("a3", ["support", "billing"]),
    ]
    async with running_acd(harmony, *seed_agents) as client:
        # Everyone idle since start: seed order breaks the tie among billing agents.
        assert (
            await send(client, ROUTING_REQUESTED, routing("r1", ["billing"]))
        ).status_code == 202
        assert await assigned(client, "r1") == "a2"
        assert (await send(client, WORK_ENDED, ended("r1", "a2"))).status_code == 202
        # a2 just finished work, so a3 has now been idle longest among billing agents.
        await send(client, ROUTING_REQUESTED, routing("r2", ["billing"]))
        assert await assigned(client, "r2") == "a3"
        # a1 lacks billing but was never used: it is the longest idle for plain support.
        await send(client, ROUTING_REQUESTED, routing("r3", ["support"]))
        assert await assigned(client, "r3") == "a1"
        await send(client, WORK_ENDED, ended("r2", "a3"))
        # a2 ended work before a3 did.
        await send(client, ROUTING_REQUESTED, routing("r4", ["billing", "support"]))
        assert await assigned(client, "r4") == "a2"

        final = await state(client)
    assert loads(final) == {"a1": 1, "a2": 1, "a3": 0}
    assert final["assignments"]["r1"]["interaction_id"] == "int-r1"
    assert final["assignments"]["r1"]["channel"] == "chat"
    assert final["pending"] == []
    assert harmony.data(REQUEST_QUEUED) == []
    assert harmony.bad_signatures == 0


async def test_queues_when_full_and_selects_on_work_ended() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", ["support"], chat=1, email=1)) as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        assert await assigned(client, "r1") == "a1"
        await send(client, ROUTING_REQUESTED, routing("r2"))
        await send(client, ROUTING_REQUESTED, routing("r3"))
        # Chat is full, but email capacity is counted separately.
        await send(client, ROUTING_REQUESTED, routing("e1", channel="email"))
        assert await assigned(client, "e1") == "a1"
        current = await wait_until(client, lambda s: len(harmony.data(REQUEST_QUEUED)) == 2)
        assert current["pending"] == ["r2", "r3"]
        assert harmony.data(REQUEST_QUEUED) == [
            {"request_id": "r2", "position": 1},
            {"request_id": "r3", "position": 2},
        ]

        await send(client, WORK_ENDED, ended("r1", "a1"))
        assert await assigned(client, "r2") == "a1"
        current = await state(client)
        assert current["pending"] == ["r3"]
        assert current["agents"][0]["load"] == {"chat": 1, "email": 1}
        assert current["agents"][0]["peak_load"] == {"chat": 1, "email": 1}
        assert current["assignments"]["r1"]["ended_at"] is not None

    # Each queued request was reported once, and before its selection.
    assert [d["request_id"] for d in harmony.data(REQUEST_QUEUED)] == ["r2", "r3"]
    types = [(m["type"], m["data"]["request_id"]) for m in harmony.messages]
    assert types.index((REQUEST_QUEUED, "r2")) < types.index((AGENT_SELECTED, "r2"))
    assert "r3" not in harmony.selected()


async def test_priority_first_and_unassignable_request_does_not_block() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", ["support"])) as client:
        await send(client, ROUTING_REQUESTED, routing("busy"))
        await assigned(client, "busy")
        await send(
            client, ROUTING_REQUESTED, routing("old-low", received_at="2026-01-01T00:00:00Z")
        )
        await send(client, ROUTING_REQUESTED, routing("new-high", priority=50))
        # Nobody speaks Spanish: this urgent request must not hold up the others.
        await send(client, ROUTING_REQUESTED, routing("spanish", ["spanish"], priority=100))
        current = await wait_until(client, lambda s: len(harmony.data(REQUEST_QUEUED)) == 3)
        assert current["pending"] == ["spanish", "new-high", "old-low"]

        await send(client, WORK_ENDED, ended("busy", "a1"))
        assert await assigned(client, "new-high") == "a1"
        await send(client, WORK_ENDED, ended("new-high", "a1"))
        assert await assigned(client, "old-low") == "a1"
        current = await state(client)
    assert current["pending"] == ["spanish"]


async def test_refusal_makes_it_pick_another_agent() -> None:
    harmony = FakeHarmony()

    def refuse_a1(message: dict[str, Any]) -> httpx.Response | None:
        if message["type"] == AGENT_SELECTED and message["data"]["agent_id"] == "a1":
            return httpx.Response(409, json={"error": "agent_unavailable", "detail": "a1 full"})
        return None

    harmony.policy = refuse_a1
    async with running_acd(harmony, agent("a1", []), agent("a2", [])) as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        assert await assigned(client, "r1") == "a2"
        current = await state(client)
    assert current["refusals"] == 1
    assert loads(current) == {"a1": 0, "a2": 1}
    assert [d["agent_id"] for d in harmony.data(AGENT_SELECTED)] == ["a1", "a2"]


async def test_refused_agent_is_retried_after_cooldown() -> None:
    harmony = FakeHarmony()
    refused: list[str] = []

    def refuse_once(message: dict[str, Any]) -> httpx.Response | None:
        if message["type"] == AGENT_SELECTED and not refused:
            refused.append(message["data"]["agent_id"])
            return httpx.Response(409, json={"error": "agent_unavailable", "detail": "busy"})
        return None

    harmony.policy = refuse_once
    async with running_acd(harmony, agent("a1", []), refusal_cooldown=0.05) as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        # The only agent is excluded for the cooldown, then offered the request again.
        assert await assigned(client, "r1") == "a1"
        current = await state(client)
    assert refused == ["a1"]
    assert current["refusals"] == 1
    assert [d["request_id"] for d in harmony.data(REQUEST_QUEUED)] == ["r1"]


async def test_other_4xx_drops_request_and_frees_slot() -> None:
    harmony = FakeHarmony()

    def unknown_r1(message: dict[str, Any]) -> httpx.Response | None:
        if message["type"] == AGENT_SELECTED and message["data"]["request_id"] == "r1":
            body = {"error": "unknown_interaction", "detail": "request_id: unknown"}
            return httpx.Response(404, json=body)
        return None

    harmony.policy = unknown_r1
    async with running_acd(harmony, agent("a1", [])) as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        current = await wait_until(client, lambda s: "r1" in s["rejected"])
        assert current["rejected"]["r1"]["error"] == "unknown_interaction"
        assert current["rejected"]["r1"]["status_code"] == 404
        assert loads(current) == {"a1": 0}
        assert current["pending"] == []
        # The freed slot serves the next request.
        await send(client, ROUTING_REQUESTED, routing("r2"))
        assert await assigned(client, "r2") == "a1"
    assert len(harmony.data(AGENT_SELECTED)) == 2


async def test_network_errors_and_5xx_are_retried_with_the_same_id() -> None:
    harmony = FakeHarmony()
    failures: list[httpx.ConnectError | httpx.Response] = [
        httpx.ConnectError("connection refused"),
        httpx.Response(503, json={"error": "unavailable", "detail": "try later"}),
    ]

    async def flaky(request: httpx.Request) -> httpx.Response:
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            await harmony.handle(request)  # recorded, but answered with the failure
            return failure
        return await harmony.handle(request)

    config = AcdSimConfig(
        harmony_url=HARMONY,
        secret=SECRET,
        seed=Seed(agents=[agent("a1", [])]),
        retry_base_delay=0.01,
    )
    app = create_app(config, transport=httpx.MockTransport(flaky))
    async with serving(app, "http://acd") as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        assert await assigned(client, "r1") == "a1"
        current = await state(client)
    selected = [m for m in harmony.messages if m["type"] == AGENT_SELECTED]
    assert len(selected) == 2
    assert selected[0]["id"] == selected[1]["id"]
    assert loads(current) == {"a1": 1}
    assert current["rejected"] == {}


async def test_unreachable_harmony_gives_up_and_frees_slot() -> None:
    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    config = AcdSimConfig(
        harmony_url=HARMONY,
        secret=SECRET,
        seed=Seed(agents=[agent("a1", [])]),
        retry_attempts=3,
        retry_base_delay=0.001,
    )
    app = create_app(config, transport=httpx.MockTransport(down))
    async with serving(app, "http://acd") as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        current = await wait_until(client, lambda s: "r1" in s["rejected"])
    assert current["rejected"]["r1"]["status_code"] is None
    assert current["rejected"]["r1"]["error"] == "unreachable"
    assert loads(current) == {"a1": 0}


async def test_bad_signature_is_refused_without_effect() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", [])) as client:
        response = await send(client, ROUTING_REQUESTED, routing("r1"), secret=new_secret())
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_signature"
        assert response.json()["detail"]

        unsigned = await client.post(
            "/events",
            content=json.dumps(envelope(ROUTING_REQUESTED, routing("r2"))),
            headers={"content-type": "application/json"},
        )
        assert unsigned.status_code == 401
        current = await state(client)
    assert current["pending"] == []
    assert current["assignments"] == {}
    assert harmony.messages == []


async def test_duplicate_envelope_id_has_no_effect() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", [], chat=5)) as client:
        first = await send(client, ROUTING_REQUESTED, routing("r1"), event_id="evt_same")
        again = await send(client, ROUTING_REQUESTED, routing("r1"), event_id="evt_same")
        assert first.status_code == again.status_code == 202
        assert again.json() == {"status": "duplicate"}
        await assigned(client, "r1")

        await send(client, WORK_ENDED, ended("r1", "a1"), event_id="evt_end")
        await send(client, WORK_ENDED, ended("r1", "a1"), event_id="evt_end")
        current = await state(client)
    assert len(harmony.data(AGENT_SELECTED)) == 1
    assert current["agents"][0]["peak_load"]["chat"] == 1
    assert loads(current) == {"a1": 0}
    assert current["unmatched_work_ended"] == 0


async def test_unmatched_work_ended_is_counted_not_applied() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", [])) as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        await assigned(client, "r1")
        responses = [
            await send(client, WORK_ENDED, ended("nope", "a1")),
            await send(client, WORK_ENDED, ended("r1", "ghost")),
            await send(client, WORK_ENDED, ended("r1", "a1")),
            await send(client, WORK_ENDED, ended("r1", "a1")),  # a second end, new id
        ]
        current = await state(client)
    assert [r.status_code for r in responses] == [202] * 4
    assert current["unmatched_work_ended"] == 3
    assert loads(current) == {"a1": 0}


async def test_malformed_messages_are_refused() -> None:
    harmony = FakeHarmony()
    signer = Signer(SECRET)
    async with running_acd(harmony, agent("a1", [])) as client:

        async def raw(body: bytes) -> httpx.Response:
            headers = {"content-type": "application/json", **signer.headers("evt_raw", body)}
            return await client.post("/events", content=body, headers=headers)

        not_json = await raw(b"{not json")
        assert not_json.status_code == 400
        assert not_json.json()["error"] == "malformed_json"

        no_envelope = await raw(b'{"hello": "world"}')
        assert no_envelope.status_code == 422
        assert no_envelope.json()["error"] == "validation_error"

        unknown = await send(client, "interaction.created", {"external_id": "x"})
        assert unknown.status_code == 422
        assert "type" in unknown.json()["detail"]

        bad_data = routing("r1")
        del bad_data["channel"]
        missing = await send(client, ROUTING_REQUESTED, bad_data)
        assert missing.status_code == 422
        assert "data.channel" in missing.json()["detail"]

        assert (await client.get("/healthz")).json() == {"status": "ok"}
        current = await state(client)
    assert current["pending"] == []
    assert harmony.messages == []


async def test_work_ended_that_overtakes_the_selection_answer_frees_once() -> None:
    harmony = FakeHarmony()
    clients: list[httpx.AsyncClient] = []

    async def end_before_answering(message: dict[str, Any]) -> httpx.Response | None:
        # Harmony may deliver, see the CRM complete and report work.ended before the ACD has
        # read the 202 to its agent.selected.
        if message["type"] == AGENT_SELECTED:
            rid, agent_id = message["data"]["request_id"], message["data"]["agent_id"]
            assert (await send(clients[0], WORK_ENDED, ended(rid, agent_id))).status_code == 202
        return None

    async def handle(request: httpx.Request) -> httpx.Response:
        response = await harmony.handle(request)
        override = await end_before_answering(json.loads(request.content))
        return override or response

    config = AcdSimConfig(harmony_url=HARMONY, secret=SECRET, seed=Seed(agents=[agent("a1", [])]))
    app = create_app(config, transport=httpx.MockTransport(handle))
    async with serving(app, "http://acd") as client:
        clients.append(client)
        await send(client, ROUTING_REQUESTED, routing("r1"))
        current = await wait_until(client, lambda s: "r1" in s["assignments"])
    assert current["assignments"]["r1"]["ended_at"] is not None
    assert loads(current) == {"a1": 0}
    assert current["agents"][0]["peak_load"]["chat"] == 1
    assert current["unmatched_work_ended"] == 0
