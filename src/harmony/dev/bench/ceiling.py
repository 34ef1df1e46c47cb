"""Part 2: the same-run ceiling. wrk drives the minimal app under ``bench/`` and then Harmony's
ingest of ``interaction.created`` alone, with the same settings and the same pre-signed requests.

wrk (Debian's package) is the load tool here: a C event loop whose own CPU is small and
reported, closed-loop over a fixed number of connections, which is what finds a ceiling. A Lua
script (``bench/ingest.lua``) cycles through a file of pre-signed requests so every request
Harmony sees is a new event.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from harmony.dev.bench.load import LoadConfig, created_events
from harmony.dev.bench.phase import wait_for_quiet
from harmony.dev.bench.stack import Process, Stack, clean_env, free_ports, python, spawn, wait_http
from harmony.dev.bench.stats import BackendCpu, ProcessCpu, machine_busy_ms

__all__ = ["BENCH_DIR", "WrkRun", "ensure_wrk", "parse_wrk", "run_ceiling", "write_requests"]

# bench/ of the source tree: the ceiling app and the wrk script are not part of the package.
BENCH_DIR = Path(__file__).resolve().parents[4] / "bench"
WRK_THREADS = 1
WRK_INSTALL_HINT = "apt-get install -y wrk (Debian/Ubuntu), or put wrk on PATH"


def ensure_wrk(say: Any) -> str | None:
    """wrk's path, installing Debian's package when run as root with apt-get; None if absent."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        say("installing wrk: apt-get update && apt-get install -y wrk")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run([apt, "install", "-y", "-qq", "wrk"], check=False, env=env)
        return shutil.which("wrk")
    say(f"wrk not found: {WRK_INSTALL_HINT}; the ceiling part is skipped")
    return None


def write_requests(path: Path, secret: str, count: int, prefix: str) -> None:
    """``count`` pre-signed ``interaction.created`` lines for ``bench/ingest.lua``."""
    config = LoadConfig(host="127.0.0.1", port=0, secret=secret, rate=1, duration=0, prefix=prefix)
    route = f"/v1/crm/{config.adapter}/events"
    with path.open("w") as out:
        for event_id, timestamp, signature, body in created_events(config, count):
            out.write(f"{route}\t{event_id}\t{timestamp}\t{signature}\t{body.decode()}\n")


def parse_wrk(output: str) -> dict[str, Any]:
    """The ``BENCH_JSON`` line ``ingest.lua`` prints, or ValueError."""
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return parsed
    raise ValueError(f"no BENCH_JSON line in wrk's output:\n{output[-2000:]}")


