"""Shared fixtures: databases (SQLite and PostgreSQL), the app wired to recording peers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from harmony.adapters.generic_http.protocol import encode, envelope
from harmony.adapters.generic_http.signing import Signer
from harmony.config import DEV_SECRET, AdapterSettings, Settings
from harmony.main import create_app
from harmony.routing.agent_state import AgentStateEntry, StateOutcome, replay
from harmony.routing.model import Channel, ChannelStatus
from harmony.seed import load_seed
from tests.databases import (
    PG_ADMIN_DSN,
    built_sqlite_template,
    drop_templates,
    fresh_postgres_database,
    postgres_template,
    require_postgres_or_skip,
    sqlite_copy,
)

__all__ = ["PG_ADMIN_DSN", "fresh_postgres_database", "require_postgres_or_skip"]

# structlog's default renderer formats exceptions with rich when it is installed (schemathesis
# brings it), printing every frame's locals: seconds per logged traceback. Plain ones suffice.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed.json"
ACD_URL = "http://acd.test"
CRM_URL = "http://crm.test"


def pytest_sessionfinish(session: pytest.Session) -> None:
    drop_templates()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database at Alembic's head for one test."""
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture
async def empty_postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database with no tables, for one test."""
    async with fresh_postgres_database(empty=True) as url:
        yield url


BOTH_DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BOTH_DATABASES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test using it runs once on a SQLite file and once on a fresh PostgreSQL database,
    both already at Alembic's head (copies of the session's migrated templates).

    Under the ``harness`` fixture it is the harness's database: a copy of one where the
    harness's app has started once (seed applied, every agent logged in, relay drained)."""
    started = "harness" in request.fixturenames
    if request.param == "sqlite":
        template = await built_sqlite_template(HARNESS, start_harness_once) if started else None
        url = sqlite_copy(tmp_path, template)
        if started:
            STARTED_ON.add(url)
        yield url
        return
    template = await postgres_template(HARNESS, start_harness_once) if started else None
    async with fresh_postgres_database(template=template) as url:
        if started:
            STARTED_ON.add(url)
        yield url


@pytest.fixture(params=BOTH_DATABASES)
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Like ``database_url``, but with no tables: for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/harmony.db"
        return
    async with fresh_postgres_database(empty=True) as url:
        yield url


@dataclass
class RecordingPeer:
    """A CRM or ACD that verifies Harmony's signatures, records every envelope, answers 202."""

    secret: str = DEV_SECRET
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    answer_status: int = 202

    def app(self) -> FastAPI:
        peer = FastAPI()
        signer = Signer(self.secret)

        @peer.post("/events")
        async def events(request: Request) -> JSONResponse:
            body = await request.body()
            signer.verify(body, dict(request.headers))
            self.received.append(json.loads(body))
            self.headers.append(dict(request.headers))
            return JSONResponse({"status": "ok"}, status_code=self.answer_status)

        return peer

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == event_type]


class HostRouter(httpx.AsyncBaseTransport):
    """Routes outbound requests by host to in-process ASGI apps."""

    def __init__(self, apps: dict[str, FastAPI]) -> None:
        self._transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "seed_file": SEED,
        "acd_adapters": {"generic": AdapterSettings(url=ACD_URL)},  # type: ignore[arg-type]
        "crm_adapters": {"generic": AdapterSettings(url=CRM_URL)},  # type: ignore[arg-type]
        "relay_base_backoff_seconds": 0.01,
        # Bursts in tests wait for a slot instead of being refused (test_admission sets its own).
        "admission_wait_seconds": 10,
    }
    return Settings(**{**values, **overrides})


