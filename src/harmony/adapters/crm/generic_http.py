"""The generic CRM adapter: delivers interactions to agents over the generic protocol."""

from __future__ import annotations

import httpx

from harmony.adapters.generic_http import GenericHttpAdapter
from harmony.config import AdapterSettings
from harmony.routing.messages import AGENT_STATE, INTERACTION_DELIVER, TargetKind


def create(name: str, settings: AdapterSettings, client: httpx.AsyncClient) -> GenericHttpAdapter:
    """A CRM adapter sending ``interaction.deliver`` and ``agent.state``."""
    return GenericHttpAdapter(
        TargetKind.CRM,
        name,
        settings,
        client,
        accepts=frozenset({INTERACTION_DELIVER, AGENT_STATE}),
    )
