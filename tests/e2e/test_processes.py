"""Harmony and both simulators as separate processes on loopback, routing 50 chats and 50 emails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from harmony.devstack import DemoReport, Stack, free_port, verify_loop
from tests.conftest import SEED

HARMONY = str(Path(sys.executable).parent / "harmony")
pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def process(
    name: str, args: list[str], env: dict[str, str], logs: Path
) -> AsyncIterator[None]:
    log = (logs / f"{name}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        HARMONY, *args, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def wait_healthy(client: httpx.AsyncClient, url: str, logs: Path) -> None:
    for _ in range(300):
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(f"{url}/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    pytest.fail(f"{url} never became healthy\n{_tail_logs(logs)}")


def _tail_logs(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs.glob("*.log"))


async def test_hundred_interactions_through_real_processes(
    database_url: str, tmp_path: Path
) -> None:
    h_port, acd_port, crm_port = free_port(), free_port(), free_port()
    stack = Stack(
        f"http://127.0.0.1:{h_port}", f"http://127.0.0.1:{acd_port}", f"http://127.0.0.1:{crm_port}"
    )
    env = {
        **os.environ,
        "HARMONY_DATABASE_URL": database_url,
        "HARMONY_ACD_ADAPTERS": json.dumps({"generic": {"url": stack.acd_url}}),
        "HARMONY_CRM_ADAPTERS": json.dumps({"generic": {"url": stack.crm_url}}),
        "HARMONY_LOG_FORMAT": "json",
    }
    sim = ["--harmony-url", stack.harmony_url, "--seed", str(SEED)]
    async with (
        process("sim-acd", ["sim-acd", "--port", str(acd_port), *sim], env, tmp_path),
        process("harmony", ["serve", "--port", str(h_port), "--seed", str(SEED)], env, tmp_path),
        process(
            "sim-crm",
            [
                "sim-crm",
                "--port",
                str(crm_port),
                *sim,
                "--accept-delay",
                "0.05",
                "--complete-delay",
                "0.3",
                "--jitter",
                "0.5",
            ],
            env,
            tmp_path,
        ),
        httpx.AsyncClient(timeout=60) as client,
    ):
        for url in (stack.acd_url, stack.harmony_url, stack.crm_url):
            await wait_healthy(client, url, tmp_path)
        external_ids: list[str] = []
        for channel in ("chat", "email"):
            created = await client.post(
                f"{stack.crm_url}/simulate/interactions", json={"count": 50, "channel": channel}
            )
            assert created.status_code == 202, created.text
            external_ids += created.json()["external_ids"]
        for _ in range(1200):
            crm = (await client.get(f"{stack.crm_url}/state")).json()
            if len(crm["completed"]) >= 100:
                break
            await asyncio.sleep(0.1)

        report = DemoReport(requested=100)
        await verify_loop(client, stack, external_ids, report)
        assert report.problems == []
        assert report.completed == 100
        assert report.by_channel == {"chat": 50, "email": 50}

        # Harmony's own record: every reservation stayed within the agent's capacity.
        agents = (await client.get(f"{stack.harmony_url}/v1/agents")).json()["items"]
        assert len(agents) == 12
        assert all(c["load"] == 0 for a in agents for c in a["channels"].values())
        page = (await client.get(f"{stack.harmony_url}/v1/interactions?limit=500")).json()
        assert len(page["items"]) == 100
        for item in page["items"]:
            detail = (await client.get(f"{stack.harmony_url}/v1/interactions/{item['id']}")).json()
            [selected] = [e for e in detail["history"] if e["event"] == "agent_selected"]
            assert 1 <= selected["detail"]["load"] <= selected["detail"]["capacity"]
        acd = (await client.get(f"{stack.acd_url}/state")).json()
        for agent in acd["agents"]:
            for channel, peak in agent["peak_load"].items():
                assert peak <= agent["capacity"][channel]
