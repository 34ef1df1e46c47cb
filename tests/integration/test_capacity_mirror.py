"""Profile and capacity changes reach the ACD (``agent.capacity``), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.conftest import Harness

CHAT2_AGENTS = ["acd-002", "acd-004", "acd-006", "acd-008", "acd-010", "acd-012"]


def capacity_messages(h: Harness, acd_agent_id: str | None = None) -> list[dict[str, Any]]:
    return [
        m["data"]
        for m in h.acd.of_type("agent.capacity")
        if acd_agent_id is None or m["data"]["agent_id"] == acd_agent_id
    ]


async def test_a_profile_change_is_mirrored_to_the_acd_for_each_of_its_agents(
    harness: Harness,
) -> None:
    h = harness
    changed = await h.client.put(
        "/v1/profiles/blended-chat2",
        json={
            "capacity": {"voice": 1, "chat": 1, "email": 2},
            "wrap_up_seconds": {"voice": 5},
            "blocks": {"voice": ["chat", "email"], "chat": [], "email": []},
        },
    )
    assert changed.status_code == 200, changed.text
    await h.drain()

    told = capacity_messages(h)
    assert sorted(m["agent_id"] for m in told) == CHAT2_AGENTS
    for message in told:
        assert message["profile"] == "blended-chat2"
        assert message["capacity"] == {"voice": 1, "chat": 1, "email": 2}
        assert message["blocks"] == {"voice": ["chat", "email"], "chat": [], "email": []}
        assert message["wrap_up_seconds"] == {"voice": 5, "chat": 0, "email": 0}
        assert message["changed_at"] == told[0]["changed_at"]
        # One sequence for both kinds: the seed's agent.capacity, the three login mirrors, this.
        assert message["sequence"] == 5

    unchanged = await h.client.put(
        "/v1/profiles/blended-chat2",
        json={
            "capacity": {"voice": 1, "chat": 1, "email": 2},
            "wrap_up_seconds": {"voice": 5},
            "blocks": {"voice": ["chat", "email"], "chat": [], "email": []},
        },
    )
    assert unchanged.status_code == 200
    await h.drain()
    assert len(capacity_messages(h)) == len(CHAT2_AGENTS)  # nothing changed, nothing told


async def test_an_agent_upsert_that_changes_capacity_or_profile_is_mirrored(
    harness: Harness,
) -> None:
    h = harness
    agent = {"crm_agent_id": "crm-003", "acd_agent_id": "acd-003", "skills": ["support"]}
    override = await h.client.put(
        "/v1/agents/agent-003",
        json={**agent, "profile": "blended-chat3", "capacity": {"chat": 1}},
    )
    assert override.status_code == 200, override.text
    same = await h.client.put(
        "/v1/agents/agent-003",
        json={**agent, "profile": "blended-chat3", "capacity": {"chat": 1}},
    )
    assert same.status_code == 200, same.text
    await h.drain()
    [first] = capacity_messages(h, "acd-003")
    assert first["capacity"] == {"voice": 1, "chat": 1, "email": 2}

    moved = await h.client.put("/v1/agents/agent-003", json={**agent, "profile": "blended-chat2"})
    assert moved.status_code == 200, moved.text
    created = await h.client.put(
        "/v1/agents/agent-100",
        json={"crm_agent_id": "crm-100", "acd_agent_id": "acd-100", "profile": "blended-chat2"},
    )
    assert created.status_code == 200, created.text
    await h.drain()

    _, second = capacity_messages(h, "acd-003")
    assert (second["profile"], second["capacity"]["chat"]) == ("blended-chat2", 2)
    assert second["sequence"] > first["sequence"]
    [new_agent] = capacity_messages(h, "acd-100")
    assert new_agent["capacity"] == {"voice": 1, "chat": 2, "email": 2}
    assert new_agent["sequence"] == 1
