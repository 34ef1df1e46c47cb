"""An event about an existing interaction locks it and claims the event in one statement on
PostgreSQL (two steps on SQLite): a repeat answers as the first delivery did and changes
nothing, an event about no interaction is refused with nothing claimed, and each routed
event costs the statements listed here."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Harness
from tests.integration.test_agent_state import select
from tests.sql_sent import statements_sent


async def detail(h: Harness, interaction_id: str) -> dict[str, Any]:
    answer = await h.client.get(f"/v1/interactions/{interaction_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def agent(h: Harness, agent_id: str) -> dict[str, Any]:
    answer = await h.client.get(f"/v1/agents/{agent_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def inbox_row(h: Harness, source: str, event_id: str) -> dict[str, Any] | None:
    answer = await h.client.get(f"/v1/inbox/{source}/{event_id}")
    return dict(answer.json()) if answer.status_code == 200 else None


async def created(h: Harness, external_id: str) -> str:
    answer = await h.create(external_id)
    assert answer.status_code == 202, answer.text
    await h.drain()
    return str(answer.json()["interaction_id"])


async def test_each_routed_event_repeated_answers_as_the_first_and_changes_nothing(
    harness: Harness,
) -> None:
    h = harness
    interaction_id = await created(h, "chat-1")
    request_id = h.request_id_for(interaction_id)
    events: list[tuple[str, str, dict[str, Any]]] = [
        ("acd", "request.queued", {"request_id": request_id, "position": 3}),
        ("acd", "agent.selected", {"request_id": request_id, "agent_id": "acd-002"}),
        ("crm", "interaction.accepted", {"external_id": "chat-1", "agent_id": "crm-002"}),
        ("crm", "interaction.completed", {"external_id": "chat-1"}),
    ]
    for kind, event_type, data in events:
        event_id = f"evt-{event_type}"
        first = await h.post_event(kind, event_type, data, event_id=event_id)
        assert first.status_code == 202, first.text
        assert first.json() == {"status": "accepted", "interaction_id": interaction_id}
        await h.drain()
        before = (await detail(h, interaction_id), await agent(h, "agent-002"))

        again = await h.post_event(kind, event_type, data, event_id=event_id)

        assert again.status_code == 202, again.text
        assert again.json() == {"status": "duplicate", "interaction_id": interaction_id}
        await h.drain()
        assert (await detail(h, interaction_id), await agent(h, "agent-002")) == before
        stored = await inbox_row(h, f"{kind}:generic", event_id)
        assert stored is not None
        assert (stored["status"], stored["interaction_id"]) == ("applied", interaction_id)
        assert stored["type"] == event_type
    assert (await detail(h, interaction_id))["state"] == "completed"


async def test_an_event_about_no_interaction_is_refused_and_not_claimed(harness: Harness) -> None:
    h = harness
    unknown = [
        ("crm", "interaction.accepted", {"external_id": "nope", "agent_id": "crm-002"}),
        ("crm", "interaction.completed", {"external_id": "nope"}),
        ("acd", "agent.selected", {"request_id": "rr_nope", "agent_id": "acd-002"}),
        ("acd", "request.queued", {"request_id": "rr_nope"}),
    ]
    for kind, event_type, data in unknown:
        event_id = f"evt-unknown-{event_type}"
        answer = await h.post_event(kind, event_type, data, event_id=event_id)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == "unknown_interaction"
        stored = await inbox_row(h, f"{kind}:generic", event_id)
        assert stored is not None
        assert (stored["status"], stored["interaction_id"]) == ("failed", None)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_routed_events_statements_on_postgresql(harness: Harness) -> None:
    h = harness
    interaction_id = await created(h, "chat-3")
    sent: dict[str, list[str]] = {}
    with statements_sent() as sent["agent.selected"]:
        answer = await select(h, interaction_id, "acd-002")
        assert answer.status_code == 202, answer.text
    await h.drain()
    with statements_sent() as sent["interaction.accepted"]:
        answer = await h.post_event(
            "crm", "interaction.accepted", {"external_id": "chat-3", "agent_id": "crm-002"}
        )
        assert answer.status_code == 202, answer.text
    with statements_sent() as sent["interaction.completed"]:
        answer = await h.post_event("crm", "interaction.completed", {"external_id": "chat-3"})
        assert answer.status_code == 202, answer.text

    for event_type, statements in sent.items():
        # BEGIN, then the interaction locked and the event claimed in one statement.
        assert statements[0].startswith("BEGIN"), (event_type, statements)
        locked_and_claimed = statements[1]
        assert "FOR UPDATE" in locked_and_claimed, event_type
        assert "INSERT INTO inbox " in locked_and_claimed, event_type
        assert statements[-1].startswith("COMMIT"), (event_type, statements)
    assert {event_type: len(statements) for event_type, statements in sent.items()} == {
        # + the agent locked with its capacity reserved (one statement), the interaction
        # saved (carrying history and the delivery)
        "agent.selected": 5,
        # + the interaction saved (carrying history); the CRM's id of its agent, which the
        # CRM named, came with the lock
        "interaction.accepted": 4,
        # + the agent locked, the interaction saved (carrying its capacity released, history,
        # the agent's history and the work's end)
        "interaction.completed": 5,
    }
