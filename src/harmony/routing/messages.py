"""Outbound messages: what Harmony promises to tell the ACD or the CRM.

A message is written to the outbox in the same transaction as the state change that causes it;
the relay sends it later. Its id is the envelope id and the idempotency key on the wire.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

ROUTING_REQUESTED = "routing.requested"
WORK_ENDED = "work.ended"
INTERACTION_DELIVER = "interaction.deliver"
# Harmony -> ACD and CRM: one agent channel's state, so both sides show the same.
AGENT_STATE = "agent.state"


class TargetKind(StrEnum):
    ACD = "acd"
    CRM = "crm"


@dataclass(frozen=True)
class OutboundMessage:
    """One promised message to one adapter."""

    target_kind: TargetKind
    target: str
    type: str
    interaction_id: str
    payload: dict[str, Any]
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    attempts: int = 0


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox row as the relay sees it after claiming it."""

    message: OutboundMessage
    attempts: int
    created_at: datetime
