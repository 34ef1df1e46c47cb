"""Part 3: scale (10,000 agents, 50,000 waiting emails), the bundled simulators as peers, and
two Harmony replicas against one.

Agents and waiting emails beyond the first are copied in SQL from rows Harmony itself wrote (an
agent it logged in, an email it holds while the ACD keeps the request), column by column as the
schema stands, so they are what Harmony would have written, in seconds instead of minutes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from harmony.dev.bench.phase import measure_phase, verdict
from harmony.dev.bench.stack import (
    EMAIL_QUEUE,
    Stack,
    agent_ids,
    running_stack,
)
from harmony.dev.bench.stats import best_rate, falls_behind, spread
from harmony.dev.bench.wire import ClientPool, WebhookKey, build_request, encode_json

__all__ = ["clone_sql", "replicas_part", "scale_part", "sims_part"]

Say = Callable[[str], None]
PROBE_PATHS = ("/v1/agents?limit=100", "/v1/queues")
PROBE_INTERVAL = 0.1
# Each scale phase measures at least this long: reads alternate every PROBE_INTERVAL, so a
# 10 s window gave about 44 reads of each path, and its p99 was one slow read (25 ms in one
# run, 60 in the next, p95 17 in both). 30 s gives about 140.
SCALE_MIN_SECONDS = 30.0
WAITING_PREFIX = "waiting-"


async def _columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return [str(row["column_name"]) for row in rows]


def clone_sql(
    table: str, columns: list[str], overrides: dict[str, str], where: str, first: int, last: int
) -> str:
    """``INSERT ... SELECT`` copying the rows of ``table`` matching ``where`` once per ``g`` in
    ``first..last``; ``overrides`` gives an SQL expression (of ``t`` and ``g``) per column."""
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(overrides.get(c, f't."{c}"') for c in columns)
    return (
        f'INSERT INTO "{table}" ({names}) SELECT {values} FROM "{table}" AS t,'
        f" generate_series({int(first)}, {int(last)}) AS g WHERE {where}"
    )


async def clone_agents(stack: Stack, first: int, last: int) -> None:
    """Copy agent 1 (logged in, ready) as agents ``first``..``last``."""
    conn = stack.db.conn
    template, _, _ = agent_ids(1)
    number = "lpad(g::text, 6, '0')"
    async with conn.transaction():
        await conn.execute(
            clone_sql(
                "agents",
                await _columns(conn, "agents"),
                {
                    "id": f"'bench-agent-' || {number}",
                    "crm_agent_id": f"'crm-' || {number}",
                    "acd_agent_id": f"'acd-' || {number}",
                    "name": "'Bench ' || g",
                },
                "t.id = $1",
                first,
                last,
            ),
            template,
        )
        for table in ("agent_channels", "agent_skills"):
            await conn.execute(
                clone_sql(
                    table,
                    await _columns(conn, table),
                    {"agent_id": f"'bench-agent-' || {number}"},
                    "t.agent_id = $1",
                    first,
                    last,
                ),
                template,
            )
    await conn.execute("ANALYZE")


async def _create_waiting_template(stack: Stack) -> str:
    """One email Harmony holds in its queue (the ACD keeps the request); its id."""
    await stack.peers_call("POST", "/mode", {"mode": "hold"})
    try:
        key = WebhookKey(stack.crm_secret)
        event_id = f"waiting-template-{secrets.token_hex(3)}"
        body = encode_json(
            {
                "id": event_id,
                "type": "interaction.created",
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "data": {
                    "external_id": event_id,
                    "channel": "email",
                    "queue": EMAIL_QUEUE,
                    "customer": {"name": "Waiting Customer"},
                    "subject": "waiting",
                },
            }
        )
        pool = ClientPool("127.0.0.1", stack.harmony_ports[0], 1)
        reply = await pool.request(
            build_request(
                f"127.0.0.1:{stack.harmony_ports[0]}",
                "/v1/crm/generic/events",
                body,
                key.headers(event_id, int(time.time()), body),
            )
        )
        pool.close()
        if reply.status != 202:
            raise RuntimeError(f"waiting template refused: {reply.status}")
        await stack.settle(30)
    finally:
        await stack.peers_call("POST", "/mode", {"mode": "route"})
    interaction_id = await stack.db.conn.fetchval(
        "SELECT id FROM interactions WHERE external_id = $1", event_id
    )
    return str(interaction_id)


async def add_waiting(stack: Stack, template: str, first: int, last: int) -> None:
    """Copy the waiting email ``template`` as waiting emails ``first``..``last``."""
    conn = stack.db.conn
    number = "lpad(g::text, 6, '0')"
    await conn.execute(
        clone_sql(
            "interactions",
            await _columns(conn, "interactions"),
            {
                "id": "gen_random_uuid()::text",
                "external_id": f"'{WAITING_PREFIX}' || {number}",
                "request_id": f"'{WAITING_PREFIX}req-' || {number}",
                "received_at": "t.received_at - g * interval '1 second'",
            },
            "t.id = $1",
            first,
            last,
        ),
        template,
    )
    await conn.execute("ANALYZE")


async def remove_waiting(stack: Stack, above: int) -> None:
    """Delete the waiting copies numbered above ``above``."""
    await stack.db.conn.execute(
        "DELETE FROM interactions WHERE external_id LIKE $1 AND external_id > $2",
        WAITING_PREFIX + "%",
        f"{WAITING_PREFIX}{above:06d}",
    )
    await stack.db.conn.execute("ANALYZE")


def probes(stack: Stack) -> Callable[[float], Awaitable[dict[str, Any]]]:
    """A window-long reader of ``GET /v1/agents?limit=100`` and ``GET /v1/queues``, one request
    every 100 ms in turn, as an operator's screen would poll while routing runs."""

    async def run(duration: float) -> dict[str, Any]:
        host = f"127.0.0.1:{stack.harmony_ports[0]}"
        pool = ClientPool("127.0.0.1", stack.harmony_ports[0], 1)
        requests = {p: build_request(host, p, b"", method="GET") for p in PROBE_PATHS}
        times: dict[str, list[float]] = {p: [] for p in PROBE_PATHS}
        failed = 0
        deadline = time.monotonic() + duration - 0.2
        turn = 0
        while time.monotonic() < deadline:
            path = PROBE_PATHS[turn % len(PROBE_PATHS)]
            turn += 1
            started = time.perf_counter()
            reply = await pool.request(requests[path])
            if reply.status == 200:
                times[path].append((time.perf_counter() - started) * 1e3)
            else:
                failed += 1
            await asyncio.sleep(PROBE_INTERVAL)
        pool.close()
        return {"failed": failed, **{p: spread(v) for p, v in times.items()}}

    return run


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


