"""What operators read and provision: interactions, agents, queues, health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from harmony.api.deps import Container, container
from harmony.api.plumbing import StrictJsonRoute, errors, json_response
from harmony.api.schemas import (
    AgentHistoryPage,
    AgentIn,
    AgentOut,
    AgentPage,
    AgentStateIn,
    Health,
    HistoryOut,
    InteractionDetail,
    InteractionOut,
    InteractionPage,
    OfferOut,
    ProfileIn,
    ProfileOut,
    QueueIn,
    QueueOut,
    Readiness,
    TransferIn,
)
from harmony.errors import HarmonyError, NotFound, ValidationFailed
from harmony.inputs import AnyChannel, Name, RoutableChannel, Skill, Text
from harmony.routing import agents, interactions, rerouting
from harmony.routing.agent_state import Presence, Profile
from harmony.routing.agents import OPERATOR
from harmony.routing.model import Channel, ChannelStatus, InteractionState, Queue
from harmony.routing.ports import AgentFilter, InteractionFilter
from harmony.routing.retry import run_with_retry

router = APIRouter(route_class=StrictJsonRoute)
Wired = Annotated[Container, Depends(container)]
AgentId = Annotated[Text, Path(min_length=1, max_length=100)]
Cursor = Annotated[
    str | None,
    Query(
        max_length=500,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page, unchanged (400 `invalid_cursor` else)",
    ),
]


@router.get(
    "/v1/interactions",
    response_model=InteractionPage,
    responses=errors(400, 422),
    tags=["interactions"],
)
async def list_interactions(
    wired: Wired,
    state: Annotated[InteractionState | None, Query()] = None,
    channel: Annotated[RoutableChannel | None, Query()] = None,
    queue: Annotated[Name | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> InteractionPage:
    """Interactions oldest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    flt = InteractionFilter(state=state, channel=Channel(channel) if channel else None, queue=queue)
    async with wired.db.reader() as uow:
        page = await uow.interactions.search(flt, limit, cursor)
    return InteractionPage(
        items=[InteractionOut.of(i) for i in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/v1/interactions/{interaction_id}",
    response_model=InteractionDetail,
    responses=errors(404, 422),
    tags=["interactions"],
)
async def get_interaction(
    wired: Wired, interaction_id: Annotated[Text, Path(min_length=1, max_length=36)]
) -> InteractionDetail:
    """One interaction with every offer it received and its full history, oldest first."""
    async with wired.db.reader() as uow:
        interaction = await uow.interactions.get(interaction_id)
        if interaction is None:
            raise NotFound(f"no interaction '{interaction_id}'", code="unknown_interaction")
        offers = await uow.offers.of_interaction(interaction_id)
        history = await uow.interactions.history(interaction_id)
    return InteractionDetail(
        **InteractionOut.fields_of(interaction),
        offers=[OfferOut.of(o) for o in offers],
        history=[HistoryOut.of(h) for h in history],
    )


@router.post(
    "/v1/interactions/{interaction_id}/transfer",
    response_model=InteractionOut,
    status_code=202,
    responses=errors(400, 404, 409, 413, 415, 422, 503),
    tags=["interactions"],
)
async def transfer_interaction(
    wired: Wired,
    interaction_id: Annotated[Text, Path(min_length=1, max_length=36)],
    body: TransferIn,
) -> InteractionOut:
    """Send accepted work to another queue or agent (a supervisor's transfer): the agent who
    has it is freed, and it is routed again through the ACD with its history and original age.
    409 ``not_accepted`` (and the current state) unless an agent accepted it; 409
    ``agent_unavailable`` with the reason when the named agent cannot take it now."""
    if body.queue is None and body.agent_id is None:
        raise ValidationFailed(
            "body: name a queue, an agent_id, or both", code="transfer_target_missing"
        )
    target = rerouting.TransferTarget(queue=body.queue, agent_id=body.agent_id)
    await run_with_retry(
        wired.db.uow,
        rerouting.transfer_interaction,
        wired.clock,
        interaction_ref=interaction_id,
        target=target,
        by=OPERATOR,
    )
    async with wired.db.reader() as uow:
        interaction = await uow.interactions.get(interaction_id)
    assert interaction is not None
    return InteractionOut.of(interaction)


@router.get(
    "/v1/agents", response_model=AgentPage, responses=errors(400, 404, 422), tags=["agents"]
)
async def list_agents(
    wired: Wired,
    presence: Annotated[Presence | None, Query()] = None,
    channel: Annotated[AnyChannel | None, Query()] = None,
    state: Annotated[
        ChannelStatus | None, Query(description="channel state; with `channel`, on that channel")
    ] = None,
    skill: Annotated[
        list[Skill] | None, Query(max_length=20, description="repeat for several")
    ] = None,
    queue: Annotated[
        Name | None, Query(description="has the queue's skills (404 `unknown_queue` if none)")
    ] = None,
    profile: Annotated[Name | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
) -> Response:
    """Agents by id, with each channel's state, load and capacity; filters combine with AND."""
    now = wired.clock.now()
    async with wired.db.reader() as uow:
        skills = list(skill or [])
        if queue is not None:
            found = await uow.queues.get(queue)
            if found is None:
                raise NotFound(f"queue: no queue '{queue}'", code="unknown_queue")
            skills += found.skills
        flt = AgentFilter(
            presence=presence,
            channel=Channel(channel) if channel else None,
            status=state,
            skills=tuple(sorted(set(skills))),
            profile=profile,
        )
        page = await uow.agents.search(flt, now, limit, cursor)
    return json_response(AgentPage.fields_of(page, now))


@router.get(
    "/v1/agents/{agent_id}", response_model=AgentOut, responses=errors(404, 422), tags=["agents"]
)
async def get_agent(wired: Wired, agent_id: AgentId) -> Response:
    """One agent: each channel's state, reason, since when, load, capacity and wrap-up."""
    async with wired.db.reader() as uow:
        agent = await uow.agents.get(agent_id)
    if agent is None:
        raise NotFound(f"no agent '{agent_id}'", code="unknown_agent")
    return json_response(AgentOut.fields_of(agent, wired.clock.now()))


@router.put(
    "/v1/agents/{agent_id}",
    response_model=AgentOut,
    responses=errors(400, 409, 413, 415, 422, 503),
    tags=["agents"],
)
async def put_agent(wired: Wired, agent_id: Annotated[Name, Path()], body: AgentIn) -> AgentOut:
    """Create or update an agent. Capacity may not drop below the load the agent holds now."""
    agent = await run_with_retry(
        wired.db.uow,
        interactions.upsert_agent,
        wired.clock,
        agent_id=agent_id,
        name=body.name,
        crm_agent_id=body.crm_agent_id,
        acd_agent_id=body.acd_agent_id,
        skills=body.skills,
        profile=body.profile,
        crm_adapter=wired.settings.crm_adapter_for_agent(body.crm_adapter),
        capacity={Channel(ch): n for ch, n in body.capacity.given().items()},
        acd_adapter=wired.settings.routing_acd,
    )
    return AgentOut.of(agent, wired.clock.now())


@router.put(
    "/v1/agents/{agent_id}/state",
    response_model=AgentOut,
    responses=errors(400, 404, 409, 413, 415, 422, 503),
    tags=["agents"],
)
async def put_agent_state(wired: Wired, agent_id: AgentId, body: AgentStateIn) -> Response:
    """Supervisor override of one channel. 409 names the rule when it is not allowed: only the
    agent logs in; no logout while holding work; no ready without capacity."""
    await run_with_retry(
        wired.db.uow,
        agents.report_state,
        wired.clock,
        reporter=agents.Reporter.operator(),
        event_id=None,
        agent_ref=agent_id,
        report=agents.StateReport(
            event="operator.override",
            status=ChannelStatus(body.state),
            reason=body.reason,
            channels=(Channel(body.channel),),
        ),
        reasons=wired.settings.not_ready_reasons,
        acd_adapter=wired.settings.routing_acd,
    )
    return await get_agent(wired, agent_id)


@router.get(
    "/v1/agents/{agent_id}/history",
    response_model=AgentHistoryPage,
    responses=errors(400, 404, 422),
    tags=["agents"],
)
async def agent_history(
    wired: Wired,
    agent_id: AgentId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
) -> Response:
    """The agent's append-only state history, oldest first: every change with its source."""
    async with wired.db.reader() as uow:
        page = await uow.agents.history(agent_id, limit, cursor)
        # History rows exist only for an existing agent: look the agent up only without any.
        if not page.items and await uow.agents.get(agent_id) is None:
            raise NotFound(f"no agent '{agent_id}'", code="unknown_agent")
    return json_response(AgentHistoryPage.fields_of(page))


@router.get("/v1/profiles", response_model=list[ProfileOut], tags=["agents"])
async def list_profiles(wired: Wired) -> list[ProfileOut]:
    """Channel profiles: capacities, wrap-up and cross-channel rules."""
    async with wired.db.reader() as uow:
        return [ProfileOut.of(p) for p in await uow.profiles.all()]


@router.put(
    "/v1/profiles/{name}",
    response_model=ProfileOut,
    responses=errors(400, 409, 413, 415, 422, 503),
    tags=["agents"],
)
async def put_profile(wired: Wired, name: Annotated[Name, Path()], body: ProfileIn) -> ProfileOut:
    """Create or replace a profile; its agents' capacities follow (409 if one holds more)."""
    profile = Profile.from_names(
        name,
        body.capacity.given(),
        body.wrap_up_seconds,
        body.blocks,
        body.rona_after,
        body.rona_counts_decline,
        body.return_accepted_email,
    )
    await run_with_retry(
        wired.db.uow,
        agents.upsert_profile,
        wired.clock,
        profile,
        acd_adapter=wired.settings.routing_acd,
    )
    return ProfileOut.of(profile)


@router.get("/v1/queues", response_model=list[QueueOut], tags=["queues"])
async def list_queues(wired: Wired) -> list[QueueOut]:
    """Every queue with its policy, how many interactions wait for an agent and the oldest
    one's wait, how many are offered to agents now, and how many customers left it waiting in
    the last 24 hours."""
    async with wired.db.reader() as uow:
        now = wired.clock.now()
        stats = await uow.queues.stats(now)
    return [QueueOut.of(s, now) for s in stats]


@router.put(
    "/v1/queues/{name}",
    response_model=QueueOut,
    responses=errors(400, 413, 415, 422, 503),
    tags=["queues"],
)
async def put_queue(wired: Wired, name: Annotated[Name, Path()], body: QueueIn) -> QueueOut:
    """Create or replace a queue definition and its policy (timeouts, maximum wait, maximum
    offers, overflow rule); a policy field left out takes the channel's default."""
    queue = Queue(
        name=name,
        channel=Channel(body.channel),
        skills=body.skills,
        offer_timeout_seconds=body.offer_timeout_seconds,
        routing_timeout_seconds=body.routing_timeout_seconds,
        max_wait_seconds=body.max_wait_seconds,
        max_offers=body.max_offers,
        overflow_queue=body.overflow_queue,
    )
    await run_with_retry(wired.db.uow, interactions.upsert_queue, queue)
    async with wired.db.reader() as uow:
        now = wired.clock.now()
        stats = [s for s in await uow.queues.stats(now) if s.queue.name == name]
    return QueueOut.of(stats[0], now)


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


class NotReady(HarmonyError):
    status_code = 503
    code = "not_ready"


@router.get("/readyz", response_model=Readiness, responses=errors(503), tags=["health"])
async def readyz(wired: Wired) -> Readiness:
    """The database answers; reports how many outbound messages wait to be relayed."""
    try:
        await wired.db.ping()
        async with wired.db.reader() as uow:
            pending = await uow.outbox.pending_count()
    except Exception as exc:
        raise NotReady(f"database unreachable: {type(exc).__name__}") from exc
    return Readiness(status="ready", database=wired.db.engine.dialect.name, outbox_pending=pending)
