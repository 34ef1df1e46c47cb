"""Harmony and both simulators in one process, each a real HTTP server on loopback.

``harmony up`` (what ``make run`` starts) keeps the stack running with a steady trickle of
chats and emails; ``harmony demo`` routes a fixed number end to end, checks every one, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import structlog
import uvicorn
from fastapi import FastAPI

from harmony.config import AdapterSettings, Settings
from harmony.dev.simulators.acd import AcdSimConfig
from harmony.dev.simulators.acd import create_app as create_acd_app
from harmony.dev.simulators.crm import CrmSimConfig
from harmony.dev.simulators.crm import create_app as create_crm_app
from harmony.main import create_app
from harmony.seed import Seed

log = structlog.get_logger("harmony.dev.devstack")


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on loopback that nobody listens on right now.

    The sockets are held open together, so the system cannot hand the same port out twice.
    """
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class StackStartFailed(RuntimeError):
    """A server of the stack did not start, or its agents were never logged in."""


@dataclass
class StackPorts:
    harmony: int = 8000
    acd: int = 8101
    crm: int = 8102


@dataclass
class Stack:
    """URLs of the running services."""

    harmony_url: str
    acd_url: str
    crm_url: str


async def _serve(app: FastAPI, port: int, servers: list[uvicorn.Server]) -> asyncio.Task[None]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    servers.append(server)
    task = asyncio.create_task(server.serve(), name=f"uvicorn-{port}")
    for _ in range(600):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    if not server.started:
        if task.done() and task.exception() is not None:
            raise StackStartFailed(f"server on port {port} failed to start") from task.exception()
        raise StackStartFailed(f"server on port {port} failed to start")
    return task


LOGIN_WAIT_SECONDS = 30.0


