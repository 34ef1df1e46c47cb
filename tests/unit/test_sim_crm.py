"""The CRM simulator against a fake Harmony that verifies signatures and scripts its answers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx

from harmony.adapters.generic_http.protocol import (
    AGENT_LOGGED_IN,
    AGENT_LOGGED_OUT,
    AGENT_STATE,
    AGENT_STATE_CHANGED,
    INTERACTION_ABANDONED,
    INTERACTION_ACCEPTED,
    INTERACTION_COMPLETED,
    INTERACTION_CREATED,
    INTERACTION_DELIVER,
)
from harmony.adapters.generic_http.signing import new_secret
from harmony.dev.simulators.crm import CrmSimConfig, create_app
from harmony.seed import Seed, SeedAgent, SeedQueue
from tests.unit.sim_support import (
    HARMONY,
    SECRET,
    RecordingHarmony,
    send,
    serving,
    state,
    wait_until,
)

SEED = Seed(
    queues=[
        SeedQueue(name="support-chat", channel="chat"),
        SeedQueue(name="billing-chat", channel="chat"),
        SeedQueue(name="support-email", channel="email"),
    ]
)

# Decides Harmony's answer to one event; None means the default answer.
Policy = Callable[[dict[str, Any]], Awaitable[httpx.Response | None]]


async def no_policy(message: dict[str, Any]) -> httpx.Response | None:
    return None


class FakeHarmony(RecordingHarmony):
    """Harmony's CRM endpoint: checks each event's signature and records it."""

    def __init__(self) -> None:
        super().__init__("/v1/crm/generic/events")
        self.policy: Policy = no_policy
        self._ids = itertools.count(1)

    async def answer(self, message: dict[str, Any]) -> httpx.Response:
        answer = await self.policy(message)
        if answer is not None:
            return answer
        body = {"status": "accepted"}
        if message["type"] == INTERACTION_CREATED:
            body["interaction_id"] = f"int-{next(self._ids)}"
        return httpx.Response(202, json=body)


@asynccontextmanager
async def running_crm(
    harmony: FakeHarmony | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]],
    seed: Seed = SEED,
    **options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    settings: dict[str, Any] = {
        "accept_delay": 0.01,
        "complete_delay": 0.01,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.02,
        **options,
    }
    config = CrmSimConfig(harmony_url=HARMONY, secret=SECRET, seed=seed, **settings)
    handler = harmony.handle if isinstance(harmony, FakeHarmony) else harmony
    app = create_app(config, transport=httpx.MockTransport(handler))
    async with serving(app, "http://crm") as client:
        yield client


async def deliver(
    client: httpx.AsyncClient,
    external_id: str,
    agent_id: str = "crm-001",
    channel: str = "chat",
    secret: str = SECRET,
    event_id: str | None = None,
) -> httpx.Response:
    data = {
        "interaction_id": f"int-{external_id}",
        "external_id": external_id,
        "channel": channel,
        "queue": f"support-{channel}",
        "agent_id": agent_id,
    }
    return await send(client, INTERACTION_DELIVER, data, secret=secret, event_id=event_id)


async def test_simulate_posts_signed_created_events() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony) as client:
        response = await client.post("/simulate/interactions", json={"count": 4})
        assert response.status_code == 202
        external_ids = response.json()["external_ids"]
        current = await state(client)

    assert len(set(external_ids)) == 4
    created = harmony.data(INTERACTION_CREATED)
    assert harmony.bad_signatures == 0
    assert sorted(d["external_id"] for d in created) == sorted(external_ids)
    by_id = {d["external_id"]: d for d in created}
    # "mixed" alternates channels; chat queues are used round-robin.
    channels = [by_id[eid]["channel"] for eid in external_ids]
    assert channels == ["chat", "email", "chat", "email"]
    assert [by_id[eid]["queue"] for eid in external_ids] == [
        "support-chat",
        "support-email",
        "billing-chat",
        "support-email",
    ]
    for eid in external_ids:
        data = by_id[eid]
        assert eid.startswith(f"{data['channel']}-")
        assert data["priority"] == 0
        assert data["customer"]["name"] and data["customer"]["email"]
        assert data["subject"]
        record = current["created"][eid]
        assert record["status_code"] == 202
        assert record["interaction_id"].startswith("int-")
        assert record["channel"] == data["channel"]
        assert record["queue"] == data["queue"]
    assert current["errors"] == []


async def test_simulate_with_channel_or_queue() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony) as client:
        emails = await client.post("/simulate/interactions", json={"count": 2, "channel": "email"})
        billing = await client.post(
            "/simulate/interactions", json={"count": 2, "queue": "billing-chat"}
        )
    assert emails.status_code == billing.status_code == 202
    by_id = {d["external_id"]: d for d in harmony.data(INTERACTION_CREATED)}
    assert {by_id[e]["queue"] for e in emails.json()["external_ids"]} == {"support-email"}
    assert {(by_id[e]["channel"], by_id[e]["queue"]) for e in billing.json()["external_ids"]} == {
        ("chat", "billing-chat")
    }


async def test_simulate_rejects_bad_bodies() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony) as client:
        for body in (
            {"count": 0},
            {"count": 10_001},
            {"count": 1, "channel": "voice"},
            {"count": 1, "channel": "email", "queue": "support-chat"},
        ):
            response = await client.post("/simulate/interactions", json=body)
            assert response.status_code == 422, body
            assert response.json()["error"] == "validation_error"
            assert response.json()["detail"]
        not_json = await client.post("/simulate/interactions", content=b"count=1")
        assert not_json.status_code == 400
        assert not_json.json()["error"] == "malformed_json"
    assert harmony.messages == []


async def test_created_is_retried_on_5xx_and_4xx_is_recorded() -> None:
    harmony = FakeHarmony()
    # In order: the first create fails once then succeeds; the second one is refused.
    answers: list[httpx.Response | None] = [
        httpx.Response(503, json={"error": "unavailable", "detail": "busy"}),
        None,
        httpx.Response(422, json={"error": "validation_error", "detail": "queue: unknown"}),
    ]

    async def script(message: dict[str, Any]) -> httpx.Response | None:
        return answers.pop(0) if answers else None

    harmony.policy = script
    async with running_crm(harmony, max_concurrency=1) as client:
        first = await client.post("/simulate/interactions", json={"count": 1})
        second = await client.post("/simulate/interactions", json={"count": 1})
        current = await state(client)

    [retried] = first.json()["external_ids"]
    [refused] = second.json()["external_ids"]
    attempts = [m for m in harmony.messages if m["data"]["external_id"] == retried]
    # The retry resends the same envelope, so Harmony can de-duplicate it.
    assert len(attempts) == 2
    assert attempts[0]["id"] == attempts[1]["id"]
    assert current["created"][retried]["status_code"] == 202
    assert current["created"][refused]["status_code"] == 422
    assert current["created"][refused]["interaction_id"] is None
    assert current["errors"] == [
        {
            "type": INTERACTION_CREATED,
            "external_id": refused,
            "status_code": 422,
            "error": "validation_error",
            "detail": "queue: unknown",
        }
    ]


async def test_delivery_is_accepted_then_completed() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony) as client:
        response = await deliver(client, "chat-0001", agent_id="crm-007")
        assert response.status_code == 202
        assert response.json() == {"status": "accepted"}
        current = await wait_until(client, lambda s: s["completed"] == ["chat-0001"])

    assert current["accepted"] == ["chat-0001"]
    assert current["deliveries"]["chat-0001"]["agent_id"] == "crm-007"
    assert current["deliveries"]["chat-0001"]["interaction_id"] == "int-chat-0001"
    assert current["deliveries"]["chat-0001"]["channel"] == "chat"
    assert current["deliveries"]["chat-0001"]["delivered_at"]
    assert current["peak_active"] == {"crm-007": {"chat": 1, "email": 0}}
    assert current["active"] == {"crm-007": {"chat": 0, "email": 0}}
    assert [(m["type"], m["data"]) for m in harmony.messages] == [
        (INTERACTION_ACCEPTED, {"external_id": "chat-0001", "agent_id": "crm-007"}),
        (INTERACTION_COMPLETED, {"external_id": "chat-0001"}),
    ]
    assert harmony.bad_signatures == 0


async def test_peak_active_counts_concurrent_work_per_channel() -> None:
    harmony = FakeHarmony()
    gate = asyncio.Event()

    async def hold_accepts(message: dict[str, Any]) -> httpx.Response | None:
        # Keeps every agent busy until the test has looked at the active counts.
        if message["type"] == INTERACTION_ACCEPTED:
            await gate.wait()
        return None

    harmony.policy = hold_accepts
    async with running_crm(harmony) as client:
        await deliver(client, "chat-1", agent_id="crm-001")
        await deliver(client, "chat-2", agent_id="crm-001")
        await deliver(client, "email-1", agent_id="crm-001", channel="email")
        await deliver(client, "chat-3", agent_id="crm-002")
        busy = await wait_until(client, lambda s: len(harmony.data(INTERACTION_ACCEPTED)) == 4)
        gate.set()
        done = await wait_until(client, lambda s: len(s["completed"]) == 4)

    assert busy["active"] == {
        "crm-001": {"chat": 2, "email": 1},
        "crm-002": {"chat": 1, "email": 0},
    }
    assert done["peak_active"] == busy["active"]
    assert done["active"] == {
        "crm-001": {"chat": 0, "email": 0},
        "crm-002": {"chat": 0, "email": 0},
    }
    assert sorted(done["accepted"]) == ["chat-1", "chat-2", "chat-3", "email-1"]


async def test_refused_accept_is_recorded_and_frees_the_agent() -> None:
    harmony = FakeHarmony()

    async def refuse_accept(message: dict[str, Any]) -> httpx.Response | None:
        if message["type"] == INTERACTION_ACCEPTED:
            body = {"error": "invalid_transition", "detail": "interaction is completed"}
            return httpx.Response(409, json=body)
        return None

    harmony.policy = refuse_accept
    async with running_crm(harmony) as client:
        await deliver(client, "chat-x")
        current = await wait_until(client, lambda s: s["errors"] != [])

    assert current["errors"][0]["type"] == INTERACTION_ACCEPTED
    assert current["errors"][0]["external_id"] == "chat-x"
    assert current["errors"][0]["status_code"] == 409
    assert current["errors"][0]["error"] == "invalid_transition"
    assert current["accepted"] == []
    assert current["active"]["crm-001"]["chat"] == 0
    assert harmony.data(INTERACTION_COMPLETED) == []


async def test_a_delivery_that_crossed_the_customers_abandon_is_not_worked() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony) as client:
        left = await client.post("/simulate/abandon", json={"external_id": "chat-gone"})
        assert left.status_code == 202
        # Harmony offered it before it heard of the abandon: the delivery arrives after it.
        await deliver(client, "chat-gone")
        await deliver(client, "chat-stays")
        current = await wait_until(client, lambda s: s["completed"] == ["chat-stays"])

    assert current["abandoned"] == ["chat-gone"]
    assert current["offers"]["chat-gone"] == ["crm-001"]
    assert [d["external_id"] for d in harmony.data(INTERACTION_ACCEPTED)] == ["chat-stays"]
    assert current["active"]["crm-001"]["chat"] == 0
    assert current["errors"] == []


async def test_an_acceptance_on_its_way_when_the_customer_leaves_is_settled_by_harmony() -> None:
    harmony = FakeHarmony()
    accepting = asyncio.Event()
    answer_accept = asyncio.Event()
    closed = {"error": "interaction_closed", "detail": "abandoned", "state": "abandoned"}

    async def hold_accepts(message: dict[str, Any]) -> httpx.Response | None:
        if message["type"] != INTERACTION_ACCEPTED:
            return None
        accepting.set()
        await answer_accept.wait()
        # Harmony took the first acceptance before the abandon, the second one after it.
        if message["data"]["external_id"] == "chat-late":
            return httpx.Response(409, json=closed)
        return None

    harmony.policy = hold_accepts
    async with running_crm(harmony) as client:
        for external_id in ("chat-kept", "chat-late"):
            accepting.clear()
            answer_accept.clear()
            await deliver(client, external_id)
            await asyncio.wait_for(accepting.wait(), 5)
            left = await client.post("/simulate/abandon", json={"external_id": external_id})
            assert left.status_code == 202
            answer_accept.set()
        current = await wait_until(
            client, lambda s: s["completed"] and s["active"]["crm-001"]["chat"] == 0
        )

    # Accepted first: the agent keeps the work and completes it. Refused: no error, freed.
    assert current["completed"] == ["chat-kept"]
    assert current["accepted"] == ["chat-kept"]
    assert current["abandoned"] == ["chat-kept", "chat-late"]
    assert current["errors"] == []
    assert [d["external_id"] for d in harmony.data(INTERACTION_ABANDONED)] == [
        "chat-kept",
        "chat-late",
    ]


async def test_a_transfer_asked_on_the_control_api_ends_the_agents_cycle() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony, complete_delay=0.2) as client:
        await deliver(client, "chat-t", agent_id="crm-001")
        await wait_until(client, lambda s: s["accepted"] == ["chat-t"])
        moved = await client.post(
            "/simulate/transfer", json={"external_id": "chat-t", "queue": "billing-chat"}
        )
        assert moved.status_code == 202
        # Routed again to another agent, who completes it; the first agent does not.
        await deliver(client, "chat-t", agent_id="crm-002")
        await wait_until(client, lambda s: s["completed"] == ["chat-t"])
        await asyncio.sleep(0.3)  # past the first agent's complete delay
        current = await state(client)

    assert current["transferred"] == ["chat-t"]
    assert current["offers"]["chat-t"] == ["crm-001", "crm-002"]
    assert current["completed"] == ["chat-t"]
    assert len(harmony.data(INTERACTION_COMPLETED)) == 1
    assert current["active"] == {
        "crm-001": {"chat": 0, "email": 0},
        "crm-002": {"chat": 0, "email": 0},
    }


async def test_network_errors_are_retried_during_the_cycle() -> None:
    harmony = FakeHarmony()
    failures = 2

    async def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal failures
        if failures:
            failures -= 1
            raise httpx.ConnectError("connection refused")
        return await harmony.handle(request)

    async with running_crm(flaky) as client:
        await deliver(client, "email-9", channel="email")
        current = await wait_until(client, lambda s: s["completed"] == ["email-9"])
    assert current["accepted"] == ["email-9"]
    assert current["errors"] == []


async def test_bad_signature_duplicates_and_malformed_deliveries() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony, accept_delay=0.05) as client:
        forged = await deliver(client, "chat-f", secret=new_secret())
        assert forged.status_code == 401
        assert forged.json()["error"] == "invalid_signature"

        first = await deliver(client, "chat-d", event_id="evt_dup")
        again = await deliver(client, "chat-d", event_id="evt_dup")
        assert first.status_code == again.status_code == 202
        assert again.json() == {"status": "duplicate"}

        wrong_type = await send(client, INTERACTION_CREATED, {})
        assert wrong_type.status_code == 422
        assert wrong_type.json()["error"] == "validation_error"

        missing = await send(client, INTERACTION_DELIVER, {"external_id": "x"})
        assert missing.status_code == 422
        assert "data.agent_id" in missing.json()["detail"]

        assert (await client.get("/healthz")).json() == {"status": "ok"}
        current = await wait_until(client, lambda s: s["completed"] == ["chat-d"])

    assert list(current["deliveries"]) == ["chat-d"]
    assert current["peak_active"]["crm-001"]["chat"] == 1
    assert [d["external_id"] for d in harmony.data(INTERACTION_ACCEPTED)] == ["chat-d"]


async def test_trickle_creates_mixed_interactions_until_shutdown() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony, trickle_per_second=200) as client:
        current = await wait_until(client, lambda s: len(s["created"]) >= 4)
    channels = {record["channel"] for record in current["created"].values()}
    assert channels == {"chat", "email"}
    assert harmony.bad_signatures == 0
    assert all(d["external_id"] in current["created"] for d in harmony.data(INTERACTION_CREATED))


# --- the agents' media bar -------------------------------------------------------------------

AGENTS_SEED = Seed(
    queues=SEED.queues,
    agents=[
        SeedAgent(id="agent-1", crm_agent_id="crm-1", acd_agent_id="acd-1"),
        # No voice capacity: its media bar has no voice channel.
        SeedAgent(id="agent-2", crm_agent_id="crm-2", acd_agent_id="acd-2", capacity={"voice": 0}),
    ],
)


def agent_answer(message: dict[str, Any], outcome: str = "applied") -> httpx.Response:
    """Harmony's answer to an agent event: the outcome on each channel it concerned."""
    agent_id = message["data"]["agent_id"]
    # Without channels, Harmony applies the change to every channel the agent has capacity on.
    every = ["chat", "email"] if agent_id == "crm-2" else ["voice", "chat", "email"]
    channels = message["data"].get("channels") or every
    return httpx.Response(
        202,
        json={
            "status": outcome,
            "agent_id": f"agent-{agent_id}",
            "channels": dict.fromkeys(channels, outcome),
        },
    )