async def scale_part(
    admin_dsn: str,
    workdir: Path,
    rate: float,
    duration: float,
    warmup: float,
    agents: tuple[int, int],
    waiting: tuple[int, int],
    say: Say,
    quiet_wait: float,
) -> dict[str, Any]:
    """CPU per routed interaction and the operator reads under load: baseline (few agents, few
    waiting), many waiting emails, then many agents; ratios against the baseline."""
    few_agents, many_agents = agents
    few_waiting, many_waiting = waiting
    out: dict[str, Any] = {"rate_per_s": rate}
    async with running_stack(
        admin_dsn, workdir / "scale", agents=few_agents, quiet_wait=quiet_wait
    ) as stack:
        template = await _create_waiting_template(stack)
        await add_waiting(stack, template, 1, few_waiting - 1)

        window = max(duration, SCALE_MIN_SECONDS)

        async def phase(label: str) -> dict[str, Any]:
            result = await measure_phase(stack, rate, window, warmup, label, probes=probes(stack))
            reads = result["probes"]
            say(
                f"{label:<22} routed {result['routed_per_s']}/s, "
                f"{result['cpu_ms_per_routed']} cpu ms/routed, "
                f"agents p50/p99 {reads[PROBE_PATHS[0]]['p50']}/{reads[PROBE_PATHS[0]]['p99']} ms, "
                f"queues p50/p99 {reads[PROBE_PATHS[1]]['p50']}/{reads[PROBE_PATHS[1]]['p99']} ms"
            )
            return result

        say(f"scale: {few_agents} agents, {few_waiting} waiting, {rate:g}/s")
        base = await phase(f"agents{few_agents}-waiting{few_waiting}")
        await add_waiting(stack, template, few_waiting, many_waiting - 1)
        more_waiting = await phase(f"agents{few_agents}-waiting{many_waiting}")
        await remove_waiting(stack, few_waiting - 1)
        await clone_agents(stack, few_agents + 1, many_agents)
        await stack.peers_call(
            "POST", "/agents", {"agents": [agent_ids(i)[2] for i in range(1, many_agents + 1)]}
        )
        more_agents = await phase(f"agents{many_agents}-waiting{few_waiting}")
    out["phases"] = [base, more_waiting, more_agents]

    def reads(result: dict[str, Any], path: str) -> dict[str, Any]:
        return dict(result["probes"][path])

    out["summary"] = {
        "scale_cpu_ratio_agents": _ratio(
            more_agents["cpu_ms_per_routed"], base["cpu_ms_per_routed"]
        ),
        "scale_cpu_ratio_waiting": _ratio(
            more_waiting["cpu_ms_per_routed"], base["cpu_ms_per_routed"]
        ),
        "agents_p99_ms_at_many_agents": reads(more_agents, PROBE_PATHS[0])["p99"],
        "queues_p50_ms_at_many_waiting": reads(more_waiting, PROBE_PATHS[1])["p50"],
        "queues_p99_ms_at_many_waiting": reads(more_waiting, PROBE_PATHS[1])["p99"],
    }
    return out


