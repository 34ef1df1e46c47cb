"""The generic ACD adapter: places routing requests and reports ended work."""

from __future__ import annotations

import httpx

from harmony.adapters.generic_http import GenericHttpAdapter
from harmony.config import AdapterSettings
from harmony.routing.messages import AGENT_STATE, ROUTING_REQUESTED, WORK_ENDED, TargetKind


def create(name: str, settings: AdapterSettings, client: httpx.AsyncClient) -> GenericHttpAdapter:
    """An ACD adapter sending ``routing.requested``, ``work.ended`` and ``agent.state``."""
    return GenericHttpAdapter(
        TargetKind.ACD,
        name,
        settings,
        client,
        accepts=frozenset({ROUTING_REQUESTED, WORK_ENDED, AGENT_STATE}),
    )
