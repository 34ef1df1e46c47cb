"""One timed phase of open-loop load against a running stack, and what it measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmony.dev.bench.load import external_id
from harmony.dev.bench.stack import Stack, clean_env, python
from harmony.dev.bench.stats import (
    BackendCpu,
    ProcessCpu,
    RateVerdict,
    machine_busy_ms,
    postgres_cpu_ms,
    proc_rss_mb,
    spread,
)

__all__ = ["measure_phase", "summarise_phase", "verdict"]

# Seconds between the generator saying it is ready and its first arrival.
START_DELAY = 0.3


@dataclass
class Snapshot:
    """Counters read at one instant."""

    at: float
    harmony_cpu: list[float]
    postgres_cpu: float | None
    machine: tuple[float, float]
    peers_cpu: float
    sql: dict[str, int]
    commits: int


async def _snapshot(stack: Stack, harmonies: list[ProcessCpu], peers: list[ProcessCpu]) -> Snapshot:
    postgres = None
    if stack.db.postmaster_pid is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            postgres = postgres_cpu_ms(stack.db.postmaster_pid)
    return Snapshot(
        at=time.time(),
        harmony_cpu=[h.now() for h in harmonies],
        postgres_cpu=postgres,
        machine=machine_busy_ms(),
        peers_cpu=sum(p.now() for p in peers),
        sql=await stack.sql_counts(),
        commits=await stack.db.commits(),
    )


async def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _spawn_load(
    config: dict[str, Any], workdir: Path, name: str
) -> tuple[subprocess.Popen[str], Path]:
    config_path = workdir / f"{name}.json"
    out_path = workdir / f"{name}.out.json"
    config_path.write_text(json.dumps(config))
    popen = subprocess.Popen(
        [python(), "-m", "harmony.dev.bench.load", str(config_path), str(out_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(workdir / f"{name}.log").open("w"),
        cwd=workdir,
        env=clean_env(),
        text=True,
        start_new_session=True,
    )
    return popen, out_path


# Before a phase, wait (at most QUIET_WAIT seconds) until the rest of the machine uses less than
# QUIET_BELOW percent of one core: on a shared machine other work would be measured as ours.
QUIET_BELOW = 25.0


async def others_cpu_pct(stack: Stack, seconds: float = 0.5) -> float:
    """Percent of one core the machine spent outside the stack's processes over ``seconds``
    (the database's backends are idle between phases and are counted as others)."""
    mine = [ProcessCpu(p.pid) for p in (*stack.harmonies, *stack.peer_processes)]
    for process in mine:
        process.mark()
    busy_before, _ = machine_busy_ms()
    await asyncio.sleep(seconds)
    busy = machine_busy_ms()[0] - busy_before
    own = sum(process.since_mark() for process in mine)
    return max(0.0, busy - own) / seconds / 10


async def wait_for_quiet(stack: Stack, within: float) -> tuple[float, float]:
    """Wait until the rest of the machine is quiet, or ``within`` seconds have passed:
    (seconds waited, the others' last CPU percent)."""
    started = time.monotonic()
    while True:
        others = await others_cpu_pct(stack)
        waited = time.monotonic() - started
        if others < QUIET_BELOW or waited >= within:
            return round(waited, 1), round(others, 1)


async def measure_phase(
    stack: Stack,
    rate: float,
    duration: float,
    warmup: float,
    label: str,
    *,
    drain: float | None = None,
    probes: Any = None,
) -> dict[str, Any]:
    """Offer ``rate`` interactions/s for ``warmup`` + ``duration`` seconds, spread over every
    replica, and measure the last ``duration`` seconds.

    ``probes``, if given, is an async callable run over the measured window (it returns what it
    measured, reported under ``probes``).
    """
    waited, others_before = await wait_for_quiet(stack, stack.quiet_wait)
    if stack.peers is not None:
        await stack.peers_call("POST", "/reset")
    replicas = len(stack.harmony_ports)
    loads = []
    for replica, port in enumerate(stack.harmony_ports):
        name = f"load-{label}-{replica}"
        config = {
            "host": "127.0.0.1",
            "port": port,
            "secret": stack.crm_secret,
            "rate": rate / replicas,
            "duration": duration,
            "warmup": warmup,
            "prefix": f"{label}-r{replica}",
        }
        loads.append((_spawn_load(config, stack.workdir, name), config))
    for (popen, _), _ in loads:
        assert popen.stdout is not None
        line = await asyncio.to_thread(popen.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"load generator did not start: {line!r}")
    start = time.time() + START_DELAY
    for (popen, _), _ in loads:
        assert popen.stdin is not None
        popen.stdin.write(f"{start}\n")
        popen.stdin.flush()
    harmonies = [ProcessCpu(h.pid) for h in stack.harmonies]
    peers = [ProcessCpu(p.pid) for p in stack.peer_processes]
    await _sleep_until(start + warmup)
    backends = BackendCpu()
    backends.sample(await stack.db.backend_pids(), fresh=True)
    before = await _snapshot(stack, harmonies, peers)
    probe_task = asyncio.create_task(probes(duration)) if probes else None
    end = start + warmup + duration
    while time.time() < end - 0.3:
        await asyncio.sleep(0.25)
        backends.sample(await stack.db.backend_pids())
    await _sleep_until(end)
    backends.sample(await stack.db.backend_pids())
    after = await _snapshot(stack, harmonies, peers)
    rss = [proc_rss_mb(h.pid) for h in stack.harmonies]
    probe_result = await probe_task if probe_task else None
    outputs = []
    for (popen, out_path), _ in loads:
        await asyncio.to_thread(popen.wait)
        outputs.append(json.loads(out_path.read_text()))
    drained = await stack.settle(stack.drain if drain is None else drain)
    if stack.peers is not None:
        peer_stats = await stack.peers_call("GET", "/stats")
    else:
        peer_stats = await _stats_from_database(stack, [o["prefix"] for o in outputs])
    result = summarise_phase(
        rate=rate,
        duration=duration,
        window=(before.at, after.at),
        outputs=outputs,
        peer_stats=peer_stats,
        before=before,
        after=after,
        database_cpu_ms=backends.used_ms(),
    )
    result["label"] = label
    result["quiet_wait_s"] = waited
    result["others_cpu_pct_before"] = others_before
    result["harmony_rss_mb"] = [None if r is None else round(r, 1) for r in rss]
    result["drained"] = drained
    if probe_result is not None:
        result["probes"] = probe_result
    return result


async def _stats_from_database(stack: Stack, prefixes: list[str]) -> dict[str, Any]:
    """Deliveries and completions as Harmony recorded them, for peers that do not report them
    (the simulators): its ``delivered_at`` is when the CRM's 2xx came back."""
    deliveries: dict[str, float] = {}
    completions: dict[str, float] = {}
    for prefix in prefixes:
        rows = await stack.db.conn.fetch(
            "SELECT external_id, extract(epoch FROM delivered_at)::float8 AS delivered,"
            " extract(epoch FROM completed_at)::float8 AS completed"
            " FROM interactions WHERE external_id LIKE $1",
            prefix + "-%",
        )
        for row in rows:
            if row["delivered"] is not None:
                deliveries[row["external_id"]] = row["delivered"]
            if row["completed"] is not None:
                completions[row["external_id"]] = row["completed"]
    return {"deliveries": deliveries, "completions": completions}


def _pct(cpu_ms: float | None, seconds: float) -> float | None:
    """CPU ms over ``seconds`` as percent of one core."""
    return None if cpu_ms is None else round(cpu_ms / seconds / 10, 1)


def _per(value: float, routed: int) -> float | None:
    return round(value / routed, 2) if routed else None


def summarise_phase(
    *,
    rate: float,
    duration: float,
    window: tuple[float, float],
    outputs: list[dict[str, Any]],
    peer_stats: dict[str, Any],
    before: Snapshot,
    after: Snapshot,
    database_cpu_ms: float | None = None,
) -> dict[str, Any]:
    """Turn the generator's and the peers' records and two snapshots into the phase's figures."""
    t1, t2 = window
    seconds = max(t2 - t1, 1e-9)
    completions: dict[str, float] = peer_stats.get("completions", {})
    deliveries: dict[str, float] = peer_stats.get("deliveries", {})
    routed = sum(1 for at in completions.values() if t1 <= at <= t2)
    observed_until = time.time()
    delivery_ms: list[float] = []
    undelivered = 0
    create_status: Counter[str] = Counter()
    create_answer_ms: list[float] = []
    retry_after: Counter[str] = Counter()
    late = 0
    offered = 0
    load_cpu = 0.0
    for out in outputs:
        first = out["warmup_count"]
        late += out["late"]
        load_cpu += out["cpu_ms"]
        retry_after.update(out["retry_after"])
        for index in range(first, len(out["scheduled"])):
            offered += 1
            status = out["status"][index]
            create_status[str(status)] += 1
            if status > 0:
                create_answer_ms.append(out["answer_ms"][index])
            delivered = deliveries.get(external_id(out["prefix"], index))
            scheduled = out["scheduled"][index]
            if delivered is not None:
                delivery_ms.append((delivered - scheduled) * 1e3)
            elif 200 <= status < 300:
                # Never delivered while observed: counted at the time observed, a lower bound.
                undelivered += 1
                delivery_ms.append((observed_until - scheduled) * 1e3)
    callback_ms = [ms for values in peer_stats.get("answer_ms", {}).values() for ms in values]
    harmony_cpu = sum(after.harmony_cpu) - sum(before.harmony_cpu)
    sql = {k: after.sql[k] - before.sql[k] for k in after.sql}
    commits = after.commits - before.commits
    goodput = routed / seconds
    delivery = spread(delivery_ms)
    errors = {s: n for s, n in create_status.items() if not s.startswith("2")}
    callback_errors: dict[str, dict[str, int]] = {}
    for kind, statuses in peer_stats.get("statuses", {}).items():
        bad = {s: n for s, n in statuses.items() if not s.startswith("2")}
        if bad:
            callback_errors[kind] = bad
    server = (
        None
        if after.postgres_cpu is None or before.postgres_cpu is None
        else after.postgres_cpu - before.postgres_cpu
    )
    peers_cpu = after.peers_cpu - before.peers_cpu
    phase_seconds = sum(o["count_seconds"] for o in outputs) / max(len(outputs), 1)
    load_in_window = load_cpu * seconds / phase_seconds if phase_seconds else load_cpu
    busy = after.machine[0] - before.machine[0]
    cores = (after.machine[1] - before.machine[1]) / seconds / 1000 if seconds else 0
    mine = harmony_cpu + (database_cpu_ms or 0) + peers_cpu + load_in_window
    return {
        "offered_per_s": rate,
        "duration_s": round(seconds, 2),
        "offered": offered,
        "routed": routed,
        "routed_per_s": round(goodput, 2),
        "create_to_delivery_ms": delivery,
        "undelivered": undelivered,
        "undelivered_observed_for_s": round(observed_until - t2, 1),
        "webhook_ms": spread(create_answer_ms + callback_ms),
        "create_answer_ms": spread(create_answer_ms),
        "callback_answer_ms": {
            kind: spread(values) for kind, values in peer_stats.get("answer_ms", {}).items()
        },
        "create_status": dict(create_status),
        "errors": errors,
        "callback_errors": callback_errors,
        "retry_after": dict(retry_after),
        "late_arrivals": late,
        "harmony_cpu_ms": round(harmony_cpu, 1),
        "harmony_cpu_pct": round(harmony_cpu / seconds / 10, 1),
        "cpu_ms_per_routed": _per(harmony_cpu, routed),
        "postgres_cpu_pct": _pct(database_cpu_ms, seconds),
        "postgres_cpu_ms_per_routed": None
        if database_cpu_ms is None
        else _per(database_cpu_ms, routed),
        "postgres_server_cpu_pct": _pct(server, seconds),
        "peers_cpu_pct": _pct(peers_cpu, seconds),
        "load_cpu_pct": _pct(load_in_window, seconds),
        "load_cpu_ms": round(load_cpu, 1),
        "machine_busy_pct": _pct(busy, seconds),
        "machine_cores": round(cores, 2),
        "others_cpu_pct": _pct(max(0.0, busy - mine), seconds),
        "commits_per_routed": _per(commits, routed),
        "harmony_commits_per_routed": _per(sql.get("commits", 0), routed),
        "statements_per_routed": _per(sql.get("statements", 0), routed),
        "checkouts_per_routed": _per(sql.get("checkouts", 0), routed),
        "peer_counts": peer_stats.get("counts", {}),
    }


def verdict(result: dict[str, Any]) -> RateVerdict:
    """The inputs of the rate verdicts from a phase's figures."""
    return RateVerdict(
        result["offered_per_s"], result["routed_per_s"], result["create_to_delivery_ms"]["p99"]
    )