async def sims_part(
    admin_dsn: str,
    workdir: Path,
    rate: float,
    duration: float,
    warmup: float,
    agents: int,
    say: Say,
    quiet_wait: float,
) -> dict[str, Any]:
    """The realistic loop: ``harmony sim-acd`` and ``harmony sim-crm`` as Harmony's peers."""
    say(f"simulators: {agents} agents, {rate:g}/s")
    async with running_stack(
        admin_dsn, workdir / "sims", agents=agents, peers="simulators", quiet_wait=quiet_wait
    ) as stack:
        result = await measure_phase(stack, rate, duration, warmup, f"sims{rate:g}", drain=60)
    say(
        f"  routed {result['routed_per_s']}/s, delivery p50/p99 "
        f"{result['create_to_delivery_ms']['p50']}/{result['create_to_delivery_ms']['p99']} ms, "
        f"{result['cpu_ms_per_routed']} cpu ms/routed"
    )
    return {
        "phase": result,
        "summary": {
            "sims_routed_per_s": result["routed_per_s"],
            "sims_p99_create_to_delivery_ms": result["create_to_delivery_ms"]["p99"],
        },
    }


async def replicas_part(
    admin_dsn: str,
    workdir: Path,
    one_replica_max: float,
    duration: float,
    warmup: float,
    agents: int,
    say: Say,
    quiet_wait: float,
) -> dict[str, Any]:
    """Two ``harmony serve`` processes on one database, arrivals and callbacks spread over both:
    the best sustained routed/s, starting at one replica's maximum; the best measured (the
    plateau) when not even that was sustained (both replicas and PostgreSQL share the cores)."""
    say(f"replicas: 2 on one database, from {one_replica_max:g}/s")
    ladder: list[dict[str, Any]] = []
    async with running_stack(
        admin_dsn, workdir / "replicas", agents=agents, replicas=2, quiet_wait=quiet_wait
    ) as stack:
        for factor in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
            rate = round(one_replica_max * factor, 1)
            result = await measure_phase(stack, rate, duration, warmup, f"replicas2-{rate:g}")
            say(
                f"  offered {rate:g}/s: routed {result['routed_per_s']}/s, delivery p99 "
                f"{result['create_to_delivery_ms']['p99']} ms, harmony cpu "
                f"{result['harmony_cpu_pct']}%"
            )
            ladder.append(result)
            if falls_behind(verdict(result)):
                break
    best, found_as = best_rate([verdict(r) for r in ladder])
    return {
        "ladder": ladder,
        "summary": {
            "replicas2_max_routed_per_s": round(best, 2),
            "replicas2_max_from": found_as,
            "replicas2_over_1": _ratio(best, one_replica_max),
        },
    }
