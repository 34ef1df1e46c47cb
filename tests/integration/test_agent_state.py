"""Agent state across voice, chat and email, over HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from harmony.routing.model import Channel
from tests.conftest import Harness, replay_history


async def agent(h: Harness, agent_id: str) -> dict[str, Any]:
    response = await h.client.get(f"/v1/agents/{agent_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def history(h: Harness, agent_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 50}
        if cursor:
            params["cursor"] = cursor
        page = (await h.client.get(f"/v1/agents/{agent_id}/history", params=params)).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def select(h: Harness, interaction_id: str, acd_agent: str) -> Any:
    return await h.post_event(
        "acd",
        "agent.selected",
        {"request_id": h.request_id_for(interaction_id), "agent_id": acd_agent},
    )


async def new_chat(h: Harness, external_id: str, channel: str = "chat") -> str:
    created = await h.create(external_id, channel)
    assert created.status_code == 202, created.text
    await h.drain()
    return str(created.json()["interaction_id"])


async def test_voice_call_blocks_chat_until_it_ends(harness: Harness) -> None:
    h = harness
    started = await h.post_event(
        "acd", "voice.started", {"agent_id": "acd-001", "call_id": "call-1"}
    )
    assert started.status_code == 202, started.text
    view = await agent(h, "agent-001")
    assert view["channels"]["voice"]["load"] == 1
    assert view["presence"] == "busy"

    chat = await new_chat(h, "c-voice")
    refused = await select(h, chat, "acd-001")
    assert refused.status_code == 409
    assert refused.json()["error"] == "agent_unavailable"
    assert "busy on voice" in refused.json()["detail"]
    assert (await agent(h, "agent-001"))["channels"]["chat"]["load"] == 0

    # The CRM's media bar is told the agent is busy on voice.
    await h.drain()
    [mirror] = [m for m in h.crm.of_type("agent.state") if m["data"]["channel"] == "voice"]
    assert mirror["data"]["agent_id"] == "crm-001"
    assert mirror["data"]["busy"] is True
    assert mirror["data"]["load"] == 1

    ended = await h.post_event(
        "acd", "voice.ended", {"agent_id": "acd-001", "call_id": "call-1", "wrap_up_seconds": 0}
    )
    assert ended.status_code == 202
    accepted = await select(h, chat, "acd-001")
    assert accepted.status_code == 202, accepted.text
    assert (await agent(h, "agent-001"))["channels"]["chat"]["load"] == 1


async def test_chat_may_interrupt_email_but_not_the_reverse(harness: Harness) -> None:
    h = harness  # profile blended-chat*: chat blocks email, email blocks nothing
    email = await new_chat(h, "e-1", "email")
    assert (await select(h, email, "acd-001")).status_code == 202
    chat = await new_chat(h, "c-1")
    assert (await select(h, chat, "acd-001")).status_code == 202  # chat interrupts email
    email2 = await new_chat(h, "e-2", "email")
    refused = await select(h, email2, "acd-001")
    assert refused.status_code == 409
    assert "busy on chat" in refused.json()["detail"]


async def test_wrap_up_blocks_offers_until_it_expires(harness: Harness) -> None:
    h = harness
    profile = await h.client.put(
        "/v1/profiles/slow-wrap",
        json={"capacity": {"voice": 1, "chat": 2, "email": 1}, "wrap_up_seconds": {"chat": 30}},
    )
    assert profile.status_code == 200, profile.text
    moved = await h.client.put(
        "/v1/agents/agent-003",
        json={
            "crm_agent_id": "crm-003",
            "acd_agent_id": "acd-003",
            "skills": ["support"],
            "profile": "slow-wrap",
        },
    )
    assert moved.status_code == 200, moved.text
    first = await new_chat(h, "c-w1")
    assert (await select(h, first, "acd-003")).status_code == 202
    await h.drain()
    await h.post_event("crm", "interaction.completed", {"external_id": "c-w1"})
    view = await agent(h, "agent-003")
    assert view["channels"]["chat"]["in_wrap_up"] is True
    assert view["presence"] == "wrap_up"
    await h.drain()
    [ended] = h.acd.of_type("work.ended")
    assert ended["data"]["wrap_up_seconds"] == 30

    second = await new_chat(h, "c-w2")
    refused = await select(h, second, "acd-003")
    assert refused.status_code == 409
    assert "wrap-up" in refused.json()["detail"]

    h.clock.advance(31)
    assert (await agent(h, "agent-003"))["channels"]["chat"]["in_wrap_up"] is False
    assert (await select(h, second, "acd-003")).status_code == 202


async def test_out_of_order_events_settle_on_the_newest(harness: Harness) -> None:
    h = harness
    now = h.clock.now()
    newest = await h.post_event(
        "crm",
        "agent.state_changed",
        {
            "agent_id": "crm-004",
            "channels": ["chat"],
            "state": "not_ready",
            "reason": "lunch",
            "sequence": 2,
        },
        occurred_at=now - timedelta(seconds=1),
    )
    assert newest.json()["status"] == "applied"
    older = await h.post_event(
        "crm",
        "agent.state_changed",
        {"agent_id": "crm-004", "channels": ["chat"], "state": "ready", "sequence": 1},
        occurred_at=now - timedelta(seconds=2),
    )
    assert older.status_code == 202
    assert older.json()["status"] == "ignored_stale"
    chat = (await agent(h, "agent-004"))["channels"]["chat"]
    assert (chat["state"], chat["reason"]) == ("not_ready", "lunch")
    lines = await history(h, "agent-004")
    assert lines[-1]["outcome"] == "ignored_stale"
    assert lines[-1]["state"] == "not_ready"  # the state kept, not the one refused
    assert lines[-1]["detail"]["reported"] == "ready"

    # A sequence number at or below the last applied one is ignored, whatever its time.
    seq5 = await h.post_event(
        "acd",
        "agent.state_changed",
        {"agent_id": "acd-004", "channels": ["email"], "state": "not_ready", "sequence": 5},
        occurred_at=now - timedelta(seconds=10),
    )
    seq4 = await h.post_event(
        "acd",
        "agent.state_changed",
        {"agent_id": "acd-004", "channels": ["email"], "state": "ready", "sequence": 4},
        occurred_at=now + timedelta(seconds=20),
    )
    assert (seq5.json()["status"], seq4.json()["status"]) == ("applied", "ignored_stale")
    assert (await agent(h, "agent-004"))["channels"]["email"]["state"] == "not_ready"


async def test_echo_of_a_mirrored_change_does_not_flap(harness: Harness) -> None:
    h = harness
    start = h.clock.now()
    # The agent goes not ready then ready again in the CRM; both are mirrored to the ACD.
    for offset, data in (
        (1, {"state": "not_ready", "reason": "break"}),
        (2, {"state": "ready"}),
    ):
        response = await h.post_event(
            "crm",
            "agent.state_changed",
            {"agent_id": "crm-005", "channels": ["chat"], **data},
            occurred_at=start + timedelta(seconds=offset),
        )
        assert response.json()["status"] == "applied"
        await h.drain()  # sent before the next change, which would otherwise supersede it
    mirrored = [m for m in h.acd.of_type("agent.state") if m["data"]["agent_id"] == "acd-005"]
    assert [m["data"]["state"] for m in mirrored] == ["not_ready", "ready"]

    # The ACD now publishes its late echo of the first change, stamped with its own later time.
    echo = await h.post_event(
        "acd",
        "agent.state_changed",
        {"agent_id": "acd-005", "channels": ["chat"], "state": "not_ready", "reason": "break"},
        occurred_at=start + timedelta(seconds=5),
    )
    assert echo.json()["status"] == "echo"
    named_echo = await h.post_event(
        "acd",
        "agent.state_changed",
        {
            "agent_id": "acd-005",
            "channels": ["chat"],
            "state": "ready",
            "echo_of": mirrored[1]["id"],
        },
        occurred_at=start + timedelta(seconds=6),
    )
    assert named_echo.json()["status"] == "echo"
    assert (await agent(h, "agent-005"))["channels"]["chat"]["state"] == "ready"
    await h.drain()
    assert [m for m in h.crm.of_type("agent.state") if m["data"]["agent_id"] == "crm-005"] == []

    # A real change at the ACD afterwards is applied and mirrored to the CRM.
    real = await h.post_event(
        "acd",
        "agent.state_changed",
        {"agent_id": "acd-005", "channels": ["chat"], "state": "not_ready", "reason": "meeting"},
        occurred_at=start + timedelta(seconds=7),
    )
    assert real.json()["status"] == "applied"
    await h.drain()
    [to_crm] = [m for m in h.crm.of_type("agent.state") if m["data"]["agent_id"] == "crm-005"]
    assert (to_crm["data"]["state"], to_crm["data"]["reason"]) == ("not_ready", "meeting")


REFUSED_OVERRIDES = {
    "ready_when_logged_out": (
        {"channel": "chat", "state": "ready"},
        "not logged into chat",
    ),
    "not_ready_when_logged_out": (
        {"channel": "email", "state": "not_ready", "reason": "break"},
        "not logged into email",
    ),
    "logout_holding_work": (
        {"channel": "voice", "state": "logged_out"},
        "holds 1 voice interaction",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_OVERRIDES))
async def test_refused_supervisor_override_is_409_and_changes_nothing(
    harness: Harness, case: str
) -> None:
    h = harness
    await h.post_event(
        "crm", "agent.logged_out", {"agent_id": "crm-006", "channels": ["chat", "email"]}
    )
    await h.post_event("acd", "voice.started", {"agent_id": "acd-006", "call_id": "c-6"})
    before = await agent(h, "agent-006")
    lines_before = await history(h, "agent-006")
    body, detail = REFUSED_OVERRIDES[case]
    response = await h.client.put("/v1/agents/agent-006/state", json=body)
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "transition_not_allowed"
    assert detail in response.json()["detail"]
    assert await agent(h, "agent-006") == before
    assert await history(h, "agent-006") == lines_before


async def test_supervisor_override_is_applied_and_mirrored_to_both_sides(harness: Harness) -> None:
    h = harness
    response = await h.client.put(
        "/v1/agents/agent-007/state",
        json={"channel": "chat", "state": "not_ready", "reason": "coaching"},
    )
    assert response.status_code == 200, response.text
    chat = response.json()["channels"]["chat"]
    assert (chat["state"], chat["reason"]) == ("not_ready", "coaching")
    await h.drain()
    assert [m["data"]["state"] for m in h.acd.of_type("agent.state")] == ["not_ready"]
    assert [m["data"]["agent_id"] for m in h.crm.of_type("agent.state")] == ["crm-007"]
    bad_reason = await h.client.put(
        "/v1/agents/agent-007/state",
        json={"channel": "chat", "state": "not_ready", "reason": "nap"},
    )
    assert bad_reason.status_code == 422
    assert "'nap' is not a configured not-ready reason" in bad_reason.json()["detail"]


async def test_login_failure_is_counted_and_logs_the_channel_out(harness: Harness) -> None:
    h = harness
    failed = await h.post_event(
        "acd",
        "agent.login_failed",
        {"agent_id": "acd-008", "channels": ["voice"], "reason": "extension busy"},
    )
    assert failed.status_code == 202, failed.text
    view = await agent(h, "agent-008")
    assert view["login_failures"] == 1
    assert view["channels"]["voice"]["state"] == "logged_out"
    assert view["channels"]["chat"]["state"] == "ready"
    await h.drain()
    [shown] = h.crm.of_type("agent.state")
    assert (shown["data"]["channel"], shown["data"]["state"]) == ("voice", "logged_out")


async def test_a_repeated_or_overtaken_call_counts_once(harness: Harness) -> None:
    h = harness
    assert (
        await h.post_event("acd", "voice.started", {"agent_id": "acd-009", "call_id": "a"})
    ).status_code == 202
    again = await h.post_event("acd", "voice.started", {"agent_id": "acd-009", "call_id": "a"})
    assert again.json()["status"] == "ignored_stale"  # the same call under a new event id
    assert (await agent(h, "agent-009"))["channels"]["voice"]["load"] == 1
    # An end that overtakes its start is remembered; the late start then changes nothing.
    early_end = await h.post_event("acd", "voice.ended", {"agent_id": "acd-010", "call_id": "z"})
    late_start = await h.post_event("acd", "voice.started", {"agent_id": "acd-010", "call_id": "z"})
    assert (early_end.json()["status"], late_start.json()["status"]) == (
        "ignored_stale",
        "ignored_stale",
    )
    assert (await agent(h, "agent-010"))["channels"]["voice"]["load"] == 0


async def test_agents_filter_by_presence_state_and_skill(harness: Harness) -> None:
    h = harness
    await h.post_event("acd", "voice.started", {"agent_id": "acd-001", "call_id": "f-1"})
    await h.post_event("crm", "agent.logged_out", {"agent_id": "crm-002"})
    await h.post_event(
        "crm",
        "agent.state_changed",
        {"agent_id": "crm-003", "state": "not_ready", "reason": "break"},
    )

    async def ids(**params: Any) -> list[str]:
        response = await h.client.get("/v1/agents", params=params)
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["items"]]

    assert await ids(presence="busy") == ["agent-001"]
    assert await ids(presence="logged_out") == ["agent-002"]
    assert await ids(presence="not_ready") == ["agent-003"]
    assert "agent-004" in await ids(presence="ready")
    assert await ids(channel="chat", state="not_ready") == ["agent-003"]
    billing = await ids(skill="billing")
    assert billing == [f"agent-{n:03d}" for n in (1, 2, 4, 5, 7, 8, 10, 11)]
    assert await ids(queue="billing-chat") == billing
    spanish_billing = await ids(skill=["spanish", "billing"])
    assert spanish_billing == ["agent-004", "agent-008"]
    first = (await h.client.get("/v1/agents", params={"limit": 5})).json()
    second = (
        await h.client.get("/v1/agents", params={"limit": 5, "cursor": first["next_cursor"]})
    ).json()
    assert [a["id"] for a in first["items"] + second["items"]] == [
        f"agent-{n:03d}" for n in range(1, 11)
    ]
    unknown = await h.client.get("/v1/agents", params={"queue": "nowhere"})
    assert unknown.status_code == 404


async def test_history_replays_to_the_current_state(harness: Harness) -> None:
    h = harness
    chat = await new_chat(h, "c-r")
    await select(h, chat, "acd-011")
    await h.post_event("acd", "voice.started", {"agent_id": "acd-011", "call_id": "r-1"})
    await h.post_event(
        "crm",
        "agent.state_changed",
        {"agent_id": "crm-011", "channels": ["email"], "state": "not_ready", "reason": "training"},
    )
    await h.drain()
    await h.post_event("crm", "interaction.completed", {"external_id": "c-r"})
    view = await agent(h, "agent-011")
    lines = await history(h, "agent-011")
    replayed = replay_history("agent-011", lines)
    for name, channel in view["channels"].items():
        derived = replayed[Channel(name)]
        assert (derived.status.value, derived.reason, derived.load, derived.capacity) == (
            channel["state"],
            channel["reason"],
            channel["load"],
            channel["capacity"],
        )
