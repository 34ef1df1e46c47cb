"""The ACD simulator against a fake Harmony that verifies signatures and scripts its answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from harmony.adapters.generic_http.protocol import (
    AGENT_CAPACITY,
    AGENT_SELECTED,
    AGENT_STATE,
    AGENT_STATE_CHANGED,
    REQUEST_QUEUED,
    ROUTING_REQUESTED,
    VOICE_ENDED,
    VOICE_STARTED,
    WORK_ENDED,
    envelope,
)
from harmony.adapters.generic_http.signing import Signer, new_secret
from harmony.dev.simulators.acd import AcdSimConfig, create_app
from harmony.seed import Seed, SeedAgent, SeedProfile
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


# No cross-channel rule and no wrap-up: channels are independent, as the older tests assume.
OPEN = SeedProfile(name="open")
# Calls still allow chat, but block email; a call is followed by 3 s of wrap-up.
CALLS_ALLOW_CHAT = SeedProfile(
    name="calls-allow-chat", blocks={"voice": ["email"]}, wrap_up_seconds={"voice": 3}
)
PROFILES = [OPEN, CALLS_ALLOW_CHAT]

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def agent(
    agent_id: str,
    skills: list[str],
    chat: int = 1,
    email: int = 1,
    voice: int = 1,
    profile: str = OPEN.name,
) -> SeedAgent:
    return SeedAgent(
        id=f"agent-{agent_id}",
        crm_agent_id=f"crm-{agent_id}",
        acd_agent_id=agent_id,
        skills=skills,
        profile=profile,
        capacity={"voice": voice, "chat": chat, "email": email},
    )


def agent_state(
    agent_id: str, channel: str, state_name: str = "ready", reason: str | None = None
) -> dict[str, Any]:
    """``agent.state`` as Harmony mirrors it to the ACD."""
    return {
        "agent_id": agent_id,
        "channel": channel,
        "state": state_name,
        "reason": reason,
        "load": 0,
        "capacity": 1,
        "busy": False,
        "wrap_up_until": None,
        "presence": state_name,
    }


async def set_state(
    client: httpx.AsyncClient,
    agent_ids: list[str],
    channels: tuple[str, ...] = ("chat", "email"),
    state_name: str = "ready",
) -> None:
    """Report each agent ``state_name`` on ``channels`` and wait until every echo went out."""
    before = (await state(client))["echoes_sent"]
    changes = 0
    for agent_id in agent_ids:
        for channel in channels:
            response = await send(client, AGENT_STATE, agent_state(agent_id, channel, state_name))
            assert response.status_code == 202
            changes += response.json()["status"] == "accepted"
    await wait_until(client, lambda s: s["echoes_sent"] == before + changes)


@asynccontextmanager
async def running_acd(
    harmony: FakeHarmony | Handler,
    *agents: SeedAgent,
    ready: tuple[str, ...] = ("chat", "email"),
    **options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """The simulator with ``agents``, each made ready on ``ready`` before the test starts.

    The echoes of those state changes are then forgotten, so a test sees only its own traffic.
    """
    settings: dict[str, Any] = {"retry_base_delay": 0.01, "retry_max_delay": 0.02, **options}
    config = AcdSimConfig(
        harmony_url=HARMONY,
        secret=SECRET,
        seed=Seed(profiles=PROFILES, agents=list(agents)),
        **settings,
    )
    handler = harmony.handle if isinstance(harmony, FakeHarmony) else harmony
    app = create_app(config, transport=httpx.MockTransport(handler))
    async with serving(app, "http://acd.test") as client:
        if ready:
            await set_state(client, [a.acd_agent_id for a in agents], ready)
        if isinstance(harmony, FakeHarmony):
            harmony.messages.clear()
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
        assert current["agents"][0]["load"] == {"voice": 0, "chat": 1, "email": 1}
        assert current["agents"][0]["peak_load"] == {"voice": 0, "chat": 1, "email": 1}
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


async def test_work_routed_again_goes_to_an_agent_who_has_not_had_it() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", [], chat=2), agent("a2", [], chat=2)) as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        assert await assigned(client, "r1") == "a1"
        await send(client, ROUTING_REQUESTED, routing("r2"))
        assert await assigned(client, "r2") == "a2"
        # a1 has been idle longest and has room, but had this work: a transfer (a new request
        # for the same interaction, before work.ended for the first) goes to a2.
        await send(client, ROUTING_REQUESTED, {**routing("r3"), "interaction_id": "int-r1"})
        assert await assigned(client, "r3") == "a2"
        # Another interaction is not concerned: a1, idle longest, takes it.
        await send(client, ROUTING_REQUESTED, routing("r4"))
        assert await assigned(client, "r4") == "a1"


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
    failures: list[httpx.ConnectError | httpx.Response] = []

    async def flaky(request: httpx.Request) -> httpx.Response:
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            await harmony.handle(request)  # recorded, but answered with the failure
            return failure
        return await harmony.handle(request)

    async with running_acd(flaky, agent("a1", [])) as client:
        harmony.messages.clear()
        failures += [
            httpx.ConnectError("connection refused"),
            httpx.Response(503, json={"error": "unavailable", "detail": "try later"}),
        ]
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

    options = {"retry_attempts": 3, "retry_base_delay": 0.001, "retry_max_delay": 0.001}
    async with running_acd(down, agent("a1", []), **options) as client:
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

    async with running_acd(handle, agent("a1", [])) as client:
        clients.append(client)
        await send(client, ROUTING_REQUESTED, routing("r1"))
        current = await wait_until(client, lambda s: "r1" in s["assignments"])
    assert current["assignments"]["r1"]["ended_at"] is not None
    assert loads(current) == {"a1": 0}
    assert current["agents"][0]["peak_load"]["chat"] == 1
    assert current["unmatched_work_ended"] == 0


# --- agent state, wrap-up, cross-channel rules and voice -------------------------------------


async def voice(
    client: httpx.AsyncClient, agent_id: str, action: str, call_id: str | None = None
) -> httpx.Response:
    body = {"agent_id": agent_id, "action": action}
    if call_id is not None:
        body["call_id"] = call_id
    return await client.post("/simulate/voice", json=body)


def agent_json(current: dict[str, Any], agent_id: str) -> dict[str, Any]:
    [found] = [a for a in current["agents"] if a["agent_id"] == agent_id]
    return found


async def test_agents_start_logged_out_and_only_ready_agents_are_selected() -> None:
    harmony = FakeHarmony()
    agents = [agent("a1", []), agent("a2", []), agent("a3", [])]
    async with running_acd(harmony, *agents, ready=()) as client:
        current = await state(client)
        assert [a["state"] for a in current["agents"]] == [
            {"voice": "logged_out", "chat": "logged_out", "email": "logged_out"}
        ] * 3
        await set_state(client, ["a2"], ("chat",), "not_ready")
        await set_state(client, ["a3"], ("email",))
        harmony.messages.clear()

        # Nobody is ready on chat: a1 is logged out, a2 not ready, a3 ready on email only.
        await send(client, ROUTING_REQUESTED, routing("r1"))
        current = await wait_until(client, lambda s: len(harmony.data(REQUEST_QUEUED)) == 1)
        assert current["pending"] == ["r1"]
        assert harmony.data(AGENT_SELECTED) == []

        # The moment a2 is ready on chat, the waiting request goes to it.
        await set_state(client, ["a2"], ("chat",))
        assert await assigned(client, "r1") == "a2"
        # a3 still takes email.
        await send(client, ROUTING_REQUESTED, routing("e1", channel="email"))
        assert await assigned(client, "e1") == "a3"
        current = await state(client)
    assert agent_json(current, "a2")["state"] == {
        "voice": "logged_out",
        "chat": "ready",
        "email": "logged_out",
    }
    assert [d["agent_id"] for d in harmony.data(AGENT_SELECTED)] == ["a2", "a3"]


async def test_agent_state_is_echoed_once_per_change_with_echo_of() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", []), ready=()) as client:
        first = await send(client, AGENT_STATE, agent_state("a1", "chat"), event_id="evt_1")
        assert first.json() == {"status": "accepted"}
        # The same state again (new id) changes nothing, so it is not echoed; the same id is
        # a duplicate.
        same = await send(client, AGENT_STATE, agent_state("a1", "chat"), event_id="evt_2")
        assert same.json() == {"status": "unchanged"}
        again = await send(client, AGENT_STATE, agent_state("a1", "chat"), event_id="evt_1")
        assert again.json() == {"status": "duplicate"}
        on_break = agent_state("a1", "chat", "not_ready", "break")
        assert (await send(client, AGENT_STATE, on_break, event_id="evt_3")).status_code == 202
        ghost = await send(client, AGENT_STATE, agent_state("ghost", "chat"))
        assert ghost.status_code == 202
        assert ghost.json() == {"status": "ignored"}
        bad = await send(client, AGENT_STATE, {**agent_state("a1", "chat"), "state": "asleep"})
        assert bad.status_code == 422
        assert "data.state" in bad.json()["detail"]

        current = await wait_until(client, lambda s: s["echoes_sent"] >= 2)
    assert harmony.data(AGENT_STATE_CHANGED) == [
        {
            "agent_id": "a1",
            "channels": ["chat"],
            "state": "ready",
            "reason": None,
            "echo_of": "evt_1",
        },
        {
            "agent_id": "a1",
            "channels": ["chat"],
            "state": "not_ready",
            "reason": "break",
            "echo_of": "evt_3",
        },
    ]
    assert current["echoes_sent"] == 2
    assert current["unknown_agent_state"] == 1
    assert agent_json(current, "a1")["state"]["chat"] == "not_ready"
    assert agent_json(current, "a1")["reason"]["chat"] == "break"
    assert harmony.bad_signatures == 0


async def test_wrap_up_after_work_ended_holds_offers_until_it_runs_out() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", [], chat=2)) as client:
        await send(client, ROUTING_REQUESTED, routing("r1"))
        assert await assigned(client, "r1") == "a1"
        await send(client, WORK_ENDED, {**ended("r1", "a1"), "wrap_up_seconds": 1})
        # A free chat slot, but the agent wraps up: the request waits.
        await send(client, ROUTING_REQUESTED, routing("r2"))
        current = await state(client)
        assert current["pending"] == ["r2"]
        assert agent_json(current, "a1")["wrap_up_until"]["chat"] is not None
        assert agent_json(current, "a1")["wrap_up_until"]["email"] is None
        # Email has no wrap-up running.
        await send(client, ROUTING_REQUESTED, routing("e1", channel="email"))
        assert await assigned(client, "e1") == "a1"

        # Nothing but the end of the wrap-up wakes the queue.
        assert await assigned(client, "r2") == "a1"
        current = await state(client)
    assert agent_json(current, "a1")["wrap_up_until"]["chat"] is None
    assert [d["request_id"] for d in harmony.data(REQUEST_QUEUED)] == ["r2"]


async def test_default_profile_voice_blocks_chat_and_email_and_chat_blocks_email() -> None:
    harmony = FakeHarmony()
    # "default" is not in the seed: Harmony's built-in rule applies.
    a1 = agent("a1", [], chat=2, email=2, profile="default")
    async with running_acd(harmony, a1, ready=("voice", "chat", "email")) as client:
        started = await voice(client, "a1", "start")
        assert started.status_code == 202
        call_id = started.json()["call_id"]
        assert started.json()["harmony"]["status_code"] == 202
        # Harmony heard of the call before the simulator answered.
        assert harmony.data(VOICE_STARTED) == [{"agent_id": "a1", "call_id": call_id}]

        await send(client, ROUTING_REQUESTED, routing("r1"))
        await send(client, ROUTING_REQUESTED, routing("e1", channel="email"))
        current = await state(client)
        assert sorted(current["pending"]) == ["e1", "r1"]
        assert agent_json(current, "a1")["voice_calls"] == [call_id]
        assert agent_json(current, "a1")["load"]["voice"] == 1

        ended_call = await voice(client, "a1", "end", call_id)
        assert ended_call.status_code == 202
        assert harmony.data(VOICE_ENDED) == [
            {"agent_id": "a1", "call_id": call_id, "wrap_up_seconds": 0}
        ]
        # The call's end frees chat; the chat it takes then blocks the email.
        assert await assigned(client, "r1") == "a1"
        current = await state(client)
        assert current["pending"] == ["e1"]
        await send(client, WORK_ENDED, ended("r1", "a1"))
        assert await assigned(client, "e1") == "a1"
        current = await state(client)
    assert current["voice_started"] == current["voice_ended"] == 1
    assert agent_json(current, "a1")["voice_calls"] == []
    assert agent_json(current, "a1")["peak_load"]["voice"] == 1
    assert harmony.bad_signatures == 0


async def test_seed_profile_rules_and_voice_wrap_up() -> None:
    harmony = FakeHarmony()
    a1 = agent("a1", [], profile=CALLS_ALLOW_CHAT.name)
    async with running_acd(harmony, a1, ready=("voice", "chat", "email")) as client:
        call_id = (await voice(client, "a1", "start", "call-7")).json()["call_id"]
        assert call_id == "call-7"
        await send(client, ROUTING_REQUESTED, routing("r1"))
        await send(client, ROUTING_REQUESTED, routing("e1", channel="email"))
        # This profile lets chat through during a call but not email.
        assert await assigned(client, "r1") == "a1"
        current = await state(client)
        assert current["pending"] == ["e1"]

        await voice(client, "a1", "end")
        # The profile's voice wrap-up is reported to Harmony and applies to voice only.
        assert harmony.data(VOICE_ENDED) == [
            {"agent_id": "a1", "call_id": "call-7", "wrap_up_seconds": 3}
        ]
        assert await assigned(client, "e1") == "a1"
        current = await state(client)
    assert agent_json(current, "a1")["wrap_up_until"]["voice"] is not None
    assert agent_json(current, "a1")["wrap_up_until"]["chat"] is None


async def test_voice_start_and_end_are_checked() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", []), agent("a2", [], voice=0)) as client:
        # Logged out on voice (only chat and email were made ready).
        logged_out = await voice(client, "a1", "start")
        assert logged_out.status_code == 409
        assert logged_out.json()["error"] == "agent_unavailable"
        assert "not logged into voice" in logged_out.json()["detail"]

        # Not ready is still logged in: a call can reach the agent.
        await set_state(client, ["a1", "a2"], ("voice",), "not_ready")
        started = await voice(client, "a1", "start", "c1")
        assert started.status_code == 202
        full = await voice(client, "a1", "start", "c2")
        assert full.status_code == 409
        assert "no free voice slot" in full.json()["detail"]
        no_capacity = await voice(client, "a2", "start")
        assert no_capacity.status_code == 409
        assert (await voice(client, "a1", "end", "c9")).status_code == 404
        assert (await voice(client, "a2", "end")).status_code == 409
        assert (await voice(client, "nobody", "start")).json()["error"] == "unknown_agent"
        bad = await client.post("/simulate/voice", json={"agent_id": "a1", "action": "hold"})
        assert bad.status_code == 422
        assert "action" in bad.json()["detail"]

        assert (await voice(client, "a1", "end", "c1")).status_code == 202
        assert (await voice(client, "a1", "end", "c1")).status_code == 404
        current = await state(client)
    assert current["voice_started"] == 1
    assert current["voice_ended"] == 1
    assert current["voice_errors"] == []
    assert agent_json(current, "a1")["load"]["voice"] == 0
    assert [m["type"] for m in harmony.messages] == [
        AGENT_STATE_CHANGED,
        AGENT_STATE_CHANGED,
        VOICE_STARTED,
        VOICE_ENDED,
    ]


async def test_voice_refused_by_harmony_is_recorded() -> None:
    harmony = FakeHarmony()

    def refuse_calls(message: dict[str, Any]) -> httpx.Response | None:
        if message["type"] == VOICE_STARTED:
            body = {"error": "capacity_exceeded", "detail": "already on a call"}
            return httpx.Response(409, json=body)
        return None

    harmony.policy = refuse_calls
    async with running_acd(harmony, agent("a1", []), ready=("voice",)) as client:
        started = await voice(client, "a1", "start", "c1")
        current = await state(client)
    # The call happened at the ACD whatever Harmony thinks of it.
    assert started.status_code == 202
    assert started.json()["harmony"]["status_code"] == 409
    assert agent_json(current, "a1")["voice_calls"] == ["c1"]
    assert current["voice_errors"] == [
        {
            "type": VOICE_STARTED,
            "call_id": "c1",
            "status_code": 409,
            "error": "capacity_exceeded",
            "detail": "already on a call",
        }
    ]


async def test_voice_traffic_calls_only_agents_ready_on_voice() -> None:
    harmony = FakeHarmony()
    agents = [agent("a1", []), agent("a2", [])]
    options = {"voice_calls_per_minute": 6000.0, "voice_call_seconds": 0.02}
    async with running_acd(harmony, *agents, ready=(), **options) as client:
        await set_state(client, ["a1"], ("voice",))
        await set_state(client, ["a2"], ("voice",), "not_ready")
        current = await wait_until(client, lambda s: s["voice_ended"] >= 3)
    started = harmony.data(VOICE_STARTED)
    ended_calls = harmony.data(VOICE_ENDED)
    assert {d["agent_id"] for d in started} == {"a1"}
    assert {d["call_id"] for d in ended_calls} <= {d["call_id"] for d in started}
    assert len({d["call_id"] for d in started}) == len(started)
    assert agent_json(current, "a1")["peak_load"]["voice"] == 1
    assert current["voice_errors"] == []


async def test_an_agent_state_older_than_the_last_applied_sequence_is_not_applied() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", []), ready=()) as client:
        newer = {**agent_state("a1", "chat", "not_ready", "break"), "sequence": 5}
        older = {**agent_state("a1", "chat", "ready"), "sequence": 4}
        other_channel = {**agent_state("a1", "email", "ready"), "sequence": 3}
        assert (await send(client, AGENT_STATE, newer)).json() == {"status": "accepted"}
        assert (await send(client, AGENT_STATE, older)).json() == {"status": "stale"}
        # Each channel keeps its own last sequence: the email mirror overtook nothing there.
        assert (await send(client, AGENT_STATE, other_channel)).json() == {"status": "accepted"}
        current = await wait_until(client, lambda s: s["echoes_sent"] >= 2)

    assert agent_json(current, "a1")["state"] == {
        "voice": "logged_out",
        "chat": "not_ready",
        "email": "ready",
    }
    assert [d["state"] for d in harmony.data(AGENT_STATE_CHANGED)] == ["not_ready", "ready"]


async def test_agent_capacity_from_harmony_changes_the_acds_selection() -> None:
    harmony = FakeHarmony()
    async with running_acd(harmony, agent("a1", [], chat=1)) as client:
        wider = {
            "agent_id": "a1",
            "profile": "wider",
            "capacity": {"voice": 1, "chat": 2, "email": 1},
            "blocks": {"voice": ["chat", "email"], "chat": [], "email": []},
            "wrap_up_seconds": {"voice": 0, "chat": 0, "email": 0},
            "sequence": 7,
        }
        assert (await send(client, AGENT_CAPACITY, wider)).json() == {"status": "accepted"}
        older = {**wider, "capacity": {"voice": 1, "chat": 1, "email": 1}, "sequence": 6}
        assert (await send(client, AGENT_CAPACITY, older)).json() == {"status": "stale"}
        ghost = await send(client, AGENT_CAPACITY, {**wider, "agent_id": "ghost"})
        assert ghost.json() == {"status": "ignored"}
        await send(client, ROUTING_REQUESTED, routing("r1"))
        await send(client, ROUTING_REQUESTED, routing("r2"))
        current = await wait_until(client, lambda s: len(harmony.selected()) == 2)

    assert harmony.selected() == {"r1": "a1", "r2": "a1"}
    assert agent_json(current, "a1")["capacity"] == {"voice": 1, "chat": 2, "email": 1}