class WrkRun:
    """One wrk run against one server, with the CPU of the server, its database and wrk."""

    def __init__(self, wrk: str, workdir: Path, connections: int, duration: float) -> None:
        self.wrk = wrk
        self.workdir = workdir
        self.connections = connections
        self.duration = duration

    async def run(
        self, name: str, port: int, server_pid: int, requests_file: Path, stack: Stack
    ) -> dict[str, Any]:
        """Drive ``port`` for ``duration`` seconds; figures per second and per request."""
        out_path = self.workdir / f"wrk-{name}.out"
        waited, others_before = await wait_for_quiet(stack, stack.quiet_wait)
        server = ProcessCpu(server_pid)
        server.mark()
        backends = BackendCpu()
        backends.sample(await stack.db.backend_pids(), fresh=True)
        args = [
            self.wrk,
            f"-t{WRK_THREADS}",
            f"-c{self.connections}",
            f"-d{self.duration:g}s",
            "-s",
            str(BENCH_DIR / "ingest.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(requests_file),
            str(WRK_THREADS),
        ]
        with out_path.open("w") as out:
            popen = await asyncio.to_thread(
                subprocess.Popen, args, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        started = time.time()
        busy_before = machine_busy_ms()[0]
        exited = asyncio.create_task(asyncio.to_thread(os.wait4, popen.pid, 0))
        while not exited.done():
            await asyncio.sleep(0.25)
            if time.time() - started < self.duration:
                backends.sample(await stack.db.backend_pids())
        _, status, usage = await exited
        busy = machine_busy_ms()[0] - busy_before
        popen.returncode = os.waitstatus_to_exitcode(status)
        server_ms = server.since_mark()
        summary = parse_wrk(out_path.read_text())
        seconds = summary["duration_us"] / 1e6
        requests = summary["requests"]
        errors = {
            k: summary[k]
            for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
            if summary[k]
        }
        good = requests - summary["status_errors"]
        wrk_ms = (usage.ru_utime + usage.ru_stime) * 1e3
        others = max(0.0, busy - server_ms - wrk_ms - backends.used_ms())
        return {
            "requests": requests,
            "rps": round(good / seconds, 1),
            "errors": errors,
            "repeats": summary["wraps"],
            "latency_ms": {
                "p50": summary["p50_us"] / 1e3,
                "p99": summary["p99_us"] / 1e3,
                "max": summary["max_us"] / 1e3,
            },
            "server_cpu_pct": round(server_ms / seconds / 10, 1),
            "cpu_ms_per_request": round(server_ms / good, 3) if good else None,
            "postgres_cpu_pct": round(backends.used_ms() / seconds / 10, 1),
            "wrk_cpu_pct": round(wrk_ms / seconds / 10, 1),
            "others_cpu_pct": round(others / seconds / 10, 1),
            "quiet_wait_s": waited,
            "others_cpu_pct_before": others_before,
        }


async def run_ceiling(
    stack: Stack, duration: float, connections: int, say: Any
) -> dict[str, Any] | None:
    """wrk against the ceiling app, then against Harmony's ingest (the ACD holding every
    request, so nothing is routed), on ``stack``'s database; None when wrk or bench/ is absent.
    """
    if not (BENCH_DIR / "ceiling_app.py").exists():
        say(f"{BENCH_DIR} not found (an installed package): the ceiling part is skipped")
        return None
    wrk = ensure_wrk(say)
    if wrk is None:
        return None
    workdir = stack.workdir
    runner = WrkRun(wrk, workdir, connections, duration)
    # Enough distinct events for the ceiling's rate; Harmony cannot go faster than the ceiling.
    count = int(6000 * duration)
    requests_file = workdir / "ingest-requests.tsv"
    await asyncio.to_thread(
        write_requests, requests_file, stack.crm_secret, count, f"ingest-{int(time.time())}"
    )
    (port,) = free_ports(1)
    ceiling: Process = spawn(
        "ceiling",
        [python(), str(BENCH_DIR / "ceiling_app.py"), "--dsn", stack.db.dsn, "--port", str(port)],
        workdir,
        clean_env(),
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", ceiling, 60)
        say(f"ceiling: wrk -t{WRK_THREADS} -c{connections} -d{duration:g}s on the ceiling app")
        ceiling_run = await runner.run("ceiling", port, ceiling.pid, requests_file, stack)
    finally:
        ceiling.stop()
    say(f"  ceiling app: {ceiling_run}")
    await stack.peers_call("POST", "/mode", {"mode": "hold"})
    try:
        say("ingest: the same wrk settings and requests on Harmony (the ACD holds every request)")
        ingest_run = await runner.run(
            "ingest", stack.harmony_ports[0], stack.harmonies[0].pid, requests_file, stack
        )
    finally:
        await stack.peers_call("POST", "/mode", {"mode": "route"})
    say(f"  harmony ingest: {ingest_run}")
    return {
        "tool": f"wrk -t{WRK_THREADS} -c{connections} -d{duration:g}s, bench/ingest.lua",
        "ceiling_rps": ceiling_run["rps"],
        "ingest_rps": ingest_run["rps"],
        "ceiling": ceiling_run,
        "ingest": ingest_run,
    }
