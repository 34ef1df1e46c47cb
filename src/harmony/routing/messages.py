"""Outbound messages: what Harmony promises to tell the ACD or the CRM.

A message is written to the outbox in the same transaction as the state change that causes it;
the relay sends it later. Its id is the envelope id and the idempotency key on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from harmony.routing.ids import random_hex

ROUTING_REQUESTED = "routing.requested"
WORK_ENDED = "work.ended"
INTERACTION_DELIVER = "interaction.deliver"
# Harmony -> ACD: an offer ended without the work (the request stays open: select again).
OFFER_DECLINED = "offer.declined"
OFFER_TIMED_OUT = "offer.timed_out"
# Harmony -> ACD: forget a routing request (the customer left, the work overflowed or went
# back to the CRM); an agent it names gets the reserved unit back.
REQUEST_CANCELLED = "request.cancelled"
# Harmony -> CRM: an offer delivered to an agent is withdrawn (timed out, the agent left).
OFFER_RESCINDED = "offer.rescinded"
# Harmony -> CRM: route this yourself (the CRM's own routing takes the work back).
INTERACTION_FALLBACK = "interaction.fallback"
# Harmony -> ACD and CRM: one agent channel's state, so both sides show the same.
AGENT_STATE = "agent.state"
# Harmony -> ACD: an agent's capacities and cross-channel rules, after a profile or agent change.
AGENT_CAPACITY = "agent.capacity"


class TargetKind(StrEnum):
    ACD = "acd"
    CRM = "crm"


@dataclass(frozen=True)
class OutboundMessage:
    """One promised message to one adapter.

    Messages with the same ``ordering_key`` are sent one at a time in ``sequence`` order (the
    relay never has two of them in flight); a message with a ``supersede_key`` replaces an unsent
    older one with the same key, which is then never sent.
    """

    target_kind: TargetKind
    target: str
    type: str
    interaction_id: str
    payload: dict[str, Any]
    id: str = field(default_factory=lambda: f"msg_{random_hex()}")
    attempts: int = 0
    ordering_key: str | None = None
    sequence: int | None = None
    supersede_key: str | None = None


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox row as the relay sees it after claiming it.

    ``claim_token`` fences the claim: an outcome is recorded only while the row still carries
    it. ``lease_until`` is when another relay may claim the row again.
    """

    message: OutboundMessage
    attempts: int
    created_at: datetime
    claim_token: str
    lease_until: datetime
    last_error: str | None = None
