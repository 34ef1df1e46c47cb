"""Agent state is ordered by each source's own sequence or by arrival, never by peers' clocks.

A CRM and an ACD have their own clocks; comparing one's ``occurred_at`` with the other's lets a
fast clock hide the other side's later changes, and one event from the far future freeze a
channel for good. ``occurred_at`` stays recorded data (history ``source_at``), clamped to
Harmony's now. Over HTTP on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Harness, replay_history
from tests.integration.test_agent_state import agent, history

# The latest time the edge accepts (years 2000-2099); year 9999 itself is refused with 422.
FAR_FUTURE = datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness


async def change(
    h: Harness, kind: str, agent_ref: str, occurred_at: datetime | None = None, **data: Any
) -> dict[str, Any]:
    response = await h.post_event(
        kind,
        "agent.state_changed",
        {"agent_id": agent_ref, "channels": ["chat"], **data},
        occurred_at=occurred_at,
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def stamped(line: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(line["source_at"])


async def test_a_crm_clock_running_fast_does_not_hide_a_later_acd_change(h: Harness) -> None:
    crm_clock = h.clock.now() + timedelta(minutes=2)
    crm = await change(h, "crm", "crm-004", crm_clock, state="not_ready", reason="lunch")
    assert crm["status"] == "applied"
    # Seconds later (by every clock that is right), the ACD puts the agent into a meeting.
    acd = await change(
        h,
        "acd",
        "acd-004",
        h.clock.now() + timedelta(seconds=5),
        state="not_ready",
        reason="meeting",
    )
    assert acd["status"] == "applied"
    chat = (await agent(h, "agent-004"))["channels"]["chat"]
    assert (chat["state"], chat["reason"]) == ("not_ready", "meeting")
    lines = await history(h, "agent-004")
    assert (lines[-1]["source"], lines[-1]["outcome"], lines[-1]["reason"]) == (
        "acd:generic",
        "applied",
        "meeting",
    )


async def test_an_event_far_in_the_future_freezes_nothing(h: Harness) -> None:
    before = h.clock.now()
    frozen = await change(h, "crm", "crm-005", FAR_FUTURE, state="not_ready", reason="break")
    after = h.clock.now()
    assert frozen["status"] == "applied"

    ready = await change(h, "crm", "crm-005", state="ready")
    assert ready["status"] == "applied"
    meeting = await change(h, "acd", "acd-005", state="not_ready", reason="meeting")
    assert meeting["status"] == "applied"
    assert (await agent(h, "agent-005"))["channels"]["chat"]["reason"] == "meeting"

    override = await h.client.put(
        "/v1/agents/agent-005/state",
        json={"channel": "chat", "state": "not_ready", "reason": "coaching"},
    )
    assert override.status_code == 200, override.text
    assert override.json()["channels"]["chat"]["reason"] == "coaching"
    assert (await agent(h, "agent-005"))["channels"]["chat"]["reason"] == "coaching"

    logout = await h.post_event("crm", "agent.logged_out", {"agent_id": "crm-005"})
    assert logout.json()["status"] == "applied", logout.text
    view = await agent(h, "agent-005")
    assert {c: v["state"] for c, v in view["channels"].items()} == {
        "chat": "logged_out",
        "email": "logged_out",
        "voice": "logged_out",
    }
    assert view["presence"] == "logged_out"
    lines = await history(h, "agent-005")
    assert "ignored_stale" not in {x["outcome"] for x in lines}
    # Recorded, but clamped to Harmony's receive time: no peer can date a change in the future.
    far = next(x for x in lines if x["event"] == "agent.state_changed")
    assert before <= stamped(far) <= after
    replayed = replay_history("agent-005", lines)
    assert {c.value: r.status.value for c, r in replayed.items()} == {
        "chat": "logged_out",
        "email": "logged_out",
        "voice": "logged_out",
    }


async def test_a_login_failure_after_a_far_future_login_logs_the_channel_out(h: Harness) -> None:
    login = await h.post_event(
        "acd",
        "agent.state_changed",
        {"agent_id": "acd-008", "channels": ["voice"], "state": "not_ready"},
        occurred_at=FAR_FUTURE,
    )
    assert login.json()["status"] == "applied"
    failed = await h.post_event(
        "acd",
        "agent.login_failed",
        {"agent_id": "acd-008", "channels": ["voice"], "reason": "extension busy"},
    )
    assert failed.json()["status"] == "applied", failed.text
    assert (await agent(h, "agent-008"))["channels"]["voice"]["state"] == "logged_out"


async def test_occurred_at_is_recorded_as_sent_unless_it_is_in_the_future(h: Harness) -> None:
    past = h.clock.now() - timedelta(seconds=30)
    await change(h, "crm", "crm-006", past, state="not_ready", reason="break")
    before = h.clock.now()
    await change(h, "acd", "acd-006", before + timedelta(minutes=2), state="ready")
    after = h.clock.now()
    first, second = [
        x for x in await history(h, "agent-006") if x["event"] == "agent.state_changed"
    ]
    assert stamped(first) == past
    assert before <= stamped(second) <= after


async def test_arrival_orders_a_source_without_sequence_and_sequence_orders_one_with_it(
    h: Harness,
) -> None:
    now = h.clock.now()
    # Without a sequence the later arrival wins, whatever the sender's clock says.
    first = await change(h, "crm", "crm-007", now, state="not_ready", reason="lunch")
    second = await change(h, "crm", "crm-007", now - timedelta(seconds=10), state="ready")
    assert (first["status"], second["status"]) == ("applied", "applied")
    assert (await agent(h, "agent-007"))["channels"]["chat"]["state"] == "ready"

    # With a sequence, the sender's own order wins over arrival: 4 after 5 is stale.
    seq5 = await change(h, "acd", "acd-007", now, state="not_ready", reason="break", sequence=5)
    seq4 = await change(h, "acd", "acd-007", now + timedelta(minutes=1), state="ready", sequence=4)
    assert (seq5["status"], seq4["status"]) == ("applied", "ignored_stale")
    chat = (await agent(h, "agent-007"))["channels"]["chat"]
    assert (chat["state"], chat["reason"]) == ("not_ready", "break")
    # Another source's change still applies by arrival: sequences are per agent and source.
    crm = await change(h, "crm", "crm-007", now - timedelta(minutes=5), state="ready")
    assert crm["status"] == "applied"
    seq6 = await change(
        h, "acd", "acd-007", now - timedelta(hours=1), state="not_ready", sequence=6
    )
    assert seq6["status"] == "applied"
    assert (await agent(h, "agent-007"))["channels"]["chat"]["state"] == "not_ready"
