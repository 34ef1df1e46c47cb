"""Scale benchmark: operator reads and per-interaction routing cost at two sizes, on PostgreSQL.

For each size (agents x waiting emails; default 100x100, then 10000x50000) it:

1. creates a fresh PostgreSQL database, runs ``harmony migrate`` on it and seeds it with bulk
   SQL: queues, agents with skills and channel states (60% ready, 20% not ready, 20% logged
   out), each agent's state history, mirrors and sent ``agent.state`` messages, the waiting
   emails (``queued``) and as many completed ones, their history, inbox rows and sent routing
   requests; then ``VACUUM ANALYZE``, as a database in steady state would be;
2. starts ``harmony serve`` on it (one uvicorn worker), with its CRM and ACD pointed at a small
   peer in this process that answers every message at once;
3. times the operator reads with one keep-alive httpx client, ``--requests`` each after a
   warm-up, one at a time: p50, p99, max;
4. routes ``--interactions`` new emails end to end through signed events, ``--concurrency`` at
   a time (create -> routing.requested -> agent.selected -> interaction.deliver -> accepted ->
   completed), with one ``agent.state_changed`` per interaction for an agent not taking work,
   and reports per routed interaction: Harmony's CPU ms (from /proc), PostgreSQL commits,
   tuples read (returned + fetched) and shared buffers touched (pg_stat_database);
5. stops Harmony and drops the database.

The last line printed is one JSON object with every figure, and the ratio of the largest size
to the smallest per routed interaction. Run from the repository root, against a PostgreSQL
server with trust authentication (the tests' one)::

    PYTHONPATH=src .venv/bin/python bench/scale_reads.py
    PYTHONPATH=src .venv/bin/python bench/scale_reads.py --sizes 10000x50000 --requests 50

``--explain-log /var/log/postgresql/postgresql-15-main.log`` (a file this user can read: the
server's log) also turns on ``auto_explain`` for the bench database during the routing phase
and prints, per statement Harmony ran, its largest buffer count and any sequential scan: every
query of the routing use cases checked with EXPLAIN ANALYZE at that size.

It is a benchmark, not a test: it asserts nothing and needs a quiet machine for stable figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from harmony.adapters.generic_http.protocol import encode, envelope
from harmony.adapters.generic_http.signing import Signer
from harmony.config import DEV_SECRET

QUEUES = 10
SKILLS = 20
HISTORY_PER_AGENT = 12


def free_port() -> int:
    """A port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def harmony_command(*args: str) -> list[str]:
    """``harmony ARGS`` with this interpreter, so PYTHONPATH decides which source runs."""
    return [
        sys.executable,
        "-c",
        "import sys; from harmony.cli import main; sys.exit(main())",
        *args,
    ]


# --- the database ------------------------------------------------------------------------------

