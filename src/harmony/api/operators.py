"""What operators read and provision: interactions, agents, queues, health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from harmony.api.deps import Container, container
from harmony.api.schemas import (
    AgentIn,
    AgentOut,
    ErrorBody,
    Health,
    HistoryOut,
    InteractionDetail,
    InteractionOut,
    InteractionPage,
    QueueIn,
    QueueOut,
    Readiness,
    RoutableChannel,
)
from harmony.errors import HarmonyError, NotFound
from harmony.routing import service
from harmony.routing.model import Channel, InteractionState, Queue
from harmony.routing.ports import InteractionFilter

router = APIRouter()
Wired = Annotated[Container, Depends(container)]
NamePath = Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:@-]+$")
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}
PUT_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 409, 413, 422)
}


@router.get("/v1/interactions", response_model=InteractionPage, tags=["interactions"])
async def list_interactions(
    wired: Wired,
    state: Annotated[InteractionState | None, Query()] = None,
    channel: Annotated[RoutableChannel | None, Query()] = None,
    queue: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
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
    responses=NOT_FOUND,
    tags=["interactions"],
)
async def get_interaction(
    wired: Wired, interaction_id: Annotated[str, Path(max_length=36)]
) -> InteractionDetail:
    """One interaction with its full history, oldest entry first."""
    async with wired.db.reader() as uow:
        interaction = await uow.interactions.get(interaction_id)
        if interaction is None:
            raise NotFound(f"no interaction '{interaction_id}'", code="unknown_interaction")
        history = await uow.interactions.history(interaction_id)
    return InteractionDetail(
        **InteractionOut.fields_of(interaction), history=[HistoryOut.of(h) for h in history]
    )


@router.get("/v1/agents", response_model=list[AgentOut], tags=["agents"])
async def list_agents(wired: Wired) -> list[AgentOut]:
    """Every agent with per-channel capacity and load."""
    async with wired.db.reader() as uow:
        agents = await uow.agents.all()
    return [AgentOut.of(a) for a in agents]


@router.get("/v1/agents/{agent_id}", response_model=AgentOut, responses=NOT_FOUND, tags=["agents"])
async def get_agent(wired: Wired, agent_id: Annotated[str, Path(max_length=100)]) -> AgentOut:
    """One agent's per-channel load and capacity."""
    async with wired.db.reader() as uow:
        agent = await uow.agents.get(agent_id)
    if agent is None:
        raise NotFound(f"no agent '{agent_id}'", code="unknown_agent")
    return AgentOut.of(agent)


@router.put("/v1/agents/{agent_id}", response_model=AgentOut, responses=PUT_ERRORS, tags=["agents"])
async def put_agent(wired: Wired, agent_id: Annotated[str, NamePath], body: AgentIn) -> AgentOut:
    """Create or update an agent. Capacity may not drop below the load the agent holds now."""
    agent = await service.upsert_agent(
        wired.db.uow(),
        agent_id=agent_id,
        name=body.name,
        crm_agent_id=body.crm_agent_id,
        acd_agent_id=body.acd_agent_id,
        skills=body.skills,
        capacity={Channel(ch): n for ch, n in body.capacity.items()},
    )
    return AgentOut.of(agent)


@router.get("/v1/queues", response_model=list[QueueOut], tags=["queues"])
async def list_queues(wired: Wired) -> list[QueueOut]:
    """Every queue with how many interactions wait for an agent and the oldest one's wait."""
    async with wired.db.reader() as uow:
        stats = await uow.queues.stats()
    now = wired.clock.now()
    return [QueueOut.of(s, now) for s in stats]


@router.put("/v1/queues/{name}", response_model=QueueOut, responses=PUT_ERRORS, tags=["queues"])
async def put_queue(wired: Wired, name: Annotated[str, NamePath], body: QueueIn) -> QueueOut:
    """Create or replace a queue definition."""
    await service.upsert_queue(
        wired.db.uow(), Queue(name=name, channel=Channel(body.channel), skills=body.skills)
    )
    async with wired.db.reader() as uow:
        stats = [s for s in await uow.queues.stats() if s.queue.name == name]
    return QueueOut.of(stats[0], wired.clock.now())


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


class NotReady(HarmonyError):
    status_code = 503
    code = "not_ready"


@router.get(
    "/readyz", response_model=Readiness, responses={503: {"model": ErrorBody}}, tags=["health"]
)
async def readyz(wired: Wired) -> Readiness:
    """The database answers; reports how many outbound messages wait to be relayed."""
    try:
        await wired.db.ping()
        async with wired.db.reader() as uow:
            pending = await uow.outbox.pending_count()
    except Exception as exc:
        raise NotReady(f"database unreachable: {type(exc).__name__}") from exc
    return Readiness(status="ready", database=wired.db.engine.dialect.name, outbox_pending=pending)