def harmony_state(
    agent_id: str,
    channel: str,
    state_name: str = "ready",
    *,
    load: int = 0,
    busy: bool = False,
    wrap_up_until: str | None = None,
) -> dict[str, Any]:
    """``agent.state`` as Harmony mirrors it to the CRM."""
    return {
        "agent_id": agent_id,
        "channel": channel,
        "state": state_name,
        "reason": None,
        "load": load,
        "capacity": 1,
        "busy": busy,
        "wrap_up_until": wrap_up_until,
        "presence": "busy" if busy else state_name,
    }


async def test_agents_are_logged_in_at_start_once_harmony_answers() -> None:
    harmony = FakeHarmony()
    gate = asyncio.Event()
    refusals = 2

    async def down_then_gated(message: dict[str, Any]) -> httpx.Response | None:
        # Harmony is not up yet for the first two posts, then slow to answer.
        nonlocal refusals
        if refusals:
            refusals -= 1
            return httpx.Response(503, json={"error": "unavailable", "detail": "starting"})
        await gate.wait()
        return agent_answer(message)

    harmony.policy = down_then_gated
    async with running_crm(harmony, seed=AGENTS_SEED, retry_attempts=1) as client:
        waiting = await wait_until(client, lambda s: len(harmony.data(AGENT_LOGGED_IN)) >= 4)
        assert waiting["logged_in"] is False
        assert waiting["media_bar"]["crm-1"]["chat"]["state"] == "logged_out"
        gate.set()
        current = await wait_until(client, lambda s: s["logged_in"])

    logins = harmony.data(AGENT_LOGGED_IN)
    assert {d["agent_id"] for d in logins} == {"crm-1", "crm-2"}
    assert all(d == {"agent_id": d["agent_id"], "state": "ready"} for d in logins)
    assert set(current["media_bar"]) == {"crm-1", "crm-2"}
    assert set(current["media_bar"]["crm-2"]) == {"chat", "email"}
    assert {ch: bar["state"] for ch, bar in current["media_bar"]["crm-1"].items()} == {
        "voice": "ready",
        "chat": "ready",
        "email": "ready",
    }
    assert harmony.bad_signatures == 0