SEED_SQL = [
    # Queues: half chat, half email, each with one skill.
    """
    INSERT INTO queues (name, channel, skills, created_at, updated_at)
    SELECT c || '-' || i, c, json_build_array('skill-' || i), now(), now()
    FROM generate_series(0, $1 - 1) i, (VALUES ('chat'), ('email')) AS ch(c)
    """,
    """
    INSERT INTO agents (id, name, crm_adapter, crm_agent_id, acd_agent_id, profile,
                        login_failures, created_at, updated_at)
    SELECT 'agent-' || lpad(i::text, 6, '0'), 'Agent ' || i, 'generic',
           'crm-' || lpad(i::text, 6, '0'), 'acd-' || lpad(i::text, 6, '0'), 'default', 0,
           now(), now()
    FROM generate_series(1, $1) i
    """,
    """
    INSERT INTO agent_skills (agent_id, skill)
    SELECT 'agent-' || lpad(i::text, 6, '0'), 'skill-' || s
    FROM generate_series(1, $1) i, LATERAL (VALUES (i % $2), ((i + $2 / 2) % $2)) AS k(s)
    """,
    # 60% ready everywhere, 20% not ready (break), 20% logged out.
    """
    INSERT INTO agent_channels (agent_id, channel, capacity, load, overflow, status, reason,
                                since, source_at)
    SELECT 'agent-' || lpad(i::text, 6, '0'), c, cap, 0, 0,
           CASE WHEN i % 10 < 6 THEN 'ready' WHEN i % 10 < 8 THEN 'not_ready'
                ELSE 'logged_out' END,
           CASE WHEN i % 10 IN (6, 7) THEN 'break' END,
           now() - interval '1 hour', now() - interval '1 hour'
    FROM generate_series(1, $1) i, (VALUES ('voice', 1), ('chat', 3), ('email', 2)) AS ch(c, cap)
    """,
    """
    INSERT INTO agent_state_history (agent_id, at, channel, source, source_at, sequence, event,
                                     outcome, status, reason, load, capacity, detail)
    SELECT 'agent-' || lpad(i::text, 6, '0'), now() - (h || ' minutes')::interval,
           (ARRAY['voice', 'chat', 'email'])[1 + h % 3], 'crm:generic', now(), NULL,
           'agent.state_changed', 'applied',
           CASE WHEN h % 2 = 0 THEN 'ready' ELSE 'not_ready' END,
           CASE WHEN h % 2 = 1 THEN 'break' END, 0, 2, '{}'::json
    FROM generate_series(1, $1) i, generate_series($2, 1, -1) h
    """,
    # Each channel's last mirror to the ACD: sent, echoed, in the agent's order.
    """
    INSERT INTO agent_mirrors (id, agent_id, channel, target_kind, status, reason, sent_at,
                               echoed_at)
    SELECT 'msg-m-' || i || '-' || c, 'agent-' || lpad(i::text, 6, '0'), c, 'acd', 'ready', NULL,
           now() - interval '1 hour', now() - interval '1 hour'
    FROM generate_series(1, $1) i, (VALUES ('voice'), ('chat'), ('email')) AS ch(c)
    """,
    """
    INSERT INTO outbox (id, target_kind, target, type, interaction_id, payload, status, attempts,
                        created_at, next_attempt_at, sent_at, ordering_key, ordering_seq,
                        supersede_key)
    SELECT 'msg-m-' || i || '-' || c, 'acd', 'generic', 'agent.state', '', '{}'::json, 'sent', 1,
           now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour',
           'agent:agent-' || lpad(i::text, 6, '0') || '>acd:generic', n,
           'agent:agent-' || lpad(i::text, 6, '0') || '>acd:generic/agent.state/' || c
    FROM generate_series(1, $1) i, (VALUES ('voice', 1), ('chat', 2), ('email', 3)) AS ch(c, n)
    """,
    """
    INSERT INTO outbox_sequences (ordering_key, sequence)
    SELECT 'agent:agent-' || lpad(i::text, 6, '0') || '>acd:generic', 3
    FROM generate_series(1, $1) i
    """,
]

# $1 count, $2 state, $3 agents, $4 prefix. Received over the last few hours, oldest first.
INTERACTIONS_SQL = f"""
INSERT INTO interactions (id, crm_adapter, external_id, channel, queue, priority, skills, customer,
                          subject, acd_adapter, state, request_id, agent_id, version,
                          received_at, updated_at, routing_at, queued_at, offered_at,
                          delivered_at, accepted_at, completed_at)
SELECT md5($4 || i), 'generic', $4 || i, 'email', 'email-' || (i % {QUEUES}), 0, '[]'::json,
       '{{"name": "customer"}}'::json, 'seeded', 'generic', $2::text, 'rr_' || md5($4 || i),
       CASE WHEN $2::text = 'completed' THEN 'agent-' || lpad((1 + i % $3)::text, 6, '0') END,
       CASE WHEN $2::text = 'completed' THEN 5 ELSE 2 END,
       now() - (i || ' seconds')::interval / 10, now(), now() - (i || ' seconds')::interval / 10,
       now() - (i || ' seconds')::interval / 10,
       done, done, done, done
FROM generate_series(1, $1) i,
     LATERAL (SELECT CASE WHEN $2::text = 'completed' THEN now() END) AS d(done)
"""

INTERACTION_ROWS_SQL = [
    """
    INSERT INTO interaction_history (interaction_id, at, event, from_state, to_state, cause,
                                     detail)
    SELECT md5($2 || i), now(), e, f, t, 'seeded', '{}'::json
    FROM generate_series(1, $1) i,
         (VALUES ('received', NULL, 'received'), ('routing_requested', 'received', 'routing'),
                 ('queued', 'routing', 'queued')) AS ev(e, f, t)
    """,
    """
    INSERT INTO inbox (source, event_id, event_type, interaction_id, received_at, payload, status,
                       handled_at)
    SELECT 'crm:generic', 'evt-' || $2 || i, 'interaction.created', md5($2 || i),
           now() - (i || ' seconds')::interval / 10, '{}', 'applied', now()
    FROM generate_series(1, $1) i
    """,
    """
    INSERT INTO outbox (id, target_kind, target, type, interaction_id, payload, status, attempts,
                        created_at, next_attempt_at, sent_at)
    SELECT 'msg-' || md5($2 || i), 'acd', 'generic', 'routing.requested', md5($2 || i),
           '{}'::json, 'sent', 1, now(), now(), now()
    FROM generate_series(1, $1) i
    """,
]


