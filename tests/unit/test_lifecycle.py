"""The lifecycle table: complete, walked cell by cell on a real Interaction, and the document
written from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import product
from pathlib import Path

import pytest

from harmony.errors import Refused
from harmony.routing.interactions import DELIVERY_ACKNOWLEDGED
from harmony.routing.lifecycle import (
    LIFECYCLE,
    Event,
    InteractionState,
    Move,
    Note,
    Refuse,
    Rule,
    document,
    rule_for,
    terminal_states,
)
from harmony.routing.model import Channel, Interaction, Queue

S = InteractionState
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"

# A way into each state, by events of the table itself.
ROUTE_TO: dict[InteractionState, tuple[Event, ...]] = {
    S.RECEIVED: (),
    S.ROUTING: (Event.ROUTING_REQUESTED,),
    S.QUEUED: (Event.ROUTING_REQUESTED, Event.QUEUED),
    S.OFFERED: (Event.ROUTING_REQUESTED, Event.AGENT_SELECTED),
    S.DELIVERED: (Event.ROUTING_REQUESTED, Event.AGENT_SELECTED, Event.DELIVERED),
    S.ACCEPTED: (Event.ROUTING_REQUESTED, Event.AGENT_SELECTED, Event.ACCEPTED),
    S.COMPLETED: (Event.ROUTING_REQUESTED, Event.AGENT_SELECTED, Event.COMPLETED),
    S.FAILED: (Event.FAILED,),
    S.ABANDONED: (Event.ROUTING_REQUESTED, Event.ABANDONED),
    S.CANCELLED: (Event.CANCELLED,),
    S.FALLBACK: (Event.ROUTING_REQUESTED, Event.HANDED_BACK),
}


def interaction_in(state: InteractionState) -> Interaction:
    interaction = Interaction.receive(
        interaction_id="i-1",
        crm_adapter="generic",
        external_id="chat-1",
        channel=Channel.CHAT,
        queue=Queue("support", Channel.CHAT, []),
        priority=0,
        skills=[],
        customer={},
        subject=None,
        acd_adapter="generic",
        at=T0,
        cause="setup",
    )
    for step, event in enumerate(ROUTE_TO[state], start=1):
        interaction.apply(event, T0 + timedelta(seconds=step), cause="setup")
    assert interaction.state == state
    return interaction


def test_every_state_has_a_rule_for_every_event() -> None:
    assert list(LIFECYCLE) == list(S)
    for state, row in LIFECYCLE.items():
        assert list(row) == list(Event), state


@pytest.mark.parametrize(("state", "event"), list(product(S, Event)))
def test_each_cell_does_what_it_says(state: InteractionState, event: Event) -> None:
    interaction = interaction_in(state)
    before = list(interaction.new_history)
    at = T0 + timedelta(minutes=10)
    rule: Rule = rule_for(state, event)

    if isinstance(rule, Refuse):
        with pytest.raises(Refused) as refused:
            interaction.apply(event, at, cause="cell")
        assert (refused.value.code, refused.value.state) == (rule.name, state.value)
        assert refused.value.status_code == 409
        assert interaction.state == state and interaction.new_history == before
        return

    assert interaction.apply(event, at, cause="cell", detail={"k": 1}) == rule
    added = interaction.new_history[len(before) :]
    if isinstance(rule, Note):
        assert interaction.state == state
        [entry] = added
        assert (entry.event, entry.from_state, entry.to_state) == (rule.name, state, state)
        assert entry.detail == {"k": 1}
    else:
        assert isinstance(rule, Move)
        path = (*rule.via, rule.target)
        assert interaction.state == rule.target
        assert [(e.from_state, e.to_state) for e in added] == list(
            zip((state, *path), path, strict=False)
        )
        assert [e.event for e in added] == [f"{s.value}_implied" for s in rule.via] + [event.value]
        assert interaction.state_times[rule.target] == at
    assert interaction.received_at == T0


def test_no_event_leaves_a_terminal_state() -> None:
    assert terminal_states() == {S.COMPLETED, S.FAILED, S.ABANDONED, S.CANCELLED, S.FALLBACK}
    for state in terminal_states():
        assert not any(isinstance(rule, Move) for rule in LIFECYCLE[state].values()), state


def test_the_relays_acknowledgement_rule_is_the_tables() -> None:
    move = DELIVERY_ACKNOWLEDGED
    for state in S:
        rule = rule_for(state, Event.DELIVERED)
        if state == move.source:
            assert rule == Move(move.target)
        else:
            assert rule == Note(move.otherwise), state


def test_the_document_is_written_from_the_table() -> None:
    assert DOC.read_text() == document(), "run `make docs` (harmony lifecycle -o docs/lifecycle.md)"