async def test_no_login_when_disabled() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony, seed=AGENTS_SEED, login_agents=False) as client:
        await deliver(client, "chat-1", agent_id="crm-1")
        current = await wait_until(client, lambda s: s["completed"] == ["chat-1"])
    assert current["logged_in"] is False
    assert harmony.data(AGENT_LOGGED_IN) == []
    assert current["media_bar"]["crm-1"]["chat"]["state"] == "logged_out"


async def test_media_bar_follows_harmony_agent_state() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony, seed=AGENTS_SEED, login_agents=False) as client:
        on_call = harmony_state("crm-1", "voice", load=1, busy=True)
        assert (await send(client, AGENT_STATE, on_call, event_id="evt_1")).status_code == 202
        on_break = {**harmony_state("crm-1", "chat", "not_ready"), "reason": "break"}
        assert (await send(client, AGENT_STATE, on_break)).status_code == 202
        # A wrap-up that is over shows idle, one still running shows busy.
        done = harmony_state("crm-2", "chat", busy=True, wrap_up_until="2000-01-01T00:00:00+00:00")
        await send(client, AGENT_STATE, done)
        wrapping = harmony_state(
            "crm-2", "email", busy=True, wrap_up_until="2999-01-01T00:00:00+00:00"
        )
        await send(client, AGENT_STATE, wrapping)
        # A redelivery of an older message changes nothing.
        stale = harmony_state("crm-1", "voice")
        duplicate = await send(client, AGENT_STATE, stale, event_id="evt_1")
        assert duplicate.json() == {"status": "duplicate"}
        bad = await send(client, AGENT_STATE, {**on_call, "channel": "fax"})
        assert bad.status_code == 422
        current = await state(client)

    bar = current["media_bar"]
    assert bar["crm-1"]["voice"] == {
        "state": "ready",
        "reason": None,
        "busy": True,
        "load": 1,
        "wrap_up_until": None,
        "pending_state": None,
    }
    assert bar["crm-1"]["chat"]["state"] == "not_ready"
    assert bar["crm-1"]["chat"]["reason"] == "break"
    assert bar["crm-2"]["chat"]["busy"] is False
    assert bar["crm-2"]["email"]["busy"] is True
    assert bar["crm-2"]["email"]["wrap_up_until"].startswith("2999-01-01")
    # Only Harmony's messages moved the bar: the CRM told Harmony nothing.
    assert harmony.messages == []


