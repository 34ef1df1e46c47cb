"""An interaction's lifecycle as one table: state x event -> a move, a note, or a refusal.

Every cell is written out, none is implied: ``Move`` takes the interaction to a state (through
the states a peer may leave implicit, each recorded as ``<state>_implied``), ``Note`` records a
late or repeated event and changes nothing (the sender is answered as if it had applied: it
did, or something else decided first), ``Refuse`` names why the event cannot apply (the sender
gets 409 with the name and the current state). docs/lifecycle.md is written from this table
(``harmony docs``) and a test keeps the two equal.

No I/O here: the use cases ask the table, then do what the answer needs (release capacity,
tell the ACD, arm a timer).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

__all__ = [
    "LIFECYCLE",
    "Event",
    "InteractionState",
    "Move",
    "Note",
    "Refuse",
    "Rule",
    "allowed_moves",
    "cells",
    "rule_for",
    "terminal_states",
]


class InteractionState(StrEnum):
    """Where an interaction is in its life (rows of the table)."""

    RECEIVED = "received"
    ROUTING = "routing"
    QUEUED = "queued"
    OFFERED = "offered"
    DELIVERED = "delivered"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    FAILED = "failed"
    ABANDONED = "abandoned"  # the customer left before an agent had the work
    CANCELLED = "cancelled"  # the CRM withdrew it
    FALLBACK = "fallback"  # handed back to the CRM's own routing


S = InteractionState


class Event(StrEnum):
    """What can happen to an interaction, whoever reports it."""

    # Harmony
    ROUTING_REQUESTED = "routing_requested"  # the request to the ACD is stored to send
    # ACD
    QUEUED = "queued"
    AGENT_SELECTED = "agent_selected"
    # CRM
    DELIVERED = "delivered"  # the CRM acknowledged interaction.deliver
    ACCEPTED = "accepted"
    DECLINED = "declined"
    COMPLETED = "completed"
    ABANDONED = "abandoned"  # the customer left
    CANCELLED = "cancelled"  # the CRM withdrew the work
    TRANSFER_REQUESTED = "transfer_requested"
    # timers
    OFFER_TIMED_OUT = "offer_timed_out"
    # Harmony took the offer back: the agent went not ready or logged out before answering.
    OFFER_RESCINDED = "offer_rescinded"
    ROUTING_TIMED_OUT = "routing_timed_out"  # the ACD neither selected nor queued in time
    OVERFLOWED = "overflowed"  # a queue's overflow rule moved it to another queue
    HANDED_BACK = "handed_back"  # to the CRM's own routing
    # any
    FAILED = "failed"


@dataclass(frozen=True)
class Move:
    """Go to ``target``, passing through ``via`` first (steps the peer left implicit)."""

    target: InteractionState
    via: tuple[InteractionState, ...] = ()

    def describe(self) -> str:
        """The cell as the document shows it."""
        path = " -> ".join(s.value for s in (*self.via, self.target))
        return f"-> {path}"


@dataclass(frozen=True)
class Note:
    """Record the event under ``name``; the state stays."""

    name: str

    def describe(self) -> str:
        """The cell as the document shows it."""
        return f"note `{self.name}`"


@dataclass(frozen=True)
class Refuse:
    """Refuse the event: 409 ``name``, with the current state."""

    name: str

    def describe(self) -> str:
        """The cell as the document shows it."""
        return f"refuse `{self.name}`"


Rule = Move | Note | Refuse

# Rows in the order an interaction lives them; columns in Event's order.
_WAITING = (S.RECEIVED, S.ROUTING, S.QUEUED)
_WITH_AGENT = (S.OFFERED, S.DELIVERED)
_TERMINAL = (S.COMPLETED, S.FAILED, S.ABANDONED, S.CANCELLED, S.FALLBACK)


def _row(**cells: Rule) -> dict[Event, Rule]:
    return {Event(name): rule for name, rule in cells.items()}


def _build() -> dict[InteractionState, dict[Event, Rule]]:
    closed = Refuse("interaction_closed")
    late: dict[str, Rule] = {
        "routing_requested": closed,
        "queued": Note("late_queued_notice"),
        "agent_selected": Refuse("request_closed"),
        "delivered": Note("delivery_acknowledged"),
        "accepted": Refuse("interaction_closed"),
        "declined": Note("late_decline"),
        "completed": Note("late_completed"),
        "abandoned": Note("late_abandoned"),
        "cancelled": Note("late_cancel"),
        "transfer_requested": closed,
        "offer_timed_out": Note("stale_timer"),
        "offer_rescinded": Note("stale_timer"),
        "routing_timed_out": Note("stale_timer"),
        "overflowed": Note("stale_timer"),
        "handed_back": closed,
        "failed": Note("late_failure"),
    }
    table: dict[InteractionState, dict[Event, Rule]] = {
        S.RECEIVED: _row(
            routing_requested=Move(S.ROUTING),
            queued=Refuse("request_not_placed"),
            agent_selected=Refuse("request_not_placed"),
            delivered=Note("delivery_acknowledged"),
            accepted=Refuse("no_offer_pending"),
            declined=Refuse("no_offer_pending"),
            completed=Refuse("not_with_an_agent"),
            abandoned=Move(S.ABANDONED),
            cancelled=Move(S.CANCELLED),
            transfer_requested=Refuse("not_with_an_agent"),
            offer_timed_out=Note("stale_timer"),
            offer_rescinded=Note("stale_timer"),
            routing_timed_out=Note("stale_timer"),
            overflowed=Move(S.ROUTING),
            handed_back=Move(S.FALLBACK),
            failed=Move(S.FAILED),
        ),
        S.ROUTING: _row(
            routing_requested=Refuse("request_placed_already"),
            queued=Move(S.QUEUED),
            agent_selected=Move(S.OFFERED),
            delivered=Note("delivery_acknowledged"),
            # Never offered yet, or the offer timed out or was declined (accepted too late).
            accepted=Refuse("no_offer_pending"),
            declined=Note("late_decline"),
            completed=Refuse("not_with_an_agent"),
            abandoned=Move(S.ABANDONED),
            cancelled=Move(S.CANCELLED),
            transfer_requested=Refuse("not_with_an_agent"),
            offer_timed_out=Note("stale_timer"),
            offer_rescinded=Note("stale_timer"),
            # The use case places the request again (once), then overflows.
            routing_timed_out=Note("routing_placed_again"),
            overflowed=Move(S.ROUTING),
            handed_back=Move(S.FALLBACK),
            failed=Move(S.FAILED),
        ),
        S.QUEUED: _row(
            routing_requested=Refuse("request_placed_already"),
            queued=Note("queue_position"),
            agent_selected=Move(S.OFFERED),
            delivered=Note("delivery_acknowledged"),
            accepted=Refuse("no_offer_pending"),
            declined=Note("late_decline"),
            completed=Refuse("not_with_an_agent"),
            abandoned=Move(S.ABANDONED),
            cancelled=Move(S.CANCELLED),
            transfer_requested=Refuse("not_with_an_agent"),
            offer_timed_out=Note("stale_timer"),
            offer_rescinded=Note("stale_timer"),
            # The ACD answered (queued): its queue's maximum wait applies, not this bound.
            routing_timed_out=Note("stale_timer"),
            overflowed=Move(S.ROUTING),
            handed_back=Move(S.FALLBACK),
            failed=Move(S.FAILED),
        ),
        S.OFFERED: _row(
            routing_requested=Refuse("request_placed_already"),
            queued=Note("late_queued_notice"),
            agent_selected=Refuse("not_awaiting_selection"),
            delivered=Move(S.DELIVERED),
            accepted=Move(S.ACCEPTED, via=(S.DELIVERED,)),
            declined=Move(S.ROUTING),
            completed=Move(S.COMPLETED, via=(S.DELIVERED, S.ACCEPTED)),
            abandoned=Move(S.ABANDONED),
            cancelled=Move(S.CANCELLED),
            transfer_requested=Refuse("not_accepted"),
            offer_timed_out=Move(S.ROUTING),
            offer_rescinded=Move(S.ROUTING),
            routing_timed_out=Note("stale_timer"),
            overflowed=Note("stale_timer"),
            handed_back=Refuse("with_an_agent"),
            failed=Move(S.FAILED),
        ),
        S.DELIVERED: _row(
            routing_requested=Refuse("request_placed_already"),
            queued=Note("late_queued_notice"),
            agent_selected=Refuse("not_awaiting_selection"),
            delivered=Note("delivery_acknowledged"),
            accepted=Move(S.ACCEPTED),
            declined=Move(S.ROUTING),
            completed=Move(S.COMPLETED, via=(S.ACCEPTED,)),
            abandoned=Move(S.ABANDONED),
            cancelled=Move(S.CANCELLED),
            transfer_requested=Refuse("not_accepted"),
            offer_timed_out=Move(S.ROUTING),
            offer_rescinded=Move(S.ROUTING),
            routing_timed_out=Note("stale_timer"),
            overflowed=Note("stale_timer"),
            handed_back=Refuse("with_an_agent"),
            failed=Move(S.FAILED),
        ),
        S.ACCEPTED: _row(
            routing_requested=Refuse("request_placed_already"),
            queued=Note("late_queued_notice"),
            agent_selected=Refuse("not_awaiting_selection"),
            delivered=Note("delivery_acknowledged"),
            accepted=Note("accepted_again"),
            declined=Refuse("accepted_already"),
            completed=Move(S.COMPLETED),
            # The agent has the customer's work: it stays with them until they complete it.
            abandoned=Note("abandoned_with_agent"),
            cancelled=Refuse("with_an_agent"),
            transfer_requested=Move(S.ROUTING),
            offer_timed_out=Note("stale_timer"),
            offer_rescinded=Note("stale_timer"),
            routing_timed_out=Note("stale_timer"),
            overflowed=Note("stale_timer"),
            handed_back=Refuse("with_an_agent"),
            failed=Move(S.FAILED),
        ),
    }
    for state in _TERMINAL:
        row = dict(late)
        if state == S.COMPLETED:
            # Completed before accepted: the implied acceptance came first.
            row["accepted"] = Note("late_accepted")
            row["completed"] = Note("completed_again")
        if state == S.ABANDONED:
            row["abandoned"] = Note("abandoned_again")
        table[state] = _row(**row)
    return table


LIFECYCLE: Mapping[InteractionState, Mapping[Event, Rule]] = _build()


def rule_for(state: InteractionState, event: Event) -> Rule:
    """What ``event`` does to an interaction in ``state``."""
    return LIFECYCLE[state][event]


def cells() -> Iterator[tuple[InteractionState, Event, Rule]]:
    """Every cell, row by row."""
    for state, row in LIFECYCLE.items():
        for event, rule in row.items():
            yield state, event, rule


def allowed_moves() -> dict[InteractionState, frozenset[InteractionState]]:
    """For each state, the states the table can take it to in one step (implied steps
    included, each a step of its own)."""
    moves: dict[InteractionState, set[InteractionState]] = {state: set() for state in LIFECYCLE}
    for state, _, rule in cells():
        if isinstance(rule, Move):
            path = (state, *rule.via, rule.target)
            for source, target in pairwise(path):
                moves[source].add(target)
    return {state: frozenset(targets) for state, targets in moves.items()}


def terminal_states() -> frozenset[InteractionState]:
    """The states no event moves out of."""
    return frozenset(state for state, targets in allowed_moves().items() if not targets - {state})


_DOC_HEAD = """# The interaction lifecycle

