"""Inbound webhooks and callbacks: ``/v1/crm/{adapter}/events`` and ``/v1/acd/{adapter}/events``.

The router is generic: look the adapter up (404), let it check the content type (415), verify
the signature (400 when the body is not UTF-8, 401) and parse the body into a command (400
unreadable or not strict JSON, 422 invalid); then admission control (``harmony.api.admission``)
may answer 503 ``overloaded`` with ``Retry-After``, storing nothing; otherwise the inbox stores
the event and ``harmony.routing.commands`` applies it. A refused event changes nothing but its
inbox row, kept so an operator can see why and re-drive it.
"""

from __future__ import annotations

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.routing import Route

from harmony.adapters.base import SignatureError
from harmony.adapters.generic_http.inbound import ACD_EVENTS, CRM_EVENTS
from harmony.api.deps import Container
from harmony.api.openapi import event_request
from harmony.api.plumbing import errors, overloaded_response
from harmony.api.schemas import AgentEventAccepted, EventAccepted
from harmony.errors import Unauthorized
from harmony.routing import commands
from harmony.routing.agents import AgentOutcome
from harmony.routing.messages import TargetKind

router = APIRouter(tags=["events"])
log = structlog.get_logger("harmony.events")

ERRORS = {**errors(400, 401, 404, 409, 413, 415, 422), 503: overloaded_response()}


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
        result = await commands.receive(event, wired.db.uow, wired.clock, wired.policy)
    return answer(result)


def _event_route(kind: TargetKind, event_types: list[str], summary: str) -> None:
    # The hottest route. FastAPI serves its OpenAPI entry; ``install_event_routes`` puts a
    # plain Starlette route for the same path in front, which answers instead.
    async def receive_event(adapter: str, request: Request) -> Response:
        return await _answer_event(request, kind, adapter)

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


async def _answer_event(request: Request, kind: TargetKind, adapter: str) -> Response:
    # The container is read off the app instead of through a dependency, and the answer, built
    # here from Harmony's own models, is serialised once without being validated again against
    # ``response_model`` (which stays for the OpenAPI document).
    wired: Container = request.app.state.container
    answered = await _receive(request, kind, adapter, wired)
    return Response(answered.model_dump_json().encode(), 202, media_type="application/json")


def install_event_routes(app: FastAPI) -> None:
    """Answer the event routes with plain Starlette routes, matched before FastAPI's.

    They take a path and a raw body, and read the container off the app: FastAPI's per-request
    work (the dependency solver, its request and response wrappers, its route matching) did
    nothing for them and cost about 4% of an ingested event's CPU. Errors still reach the
    app's exception handlers, so every answer is the one FastAPI's route gave; that route keeps
    the OpenAPI document."""
    for kind in TargetKind:

        async def answer_event(request: Request, kind: TargetKind = kind) -> Response:
            return await _answer_event(request, kind, request.path_params["adapter"])

        app.router.routes.insert(
            0, Route(f"/v1/{kind.value}/{{adapter}}/events", answer_event, methods=["POST"])
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