def replay_history(agent_id: str, lines: list[dict[str, Any]]) -> dict[Channel, Any]:
    """Replay ``GET /v1/agents/{id}/history`` items the way the routing core replays entries."""
    return replay(
        AgentStateEntry(
            agent_id=agent_id,
            at=datetime.now(UTC),
            channel=Channel(line["channel"]),
            source=line["source"],
            event=line["event"],
            outcome=StateOutcome(line["outcome"]),
            status=ChannelStatus(line["state"]),
            reason=line["reason"],
            load=line["load"],
            capacity=line["capacity"],
            wrap_up_until=(
                datetime.fromisoformat(line["wrap_up_until"]) if line["wrap_up_until"] else None
            ),
        )
        for line in lines
        if line["channel"]
    )


class ShiftedClock:
    """Real UTC time plus an offset that tests move forward (wrap-up expiry, ordering)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass
class Harness:
    """The app on a real database, its relay drained by hand, with recording ACD and CRM."""

    app: FastAPI
    client: httpx.AsyncClient
    acd: RecordingPeer
    crm: RecordingPeer
    clock: ShiftedClock

    @property
    def container(self) -> Any:
        return self.app.state.container

    async def drain(self) -> None:
        await self.container.relay.drain()

    async def post_event(
        self,
        kind: str,
        event_type: str,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        adapter: str = "generic",
        secret: str = DEV_SECRET,
        occurred_at: datetime | None = None,
    ) -> httpx.Response:
        message = envelope(event_type, data, event_id=event_id)
        if occurred_at is not None:
            message["occurred_at"] = occurred_at.isoformat()
        body = encode(message)
        headers = {
            "content-type": "application/json",
            **Signer(secret).headers(message["id"], body),
        }
        return await self.client.post(f"/v1/{kind}/{adapter}/events", content=body, headers=headers)

    async def create(self, external_id: str, channel: str = "chat", **extra: Any) -> httpx.Response:
        queue = extra.pop("queue", f"support-{channel}")
        data = {"external_id": external_id, "channel": channel, "queue": queue, **extra}
        return await self.post_event("crm", "interaction.created", data)

    async def login_everyone(self) -> None:
        """Every seeded agent logs in from the CRM media bar, ready on every channel."""
        for agent in load_seed(SEED).agents:
            response = await self.post_event(
                "crm", "agent.logged_in", {"agent_id": agent.crm_agent_id, "state": "ready"}
            )
            assert response.status_code == 202, response.text

    def request_id_for(self, interaction_id: str) -> str:
        for message in self.acd.of_type("routing.requested"):
            if message["data"]["interaction_id"] == interaction_id:
                return str(message["data"]["request_id"])
        raise AssertionError(f"no routing request sent for {interaction_id}")


HARNESS = "harness"
# Databases copied from the harness's template: its app has started on them already.
STARTED_ON: set[str] = set()


@contextlib.asynccontextmanager
async def running_harness(settings: Settings) -> AsyncIterator[Harness]:
    """The app with recording peers and the relay drained by hand."""
    acd, crm = RecordingPeer(), RecordingPeer()
    transport = HostRouter({"acd.test": acd.app(), "crm.test": crm.app()})
    clock = ShiftedClock()
    app = create_app(settings, clock=clock, transport=transport, run_relay=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://harmony") as c,
    ):
        yield Harness(app, c, acd, crm, clock)


async def start_harness_once(database_url: str) -> None:
    """What every harness test starts from, done once per session into a template database:
    migrate, apply the seed, every seeded agent logs in, the relay tells the peers."""
    async with running_harness(make_settings(database_url)) as harness:
        await harness.login_everyone()
        await harness.drain()


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    """The app with recording peers, every seeded agent logged in, the relay drained by hand.

    Normally on a copy of a database it already started on once (migrated, seeded, logins
    mirrored), so it starts without migrating or seeding again. On a database from elsewhere
    (a module that overrides ``database_url``) it does all of that first."""
    if database_url in STARTED_ON:
        settings = make_settings(database_url, migrate_on_start=False, seed_file=None)
        async with running_harness(settings) as harness:
            yield harness
        return
    async with running_harness(make_settings(database_url)) as harness:
        await harness.login_everyone()
        await harness.drain()
        for peer in (harness.acd, harness.crm):
            peer.received.clear()
            peer.headers.clear()
        yield harness
