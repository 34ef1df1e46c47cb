"""The generic JSON-over-HTTP protocol (docs/protocol.md): envelope, signing and the adapters
for any CRM or ACD that speaks it."""

from __future__ import annotations

import httpx

from harmony.adapters.generic_http.adapter import GenericHttpAdapter
from harmony.adapters.generic_http.inbound import ACD_EVENTS, CRM_EVENTS
from harmony.config import AdapterSettings
from harmony.routing.messages import (
    AGENT_CAPACITY,
    AGENT_STATE,
    INTERACTION_DELIVER,
    ROUTING_REQUESTED,
    WORK_ENDED,
    TargetKind,
)

__all__ = ["GenericHttpAdapter", "create_acd", "create_crm"]


def create_acd(
    name: str, settings: AdapterSettings, client: httpx.AsyncClient
) -> GenericHttpAdapter:
    """An ACD adapter sending ``routing.requested``, ``work.ended``, ``agent.state`` and
    ``agent.capacity``."""
    return GenericHttpAdapter(
        TargetKind.ACD,
        name,
        settings,
        client,
        accepts=frozenset({ROUTING_REQUESTED, WORK_ENDED, AGENT_STATE, AGENT_CAPACITY}),
        events=ACD_EVENTS,
    )


def create_crm(
    name: str, settings: AdapterSettings, client: httpx.AsyncClient
) -> GenericHttpAdapter:
    """A CRM adapter sending ``interaction.deliver`` and ``agent.state``."""
    return GenericHttpAdapter(
        TargetKind.CRM,
        name,
        settings,
        client,
        accepts=frozenset({INTERACTION_DELIVER, AGENT_STATE}),
        events=CRM_EVENTS,
    )
