"""Inbound webhooks and callbacks: ``/v1/crm/{adapter}/events`` and ``/v1/acd/{adapter}/events``.

The router is generic: look the adapter up (404), let it check the content type (415), verify
the signature (400 when the body is not UTF-8, 401) and parse the body into a command (400
unreadable or not strict JSON, 422 invalid); then admission control (``harmony.api.admission``)
may answer 503 ``overloaded`` with ``Retry-After``, storing nothing; otherwise the inbox stores
the event and ``harmony.routing.commands`` applies it. A refused event changes nothing but its
inbox row, kept so an operator can see why and re-drive it.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from fastapi import APIRouter, Request, Response

from harmony.adapters.base import SignatureError
from harmony.adapters.generic_http.inbound import ACD_EVENTS, CRM_EVENTS
from harmony.api.deps import Container
from harmony.api.openapi import event_request
from harmony.api.plumbing import errors, overloaded_response
from harmony.api.schemas import AgentEventAccepted, EventAccepted
from harmony.config import Settings
from harmony.errors import Unauthorized
from harmony.routing import commands
from harmony.routing.agents import AgentOutcome
from harmony.routing.messages import TargetKind

router = APIRouter(tags=["events"])
log = structlog.get_logger("harmony.events")

ERRORS = {**errors(400, 401, 404, 409, 413, 415, 422), 503: overloaded_response()}


def policy_of(settings: Settings) -> commands.Policy:
    """The settings the use cases read, from the application's settings."""
    return commands.Policy(
        acd_adapter=settings.routing_acd,
        not_ready_reasons=settings.not_ready_reasons,
        inbox_retention=timedelta(days=settings.inbox_retention_days),
    )


def answer(result: commands.Result) -> EventAccepted | AgentEventAccepted:
    """The body an event's sender gets for what its command did."""
    if isinstance(result, AgentOutcome):
        return AgentEventAccepted(
            status=result.summary,  # type: ignore[arg-type]
            agent_id=result.agent_id,
            channels={c.value: o.value for c, o in result.outcomes.items()},
        )
    structlog.contextvars.bind_contextvars(interaction_id=result.interaction_id)
    return EventAccepted(
        status="duplicate" if result.duplicate else "accepted",
        interaction_id=result.interaction_id,
    )


async def _receive(
    request: Request, kind: TargetKind, name: str, wired: Container
) -> EventAccepted | AgentEventAccepted:
    adapter = wired.registry.get(kind, name)
    headers = dict(request.headers)
    adapter.check_content_type(headers)
    body = await request.body()
    try:
        adapter.verify_inbound(body, headers)
    except SignatureError as exc:
        log.warning("signature_rejected", adapter=f"{kind.value}:{name}", reason=str(exc))
        raise Unauthorized(f"signature check failed: {exc}") from exc
    event = adapter.parse_inbound(body, headers)
    wired.admission.check_new_work(event.command)
    async with wired.admission.slot(event.command):
        result = await commands.receive(event, wired.db.uow, wired.clock, policy_of(wired.settings))
    return answer(result)


def _event_route(kind: TargetKind, event_types: list[str], summary: str) -> None:
    # The hottest route: the container is read off the app instead of through a dependency,
    # and the answer, built here from Harmony's own models, is serialised once without being
    # validated again against ``response_model`` (which stays for the OpenAPI document).
    async def receive_event(adapter: str, request: Request) -> Response:
        wired: Container = request.app.state.container
        answered = await _receive(request, kind, adapter, wired)
        return Response(answered.model_dump_json().encode(), 202, media_type="application/json")

    router.add_api_route(
        f"/v1/{kind.value}/{{adapter}}/events",
        receive_event,
        methods=["POST"],
        name=f"{kind.value}_event",
        status_code=202,
        response_model=EventAccepted | AgentEventAccepted,
        responses=ERRORS,
        openapi_extra=event_request(event_types),
        summary=summary,
    )


_event_route(
    TargetKind.CRM,
    list(CRM_EVENTS),
    "Receive a CRM event (interaction created / accepted / completed)",
)
_event_route(
    TargetKind.ACD,
    list(ACD_EVENTS),
    "Receive an ACD callback (agent selected / request queued)",
)