async def _wait_logged_in(stack: Stack) -> None:
    """Wait until the CRM simulator reports every agent logged in; raise if it never does."""
    deadline = time.monotonic() + LOGIN_WAIT_SECONDS
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (await client.get(f"{stack.crm_url}/state")).json().get("logged_in"):
                    return
            if time.monotonic() >= deadline:
                raise StackStartFailed(
                    f"the CRM simulator's agents were not logged in after {LOGIN_WAIT_SECONDS} s"
                )
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    seed: Seed,
    ports: StackPorts,
    *,
    accept_delay: float,
    complete_delay: float,
    jitter: float = 0.0,
    trickle_per_second: float = 0.0,
    voice_calls_per_minute: float = 0.0,
    voice_call_seconds: float = 20.0,
    login_agents: bool = True,
) -> AsyncIterator[Stack]:
    """Start the ACD simulator, the CRM simulator and Harmony; stop them all on exit.

    With ``login_agents`` the CRM simulator logs every seed agent in, ready, and this waits
    (bounded) until Harmony accepted every login, so the first traffic finds agents ready.
    """
    harmony_url = f"http://127.0.0.1:{ports.harmony}"
    acd_url = f"http://127.0.0.1:{ports.acd}"
    crm_url = f"http://127.0.0.1:{ports.crm}"
    acd_secret = settings.acd_adapters[settings.routing_acd].secret
    crm_name = (
        "generic" if "generic" in settings.crm_adapters else next(iter(settings.crm_adapters))
    )
    crm_secret = settings.crm_adapters[crm_name].secret
    settings = settings.model_copy(
        update={
            "acd_adapters": {
                **settings.acd_adapters,
                settings.routing_acd: AdapterSettings(url=acd_url, secret=acd_secret),  # type: ignore[arg-type]
            },
            "crm_adapters": {
                **settings.crm_adapters,
                crm_name: AdapterSettings(url=crm_url, secret=crm_secret),  # type: ignore[arg-type]
            },
        }
    )
    servers: list[uvicorn.Server] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        tasks.append(
            await _serve(
                create_acd_app(
                    AcdSimConfig(
                        harmony_url=harmony_url,
                        secret=acd_secret,
                        seed=seed,
                        adapter=settings.routing_acd,
                        voice_calls_per_minute=voice_calls_per_minute,
                        voice_call_seconds=voice_call_seconds,
                    )
                ),
                ports.acd,
                servers,
            )
        )
        tasks.append(await _serve(create_app(settings), ports.harmony, servers))
        tasks.append(
            await _serve(
                create_crm_app(
                    CrmSimConfig(
                        harmony_url=harmony_url,
                        secret=crm_secret,
                        seed=seed,
                        adapter=crm_name,
                        accept_delay=accept_delay,
                        complete_delay=complete_delay,
                        jitter=jitter,
                        trickle_per_second=trickle_per_second,
                        login_agents=login_agents,
                    )
                ),
                ports.crm,
                servers,
            )
        )
        stack = Stack(harmony_url, acd_url, crm_url)
        if login_agents:
            await _wait_logged_in(stack)
        yield stack
    finally:
        # Stop the traffic source first and Harmony last, so nothing is cut mid-call.
        for server in reversed(servers):
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def _spread(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


@dataclass
class DemoReport:
    """What ``harmony demo`` found, interaction by interaction.

    The time from ``received`` to ``delivered`` is mostly the wait for a free agent at the ACD
    when more work arrives than the agents can hold, so Harmony's own legs are kept apart:
    routing (received until the ACD acknowledged the routing request) and delivery (the ACD's
    ``agent.selected`` accepted until the CRM acknowledged ``interaction.deliver``).
    """

    requested: int
    completed: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds_to_deliver: list[float] = field(default_factory=list)
    seconds_routing: list[float] = field(default_factory=list)
    seconds_waiting_for_agent: list[float] = field(default_factory=list)
    seconds_delivering: list[float] = field(default_factory=list)
    # interaction id -> (received, offered), for the routing leg once the outbox is read
    received_and_offered: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    agents: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.completed == self.requested

    def summary(self) -> str:
        lines = [
            f"interactions requested: {self.requested}",
            f"completed, delivered to the agent the ACD chose: {self.completed}",
            f"by channel: {self.by_channel}",
            f"wall time: {self.elapsed:.1f} s",
        ]
        if self.seconds_routing or self.seconds_delivering:
            lines.append("Harmony's own part:")
        if self.seconds_routing:
            lines.append(
                "  received -> the ACD's acknowledgement of the routing request recorded: "
                + _spread(self.seconds_routing)
            )
        if self.seconds_delivering:
            lines.append(
                "  agent.selected received -> the CRM's acknowledgement of the delivery recorded: "
                + _spread(self.seconds_delivering)
            )
        if self.seconds_waiting_for_agent:
            lines.append(
                "waiting at the ACD for a free agent (that acknowledgement -> agent.selected "
                "received): " + _spread(self.seconds_waiting_for_agent)
            )
        if self.seconds_to_deliver:
            agents = f" for {self.agents} agents" if self.agents else ""
            lines.append(
                f"end to end, received -> delivered ({self.requested} interactions{agents}, "
                f"mostly the wait above): " + _spread(self.seconds_to_deliver)
            )
        lines.append(f"problems: {len(self.problems)}")
        lines.extend(f"  - {p}" for p in self.problems[:20])
        lines.append("RESULT: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)

    def add_routing_times(self, acked: dict[str, datetime]) -> None:
        """Split each interaction's time before ``offered`` at the ACD's acknowledgement of its
        routing request: before it is Harmony's routing leg, after it the wait for an agent."""
        for interaction_id, (received, offered) in self.received_and_offered.items():
            acked_at = acked.get(interaction_id)
            if acked_at is None:
                continue
            self.seconds_routing.append((acked_at - received).total_seconds())
            # The ACD may call back before the relay has recorded its acknowledgement.
            self.seconds_waiting_for_agent.append(max(0.0, (offered - acked_at).total_seconds()))


async def routing_requests_acknowledged(database_url: str) -> dict[str, datetime]:
    """When the ACD acknowledged each interaction's routing request, from Harmony's outbox
    (the interaction history records when the request was written, not when it was sent)."""
    from sqlalchemy import select

    from harmony.db.engine import create_engine
    from harmony.db.tables import outbox
    from harmony.routing.messages import ROUTING_REQUESTED

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.interaction_id, outbox.c.sent_at)
                .where(outbox.c.type == ROUTING_REQUESTED)
                .where(outbox.c.sent_at.is_not(None))
            )
            return {row.interaction_id: row.sent_at for row in rows}
    finally:
        await engine.dispose()


