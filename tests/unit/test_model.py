"""The Interaction state machine and the capacity rules, with no store at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import product

import pytest

from harmony.errors import Conflict, Refused, ValidationFailed
from harmony.routing.lifecycle import Event, Move, cells, rule_for
from harmony.routing.model import (
    ALLOWED_TRANSITIONS,
    HOLDS_CAPACITY,
    MAX_CAPACITY,
    TERMINAL_STATES,
    Agent,
    Channel,
    ChannelState,
    Interaction,
    InteractionState,
    Queue,
    validate_capacity,
)

S = InteractionState
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CHAT_QUEUE = Queue("support-chat", Channel.CHAT, ["support", "english"])

# The one path to each state from received, in order.
PATH_TO: dict[InteractionState, tuple[InteractionState, ...]] = {
    S.RECEIVED: (),
    S.ROUTING: (S.ROUTING,),
    S.QUEUED: (S.ROUTING, S.QUEUED),
    S.OFFERED: (S.ROUTING, S.OFFERED),
    S.DELIVERED: (S.ROUTING, S.OFFERED, S.DELIVERED),
    S.ACCEPTED: (S.ROUTING, S.OFFERED, S.DELIVERED, S.ACCEPTED),
    S.COMPLETED: (S.ROUTING, S.OFFERED, S.DELIVERED, S.ACCEPTED, S.COMPLETED),
    S.FAILED: (S.FAILED,),
    S.ABANDONED: (S.ABANDONED,),
    S.CANCELLED: (S.CANCELLED,),
    S.FALLBACK: (S.FALLBACK,),
}


def received(
    channel: Channel = Channel.CHAT, queue: Queue = CHAT_QUEUE, skills: list[str] | None = None
) -> Interaction:
    return Interaction.receive(
        interaction_id="i-1",
        crm_adapter="generic",
        external_id="chat-1",
        channel=channel,
        queue=queue,
        priority=5,
        skills=skills if skills is not None else ["billing", "support"],
        customer={"name": "Ann"},
        subject="Where is my order?",
        acd_adapter="generic",
        at=T0,
        cause="interaction.created evt-1",
    )


def interaction_in(state: InteractionState) -> Interaction:
    interaction = received()
    for step, target in enumerate(PATH_TO[state], start=1):
        interaction.move_to(target, T0 + timedelta(seconds=step), event="test", cause="setup")
    assert interaction.state == state
    return interaction


def test_receive_starts_in_received_with_the_queue_skills_merged_and_one_history_line() -> None:
    interaction = received()

    assert interaction.state == S.RECEIVED
    assert interaction.skills == ["billing", "english", "support"]
    assert interaction.queue == "support-chat"
    assert interaction.received_at == interaction.updated_at == T0
    assert interaction.state_times == {S.RECEIVED: T0}
    assert interaction.request_id is None and interaction.agent_id is None
    [entry] = interaction.new_history
    assert (entry.event, entry.from_state, entry.to_state) == ("received", None, S.RECEIVED)
    assert entry.cause == "interaction.created evt-1"
    assert entry.detail == {"queue": "support-chat"}
    assert entry.at == T0 and entry.interaction_id == "i-1"


def test_receive_refuses_a_queue_of_another_channel() -> None:
    with pytest.raises(ValidationFailed, match="support-chat") as caught:
        received(channel=Channel.EMAIL, queue=CHAT_QUEUE)
    assert caught.value.code == "queue_channel_mismatch"


def test_receive_refuses_voice_even_in_a_voice_shaped_queue() -> None:
    voice_queue = Queue("phones", Channel.VOICE, [])
    with pytest.raises(ValidationFailed, match="voice"):
        received(channel=Channel.VOICE, queue=voice_queue)


ALL_PAIRS = list(product(S, S))
ALLOWED_PAIRS = [(a, b) for a, b in ALL_PAIRS if b in ALLOWED_TRANSITIONS[a]]
FORBIDDEN_PAIRS = [(a, b) for a, b in ALL_PAIRS if b not in ALLOWED_TRANSITIONS[a]]


def test_the_moves_are_those_of_the_lifecycle_table() -> None:
    ended = [S.FAILED, S.ABANDONED, S.CANCELLED, S.FALLBACK]
    assert [
        *((S.RECEIVED, t) for t in [S.ROUTING, *ended]),
        *((S.ROUTING, t) for t in [S.ROUTING, S.QUEUED, S.OFFERED, *ended]),
        *((S.QUEUED, t) for t in [S.ROUTING, S.OFFERED, *ended]),
        *((S.OFFERED, t) for t in [S.ROUTING, S.DELIVERED, S.FAILED, S.ABANDONED, S.CANCELLED]),
        *((S.DELIVERED, t) for t in [S.ROUTING, S.ACCEPTED, S.FAILED, S.ABANDONED, S.CANCELLED]),
        (S.ACCEPTED, S.ROUTING),
        (S.ACCEPTED, S.COMPLETED),
        (S.ACCEPTED, S.FAILED),
    ] == ALLOWED_PAIRS
    assert {S.COMPLETED, *ended} == TERMINAL_STATES
    assert {S.OFFERED, S.DELIVERED, S.ACCEPTED} == HOLDS_CAPACITY


@pytest.mark.parametrize(("source", "target"), ALLOWED_PAIRS)
def test_an_allowed_move_changes_state_and_records_it(
    source: InteractionState, target: InteractionState
) -> None:
    interaction = interaction_in(source)
    before = len(interaction.new_history)
    at = T0 + timedelta(minutes=5)

    interaction.move_to(target, at, event="moved", cause="because", detail={"k": 1})

    assert interaction.state == target
    assert interaction.state_times[target] == at
    assert interaction.updated_at == at
    assert len(interaction.new_history) == before + 1
    entry = interaction.new_history[-1]
    assert (entry.from_state, entry.to_state) == (source, target)
    assert (entry.event, entry.cause, entry.detail, entry.at) == ("moved", "because", {"k": 1}, at)


@pytest.mark.parametrize(("source", "target"), FORBIDDEN_PAIRS)
def test_a_forbidden_move_is_a_conflict_and_changes_nothing(
    source: InteractionState, target: InteractionState
) -> None:
    interaction = interaction_in(source)
    history = list(interaction.new_history)
    times = dict(interaction.state_times)
    updated = interaction.updated_at

    with pytest.raises(Conflict) as caught:
        interaction.move_to(target, T0 + timedelta(hours=1), event="bad", cause="test")

    assert caught.value.code == "invalid_transition"
    assert caught.value.status_code == 409
    assert interaction.state == source
    assert interaction.new_history == history
    assert interaction.state_times == times
    assert interaction.updated_at == updated


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_go_nowhere(state: InteractionState) -> None:
    interaction = interaction_in(state)
    assert interaction.is_terminal
    assert not any(interaction.can_move_to(target) for target in S)


def test_offered_to_accepted_fills_in_delivered() -> None:
    interaction = interaction_in(S.OFFERED)
    at = T0 + timedelta(minutes=3)

    interaction.apply(Event.ACCEPTED, at, cause="interaction.accepted e-9")

    assert interaction.state == S.ACCEPTED
    assert interaction.state_times[S.DELIVERED] == at
    assert interaction.state_times[S.ACCEPTED] == at
    delivered, accepted = interaction.new_history[-2:]
    assert (delivered.from_state, delivered.to_state) == (S.OFFERED, S.DELIVERED)
    assert delivered.event == "delivered_implied"
    assert delivered.cause == "implied by interaction.accepted e-9"
    assert (accepted.from_state, accepted.to_state) == (S.DELIVERED, S.ACCEPTED)
    assert (accepted.event, accepted.cause) == ("accepted", "interaction.accepted e-9")


def test_delivered_to_completed_fills_in_accepted() -> None:
    interaction = interaction_in(S.DELIVERED)
    at = T0 + timedelta(minutes=7)

    interaction.apply(Event.COMPLETED, at, cause="interaction.completed e-3")

    assert interaction.state == S.COMPLETED
    assert interaction.state_times[S.ACCEPTED] == at
    moves = [(e.from_state, e.to_state, e.event) for e in interaction.new_history[-2:]]
    assert moves == [
        (S.DELIVERED, S.ACCEPTED, "accepted_implied"),
        (S.ACCEPTED, S.COMPLETED, "completed"),
    ]
    assert interaction.new_history[-2].cause == "implied by interaction.completed e-3"


def test_offered_to_completed_fills_in_delivered_and_accepted() -> None:
    interaction = interaction_in(S.OFFERED)

    interaction.apply(Event.COMPLETED, T0, cause="c")

    assert [e.to_state for e in interaction.new_history[-3:]] == [
        S.DELIVERED,
        S.ACCEPTED,
        S.COMPLETED,
    ]
    implied = {(s, r.target) for s, _, r in cells() if isinstance(r, Move) and r.via}
    assert implied == {
        (S.OFFERED, S.ACCEPTED),
        (S.OFFERED, S.COMPLETED),
        (S.DELIVERED, S.COMPLETED),
    }


def test_advance_without_an_implied_path_is_a_plain_move() -> None:
    interaction = interaction_in(S.ACCEPTED)
    interaction.apply(Event.COMPLETED, T0, cause="c")
    assert interaction.new_history[-1].from_state == S.ACCEPTED
    assert interaction.state == S.COMPLETED


@pytest.mark.parametrize("state", [S.RECEIVED, S.ROUTING, S.QUEUED, S.FAILED])
def test_accepted_where_the_table_refuses_it_leaves_the_interaction_untouched(
    state: InteractionState,
) -> None:
    interaction = interaction_in(state)
    history = list(interaction.new_history)

    with pytest.raises(Refused) as caught:
        interaction.apply(Event.ACCEPTED, T0, cause="c")

    assert caught.value.code == rule_for(state, Event.ACCEPTED).name  # type: ignore[union-attr]
    assert interaction.state == state
    assert interaction.new_history == history


def test_note_records_an_event_without_moving() -> None:
    interaction = interaction_in(S.QUEUED)
    interaction.note("queue_position", T0, "request.queued e-2", {"position": 3})

    entry = interaction.new_history[-1]
    assert interaction.state == S.QUEUED
    assert (entry.from_state, entry.to_state) == (S.QUEUED, S.QUEUED)
    assert (entry.event, entry.cause, entry.detail) == (
        "queue_position",
        "request.queued e-2",
        {"position": 3},
    )


def test_history_detail_is_a_copy_of_what_was_passed() -> None:
    interaction = interaction_in(S.QUEUED)
    detail = {"position": 1}
    interaction.note("queue_position", T0, "c", detail)
    detail["position"] = 99
    assert interaction.new_history[-1].detail == {"position": 1}


def test_channel_capacity_free_never_goes_negative() -> None:
    assert ChannelState(Channel.CHAT, 3, 1).free == 2
    assert ChannelState(Channel.CHAT, 1, 3).free == 0


def test_an_agent_without_a_channel_has_zero_capacity_there() -> None:
    agent = Agent("a", "A", "crm-a", "acd-a", [], {Channel.CHAT: ChannelState(Channel.CHAT, 2, 1)})
    assert agent.capacity_on(Channel.EMAIL) == ChannelState(Channel.EMAIL, 0, 0)
    assert agent.capacity_on(Channel.CHAT).free == 1


@pytest.mark.parametrize(
    "capacity",
    [
        {},
        {Channel.VOICE: 0, Channel.CHAT: 0, Channel.EMAIL: 0},
        {Channel.VOICE: 1, Channel.CHAT: 20, Channel.EMAIL: 20},
        {Channel.CHAT: 5},
    ],
)
def test_capacities_within_limits_pass(capacity: dict[Channel, int]) -> None:
    validate_capacity(capacity)


@pytest.mark.parametrize(
    ("channel", "value"),
    [
        (Channel.VOICE, 2),
        (Channel.CHAT, 21),
        (Channel.EMAIL, 21),
        (Channel.CHAT, -1),
        (Channel.VOICE, -1),
    ],
)
def test_capacities_outside_limits_are_refused_naming_the_channel(
    channel: Channel, value: int
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_capacity({channel: value})
    assert channel.value in caught.value.detail
    assert str(MAX_CAPACITY[channel]) in caught.value.detail
