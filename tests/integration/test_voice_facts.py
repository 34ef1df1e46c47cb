"""A call the ACD reports is a fact: recorded even beyond voice capacity, and it blocks as work.

Harmony cannot refuse a call that is already ringing at the agent's phone; it records it, shows
the agent over capacity on voice, and lets the profile's cross-channel rule block other work
until the call ends. Over HTTP on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Harness, replay_history
from tests.integration.test_agent_state import agent, history, new_chat, select


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness


async def call(h: Harness, event: str, acd_agent: str, call_id: str, **extra: Any) -> Any:
    response = await h.post_event(
        "acd", event, {"agent_id": acd_agent, "call_id": call_id, **extra}
    )
    assert response.status_code == 202, response.text
    return response.json()


def voice_of(view: dict[str, Any]) -> tuple[int, int, bool]:
    voice = view["channels"]["voice"]
    return voice["load"], voice["capacity"], voice["over_capacity"]


async def assert_history_replays(h: Harness, agent_id: str) -> None:
    view = await agent(h, agent_id)
    replayed = replay_history(agent_id, await history(h, agent_id))
    for name, channel in view["channels"].items():
        derived = next(r for c, r in replayed.items() if c.value == name)
        assert (derived.status.value, derived.load, derived.capacity) == (
            channel["state"],
            channel["load"],
            channel["capacity"],
        ), name


async def test_a_call_beyond_voice_capacity_is_recorded_and_released(h: Harness) -> None:
    assert (await call(h, "voice.started", "acd-009", "a"))["status"] == "applied"
    await h.drain()  # sent before the next change, which would otherwise supersede it
    second = await call(h, "voice.started", "acd-009", "b")
    assert second["status"] == "applied"
    view = await agent(h, "agent-009")
    assert voice_of(view) == (2, 1, True)
    assert view["channels"]["voice"]["free"] == 0
    assert view["presence"] == "busy"
    last = (await history(h, "agent-009"))[-1]
    assert (last["event"], last["outcome"], last["load"], last["capacity"]) == (
        "voice.started",
        "applied",
        2,
        1,
    )
    assert last["detail"] == {"call_id": "b", "over_capacity": True}
    await h.drain()
    shown = [m["data"] for m in h.crm.of_type("agent.state") if m["data"]["channel"] == "voice"]
    assert [(m["load"], m["capacity"], m["busy"]) for m in shown] == [(1, 1, True), (2, 1, True)]

    # The same call under a new event id is still one call.
    assert (await call(h, "voice.started", "acd-009", "b"))["status"] == "ignored_stale"
    assert voice_of(await agent(h, "agent-009")) == (2, 1, True)

    chat = await new_chat(h, "c-over")
    refused = await select(h, chat, "acd-009")
    assert refused.status_code == 409
    assert "busy on voice" in refused.json()["detail"]

    ended = await call(h, "voice.ended", "acd-009", "a", wrap_up_seconds=0)
    assert ended["status"] == "applied"
    assert voice_of(await agent(h, "agent-009")) == (1, 1, False)
    assert (await call(h, "voice.ended", "acd-009", "a"))["status"] == "ignored_stale"
    assert voice_of(await agent(h, "agent-009")) == (1, 1, False)
    await call(h, "voice.ended", "acd-009", "b", wrap_up_seconds=0)
    assert voice_of(await agent(h, "agent-009")) == (0, 1, False)
    assert (await select(h, chat, "acd-009")).status_code == 202
    await assert_history_replays(h, "agent-009")


async def test_routed_work_still_respects_capacity_after_an_over_capacity_call(h: Harness) -> None:
    # A profile where voice blocks nothing: the second call overflows voice, chat stays open.
    profile = await h.client.put(
        "/v1/profiles/two-lines",
        json={"capacity": {"voice": 1, "chat": 1, "email": 1}, "blocks": {}},
    )
    assert profile.status_code == 200, profile.text
    moved = await h.client.put(
        "/v1/agents/agent-010",
        json={
            "crm_agent_id": "crm-010",
            "acd_agent_id": "acd-010",
            "skills": ["support"],
            "profile": "two-lines",
        },
    )
    assert moved.status_code == 200, moved.text
    await call(h, "voice.started", "acd-010", "v1")
    await call(h, "voice.started", "acd-010", "v2")
    assert voice_of(await agent(h, "agent-010")) == (2, 1, True)
    # With no blocking rule, chat is still offered up to chat's own capacity and no further.
    first = await new_chat(h, "c-1")
    assert (await select(h, first, "acd-010")).status_code == 202
    second = await new_chat(h, "c-2")
    refused = await select(h, second, "acd-010")
    assert refused.status_code == 409
    assert "no free chat capacity" in refused.json()["detail"]
    assert (await agent(h, "agent-010"))["channels"]["chat"]["load"] == 1
    # Lowering voice capacity is refused while a call is held, as for any held work.
    lowered = await h.client.put(
        "/v1/profiles/two-lines",
        json={"capacity": {"voice": 0, "chat": 1, "email": 1}, "blocks": {}},
    )
    assert lowered.status_code == 409, lowered.text
    await assert_history_replays(h, "agent-010")


async def test_a_direct_dial_to_a_chat_only_agent_blocks_chat(h: Harness) -> None:
    profile = await h.client.put(
        "/v1/profiles/chat-only",
        json={
            "capacity": {"voice": 0, "chat": 2, "email": 1},
            "blocks": {"voice": ["chat", "email"], "chat": ["email"]},
        },
    )
    assert profile.status_code == 200, profile.text
    moved = await h.client.put(
        "/v1/agents/agent-011",
        json={
            "crm_agent_id": "crm-011",
            "acd_agent_id": "acd-011",
            "skills": ["support"],
            "profile": "chat-only",
        },
    )
    assert moved.status_code == 200, moved.text
    started = await call(h, "voice.started", "acd-011", "direct-1")
    assert started["status"] == "applied"
    view = await agent(h, "agent-011")
    assert voice_of(view) == (1, 0, True)
    assert view["presence"] == "busy"
    busy = await h.client.get("/v1/agents", params={"presence": "busy"})
    assert "agent-011" in [a["id"] for a in busy.json()["items"]]

    chat = await new_chat(h, "c-direct")
    refused = await select(h, chat, "acd-011")
    assert refused.status_code == 409
    assert "busy on voice" in refused.json()["detail"]
    assert (await agent(h, "agent-011"))["channels"]["chat"]["load"] == 0

    await call(h, "voice.ended", "acd-011", "direct-1", wrap_up_seconds=0)
    assert voice_of(await agent(h, "agent-011")) == (0, 0, False)
    assert (await select(h, chat, "acd-011")).status_code == 202
    await assert_history_replays(h, "agent-011")


async def test_an_end_naming_another_agent_than_the_calls_frees_neither(h: Harness) -> None:
    await call(h, "voice.started", "acd-009", "held-by-9")
    await call(h, "voice.started", "acd-010", "own-of-10")

    answer = await call(h, "voice.ended", "acd-010", "held-by-9")

    assert answer["status"] == "ignored_stale"
    assert voice_of(await agent(h, "agent-009"))[0] == 1
    assert voice_of(await agent(h, "agent-010"))[0] == 1
    last = (await history(h, "agent-010"))[-1]
    assert last["detail"] == {"call_id": "held-by-9", "held_by": "agent-009"}
    # The call's own end still frees its holder.
    assert (await call(h, "voice.ended", "acd-009", "held-by-9"))["status"] == "applied"
    assert voice_of(await agent(h, "agent-009"))[0] == 0