Written by `harmony lifecycle -o docs/lifecycle.md` from the table in
`src/harmony/routing/lifecycle.py`, which the use cases ask; a test fails when the two differ.

Each cell says what an event does to an interaction in a state:
- `-> state`: it moves there (through the states a peer may leave implicit, each recorded in the
  history as `<state>_implied`);
- `note name`: the event is late or repeated; it is recorded in the history under that name, the
  state stays, and the sender is answered as if it had applied;
- `refuse name`: the event cannot apply; the sender gets `409` with that name as `error` and the
  current state, and the inbox keeps the refused event.

Terminal states: {terminal}.
"""


def document() -> str:
    """docs/lifecycle.md: the state diagram (Mermaid) and the whole table."""
    terminal = sorted(terminal_states(), key=list(InteractionState).index)
    lines = [_DOC_HEAD.format(terminal=", ".join(f"`{s.value}`" for s in terminal))]
    lines += ["## State diagram", "", "```mermaid", "stateDiagram-v2"]
    lines.append(f"    [*] --> {InteractionState.RECEIVED.value}")
    edges: dict[tuple[InteractionState, InteractionState], list[str]] = {}
    for state, event, rule in cells():
        if isinstance(rule, Move):
            edges.setdefault((state, rule.target), []).append(event.value)
    for (source, target), events in edges.items():
        lines.append(f"    {source.value} --> {target.value}: {', '.join(events)}")
    for state in terminal:
        lines.append(f"    {state.value} --> [*]")
    lines += ["```", "", "## The table", ""]
    for state, row in LIFECYCLE.items():
        lines += [f"### `{state.value}`", "", "| event | outcome |", "| --- | --- |"]
        lines += [f"| `{event.value}` | {rule.describe()} |" for event, rule in row.items()]
        lines.append("")
    return "\n".join(lines)
