"""create_app() and its lifespan: the one place that wires concrete parts together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import structlog
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from harmony import __version__
from harmony.adapters import generic_http
from harmony.adapters.base import AdapterRegistry
from harmony.adapters.generic_http.protocol import MAX_BODY_BYTES
from harmony.adapters.http_client import outbound_client
from harmony.api import events, inbox, operators
from harmony.api.admission import Admission
from harmony.api.deps import Container
from harmony.api.openapi import install_openapi
from harmony.api.plumbing import BodyLimitMiddleware, RequestIdMiddleware, install_error_handlers
from harmony.clock import SystemClock
from harmony.config import Settings
from harmony.db.engine import SEED_LOCK, Database
from harmony.outbox.housekeeping import Housekeeper
from harmony.outbox.relay import Relay
from harmony.routing import agents, interactions
from harmony.routing.agent_state import Profile
from harmony.routing.model import Channel, Queue
from harmony.routing.ports import Clock
from harmony.routing.retry import run_with_retry
from harmony.scheduler import Scheduler
from harmony.seed import Seed, SeedProfile, SeedQueue, load_seed

log = structlog.get_logger("harmony")

ADAPTER_FACTORIES: dict[str, Any] = {
    "crm:generic_http": generic_http.create_crm,
    "acd:generic_http": generic_http.create_acd,
}


def build_registry(settings: Settings, client: httpx.AsyncClient) -> AdapterRegistry:
    """One adapter per configured CRM and ACD."""
    registry = AdapterRegistry()
    for kind, table in (("crm", settings.crm_adapters), ("acd", settings.acd_adapters)):
        for name, adapter_settings in table.items():
            factory = ADAPTER_FACTORIES[f"{kind}:{adapter_settings.type}"]
            registry.register(factory(name, adapter_settings, client))
    return registry


async def apply_seed(db: Database, clock: Clock, seed: Seed, settings: Settings) -> None:
    """Upsert the seed's profiles, queues and agents (states and loads are kept); what changed
    for the ACD's choice is mirrored to the routing ACD. An agent naming a CRM adapter that is
    not configured stops the start (ValidationFailed), before anything is written.

    Every replica applies the seed at its start: they take turns (an advisory lock on
    PostgreSQL), so the second finds everything in place and changes nothing.
    """
    crm_adapters = {
        agent.id: settings.crm_adapter_for_agent(agent.crm_adapter) for agent in seed.agents
    }
    async with db.exclusively(SEED_LOCK):
        await _upsert_seed(db, clock, seed, settings.routing_acd, crm_adapters)


async def _upsert_seed(
    db: Database, clock: Clock, seed: Seed, acd_adapter: str, crm_adapters: dict[str, str]
) -> None:
    for profile in seed.profiles:
        await run_with_retry(
            db.uow,
            agents.upsert_profile,
            clock,
            profile_from_seed(profile),
            acd_adapter=acd_adapter,
        )
    for queue in _overflow_targets_first(seed.queues):
        await run_with_retry(
            db.uow,
            interactions.upsert_queue,
            Queue(
                name=queue.name,
                channel=Channel(queue.channel),
                skills=queue.skills,
                offer_timeout_seconds=queue.offer_timeout_seconds,
                routing_timeout_seconds=queue.routing_timeout_seconds,
                max_wait_seconds=queue.max_wait_seconds,
                max_offers=queue.max_offers,
                overflow_queue=queue.overflow_queue,
            ),
        )
    for agent in seed.agents:
        await run_with_retry(
            db.uow,
            interactions.upsert_agent,
            clock,
            agent_id=agent.id,
            name=agent.name,
            crm_agent_id=agent.crm_agent_id,
            acd_agent_id=agent.acd_agent_id,
            skills=agent.skills,
            profile=agent.profile,
            crm_adapter=crm_adapters[agent.id],
            capacity={Channel(ch): n for ch, n in agent.capacity.items()},
            acd_adapter=acd_adapter,
        )


def _overflow_targets_first(queues: list[SeedQueue]) -> list[SeedQueue]:
    """The seed's queues, each after the queue it overflows into (which must exist when it is
    named); a queue whose overflow queue never comes keeps its place and is refused by name."""
    ordered: list[SeedQueue] = []
    placed: set[str] = set()
    left = list(queues)
    while left:
        ready = [q for q in left if q.overflow_queue is None or q.overflow_queue in placed]
        for queue in ready or left:
            ordered.append(queue)
            placed.add(queue.name)
        left = [q for q in left if q.name not in placed]
    return ordered


def profile_from_seed(profile: SeedProfile) -> Profile:
    """A seed file's profile as the routing core's; unknown channel names raise ValueError."""
    return Profile.from_names(
        profile.name,
        profile.capacity,
        profile.wrap_up_seconds,
        profile.blocks,
        profile.rona_after,
        profile.rona_counts_decline,
        profile.return_accepted_email,
    )


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    run_relay: bool = True,
    freeze_heap: bool = False,
) -> FastAPI:
    """Build the application. ``transport`` replaces the network for outbound calls in tests;
    ``run_relay=False`` leaves the outbox to be drained by hand (``container.relay.drain()``),
    due timers to ``container.scheduler.run_once()``, housekeeping to
    ``container.housekeeper.run_once()`` and the relay lag that admission
    control reads to ``container.admission.sample()``.

    ``freeze_heap`` (what ``harmony serve`` asks for) moves everything alive once the app has
    started (modules, tables, compiled statements, the app itself) out of the garbage
    collector's sight: a full collection then scans only what was made since, 5 ms instead of
    96 ms measured under routing load, a pause every request in flight waited for. A process
    that builds many apps (the tests) leaves it off: what it freezes is never collected."""
    settings = settings or Settings()
    clock = clock or SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(
            settings.database_url,
            clock.now,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        if settings.migrate_on_start:
            await db.migrate()
        if settings.seed_file is not None:
            await apply_seed(db, clock, load_seed(settings.seed_file), settings)
        for name in settings.adapters_using_dev_secret():
            log.warning("development_secret_in_use", adapter=name)
        client = outbound_client(
            settings.relay_concurrency * 2, f"harmony/{__version__}", transport
        )
        registry = build_registry(settings, client)
        relay = Relay(
            db.uow,
            registry,
            clock,
            batch_size=settings.relay_batch_size,
            concurrency=settings.relay_concurrency,
            poll_seconds=settings.relay_poll_seconds,
            max_attempts=settings.relay_max_attempts,
            base_backoff_seconds=settings.relay_base_backoff_seconds,
            lease_seconds=settings.relay_lease_seconds,
            send_timeout_seconds=max(
                a.timeout_seconds
                for a in (*settings.acd_adapters.values(), *settings.crm_adapters.values())
            ),
        )
        db.on_outbox_commit = relay.wake
        housekeeper = Housekeeper(
            db.uow, clock, inbox_retention=timedelta(days=settings.inbox_retention_days)
        )
        scheduler = Scheduler(
            db.uow,
            clock,
            poll_seconds=settings.scheduler_poll_seconds,
            batch_size=settings.scheduler_batch_size,
            lease_seconds=settings.scheduler_lease_seconds,
        )

        async def read_lag() -> float:
            now = clock.now()
            async with db.reader() as uow:
                due = await uow.outbox.oldest_due(now)
            # Messages handed to this process's relay wait in memory, not as due rows.
            waiting = relay.oldest_waiting()
            oldest = min((t for t in (due, waiting) if t is not None), default=None)
            return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())

        admission = Admission(
            max_inflight=settings.max_inflight_events,
            wait_seconds=settings.admission_wait_seconds,
            retry_after_seconds=settings.overload_retry_after_seconds,
            max_lag_seconds=settings.max_relay_lag_seconds,
            read_lag=read_lag,
        )
        app.state.container = Container(
            settings, db, clock, registry, relay, client, housekeeper, admission, scheduler
        )
        if freeze_heap:
            gc.collect()
            gc.freeze()
        tasks = []
        if run_relay:
            db.handoff = relay
            tasks.append(asyncio.create_task(relay.run(), name="outbox-relay"))
            tasks.append(asyncio.create_task(housekeeper.run(), name="housekeeping"))
            tasks.append(asyncio.create_task(scheduler.run(), name="scheduler"))
            tasks.append(asyncio.create_task(admission.run(), name="admission"))
        log.info("harmony_started", database=db.engine.dialect.name, relay=run_relay)
        try:
            yield
        finally:
            relay.stop()
            housekeeper.stop()
            scheduler.stop()
            admission.stop()
            await asyncio.gather(*tasks)
            await client.aclose()
            await db.dispose()

    # /docs and /redoc load their scripts from the package, not a CDN, so they work offline;
    # Swagger UI's validator badge would call out to validator.swagger.io.
    app = FastAPIOffline(
        title="Harmony",
        version=__version__,
        description="Omnichannel routing middleware: CRM chats and emails routed by the ACD.",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},
    )
    install_error_handlers(app)
    install_openapi(
        app,
        settings.not_ready_reasons,
        {"crm": sorted(settings.crm_adapters), "acd": sorted(settings.acd_adapters)},
    )
    app.include_router(events.router)
    events.install_event_routes(app)
    app.include_router(operators.router)
    app.include_router(inbox.router)
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY_BYTES)
    app.add_middleware(RequestIdMiddleware)  # outermost: the last resort catches the others too
    return app
