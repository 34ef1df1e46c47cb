"""An interaction's next deadline: the one durable timer each unfinished interaction carries.

Every interaction that no agent has accepted yet waits for something with a bound: the ACD's
answer to its routing request (the queue's routing timeout), the CRM's answer to an offer (the
queue's offer timeout), an agent at all (the queue's maximum wait). One timer per interaction
(kind ``interaction``) is armed for the earliest of the bounds that apply in its state, in the
transaction that puts it there; accepted and finished work has none. So nothing can wait
unbounded: the timer fires, and the use case decides (``routing.rerouting.on_deadline``).

No I/O here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from harmony.routing.model import Interaction, InteractionState, Offer, Queue
from harmony.routing.ports import Timer

__all__ = ["TIMER_KIND", "Deadline", "next_timer", "offer_expiry"]

TIMER_KIND = "interaction"
S = InteractionState


class Deadline(StrEnum):
    """What an interaction's timer bounds."""

    OFFER = "offer_timeout"  # the CRM's answer to the live offer
    ROUTING = "routing_timeout"  # the ACD's selection or queued notice
    MAX_WAIT = "max_wait"  # the queue's maximum wait


def offer_expiry(queue: Queue, offered_at: datetime) -> datetime:
    """When an offer made now in ``queue`` times out."""
    return offered_at + timedelta(seconds=queue.policy.offer_timeout_seconds)


def next_timer(
    interaction: Interaction,
    queue: Queue,
    now: datetime,
    *,
    offer: Offer | None = None,
    placements: int = 1,
    named_agent: str | None = None,
) -> Timer | None:
    """The timer ``interaction`` needs in its current state (None: it needs none).

    Offered or delivered: the live ``offer``'s expiry (guarded by the offer's id). Waiting for
    the ACD's answer (routing): the routing timeout from ``now`` (``placements``: how many times
    the request was placed for it so far; ``named_agent``: the ACD id a transfer named, to name
    again when the request is placed again), or the maximum wait if sooner. Queued: the maximum
    wait.
    """
    state = interaction.state
    if state in (S.OFFERED, S.DELIVERED):
        if offer is None:
            raise ValueError(f"interaction {interaction.id} is {state} without its offer")
        return _timer(interaction, Deadline.OFFER, offer.expires_at, guard=offer.id)
    max_wait = interaction.max_wait_at
    if state in (S.RECEIVED, S.ROUTING):
        routing = now + timedelta(seconds=queue.policy.routing_timeout_seconds)
        if max_wait is not None and max_wait <= routing:
            return _timer(interaction, Deadline.MAX_WAIT, max_wait)
        return _timer(
            interaction, Deadline.ROUTING, routing, placements=placements, named_agent=named_agent
        )
    if state == S.QUEUED and max_wait is not None:
        return _timer(interaction, Deadline.MAX_WAIT, max_wait)
    return None


def _timer(
    interaction: Interaction,
    deadline: Deadline,
    due_at: datetime,
    *,
    guard: str = "",
    placements: int = 1,
    named_agent: str | None = None,
) -> Timer:
    detail: dict[str, object] = {"deadline": deadline.value}
    if deadline == Deadline.ROUTING:
        detail["placements"] = placements
        if named_agent is not None:
            detail["agent_id"] = named_agent
    return Timer(TIMER_KIND, interaction.id, due_at, guard=guard, detail=detail)
