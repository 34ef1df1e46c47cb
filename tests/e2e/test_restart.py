"""Durable timers survive a crash: Harmony killed (SIGKILL) with offers pending, started again
after their timeout on the same PostgreSQL database, times each offer out exactly once and routes
each interaction again exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from harmony.dev.devstack import free_ports
from tests.e2e.test_processes import HARMONY, _tail_logs, poll, process, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

OFFERS = 20
OFFER_TIMEOUT = 3


def seed(path: Path) -> Path:
    """One chat queue with a short offer timeout, and more agents than offers, none RONA'd."""
    agents = [
        {
            "id": f"agent-{n:03}",
            "name": f"Agent {n}",
            "crm_agent_id": f"crm-{n:03}",
            "acd_agent_id": f"acd-{n:03}",
            "skills": ["support"],
            "profile": "chat-only",
        }
        for n in range(1, 2 * OFFERS + 1)
    ]
    content = {
        "profiles": [
            {
                "name": "chat-only",
                "capacity": {"voice": 0, "chat": 1, "email": 0},
                "wrap_up_seconds": {},
                "blocks": {},
                "rona_after": 0,
            }
        ],
        "queues": [
            {
                "name": "support-chat",
                "channel": "chat",
                "skills": ["support"],
                "offer_timeout_seconds": OFFER_TIMEOUT,
            }
        ],
        "agents": agents,
    }
    path.write_text(json.dumps(content))
    return path


async def interactions(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    page = (await client.get(f"{url}/v1/interactions?limit=500")).json()
    return list(page["items"])


async def test_offers_pending_at_a_crash_time_out_once_and_route_again_once(
    postgres_url: str, tmp_path: Path
) -> None:
    seed_file = seed(tmp_path / "seed.json")
    h_port, acd_port, crm_port = free_ports(3)
    harmony_url = f"http://127.0.0.1:{h_port}"
    acd_url, crm_url = f"http://127.0.0.1:{acd_port}", f"http://127.0.0.1:{crm_port}"
    env = {
        **os.environ,
        "HARMONY_DATABASE_URL": postgres_url,
        "HARMONY_ACD_ADAPTERS": json.dumps({"generic": {"url": acd_url}}),
        "HARMONY_CRM_ADAPTERS": json.dumps({"generic": {"url": crm_url}}),
        "HARMONY_LOG_FORMAT": "json",
        "HARMONY_SCHEDULER_POLL_SECONDS": "0.2",
    }
    sim = ["--harmony-url", harmony_url, "--seed", str(seed_file)]
    # Every offer goes unanswered until the crash: the CRM's agents ignore them all.
    crm_args = ["--accept-delay", "0.05", "--complete-delay", "0.2", "--ignore-share", "1"]
    serve = ["serve", "--port", str(h_port), "--seed", str(seed_file)]
    async with (
        process("sim-acd", ["sim-acd", "--port", str(acd_port), *sim], env, tmp_path),
        process("sim-crm", ["sim-crm", "--port", str(crm_port), *sim, *crm_args], env, tmp_path),
        httpx.AsyncClient(timeout=30) as client,
    ):
        first_log = (tmp_path / "harmony-1.log").open("wb")
        first = await asyncio.create_subprocess_exec(
            HARMONY, *serve, env=env, stdout=first_log, stderr=asyncio.subprocess.STDOUT
        )
        try:
            for url in (acd_url, harmony_url, crm_url):
                await wait_healthy(client, url, tmp_path)
            await poll(client, f"{crm_url}/state", lambda s: s["logged_in"], tmp_path)
            created = await client.post(
                f"{crm_url}/simulate/interactions", json={"count": OFFERS, "channel": "chat"}
            )
            assert created.status_code == 202, created.text
            external_ids = set(created.json()["external_ids"])
            await poll(
                client,
                f"{crm_url}/state",
                lambda s: set(s["ignored"]) == external_ids,
                tmp_path,
            )
            offered = await interactions(client, harmony_url)
            # Delivered to the CRM; Harmony may not have recorded every acknowledgement yet.
            assert {i["state"] for i in offered} <= {"offered", "delivered"}
            assert len(offered) == OFFERS
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
            first_log.close()
        killed_at = time.monotonic()
        # From now on the agents answer: what the restart routes again is accepted.
        behaviour = await client.post(f"{crm_url}/simulate/behaviour", json={"ignore_share": 0})
        assert behaviour.status_code == 200, behaviour.text
        # Harmony stays down until every offer's timeout has passed.
        await asyncio.sleep(max(0.0, OFFER_TIMEOUT + 1 - (time.monotonic() - killed_at)))

        async with process("harmony-2", serve, env, tmp_path):
            await wait_healthy(client, harmony_url, tmp_path)
            for _ in range(600):
                now = await interactions(client, harmony_url)
                if {i["state"] for i in now} == {"completed"}:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"not all completed: {now}\n{_tail_logs(tmp_path)}")

            assert len(now) == OFFERS
            for item in now:
                detail = (await client.get(f"{harmony_url}/v1/interactions/{item['id']}")).json()
                statuses = [o["status"] for o in detail["offers"]]
                assert statuses == ["timed_out", "completed"], detail["offers"]
                first_agent, second_agent = (o["agent_id"] for o in detail["offers"])
                assert first_agent != second_agent
                events = [e["event"] for e in detail["history"]]
                assert events.count("offer_timed_out") == 1, events
                assert events.count("agent_selected") == 2, events
            acd = (await client.get(f"{acd_url}/state")).json()
            ended = [e for e in acd["offers_ended"] if e["type"] == "offer.timed_out"]
            assert len(ended) == OFFERS
            assert len({e["request_id"] for e in ended}) == OFFERS
            crm = (await client.get(f"{crm_url}/state")).json()
            assert set(crm["rescinded"]) == external_ids
            assert len(crm["rescinded"]) == OFFERS
            agents = (await client.get(f"{harmony_url}/v1/agents?limit=500")).json()["items"]
            assert all(c["load"] == 0 for a in agents for c in a["channels"].values())
