"""The processes a benchmark run drives: a fresh PostgreSQL database, Harmony, the peers.

Each is a separate process on loopback, started in its own session (so a Ctrl-C reaches the
runner alone, which then stops them in order) and stopped, and the database dropped, whatever
ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import httpx

from harmony.dev.bench.stats import parent_pid
from harmony.dev.bench.wire import WebhookKey, encode_json

__all__ = ["BenchDatabase", "Process", "Stack", "free_ports", "running_stack", "seed_document"]

BENCH_DB_PREFIX = "harmony_bench_"
CHAT_QUEUE = "bench-chat"
EMAIL_QUEUE = "bench-email"
PROFILE = "bench"
# The CRM simulator's agents accept after ~50 ms and complete ~200 ms later (+-50%).
SIM_CRM_DELAYS = ("--accept-delay", "0.05", "--complete-delay", "0.2", "--jitter", "0.5")


def free_ports(count: int) -> list[int]:
    """``count`` different loopback ports nobody listens on right now."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def agent_ids(index: int) -> tuple[str, str, str]:
    """Harmony, CRM and ACD ids of the ``index``-th benchmark agent (1-based)."""
    return f"bench-agent-{index:06d}", f"crm-{index:06d}", f"acd-{index:06d}"


def seed_document(agents: int, capacity: int) -> dict[str, Any]:
    """A seed with one profile (chat and email ``capacity`` each, no wrap-up, no blocks), a chat
    and an email queue without skills, and ``agents`` agents."""
    profile = {
        "name": PROFILE,
        "capacity": {"voice": 0, "chat": capacity, "email": capacity},
        "wrap_up_seconds": {},
        "blocks": {},
    }
    queues = [
        {"name": CHAT_QUEUE, "channel": "chat", "skills": []},
        {"name": EMAIL_QUEUE, "channel": "email", "skills": []},
    ]
    people = []
    for index in range(1, agents + 1):
        agent_id, crm_id, acd_id = agent_ids(index)
        people.append(
            {
                "id": agent_id,
                "name": f"Bench {index}",
                "crm_agent_id": crm_id,
                "acd_agent_id": acd_id,
                "skills": [],
                "profile": PROFILE,
            }
        )
    return {"profiles": [profile], "queues": queues, "agents": people}


def _with_database(dsn: str, database: str, scheme: str | None = None) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(
        (scheme or parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment)
    )