async def test_simulate_agent_state_reports_the_change_and_returns_harmonys_answer() -> None:
    harmony = FakeHarmony()

    async def answer_agents(message: dict[str, Any]) -> httpx.Response | None:
        if message["data"]["agent_id"] == "crm-9":
            return httpx.Response(404, json={"error": "unknown_agent", "detail": "no crm-9"})
        if message["type"] in (AGENT_STATE_CHANGED, AGENT_LOGGED_OUT):
            return agent_answer(message)
        return None

    harmony.policy = answer_agents
    async with running_crm(harmony, seed=AGENTS_SEED, login_agents=False) as client:
        on_break = await client.post(
            "/simulate/agent-state",
            json={
                "agent_id": "crm-1",
                "state": "not_ready",
                "channels": ["chat"],
                "reason": "break",
            },
        )
        assert on_break.status_code == 202
        assert on_break.json()["channels"] == {"chat": "applied"}
        ready = await client.post(
            "/simulate/agent-state", json={"agent_id": "crm-2", "state": "ready"}
        )
        assert ready.status_code == 202
        out = await client.post(
            "/simulate/agent-state",
            json={"agent_id": "crm-1", "state": "logged_out", "channels": ["email"]},
        )
        assert out.status_code == 202
        unknown = await client.post(
            "/simulate/agent-state", json={"agent_id": "crm-9", "state": "ready"}
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "unknown_agent"
        invalid = await client.post(
            "/simulate/agent-state", json={"agent_id": "crm-1", "state": "away"}
        )
        assert invalid.status_code == 422
        assert "state" in invalid.json()["detail"]
        current = await state(client)

    assert harmony.data(AGENT_STATE_CHANGED) == [
        {"agent_id": "crm-1", "channels": ["chat"], "state": "not_ready", "reason": "break"},
        {"agent_id": "crm-2", "state": "ready"},
        {"agent_id": "crm-9", "state": "ready"},
    ]
    assert harmony.data(AGENT_LOGGED_OUT) == [{"agent_id": "crm-1", "channels": ["email"]}]
    bar = current["media_bar"]
    assert (bar["crm-1"]["chat"]["state"], bar["crm-1"]["chat"]["reason"]) == ("not_ready", "break")
    assert bar["crm-1"]["email"]["state"] == "logged_out"
    assert bar["crm-1"]["voice"]["state"] == "logged_out"
    # Shown on the channels Harmony said it applied the change to.
    assert {ch: b["state"] for ch, b in bar["crm-2"].items()} == {"chat": "ready", "email": "ready"}
    assert "crm-9" not in bar


async def test_the_media_bar_ignores_an_agent_state_older_than_the_last_applied() -> None:
    harmony = FakeHarmony()
    async with running_crm(harmony, seed=AGENTS_SEED, login_agents=False) as client:
        newer = {**harmony_state("crm-1", "chat", "not_ready"), "reason": "break", "sequence": 9}
        older = {**harmony_state("crm-1", "chat"), "sequence": 8}
        assert (await send(client, AGENT_STATE, newer)).json() == {"status": "accepted"}
        assert (await send(client, AGENT_STATE, older)).json() == {"status": "stale"}
        current = await state(client)

    assert current["media_bar"]["crm-1"]["chat"]["state"] == "not_ready"
    assert current["media_bar"]["crm-1"]["chat"]["reason"] == "break"
