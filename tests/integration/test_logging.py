"""At INFO, the log tells the story of each interaction in one line per state change."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.conftest import Harness


async def test_info_is_one_line_per_state_change_and_sends_are_debug(harness: Harness) -> None:
    h = harness
    with capture_logs() as logs:
        created = await h.create("chat-log", subject="Where is my order?")
        interaction_id = created.json()["interaction_id"]
        await h.drain()
        selected = await h.post_event(
            "acd",
            "agent.selected",
            {"request_id": h.request_id_for(interaction_id), "agent_id": "acd-002"},
        )
        assert selected.status_code == 202, selected.text
        await h.drain()
        await h.post_event(
            "crm", "interaction.accepted", {"external_id": "chat-log", "agent_id": "crm-002"}
        )
        await h.post_event("crm", "interaction.completed", {"external_id": "chat-log"})
        await h.drain()

    info = [
        (line["event"], line.get("interaction_id"), line.get("from_state"), line.get("to_state"))
        for line in logs
        if line["log_level"] == "info"
    ]
    changed = "interaction_state_changed"
    assert info == [
        (changed, interaction_id, None, "received"),
        (changed, interaction_id, "received", "routing"),
        (changed, interaction_id, "routing", "offered"),
        (changed, interaction_id, "offered", "delivered"),
        (changed, interaction_id, "delivered", "accepted"),
        (changed, interaction_id, "accepted", "completed"),
    ]
    sent = [line for line in logs if line["event"] == "message_sent"]
    assert {line["type"] for line in sent} == {
        "routing.requested",
        "interaction.deliver",
        "work.ended",
    }
    assert {line["log_level"] for line in sent} == {"debug"}