async def _all_pages(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(url, params=params)).json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def _all_interactions(client: httpx.AsyncClient, harmony_url: str) -> list[dict[str, Any]]:
    return await _all_pages(client, f"{harmony_url}/v1/interactions")


async def verify_loop(
    client: httpx.AsyncClient, stack: Stack, external_ids: list[str], report: DemoReport
) -> None:
    """Check each interaction went to the agent the ACD chose, within every capacity."""
    acd = (await client.get(f"{stack.acd_url}/state")).json()
    crm = (await client.get(f"{stack.crm_url}/state")).json()
    agents = {a["id"]: a for a in await _all_pages(client, f"{stack.harmony_url}/v1/agents")}
    by_external = {i["external_id"]: i for i in await _all_interactions(client, stack.harmony_url)}
    capacity = {a["agent_id"]: a["capacity"] for a in acd["agents"]}
    for external_id in external_ids:
        interaction = by_external.get(external_id)
        if interaction is None:
            report.problems.append(f"{external_id}: Harmony holds no such interaction")
            continue
        if interaction["state"] != "completed":
            report.problems.append(f"{external_id}: ended {interaction['state']}, not completed")
            continue
        agent = agents[interaction["agent_id"]]
        chosen = acd["assignments"].get(interaction["request_id"], {}).get("agent_id")
        delivered = crm["deliveries"].get(external_id, {}).get("agent_id")
        if chosen != agent["acd_agent_id"]:
            report.problems.append(
                f"{external_id}: ACD chose {chosen}, Harmony recorded {agent['acd_agent_id']}"
            )
        elif delivered != agent["crm_agent_id"]:
            report.problems.append(
                f"{external_id}: delivered to {delivered}, expected {agent['crm_agent_id']}"
            )
        else:
            report.completed += 1
            channel = interaction["channel"]
            report.by_channel[channel] = report.by_channel.get(channel, 0) + 1
            times = {s: datetime.fromisoformat(at) for s, at in interaction["state_times"].items()}
            report.seconds_to_deliver.append(
                (times["delivered"] - times["received"]).total_seconds()
            )
            report.seconds_delivering.append(
                (times["delivered"] - times["offered"]).total_seconds()
            )
            report.received_and_offered[interaction["id"]] = (times["received"], times["offered"])
    crm_agent_to_acd = {a["crm_agent_id"]: a["acd_agent_id"] for a in agents.values()}
    for crm_agent, peaks in crm["peak_active"].items():
        for channel, peak in peaks.items():
            limit = capacity.get(crm_agent_to_acd.get(crm_agent, ""), {}).get(channel, 0)
            if peak > limit:
                report.problems.append(f"{crm_agent} held {peak} {channel} at once (cap {limit})")


async def run_demo(
    settings: Settings, seed: Seed, count: int, wait_seconds: float, ports: StackPorts
) -> DemoReport:
    """Route ``count`` interactions through the whole loop and check every one."""
    report = DemoReport(requested=count)
    started = time.monotonic()
    async with (
        running_stack(
            settings, seed, ports, accept_delay=0.05, complete_delay=0.2, jitter=0.5
        ) as stack,
        httpx.AsyncClient(timeout=60) as client,
    ):
        created = await client.post(
            f"{stack.crm_url}/simulate/interactions", json={"count": count, "channel": "mixed"}
        )
        created.raise_for_status()
        external_ids: list[str] = created.json()["external_ids"]
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            crm = (await client.get(f"{stack.crm_url}/state")).json()
            if len(crm["completed"]) >= count:
                break
            await asyncio.sleep(0.25)
        await verify_loop(client, stack, external_ids, report)
    report.agents = len(seed.agents)
    report.add_routing_times(await routing_requests_acknowledged(settings.database_url))
    report.elapsed = time.monotonic() - started
    return report
