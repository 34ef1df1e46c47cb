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
from typing import Any

import httpx
import pytest

from harmony.dev.devstack import DemoReport, Stack, free_ports, verify_loop
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


@contextlib.asynccontextmanager
async def real_stack(database_url: str, logs: Path, *acd_args: str) -> AsyncIterator[Stack]:
    """Harmony, sim-acd and sim-crm as three processes; the CRM logs every agent in."""
    h_port, acd_port, crm_port = free_ports(3)
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
    crm_args = ["--accept-delay", "0.05", "--complete-delay", "0.3", "--jitter", "0.5"]
    async with (
        process("sim-acd", ["sim-acd", "--port", str(acd_port), *sim, *acd_args], env, logs),
        process("harmony", ["serve", "--port", str(h_port), "--seed", str(SEED)], env, logs),
        process("sim-crm", ["sim-crm", "--port", str(crm_port), *sim, *crm_args], env, logs),
        httpx.AsyncClient(timeout=60) as client,
    ):
        for url in (stack.acd_url, stack.harmony_url, stack.crm_url):
            await wait_healthy(client, url, logs)
        await poll(client, f"{stack.crm_url}/state", lambda s: s["logged_in"], logs)
        yield stack


async def poll(client: httpx.AsyncClient, url: str, done: Any, logs: Path) -> dict[str, Any]:
    """GET ``url`` until ``done(json)`` holds (bounded), returning the last answer."""
    for _ in range(600):
        body: dict[str, Any] = (await client.get(url)).json()
        if done(body):
            return body
        await asyncio.sleep(0.1)
    pytest.fail(f"{url} never reached the expected state: {body}\n{_tail_logs(logs)}")


async def test_hundred_interactions_through_real_processes(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        real_stack(database_url, tmp_path) as stack,
        httpx.AsyncClient(timeout=60) as client,
    ):
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


async def test_agent_state_is_one_view_across_crm_acd_and_harmony(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        real_stack(database_url, tmp_path) as stack,
        httpx.AsyncClient(timeout=60) as client,
    ):
        # Agents logged in from the CRM side; the ACD sees them ready on every channel.
        acd = await poll(
            client,
            f"{stack.acd_url}/state",
            lambda s: all(set(a["state"].values()) == {"ready"} for a in s["agents"]),
            tmp_path,
        )
        assert len(acd["agents"]) == 12
        agents = (await client.get(f"{stack.harmony_url}/v1/agents")).json()["items"]
        assert {a["presence"] for a in agents} == {"ready"}

        # A voice call at the ACD: Harmony counts it and the CRM's media bar shows busy on voice.
        call = await client.post(
            f"{stack.acd_url}/simulate/voice", json={"agent_id": "acd-001", "action": "start"}
        )
        assert call.status_code == 202, call.text
        voice = (await client.get(f"{stack.harmony_url}/v1/agents/agent-001")).json()
        assert voice["channels"]["voice"]["load"] == 1
        assert voice["presence"] == "busy"
        crm = await poll(
            client,
            f"{stack.crm_url}/state",
            lambda s: s["media_bar"]["crm-001"]["voice"]["busy"],
            tmp_path,
        )
        assert crm["media_bar"]["crm-001"]["voice"]["load"] == 1

        # An agent goes not ready on chat in the CRM: the ACD sees it too.
        changed = await client.post(
            f"{stack.crm_url}/simulate/agent-state",
            json={
                "agent_id": "crm-002",
                "state": "not_ready",
                "channels": ["chat"],
                "reason": "break",
            },
        )
        assert changed.status_code == 202, changed.text
        await poll(
            client,
            f"{stack.acd_url}/state",
            lambda s: (
                next(a for a in s["agents"] if a["agent_id"] == "acd-002")["state"]["chat"]
                == "not_ready"
            ),
            tmp_path,
        )

        # Chats go only to agents free for chat: not to the one on a call, not to the one on break.
        created = await client.post(
            f"{stack.crm_url}/simulate/interactions", json={"count": 30, "channel": "chat"}
        )
        assert created.status_code == 202, created.text
        await poll(client, f"{stack.crm_url}/state", lambda s: len(s["completed"]) >= 30, tmp_path)
        crm = (await client.get(f"{stack.crm_url}/state")).json()
        chat_agents = {d["agent_id"] for d in crm["deliveries"].values()}
        assert chat_agents and not chat_agents & {"crm-001", "crm-002"}
        report = DemoReport(requested=30)
        await verify_loop(client, stack, created.json()["external_ids"], report)
        assert report.problems == []

        # Call ends: the CRM shows voice free again, and Harmony's history recorded all of it.
        ended = await client.post(
            f"{stack.acd_url}/simulate/voice",
            json={"agent_id": "acd-001", "action": "end", "call_id": call.json()["call_id"]},
        )
        assert ended.status_code == 202, ended.text
        await poll(
            client,
            f"{stack.crm_url}/state",
            lambda s: s["media_bar"]["crm-001"]["voice"]["load"] == 0,
            tmp_path,
        )
        history = (
            await client.get(f"{stack.harmony_url}/v1/agents/agent-001/history?limit=1000")
        ).json()["items"]
        events = [(e["event"], e["outcome"]) for e in history if e["channel"] == "voice"]
        assert ("voice.started", "applied") in events
        assert ("voice.ended", "applied") in events
        # The ACD echoed Harmony's mirrored logins: recognised, not re-applied.
        assert any(e["outcome"] == "echo" for e in history)
