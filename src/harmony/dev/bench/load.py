"""The open-loop load generator: signed ``interaction.created`` at a fixed arrival rate.

Every request is built and signed before the timed phase (a signature stays valid five minutes),
so sending is writing bytes: arrivals never wait for answers. Each arrival takes an idle
keep-alive connection, or opens another while fewer than ``connections`` are open; an arrival
that finds neither is sent as soon as a connection frees and counted ``late`` (its latencies
still run from its scheduled time, so a slow Harmony is not hidden by a slow generator).

Run as ``python -m harmony.dev.bench.load CONFIG.json OUT.json``: it prints ``ready`` once the
requests are built, reads the wall-clock start time (Unix seconds) from a line on stdin, sends,
waits for the answers and writes what it saw to OUT.json, with its own CPU time.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from harmony.dev.bench.wire import ClientPool, WebhookKey, build_request, encode_json

__all__ = ["LoadConfig", "created_events", "external_id", "main"]

CHANNELS = ("chat", "email")


@dataclass
class LoadConfig:
    """One timed phase: ``warmup`` seconds then ``duration`` seconds at ``rate`` per second."""

    host: str
    port: int
    secret: str
    rate: float
    duration: float
    warmup: float = 0.0
    prefix: str = "bench"
    queues: dict[str, str] = field(
        default_factory=lambda: {"chat": "bench-chat", "email": "bench-email"}
    )
    adapter: str = "generic"
    connections: int = 256
    answer_timeout: float = 60.0

    @property
    def count(self) -> int:
        """Arrivals in the whole phase, warm-up included."""
        return round(self.rate * (self.warmup + self.duration))

    @property
    def warmup_count(self) -> int:
        """Arrivals in the warm-up, which the report leaves out."""
        return round(self.rate * self.warmup)


def external_id(prefix: str, index: int) -> str:
    """The CRM id of the ``index``-th arrival of a phase."""
    return f"{prefix}-{index:07d}"


def created_events(
    config: LoadConfig, count: int, signed_at: int | None = None
) -> Iterator[tuple[str, int, str, bytes]]:
    """``count`` signed ``interaction.created`` events alternating chat and email:
    (event id, timestamp, signature, body)."""
    key = WebhookKey(config.secret)
    timestamp = int(time.time()) if signed_at is None else signed_at
    occurred = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for index in range(count):
        channel = CHANNELS[index % 2]
        ext = external_id(config.prefix, index)
        event_id = f"evt-{ext}"
        body = encode_json(
            {
                "id": event_id,
                "type": "interaction.created",
                "occurred_at": occurred,
                "data": {
                    "external_id": ext,
                    "channel": channel,
                    "queue": config.queues[channel],
                    "priority": 0,
                    "customer": {"name": "Bench Customer", "email": "customer@example.com"},
                    "subject": "benchmark",
                },
            }
        )
        yield event_id, timestamp, key.signature(event_id, timestamp, body), body


def build_requests(config: LoadConfig) -> list[bytes]:
    """Every request of the phase as bytes to write."""
    host = f"{config.host}:{config.port}"
    path = f"/v1/crm/{config.adapter}/events"
    return [
        build_request(
            host,
            path,
            body,
            {"webhook-id": event_id, "webhook-timestamp": str(ts), "webhook-signature": signature},
        )
        for event_id, ts, signature, body in created_events(config, config.count)
    ]


@dataclass
class PhaseRecord:
    """What the generator saw, one entry per arrival (index = arrival number)."""

    scheduled: list[float]
    status: list[int]
    answer_ms: list[float]
    late: list[bool]
    retry_after: Counter[int] = field(default_factory=Counter)


async def run_phase(config: LoadConfig, requests: list[bytes], start_wall: float) -> PhaseRecord:
    """Send ``requests`` open-loop at ``config.rate`` from ``start_wall`` (Unix seconds)."""
    loop = asyncio.get_running_loop()
    pool = ClientPool(config.host, config.port, config.connections)
    n = len(requests)
    record = PhaseRecord(
        scheduled=[start_wall + i / config.rate for i in range(n)],
        status=[-1] * n,
        answer_ms=[-1.0] * n,
        late=[False] * n,
    )
    base = loop.time() + (start_wall - time.time())

    async def send(index: int) -> None:
        started = time.perf_counter()
        reply = await pool.request(requests[index])
        record.status[index] = reply.status
        record.answer_ms[index] = (time.perf_counter() - started) * 1e3
        if reply.retry_after is not None:
            record.retry_after[reply.status] += 1

    tasks: set[asyncio.Task[None]] = set()
    index = 0
    while index < n:
        now = loop.time()
        while index < n and base + index / config.rate <= now:
            record.late[index] = not pool.can_send_now()
            task = loop.create_task(send(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        if index < n:
            await asyncio.sleep(max(0.0, base + index / config.rate - loop.time()))
    if tasks:
        await asyncio.wait(tasks, timeout=config.answer_timeout)
    pool.close()
    return record


def _cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1e3


def main(argv: list[str] | None = None) -> int:
    """``python -m harmony.dev.bench.load CONFIG.json OUT.json``."""
    import uvloop

    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as config_file:
        config = LoadConfig(**json.load(config_file))
    build_started = _cpu_ms()
    requests = build_requests(config)
    build_ms = _cpu_ms() - build_started
    print("ready", flush=True)
    start_wall = float(sys.stdin.readline())
    cpu_before = _cpu_ms()
    record = uvloop.run(run_phase(config, requests, start_wall))
    out: dict[str, Any] = {
        "rate": config.rate,
        "count_seconds": config.warmup + config.duration,
        "warmup_count": config.warmup_count,
        "prefix": config.prefix,
        "scheduled": record.scheduled,
        "status": record.status,
        "answer_ms": record.answer_ms,
        "late": sum(record.late),
        "retry_after": {str(k): v for k, v in record.retry_after.items()},
        "cpu_ms": _cpu_ms() - cpu_before,
        "build_cpu_ms": build_ms,
    }
    with open(args[1], "w") as out_file:
        json.dump(out, out_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
