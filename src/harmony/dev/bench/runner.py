"""``harmony bench``: every part of the benchmark in order, then the report.

1. routing end to end: a ladder of offered rates until goodput falls behind, one probe between
   the best sustained rate and the plateau, then half the maximum (latencies) and twice the
   maximum (overload);
2. the same-run ceiling: wrk against a minimal FastAPI + asyncpg app and against Harmony's
   ingest of ``interaction.created`` alone;
3. scale (10,000 agents, 50,000 waiting emails), the bundled simulators as peers, and two
   Harmony replicas against one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harmony.dev.bench import report
from harmony.dev.bench.ceiling import run_ceiling
from harmony.dev.bench.options import SCALE_FEW_WAITING, BenchOptions
from harmony.dev.bench.phase import measure_phase, verdict
from harmony.dev.bench.scale import replicas_part, scale_part, sims_part
from harmony.dev.bench.stack import Stack, running_stack
from harmony.dev.bench.stats import falls_behind, max_sustained, next_probe, sustains

__all__ = ["BenchOptions", "main", "run"]


def say(text: str) -> None:
    """Progress on stderr, so stdout ends with the one JSON line."""
    print(text, file=sys.stderr, flush=True)


def _phase_line(result: dict[str, Any]) -> str:
    delivery = result["create_to_delivery_ms"]
    return (
        f"offered {result['offered_per_s']:>6.1f}/s  routed {result['routed_per_s']:>6.1f}/s  "
        f"delivery p50 {delivery['p50']} p99 {delivery['p99']} ms  "
        f"webhook p99 {result['webhook_ms']['p99']} ms  "
        f"harmony {result['harmony_cpu_pct']}% cpu, {result['cpu_ms_per_routed']} ms/routed  "
        f"pg {result['postgres_cpu_pct']}%  peers+load "
        f"{(result['peers_cpu_pct'] or 0) + (result['load_cpu_pct'] or 0):.1f}%  "
        f"others {result['others_cpu_pct']}%  stmts/routed {result['statements_per_routed']}  "
        f"errors {result['errors'] or '-'}"
    )


async def main_parts(options: BenchOptions, workdir: Path, results: dict[str, Any]) -> None:
    """Parts 1 and 2 on one stack: routing, then the ceiling app and Harmony's ingest."""
    stack_dir = workdir / "routing"
    async with running_stack(
        options.admin_dsn,
        stack_dir,
        agents=options.agents,
        quiet_wait=options.quiet_wait,
        drain=options.drain,
    ) as stack:
        results["machine"]["postgresql"] = stack.db.server_version
        if "ladder" not in options.skip:
            await routing_part(options, stack, results)
        if "ceiling" not in options.skip:
            ceiling = await run_ceiling(stack, options.duration, options.wrk_connections, say)
            if ceiling is not None:
                results["ceiling"] = ceiling


async def routing_part(options: BenchOptions, stack: Stack, results: dict[str, Any]) -> None:
    """Part 1: the ladder of rates, the probe, half the maximum and the overload."""
    say(f"routing: {options.agents} agents, phases of {options.warmup:g}+{options.duration:g} s")
    ladder: list[dict[str, Any]] = []
    results["ladder"] = ladder

    async def phase(rate: float, label: str) -> dict[str, Any]:
        result = await measure_phase(stack, rate, options.duration, options.warmup, label)
        say(f"{label:<12}" + _phase_line(result))
        return result

    for rate in options.rates:
        result = await phase(rate, f"rate{rate:g}")
        ladder.append(result)
        if falls_behind(verdict(result)):
            break
    probe = next_probe([verdict(r) for r in ladder])
    if probe is not None:
        ladder.append(await phase(probe, f"probe{probe:g}"))
    verdicts = [verdict(r) for r in ladder]
    sustained = [r for r in ladder if sustains(verdict(r))]
    # The best sustained rate; when none was (a p99 over 1 s already at the lowest rate, say
    # on a busy machine), the plateau: the best goodput measured, flagged as such.
    max_phase = max(sustained or ladder, key=lambda r: r["routed_per_s"])
    best = max_sustained(verdicts) or max_phase["routed_per_s"]
    results["max_sustained_routed_per_s"] = round(best, 2)
    results["max_from"] = "sustained" if sustained else "plateau"
    results["plateau_routed_per_s"] = round(max(r["routed_per_s"] for r in ladder), 2)
    results["max_phase"] = max_phase["label"]
    if not sustained:
        say(f"no rate was sustained: the maximum is the plateau, {best:g}/s")
    if best <= 0:
        return
    half = round(best / 2, 1)
    results["half"] = await phase(half, f"half{half:g}")
    if "overload" not in options.skip:
        double = round(best * 2, 1)
        results["overload"] = await phase(double, f"overload{double:g}")


async def other_parts(options: BenchOptions, workdir: Path, results: dict[str, Any]) -> None:
    """Part 3: scale, the simulators, two replicas (each on a stack of its own)."""
    best = results.get("max_sustained_routed_per_s") or 0.0
    plateau = results.get("plateau_routed_per_s") or 0.0
    # A moderate rate every configuration sustains: half the maximum (else of the plateau, else
    # a low fixed one), the same for every configuration so their costs compare.
    moderate = round((best or plateau) / 2, 1) or 5.0
    if "scale" not in options.skip:
        results["scale"] = await scale_part(
            options.admin_dsn,
            workdir,
            moderate,
            options.duration,
            options.warmup,
            (options.agents, options.scale_agents),
            (SCALE_FEW_WAITING, options.scale_waiting),
            say,
            options.quiet_wait,
        )
    if "sims" not in options.skip:
        results["sims"] = await sims_part(
            options.admin_dsn,
            workdir,
            moderate,
            options.duration,
            options.warmup,
            options.agents,
            say,
            options.quiet_wait,
        )
    if "replicas" not in options.skip:
        if best:
            results["replicas"] = await replicas_part(
                options.admin_dsn,
                workdir,
                best,
                options.duration,
                options.warmup,
                options.agents,
                say,
                options.quiet_wait,
            )
        else:
            say("replicas: skipped, one replica's maximum is unknown (no ladder)")


async def run(options: BenchOptions) -> dict[str, Any]:
    """Run every part not skipped and return the full report (also written under ``out``)."""
    started = time.time()
    results: dict[str, Any] = {
        "machine": report.machine_facts(),
        "options": {
            "rates": list(options.rates),
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "agents": options.agents,
            "quick": options.quick,
            "skip": sorted(options.skip),
            "wrk_connections": options.wrk_connections,
            "quiet_wait_s": options.quiet_wait,
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }
    with tempfile.TemporaryDirectory(prefix="harmony-bench-") as tmp:
        workdir = Path(tmp)
        try:
            if not {"ladder", "ceiling"} <= options.skip:
                await main_parts(options, workdir, results)
            await other_parts(options, workdir, results)
        finally:
            results["wall_s"] = round(time.time() - started, 1)
            if options.keep_workdir:
                kept = Path(tempfile.mkdtemp(prefix="harmony-bench-kept-"))
                import shutil

                shutil.copytree(workdir, kept, dirs_exist_ok=True)
                say(f"work directory kept in {kept}")
    results["summary"] = report.summary(results)
    return results


def main(options: BenchOptions) -> int:
    """Run, write the report and chart, print the summary line last; 1 if nothing ran."""

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        results = asyncio.run(run(options))
    except KeyboardInterrupt:
        say("harmony bench: interrupted; processes stopped and the database dropped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    paths = report.write(results, options.out)
    for path in paths:
        say(f"wrote {path}")
    print(json.dumps(results["summary"], sort_keys=True))
    return 0
