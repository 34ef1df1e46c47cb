"""The benchmark's fast peers: an ACD and a CRM speaking the generic protocol, in one process.

Both answer Harmony at once and call back at once, so what the benchmark measures is Harmony:

- the ACD answers ``routing.requested`` 200 and posts a signed ``agent.selected`` for the next
  agent round-robin that its own load count says is under capacity (a ``409`` is undone and the
  next agent tried; with nobody free the request waits for a ``work.ended``). In ``hold`` mode it
  only acknowledges, so the interactions wait (the ingest-only and waiting-emails runs).
- the CRM answers ``interaction.deliver`` 200, notes the wall time it got it per external id,
  then posts ``interaction.accepted`` and, once that is answered 2xx, ``interaction.completed``.
  A routed interaction is one whose ``interaction.completed`` was answered 2xx.

Harmony posts to ``{url}/events``: the ACD is configured at ``http://host:port/acd`` and the
CRM at ``http://host:port/crm``. ``GET /stats`` returns what was counted since the last
``POST /reset``; ``POST /mode`` switches between ``route`` and ``hold``.

Run as ``python -m harmony.dev.bench.peers CONFIG.json``; it prints ``ready PORT`` when it
listens. Signatures are made and checked with plain ``hmac`` (``wire.WebhookKey``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from typing import Any

from harmony.dev.bench.wire import (
    ClientPool,
    HttpServerProtocol,
    Reply,
    WebhookKey,
    build_request,
    encode_json,
    response_bytes,
)

__all__ = ["PeerConfig", "Peers", "main"]

OK = response_bytes(200)
RETRYABLE = frozenset({0, 408, 425, 429, 500, 502, 503, 504})
MAX_ATTEMPTS = 20


@dataclass
class PeerConfig:
    """What the peers need to know: where Harmony listens, the secrets, the agents."""

    harmony_host: str
    harmony_ports: list[int]
    acd_secret: str
    crm_secret: str
    acd_agents: list[str]
    capacity: dict[str, int] = field(default_factory=lambda: {"chat": 50, "email": 50})
    acd_adapter: str = "generic"
    crm_adapter: str = "generic"
    mode: str = "route"
    verify: bool = True
    connections: int = 64

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PeerConfig:
        """Build from the JSON the runner writes."""
        return cls(**raw)


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Peers:
    """The ACD and the CRM; ``handle`` is the HTTP server's request handler."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.mode = config.mode
        self._acd_key = WebhookKey(config.acd_secret)
        self._crm_key = WebhookKey(config.crm_secret)
        self._acd_path = f"/v1/acd/{config.acd_adapter}/events"
        self._crm_path = f"/v1/crm/{config.crm_adapter}/events"
        # One pool per Harmony replica; callbacks take turns across them.
        self.pools = [
            (
                f"{config.harmony_host}:{port}",
                ClientPool(config.harmony_host, port, config.connections),
            )
            for port in config.harmony_ports
        ]
        self._turn = 0
        self._ids = count(1)
        self._agents = list(config.acd_agents)
        self._next_agent = 0
        self._load: dict[str, Counter[str]] = {ch: Counter() for ch in config.capacity}
        self._pending: dict[str, deque[str]] = {ch: deque() for ch in config.capacity}
        self._held: dict[str, tuple[str, str]] = {}  # request_id -> (agent, channel)
        self._tasks: set[asyncio.Task[None]] = set()
        self.reset()

    def reset(self) -> None:
        """Forget what was counted (the load per agent is state, and stays)."""
        self.counts: Counter[str] = Counter()
        self.deliveries: dict[str, float] = {}
        self.completions: dict[str, float] = {}
        self.answer_ms: dict[str, list[float]] = {}
        self.statuses: dict[str, Counter[int]] = {}
        self.cpu_at_reset = _cpu_ms()

    # --- HTTP server side ----------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> bytes:
        """Answer one request from Harmony or from the runner."""
        if method == "POST" and path in ("/acd/events", "/crm/events"):
            return self._event(path, headers, body)
        if path == "/stats":
            return response_bytes(200, encode_json(self.stats()))
        if method == "POST" and path == "/reset":
            self.reset()
            return OK
        if method == "POST" and path == "/mode":
            self.mode = json.loads(body)["mode"]
            return OK
        if method == "POST" and path == "/agents":
            self.set_agents(json.loads(body)["agents"])
            return OK
        return response_bytes(404, b'{"error":"not_found"}')

    def _event(self, path: str, headers: dict[bytes, bytes], body: bytes) -> bytes:
        acd = path == "/acd/events"
        if self.config.verify:
            key = self._acd_key if acd else self._crm_key
            if not key.verify(
                headers.get(b"webhook-id", b"").decode(),
                headers.get(b"webhook-timestamp", b"").decode(),
                headers.get(b"webhook-signature", b"").decode(),
                body,
            ):
                self.counts["bad_signature"] += 1
                return response_bytes(401, b'{"error":"invalid_signature"}')
        event = json.loads(body)
        kind = event.get("type", "")
        data = event.get("data", {})
        self.counts[("acd:" if acd else "crm:") + kind] += 1
        if acd and kind == "routing.requested":
            if self.mode == "route":
                self._select(data["request_id"], data["channel"])
        elif acd and kind == "work.ended":
            held = self._held.pop(data["request_id"], None)
            if held is not None:
                self._release(*held)
        elif not acd and kind == "interaction.deliver":
            external_id = data["external_id"]
            self.deliveries[external_id] = time.time()
            self._spawn(self._accept_and_complete(external_id))
        return OK

    # --- the ACD -------------------------------------------------------------------------

    def set_agents(self, agents: list[str]) -> None:
        """Choose among ``agents`` from now on (loads of agents kept stay counted)."""
        self._agents = list(agents)
        self._next_agent = 0

    def _free_agent(self, channel: str) -> str | None:
        loads = self._load[channel]
        limit = self.config.capacity[channel]
        for _ in range(len(self._agents)):
            agent = self._agents[self._next_agent]
            self._next_agent = (self._next_agent + 1) % len(self._agents)
            if loads[agent] < limit:
                return agent
        return None

    def _select(self, request_id: str, channel: str) -> None:
        agent = self._free_agent(channel)
        if agent is None:
            self._pending[channel].append(request_id)
            self.counts["acd_waited_for_agent"] += 1
            return
        self._load[channel][agent] += 1
        self._held[request_id] = (agent, channel)
        self._spawn(self._post_selected(request_id, agent, channel))

    def _release(self, agent: str, channel: str) -> None:
        self._load[channel][agent] -= 1
        if self._pending[channel]:
            self._select(self._pending[channel].popleft(), channel)

    async def _post_selected(self, request_id: str, agent: str, channel: str) -> None:
        reply = await self._post(
            "agent.selected", True, {"request_id": request_id, "agent_id": agent}
        )
        if 200 <= reply.status < 300:
            return
        # Refused (409: that agent cannot take it, say) or given up: free the slot we counted.
        if self._held.pop(request_id, None) is not None:
            self._release(agent, channel)
        if reply.status == 409:
            self._select(request_id, channel)

    # --- the CRM -------------------------------------------------------------------------

    async def _accept_and_complete(self, external_id: str) -> None:
        accepted = await self._post("interaction.accepted", False, {"external_id": external_id})
        if not 200 <= accepted.status < 300:
            return
        completed = await self._post("interaction.completed", False, {"external_id": external_id})
        if 200 <= completed.status < 300:
            self.completions[external_id] = time.time()

    # --- posting to Harmony --------------------------------------------------------------

    async def _post(self, kind: str, acd: bool, data: dict[str, Any]) -> Reply:
        """Post one signed event, retrying what the protocol calls transient."""
        event_id = f"bench-{'acd' if acd else 'crm'}-{next(self._ids)}"
        body = encode_json({"id": event_id, "type": kind, "occurred_at": _now_text(), "data": data})
        key = self._acd_key if acd else self._crm_key
        path = self._acd_path if acd else self._crm_path
        statuses = self.statuses.setdefault(kind, Counter())
        for attempt in range(MAX_ATTEMPTS):
            host, pool = self.pools[self._turn]
            self._turn = (self._turn + 1) % len(self.pools)
            signed = key.headers(event_id, int(time.time()), body)
            started = time.perf_counter()
            reply = await pool.request(build_request(host, path, body, signed))
            statuses[reply.status] += 1
            if reply.status != 0:
                self.answer_ms.setdefault(kind, []).append((time.perf_counter() - started) * 1e3)
            if reply.status not in RETRYABLE or attempt == MAX_ATTEMPTS - 1:
                return reply
            await asyncio.sleep(_backoff(reply, attempt))
        return reply  # pragma: no cover - the loop always returns

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Close the idle connections to Harmony."""
        for _, pool in self.pools:
            pool.close()

    def stats(self) -> dict[str, Any]:
        """Everything counted since the last reset, with this process's CPU."""
        return {
            "counts": dict(self.counts),
            "statuses": {k: {str(s): n for s, n in v.items()} for k, v in self.statuses.items()},
            "answer_ms": self.answer_ms,
            "deliveries": self.deliveries,
            "completions": self.completions,
            "in_flight": len(self._tasks),
            "held": len(self._held),
            "waiting_for_agent": sum(len(q) for q in self._pending.values()),
            "cpu_ms": _cpu_ms() - self.cpu_at_reset,
            "connections_opened": sum(pool.connections_opened for _, pool in self.pools),
        }


def _backoff(reply: Reply, attempt: int) -> float:
    if reply.retry_after:
        try:
            return min(5.0, max(0.0, float(reply.retry_after)))
        except ValueError:
            pass
    return min(2.0, 0.05 * 2.0**attempt)


def _cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime) * 1e3


async def serve(config: PeerConfig, port: int = 0) -> None:
    """Listen on loopback until cancelled; print ``ready PORT`` once listening."""
    peers = Peers(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpServerProtocol(peers.handle), "127.0.0.1", port, backlog=1024
    )
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """``python -m harmony.dev.bench.peers CONFIG.json [PORT]``."""
    import uvloop

    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as config_file:
        config = PeerConfig.from_json(json.load(config_file))
    port = int(args[1]) if len(args) > 1 else 0
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(config, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