class BenchDatabase:
    """A database of its own for one run, on the server of the admin DSN."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = BENCH_DB_PREFIX + secrets.token_hex(4)
        self.dsn = _with_database(admin_dsn, self.name)
        self.harmony_url = _with_database(admin_dsn, self.name, "postgresql+asyncpg")
        self._admin: asyncpg.Connection | None = None
        self._conn: asyncpg.Connection | None = None
        self.server_version = ""
        self.postmaster_pid: int | None = None

    async def create(self) -> None:
        """Create the database and learn the server's version and postmaster."""
        self._admin = await asyncpg.connect(self.admin_dsn)
        await self._admin.execute(f'CREATE DATABASE "{self.name}"')
        self.server_version = str(await self._admin.fetchval("SHOW server_version"))
        backend = int(await self._admin.fetchval("SELECT pg_backend_pid()"))
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.postmaster_pid = parent_pid(backend)  # readable when the server is local
        self._conn = await asyncpg.connect(self.dsn)

    @property
    def conn(self) -> asyncpg.Connection:
        """A connection to the benchmark database, for the runner's own queries."""
        assert self._conn is not None
        return self._conn

    async def commits(self) -> int:
        """Transactions committed in this database so far (the server's statistics)."""
        assert self._admin is not None
        await self._admin.execute("SELECT pg_stat_clear_snapshot()")
        value = await self._admin.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self.name
        )
        return int(value or 0)

    async def backend_pids(self) -> list[int]:
        """Server processes serving this database now, but the runner's own."""
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [int(row["pid"]) for row in rows]

    async def outbox_pending(self) -> int:
        """Outbound messages not yet sent or given up."""
        return int(await self.conn.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'"))

    async def drop(self) -> None:
        """Drop the database, closing whatever is still connected to it."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        if self._admin is None:
            return
        try:
            await self._admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await self._admin.close()


@dataclass
class Process:
    """A child process with its log file; stopped by its pid, in its own session."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.popen.pid

    def alive(self) -> bool:
        """The process has not exited."""
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The end of its log, for an error message."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(5)


def spawn(
    name: str, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None
) -> Process:
    """Start ``args`` in its own session, its output to ``workdir/name.log``."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    return Process(name, popen, log)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any HARMONY_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARMONY_")}
    env.update(extra)
    return env


class StartFailed(RuntimeError):
    """A process of the stack did not come up."""


async def wait_http(url: str, process: Process, within: float = 120.0) -> None:
    """Wait until ``url`` answers 200, or raise with the process's log."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if not process.alive():
                raise StartFailed(f"{process.name} exited:\n{process.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise StartFailed(f"{process.name} not ready after {within:.0f} s:\n{process.tail()}")


def _read_snapshot(path: Path) -> dict[str, Any]:
    try:
        counts: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return counts


async def _fresh_snapshot(pid: int, path: Path, wait: float = 2.0) -> dict[str, Any]:
    """Ask the counting ``harmony serve`` for a new snapshot and wait for it (the last one
    written if it does not come in ``wait`` seconds)."""
    before = _read_snapshot(path).get("snapshot", -1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        counts = _read_snapshot(path)
        if counts.get("snapshot", -1) != before:  # a new snapshot, whatever its number
            return counts
        await asyncio.sleep(0.005)
    return _read_snapshot(path)


@dataclass
class Stack:
    """A running Harmony (one or more replicas) with its peers and database."""

    db: BenchDatabase
    workdir: Path
    acd_secret: str
    crm_secret: str
    agents: int
    harmony_ports: list[int]
    harmonies: list[Process]
    peers_port: int
    peers: Process | None
    stats_files: list[Path] = field(default_factory=list)
    # Whatever plays the ACD and CRM (the fast peers, or the two simulators), for their CPU.
    peer_processes: list[Process] = field(default_factory=list)
    # Seconds a phase may wait for the rest of the machine to go quiet before it starts.
    quiet_wait: float = 30.0
    # Seconds a phase waits, after its last arrival, for Harmony to finish what it accepted.
    drain: float = 60.0

    @property
    def harmony_url(self) -> str:
        """The first replica's base URL."""
        return f"http://127.0.0.1:{self.harmony_ports[0]}"

    @property
    def peers_url(self) -> str:
        """The peers' base URL (control endpoints)."""
        return f"http://127.0.0.1:{self.peers_port}"

    async def sql_counts(self) -> dict[str, int]:
        """Statements, pool checkouts and commits counted in every replica so far: each one is
        asked for a fresh snapshot (SIGUSR1), which it writes within a few milliseconds."""
        total = {"statements": 0, "checkouts": 0, "commits": 0}
        for harmony, path in zip(self.harmonies, self.stats_files, strict=False):
            counts = await _fresh_snapshot(harmony.pid, path)
            for key in total:
                total[key] += int(counts.get(key, 0))
        return total

    async def peers_call(self, method: str, path: str, body: Any = None) -> Any:
        """Call a control endpoint of the peers."""
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.request(
                method, self.peers_url + path, content=encode_json(body) if body else None
            )
            answer.raise_for_status()
            return answer.json()

    async def log_in(self, first: int, last: int, concurrency: int = 8) -> None:
        """Log agents ``first``..``last`` in, ready on chat and email, as the CRM would."""
        key = WebhookKey(self.crm_secret)
        url = f"{self.harmony_url}/v1/crm/generic/events"
        todo = iter(range(first, last + 1))

        async def worker(client: httpx.AsyncClient) -> None:
            for index in todo:
                _, crm_id, _ = agent_ids(index)
                event_id = f"bench-login-{index}-{secrets.token_hex(3)}"
                body = encode_json(
                    {
                        "id": event_id,
                        "type": "agent.logged_in",
                        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "data": {
                            "agent_id": crm_id,
                            "state": "ready",
                            "channels": ["chat", "email"],
                        },
                    }
                )
                headers = key.headers(event_id, int(time.time()), body)
                headers["content-type"] = "application/json"
                answer = await client.post(url, content=body, headers=headers)
                if answer.status_code != 202:
                    raise StartFailed(f"login of {crm_id}: {answer.status_code} {answer.text}")

        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))

    async def settle(self, within: float = 30.0) -> bool:
        """Wait until Harmony's outbox is empty and the peers have nothing in flight."""
        deadline = time.monotonic() + within
        quiet = 0
        while time.monotonic() < deadline:
            if self.peers is not None:
                busy = (await self.peers_call("GET", "/stats"))["in_flight"]
            else:  # the simulators: wait for the work they hold to be completed
                busy = await self.db.conn.fetchval(
                    "SELECT count(*) FROM interactions"
                    " WHERE state IN ('offered', 'delivered', 'accepted')"
                )
            if await self.db.outbox_pending() == 0 and busy == 0:
                quiet += 1
                if quiet >= 3:
                    return True
            else:
                quiet = 0
            await asyncio.sleep(0.2)
        return False


async def _wait_logged_in(url: str, process: Process, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            if not process.alive():
                raise StartFailed(f"{process.name} exited:\n{process.tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (await client.get(url)).json().get("logged_in"):
                    return
            await asyncio.sleep(0.2)
    raise StartFailed(f"{process.name} did not log its agents in:\n{process.tail()}")


def python() -> str:
    """The interpreter running this benchmark, for every child process."""
    return sys.executable


@contextlib.asynccontextmanager
async def running_stack(
    admin_dsn: str,
    workdir: Path,
    *,
    agents: int,
    capacity: int = 20,
    replicas: int = 1,
    peers: str = "fast",
    sql_stats: bool = True,
    extra_env: dict[str, str] | None = None,
    quiet_wait: float = 30.0,
    drain: float = 60.0,
) -> AsyncIterator[Stack]:
    """A fresh database, the peers and ``replicas`` Harmony processes, ``agents`` seeded and
    logged in, ready on chat and email; everything stopped and dropped on exit.

    ``peers`` is ``fast`` (this package's peers) or ``simulators`` (``harmony sim-acd`` and
    ``harmony sim-crm``, which log the agents in themselves)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    db = BenchDatabase(admin_dsn)
    processes: list[Process] = []
    try:
        await db.create()
        ports = free_ports(replicas + 2)
        harmony_ports, peers_port, crm_port = ports[:replicas], ports[replicas], ports[-1]
        from harmony.adapters.generic_http.signing import new_secret

        acd_secret, crm_secret = new_secret(), new_secret()
        seed_path = workdir / "seed.json"
        seed_path.write_text(json.dumps(seed_document(agents, capacity)))
        fast: Process | None = None
        sim = [python(), "-m", "harmony.cli"]
        # ... followed by the secret of the simulator's side
        sim_args = ["--harmony-url", f"http://127.0.0.1:{harmony_ports[0]}"]
        sim_args += ["--seed", str(seed_path), "--log-level", "WARNING", "--secret"]
        if peers == "fast":
            acd_url = f"http://127.0.0.1:{peers_port}/acd"
            crm_url = f"http://127.0.0.1:{peers_port}/crm"
            config = {
                "harmony_host": "127.0.0.1",
                "harmony_ports": harmony_ports,
                "acd_secret": acd_secret,
                "crm_secret": crm_secret,
                "acd_agents": [agent_ids(i)[2] for i in range(1, agents + 1)],
                "capacity": {"chat": capacity, "email": capacity},
            }
            (workdir / "peers.json").write_text(json.dumps(config))
            fast = spawn(
                "peers",
                [python(), "-m", "harmony.dev.bench.peers", "peers.json", str(peers_port)],
                workdir,
                clean_env(),
            )
            processes.append(fast)
            await wait_http(f"http://127.0.0.1:{peers_port}/stats", fast, 30)
        else:
            acd_url = f"http://127.0.0.1:{peers_port}"
            crm_url = f"http://127.0.0.1:{crm_port}"
            acd = spawn(
                "sim-acd",
                [*sim, "sim-acd", "--port", str(peers_port), *sim_args, acd_secret],
                workdir,
                clean_env(),
            )
            processes.append(acd)
            await wait_http(f"{acd_url}/state", acd, 60)
        stack = Stack(
            db, workdir, acd_secret, crm_secret, agents, harmony_ports, [], peers_port, fast
        )
        stack.peer_processes = list(processes)
        stack.quiet_wait = quiet_wait
        stack.drain = drain
        for replica, port in enumerate(harmony_ports):
            stats_file = workdir / f"sql-stats-{replica}.json"
            env = clean_env(
                HARMONY_DATABASE_URL=db.harmony_url,
                HARMONY_HOST="127.0.0.1",
                HARMONY_PORT=str(port),
                HARMONY_SEED_FILE=str(seed_path),
                HARMONY_LOG_LEVEL="WARNING",
                HARMONY_LOG_FORMAT="json",
                HARMONY_ROUTING_ACD="generic",
                HARMONY_ACD_ADAPTERS=json.dumps(
                    {"generic": {"url": acd_url, "secret": acd_secret}}
                ),
                HARMONY_CRM_ADAPTERS=json.dumps(
                    {"generic": {"url": crm_url, "secret": crm_secret}}
                ),
                **(extra_env or {}),
            )
            if sql_stats:
                env["HARMONY_BENCH_STATS"] = str(stats_file)
                stack.stats_files.append(stats_file)
            harmony = spawn(
                f"harmony-{replica}", [python(), "-m", "harmony.dev.bench.served"], workdir, env
            )
            processes.append(harmony)
            stack.harmonies.append(harmony)
            # One at a time: the first migrates and seeds, the next finds it done.
            await wait_http(f"http://127.0.0.1:{port}/readyz", harmony)
        if peers == "fast":
            await stack.log_in(1, agents)
        else:
            crm = spawn(
                "sim-crm",
                [*sim, "sim-crm", "--port", str(crm_port), *sim_args, crm_secret, *SIM_CRM_DELAYS],
                workdir,
                clean_env(),
            )
            processes.append(crm)
            stack.peer_processes.append(crm)
            await _wait_logged_in(f"{crm_url}/state", crm)
        await stack.settle(60)
        yield stack
    finally:
        for process in reversed(processes):
            process.stop()
        await db.drop()