async def seed(dsn: str, agents: int, waiting: int, completed: int) -> None:
    """Fill a migrated database with ``agents`` agents and ``waiting`` queued emails."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(SEED_SQL[0], QUEUES)
            await conn.execute(SEED_SQL[1], agents)
            await conn.execute(SEED_SQL[2], agents, SKILLS)
            await conn.execute(SEED_SQL[3], agents)
            await conn.execute(SEED_SQL[4], agents, HISTORY_PER_AGENT)
            for sql in SEED_SQL[5:]:
                await conn.execute(sql, agents)
            for count, state, prefix in ((waiting, "queued", "w-"), (completed, "completed", "c-")):
                if count:
                    await conn.execute(INTERACTIONS_SQL, count, state, agents, prefix)
                    for sql in INTERACTION_ROWS_SQL:
                        await conn.execute(sql, count, prefix)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, name: str) -> AsyncIterator[str]:
    """CREATE DATABASE ``name``, yield its DSN, DROP it (also on failure)."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = admin_dsn.rsplit("/", 1)[0]
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def pg_counters(dsn: str) -> dict[str, int]:
    """This database's cumulative statistics (flushed by backends about once a second)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_returned, tup_fetched, blks_hit, blks_read"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        return dict(row)
    finally:
        await conn.close()


# --- the peer ---------------------------------------------------------------------------------


@dataclass
class Peer:
    """The CRM and the ACD: answers every message at once and drives the loop from another task.

    On ``routing.requested`` it selects the next free agent; on ``interaction.deliver`` the agent
    accepts and completes, and is free again once Harmony acknowledged the completion.
    """

    harmony: str
    free_agents: asyncio.Queue[str]
    signer: Signer = field(default_factory=lambda: Signer(DEV_SECRET))
    done: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    holder: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    client: httpx.AsyncClient | None = None

    async def post(self, kind: str, event_type: str, data: dict[str, Any]) -> httpx.Response:
        assert self.client is not None
        message = envelope(event_type, data)
        body = encode(message)
        headers = {"content-type": "application/json", **self.signer.headers(message["id"], body)}
        return await self.client.post(
            f"{self.harmony}/v1/{kind}/generic/events", content=body, headers=headers
        )

    def app(self) -> Starlette:
        async def events(request: Request) -> JSONResponse:
            message = json.loads(await request.body())
            kind = message["type"]
            if kind in ("routing.requested", "interaction.deliver"):
                task = asyncio.create_task(self._react(kind, message["data"]))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            return JSONResponse({"status": "ok"})

        return Starlette(routes=[Route("/events", events, methods=["POST"])])

    async def _react(self, kind: str, data: dict[str, Any]) -> None:
        try:
            if kind == "routing.requested":
                agent = await self.free_agents.get()
                self.holder[data["interaction_id"]] = agent
                answer = await self.post(
                    "acd", "agent.selected", {"request_id": data["request_id"], "agent_id": agent}
                )
                self._check(answer, "agent.selected")
                return
            external_id = data["external_id"]
            for event in ("interaction.accepted", "interaction.completed"):
                self._check(await self.post("crm", event, {"external_id": external_id}), event)
            await self.free_agents.put(self.holder.pop(data["interaction_id"]))
            future = self.done.get(external_id)
            if future is not None and not future.done():
                future.set_result(None)
        except Exception as exc:  # a benchmark reports failures, it does not stop on them
            self.errors.append(f"{kind}: {exc!r}")

    def _check(self, answer: httpx.Response, what: str) -> None:
        if answer.status_code != 202:
            self.errors.append(f"{what}: {answer.status_code} {answer.text[:200]}")


@contextlib.asynccontextmanager
async def running_peer(peer: Peer, port: int) -> AsyncIterator[None]:
    """The peer's HTTP server on loopback for the block."""
    config = uvicorn.Config(
        peer.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


# --- Harmony ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_harmony(database: str, port: int, peer_port: int) -> AsyncIterator[int]:
    """``harmony serve`` on the database; yields its pid, stops it afterwards."""
    peer_url = f"http://127.0.0.1:{peer_port}"
    env = {
        **os.environ,
        "HARMONY_CRM_ADAPTERS": json.dumps({"generic": {"url": peer_url}}),
        "HARMONY_ACD_ADAPTERS": json.dumps({"generic": {"url": peer_url}}),
        "HARMONY_LOG_LEVEL": "WARNING",
        "HARMONY_LOG_FORMAT": "json",
    }
    url = database.replace("postgresql://", "postgresql+asyncpg://", 1)
    workdir = tempfile.mkdtemp(prefix="harmony-scale-")
    log_file = Path(workdir) / "harmony.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - waited for by polling, not blocking
            harmony_command("serve", "--database", url, "--no-migrate", "--port", str(port)),
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                if process.poll() is not None:
                    raise RuntimeError(f"harmony serve exited: {log_file.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("harmony serve did not answer within 30 s")
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        warnings = [
            line for line in log_file.read_text().splitlines() if '"level": "error"' in line
        ]
        for line in warnings[:5]:
            print(f"  harmony error: {line[:300]}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- measurements ------------------------------------------------------------------------------


def read_paths(agents: int) -> dict[str, list[str]]:
    """Each read measured, with the URLs cycled through (random agents for the per-agent ones)."""
    rng = random.Random(7)
    some = [f"agent-{rng.randint(1, agents):06d}" for _ in range(50)]
    return {
        "queues": ["/v1/queues"],
        "agents": ["/v1/agents?limit=100"],
        "agents_presence": ["/v1/agents?presence=ready&limit=100"],
        "agents_channel_state": ["/v1/agents?channel=chat&state=not_ready&limit=100"],
        "agents_skill": ["/v1/agents?skill=skill-3&limit=100"],
        "agents_queue": ["/v1/agents?queue=email-4&limit=100"],
        "agent": [f"/v1/agents/{a}" for a in some],
        "agent_history": [f"/v1/agents/{a}/history" for a in some],
        "interactions_queued": ["/v1/interactions?state=queued&limit=50"],
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def time_reads(base: str, agents: int, requests: int) -> dict[str, dict[str, float]]:
    """p50/p99/max in ms of each read, one request at a time on one keep-alive connection."""
    results: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for name, urls in read_paths(agents).items():
            for i in range(20):
                (await client.get(urls[i % len(urls)])).raise_for_status()
            times = []
            for i in range(requests):
                started = time.perf_counter()
                answer = await client.get(urls[i % len(urls)])
                times.append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()
            results[name] = {
                "p50_ms": round(statistics.median(times), 2),
                "p99_ms": round(percentile(times, 99), 2),
                "max_ms": round(max(times), 2),
            }
            print(
                f"  GET {urls[0]:<55} p50 {results[name]['p50_ms']:7.2f} ms"
                f"  p99 {results[name]['p99_ms']:7.2f} ms"
            )
    return results


async def route(
    peer: Peer, pid: int, dsn: str, agents: int, count: int, concurrency: int, tag: str
) -> dict[str, float]:
    """Route ``count`` new emails end to end; cost per routed interaction."""
    toggled = [f"crm-{i:06d}" for i in range(1, agents + 1) if i % 10 in (6, 7)]
    reasons: dict[str, str] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(k: int) -> None:
        async with sem:
            external_id = f"bench-{tag}-{k}"
            done = asyncio.get_running_loop().create_future()
            peer.done[external_id] = done
            data = {"external_id": external_id, "channel": "email", "queue": f"email-{k % QUEUES}"}
            peer._check(await peer.post("crm", "interaction.created", data), "created")
            # Every toggle changes the state (seeded on break), so it is mirrored at any size.
            agent = toggled[k % len(toggled)]
            reason = reasons[agent] = "lunch" if reasons.get(agent, "break") == "break" else "break"
            state = {"agent_id": agent, "state": "not_ready", "reason": reason}
            peer._check(await peer.post("crm", "agent.state_changed", state), "state_changed")
            await asyncio.wait_for(done, 30)

    await asyncio.gather(*(one(k) for k in range(min(20, count))))  # warm-up
    await asyncio.sleep(1.5)
    before_pg, before_cpu = await pg_counters(dsn), cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(20, 20 + count)))
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - before_cpu
    await asyncio.sleep(1.5)  # let the backends flush their statistics
    after_pg = await pg_counters(dsn)
    delta = {k: after_pg[k] - before_pg[k] for k in after_pg}
    return {
        "routed": count,
        "routed_per_s": round(count / wall, 1),
        "harmony_cpu_ms_per_routed": round(cpu * 1000 / count, 2),
        "commits_per_routed": round(delta["xact_commit"] / count, 1),
        "tuples_read_per_routed": round((delta["tup_returned"] + delta["tup_fetched"]) / count, 1),
        "buffers_per_routed": round((delta["blks_hit"] + delta["blks_read"]) / count, 1),
    }


# --- auto_explain ------------------------------------------------------------------------------


async def enable_auto_explain(dsn: str, name: str) -> None:
    """Every statement run in ``name`` from now on is logged with its EXPLAIN ANALYZE."""
    conn = await asyncpg.connect(dsn)
    try:
        for setting, value in (
            ("session_preload_libraries", "auto_explain"),
            ("auto_explain.log_min_duration", "0"),
            ("auto_explain.log_analyze", "on"),
            ("auto_explain.log_buffers", "on"),
            ("auto_explain.log_timing", "off"),
            ("auto_explain.log_nested_statements", "on"),
            ("auto_explain.log_format", "json"),
        ):
            await conn.execute(f"ALTER DATABASE \"{name}\" SET {setting} = '{value}'")
    finally:
        await conn.close()


def explained(log_text: str, database: str) -> list[dict[str, Any]]:
    """Per distinct statement of ``database`` in the server log: runs, buffers touched per run
    (mean and most), and the tables it read with a sequential scan."""
    found: dict[str, dict[str, Any]] = {}
    for chunk in re.split(r"\n(?=\S)", log_text):
        head, _, rest = chunk.partition("\n")
        if f"@{database} LOG:  duration:" not in head or "plan:" not in head:
            continue
        try:
            plan = json.loads("\n".join(line.removeprefix("\t") for line in rest.splitlines()))
        except ValueError:
            continue
        # One entry per statement whatever the length of its IN lists.
        text = re.sub(
            r"\$\d+(::[A-Z ]+)?(, \$\d+(::[A-Z ]+)?)+", "$n..", plan.get("Query Text", "")
        )
        text = " ".join(text.split())[:400]
        top = plan["Plan"]
        buffers = sum(top.get(k, 0) for k in ("Shared Hit Blocks", "Shared Read Blocks"))
        entry = found.setdefault(
            text, {"query": text, "runs": 0, "buffers": 0, "max_buffers": 0, "seq": set()}
        )
        entry["runs"] += 1
        entry["buffers"] += buffers
        entry["max_buffers"] = max(entry["max_buffers"], buffers)
        entry["seq"].update(_seq_scans(top))
    return [
        {
            "query": e["query"],
            "runs": e["runs"],
            "mean_buffers": round(e["buffers"] / e["runs"], 1),
            "max_buffers": e["max_buffers"],
            "seq_scans": sorted(e["seq"]),
        }
        for e in found.values()
    ]


def read_from(path: str, offset: int) -> str:
    """The text of ``path`` from ``offset`` on."""
    with open(path, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        return log.read()


def _seq_scans(node: dict[str, Any]) -> set[str]:
    scans = {node["Relation Name"]} if node.get("Node Type") == "Seq Scan" else set()
    for child in node.get("Plans", []):
        scans |= _seq_scans(child)
    return scans


# --- driver ------------------------------------------------------------------------------------


async def run_size(args: argparse.Namespace, agents: int, waiting: int) -> dict[str, Any]:
    name = f"harmony_scale_{os.getpid()}_{agents}_{waiting}"
    print(
        f"{agents} agents, {waiting} waiting emails ({args.completed_factor}x as many completed):"
    )
    async with fresh_database(args.pg_dsn, name) as dsn:
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        if args.explain_log:
            # Set before Harmony connects: a connection reads these settings when it opens.
            await enable_auto_explain(args.pg_dsn, name)
        migrate = await asyncio.create_subprocess_exec(
            *harmony_command("migrate", "--database", url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if await migrate.wait() != 0:
            raise RuntimeError("harmony migrate failed")
        started = time.perf_counter()
        await seed(dsn, agents, waiting, waiting * args.completed_factor)
        print(f"  seeded in {time.perf_counter() - started:.1f} s")
        port, peer_port = free_port(), free_port()
        free: asyncio.Queue[str] = asyncio.Queue()
        for i in range(1, agents + 1):
            if i % 10 < 6:
                free.put_nowait(f"acd-{i:06d}")
        base = f"http://127.0.0.1:{port}"
        peer = Peer(harmony=base, free_agents=free)
        result: dict[str, Any] = {"agents": agents, "waiting": waiting}
        async with (
            running_peer(peer, peer_port),
            httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client,
            running_harmony(dsn, port, peer_port) as pid,
        ):
            peer.client = client
            result["reads"] = await time_reads(base, agents, args.requests)
            if args.interactions:
                log_offset = 0
                if args.explain_log:
                    log_offset = await asyncio.to_thread(os.path.getsize, args.explain_log)
                result["routing"] = await route(
                    peer, pid, dsn, agents, args.interactions, args.concurrency, name
                )
                print("  routing: " + ", ".join(f"{k} {v}" for k, v in result["routing"].items()))
                if peer.errors:
                    print(f"  routing errors ({len(peer.errors)}): {peer.errors[:3]}")
                result["routing_errors"] = len(peer.errors)
                if args.explain_log:
                    plans = await asyncio.to_thread(
                        lambda: explained(read_from(args.explain_log, log_offset), name)
                    )
                    result["explain"] = plans
                    print("  buffers per run (mean, max), runs, statement:")
                    for plan in sorted(plans, key=lambda p: -p["mean_buffers"]):
                        scans = f"  SEQ SCAN {plan['seq_scans']}" if plan["seq_scans"] else ""
                        print(
                            f"  {plan['mean_buffers']:7.1f} {plan['max_buffers']:5d} "
                            f"x{plan['runs']:<5d} {plan['query'][:140]}{scans}"
                        )
        return result


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        agents, waiting = part.lower().split("x")
        sizes.append((int(agents), int(waiting)))
    return sizes


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results = [await run_size(args, a, w) for a, w in parse_sizes(args.sizes)]
    report: dict[str, Any] = {"sizes": results}
    routed = [r["routing"] for r in results if "routing" in r]
    if len(routed) >= 2:
        small, large = routed[0], routed[-1]
        report["ratio_large_over_small"] = {
            key: round(large[key] / small[key], 2) if small[key] else None
            for key in (
                "harmony_cpu_ms_per_routed",
                "tuples_read_per_routed",
                "buffers_per_routed",
                "commits_per_routed",
            )
        }
        explained_sizes = [r["explain"] for r in results if "explain" in r]
        if len(explained_sizes) >= 2:
            report["explain_growth"] = explain_growth(explained_sizes[0], explained_sizes[-1])
            print("statements whose buffers per run grew with size (smallest -> largest):")
            for row in report["explain_growth"]:
                print(f"  {row['small']:7.1f} -> {row['large']:7.1f}  {row['query'][:140]}")
    return report


def explain_growth(small: list[dict[str, Any]], large: list[dict[str, Any]]) -> list[Any]:
    """Statements that touch more buffers per run at the larger size (beyond noise)."""
    before = {p["query"]: p["mean_buffers"] for p in small}
    grown = [
        {"query": p["query"], "small": before[p["query"]], "large": p["mean_buffers"]}
        for p in large
        if p["query"] in before and p["mean_buffers"] > 1.2 * before[p["query"]] + 2
    ]
    return sorted(grown, key=lambda row: row["small"] - row["large"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pg-dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin DSN of the server; bench databases are made beside it",
    )
    parser.add_argument(
        "--sizes",
        default="100x100,10000x50000",
        help="agents x waiting emails, comma-separated (default %(default)s)",
    )
    parser.add_argument(
        "--completed-factor",
        type=int,
        default=1,
        help="completed emails per waiting one (default %(default)s)",
    )
    parser.add_argument("--requests", type=int, default=200, help="timed requests per read")
    parser.add_argument(
        "--interactions",
        type=int,
        default=300,
        help="emails routed end to end per size (0: reads only)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="interactions in flight at once while routing"
    )
    parser.add_argument(
        "--explain-log",
        default=None,
        help="the server's log file: auto_explain the routing phase and report",
    )
    parser.add_argument("--json", default=None, help="also write the report to this file")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k != "sizes"}
    summary["sizes"] = [{k: v for k, v in r.items() if k != "explain"} for r in report["sizes"]]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
