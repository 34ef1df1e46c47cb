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
    INTERACTION_FALLBACK,
    OFFER_DECLINED,
    OFFER_RESCINDED,
    OFFER_TIMED_OUT,
    REQUEST_CANCELLED,
    ROUTING_REQUESTED,
    WORK_ENDED,
    TargetKind,
)

__all__ = ["GenericHttpAdapter", "create_acd", "create_crm"]


def create_acd(
    name: str, settings: AdapterSettings, client: httpx.AsyncClient
) -> GenericHttpAdapter:
    """An ACD adapter sending ``routing.requested``, ``offer.declined`` / ``offer.timed_out`` /
    ``offer.rescinded``, ``request.cancelled``, ``work.ended``, ``agent.state`` and
    ``agent.capacity``."""
    return GenericHttpAdapter(
        TargetKind.ACD,
        name,
        settings,
        client,
        accepts=frozenset(
            {
                ROUTING_REQUESTED,
                OFFER_DECLINED,
                OFFER_TIMED_OUT,
                OFFER_RESCINDED,
                REQUEST_CANCELLED,
                WORK_ENDED,
                AGENT_STATE,
                AGENT_CAPACITY,
            }
        ),
        events=ACD_EVENTS,
    )


def create_crm(
    name: str, settings: AdapterSettings, client: httpx.AsyncClient
) -> GenericHttpAdapter:
    """A CRM adapter sending ``interaction.deliver``, ``offer.rescinded``,
    ``interaction.fallback`` and ``agent.state``."""
    return GenericHttpAdapter(
        TargetKind.CRM,
        name,
        settings,
        client,
        accepts=frozenset(
            {INTERACTION_DELIVER, OFFER_RESCINDED, INTERACTION_FALLBACK, AGENT_STATE}
        ),
        events=CRM_EVENTS,
    )
