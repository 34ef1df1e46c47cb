"""The unhappy paths end to end (issue 8): Harmony and both simulators as separate processes on
loopback, 300 mixed chats and emails whose agents decline 20% of offers and ignore 10%, whose
customers abandon 10% and whose agents transfer 5% once to another queue.

Every interaction reaches a terminal state within a bounded time and none is lost; no
interaction is offered twice in a row to the same agent; every agent Harmony made not ready for
RONA is shown not ready with reason ``rona`` by Harmony, the ACD simulator and the CRM
simulator's media bar; at the end every load is 0 in Harmony and the ACD simulator.

The run is sized to finish in well under a minute: 36 agents with room for two chats and two
emails each (no channel blocks another), a two-second offer timeout, a scheduler looking for due
timers five times a second, and the 300 interactions created over about nine seconds. Every
agent has every queue's skills and an interaction gets at most 15 offers, so the ACD simulator
(which offers work again to an agent who had it before only when no other agent qualifies for
it) never has to offer anyone the same work twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harmony.dev.devstack import free_ports
from tests.e2e.test_processes import _tail_logs, poll, process, wait_healthy

pytestmark = pytest.mark.e2e

INTERACTIONS = 300
BATCH = 10
BATCH_EVERY = 0.3  # seconds: 300 interactions over about 9 s
SHARES = {"decline": 0.20, "ignore": 0.10, "abandon": 0.10, "transfer": 0.05}
OFFER_TIMEOUT = 2
# Low enough that some interactions run out of offers in a run (0.3 ** 3 * 300: about 8), so
# the hand-back after a queue's last offer is exercised too, loads included.
MAX_OFFERS = 3
# From the last creation to every interaction terminal. The longest path is a few offers that
# time out (2 s each), a transfer and a few more: well under this; a queue's maximum wait (25 s)
# hands anything stuck back to the CRM before it.
SETTLE_DEADLINE = 60.0
TERMINAL = frozenset({"completed", "abandoned", "cancelled", "fallback", "failed"})
# Shares observed over a few hundred draws: loose bounds, a failure means a broken path.
SHARE_BOUNDS = {
    "decline": (0.10, 0.32),
    "ignore": (0.04, 0.18),
    "abandon": (0.04, 0.18),
    "transfer": (0.005, 0.10),
}


def write_seed(path: Path) -> Path:
    """36 agents who all have every queue's skills. RONA after two misses in a row on a
    channel; for every third agent ("strict"), declines count as misses too, so that a few
    agents are surely RONA'd in every run without draining the pool."""
    profiles = [
        {
            "name": name,
            "capacity": {"voice": 0, "chat": 2, "email": 2},
            "wrap_up_seconds": {},
            "blocks": {},
            "rona_after": 2,
            "rona_counts_decline": counts_decline,
        }
        for name, counts_decline in (("patient", False), ("strict", True))
    ]
    queues = [
        {
            "name": f"{team}-{channel}",
            "channel": channel,
            "skills": [team],
            "offer_timeout_seconds": OFFER_TIMEOUT,
            "routing_timeout_seconds": 5,
            "max_wait_seconds": 25,
            "max_offers": MAX_OFFERS,
        }
        for channel in ("chat", "email")
        for team in ("support", "billing")
    ]
    agents = [
        {
            "id": f"agent-{n:03}",
            "name": f"Agent {n}",
            "crm_agent_id": f"crm-{n:03}",
            "acd_agent_id": f"acd-{n:03}",
            "skills": ["support", "billing"],
            "profile": "strict" if n % 3 == 0 else "patient",
        }
        for n in range(1, 37)
    ]
    path.write_text(json.dumps({"profiles": profiles, "queues": queues, "agents": agents}))
    return path


@dataclass(frozen=True)
class Urls:
    harmony: str
    acd: str
    crm: str


@contextlib.asynccontextmanager
async def unhappy_stack(database_url: str, logs: Path) -> AsyncIterator[Urls]:
    """Harmony, sim-acd and sim-crm as processes; the CRM takes the unhappy paths."""
    seed = write_seed(logs / "seed.json")
    h_port, acd_port, crm_port = free_ports(3)
    urls = Urls(*(f"http://127.0.0.1:{port}" for port in (h_port, acd_port, crm_port)))
    env = {
        **os.environ,
        "HARMONY_DATABASE_URL": database_url,
        "HARMONY_ACD_ADAPTERS": json.dumps({"generic": {"url": urls.acd}}),
        "HARMONY_CRM_ADAPTERS": json.dumps({"generic": {"url": urls.crm}}),
        "HARMONY_LOG_FORMAT": "json",
        "HARMONY_SCHEDULER_POLL_SECONDS": "0.2",
    }
    sim = ["--harmony-url", urls.harmony, "--seed", str(seed)]
    crm_args = [
        *("--accept-delay", "0.2", "--complete-delay", "0.7", "--jitter", "0.5"),
        *(arg for name, share in SHARES.items() for arg in (f"--{name}-share", str(share))),
        *("--abandon-within", "1.5"),
    ]
    async with (
        process("sim-acd", ["sim-acd", "--port", str(acd_port), *sim], env, logs),
        process("harmony", ["serve", "--port", str(h_port), "--seed", str(seed)], env, logs),
        process("sim-crm", ["sim-crm", "--port", str(crm_port), *sim, *crm_args], env, logs),
        httpx.AsyncClient(timeout=60) as client,
    ):
        for url in (urls.acd, urls.harmony, urls.crm):
            await wait_healthy(client, url, logs)
        await poll(client, f"{urls.crm}/state", lambda s: s["logged_in"], logs)
        # Every agent ready on chat and email at the ACD before the first interaction arrives.
        await poll(client, f"{urls.acd}/state", all_ready_for_work, logs)
        yield urls


def all_ready_for_work(acd: dict[str, Any]) -> bool:
    """Every agent ready on chat and email in the ACD simulator's state."""
    return all(a["state"]["chat"] == a["state"]["email"] == "ready" for a in acd["agents"])


async def all_interactions(client: httpx.AsyncClient, harmony: str) -> list[dict[str, Any]]:
    """Every interaction Harmony holds, following ``next_cursor``."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(f"{harmony}/v1/interactions", params=params)).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def gather_json(client: httpx.AsyncClient, urls: list[str]) -> list[dict[str, Any]]:
    """GET each URL, ten at a time, and return the JSON bodies in order."""
    limit = asyncio.Semaphore(10)

    async def one(url: str) -> dict[str, Any]:
        async with limit:
            response = await client.get(url)
        assert response.status_code == 200, f"{url}: {response.status_code} {response.text}"
        body: dict[str, Any] = response.json()
        return body

    return list(await asyncio.gather(*(one(url) for url in urls)))


def repeats_in_a_row(agents: list[str]) -> list[str]:
    """The agents offered the work twice in a row."""
    return [a for a, b in itertools.pairwise(agents) if a == b]


async def test_unhappy_paths_through_real_processes(database_url: str, tmp_path: Path) -> None:
    async with (
        unhappy_stack(database_url, tmp_path) as urls,
        httpx.AsyncClient(timeout=60) as client,
    ):
        # 300 interactions, chat and email alternating over four queues, in batches.
        external_ids: list[str] = []
        for _ in range(INTERACTIONS // BATCH):
            created = await client.post(
                f"{urls.crm}/simulate/interactions", json={"count": BATCH, "channel": "mixed"}
            )
            assert created.status_code == 202, created.text
            external_ids += created.json()["external_ids"]
            await asyncio.sleep(BATCH_EVERY)
        assert len(set(external_ids)) == INTERACTIONS

        # Every interaction terminal within a bounded time, and both sides quiet after it.
        deadline = time.monotonic() + SETTLE_DEADLINE
        while True:
            items = await all_interactions(client, urls.harmony)
            open_ = [i for i in items if i["state"] not in TERMINAL]
            acd = (await client.get(f"{urls.acd}/state")).json()
            crm = (await client.get(f"{urls.crm}/state")).json()
            ready = (await client.get(f"{urls.harmony}/readyz")).json()
            settled = (
                len(items) >= INTERACTIONS
                and not open_
                and not acd["pending"]
                and not acd["in_flight"]
                and ready.get("outbox_pending") == 0
                and all(n == 0 for per in crm["active"].values() for n in per.values())
            )
            if settled:
                break
            if time.monotonic() > deadline:
                states = Counter(i["state"] for i in open_)
                pytest.fail(
                    f"not settled {SETTLE_DEADLINE:.0f} s after the last creation: "
                    f"{len(items)} interactions, open by state {dict(states)}, "
                    f"e.g. {[i['external_id'] for i in open_[:5]]}; ACD pending "
                    f"{acd['pending'][:5]}, in flight {acd['in_flight'][:5]}; readyz {ready}\n"
                    f"{_tail_logs(tmp_path)}"
                )
            await asyncio.sleep(0.5)

        # None lost: every created interaction reached Harmony and ended there, as the CRM saw.
        assert crm["errors"] == [], crm["errors"][:5]
        by_external = {i["external_id"]: i for i in items}
        assert set(by_external) == set(external_ids)
        assert len(items) == INTERACTIONS
        states = Counter(i["state"] for i in items)
        assert set(states) <= {"completed", "abandoned", "fallback"}, states
        for external_id, item in by_external.items():
            if item["state"] == "completed":
                assert external_id in crm["completed"], item
            elif item["state"] == "abandoned":
                assert external_id in crm["abandoned"], item
            else:
                assert external_id in crm["fallback"], item
        # A selection crossing the customer's abandon is refused (request_closed); nothing else.
        for request_id, rejected in acd["rejected"].items():
            assert rejected["error"] == "request_closed", rejected
            assert acd["cancelled"].get(request_id) == "abandoned", rejected
        assert acd["unmatched_work_ended"] == 0

        # The unhappy paths really ran, near their configured shares.
        offers_made = sum(len(agents) for agents in crm["offers"].values())
        observed = {
            "decline": len(crm["declined"]) / offers_made,
            "ignore": len(crm["ignored"]) / offers_made,
            "abandon": len(crm["abandoned"]) / INTERACTIONS,
            "transfer": len(crm["transferred"]) / INTERACTIONS,
        }
        for path, share in observed.items():
            low, high = SHARE_BOUNDS[path]
            assert low <= share <= high, f"{path}: {share:.3f} of {offers_made} offers: {observed}"

        # Harmony's record of each interaction: its offers, never the same agent twice in a row.
        details = await gather_json(
            client, [f"{urls.harmony}/v1/interactions/{i['id']}" for i in items]
        )
        offer_statuses: Counter[str] = Counter()
        for detail in details:
            offers = sorted(detail["offers"], key=lambda o: (o["offered_at"], o["id"]))
            offer_statuses.update(o["status"] for o in offers)
            offered_to = [o["agent_id"] for o in offers]
            assert not repeats_in_a_row(offered_to), (detail["external_id"], offers)
            assert not any(o["status"] == "pending" for o in offers), detail
            # Every customer who left is in the interaction's history, whatever its state then.
            if detail["external_id"] in crm["abandoned"]:
                events = {h["event"] for h in detail["history"]}
                assert events & {"abandoned", "abandoned_with_agent", "late_abandoned"}, detail
        for external_id, crm_agents in crm["offers"].items():
            assert not repeats_in_a_row(crm_agents), (external_id, crm_agents)
        assert offer_statuses["declined"] and offer_statuses["timed_out"], offer_statuses
        assert offer_statuses["transferred"] == len(crm["transferred"]), offer_statuses

        # RONA: every agent channel Harmony made not ready for missed offers stays so, with
        # reason rona, in Harmony, at the ACD and on the CRM's media bar.
        agents = (await client.get(f"{urls.harmony}/v1/agents?limit=500")).json()["items"]
        assert len(agents) == 36
        histories = await gather_json(
            client, [f"{urls.harmony}/v1/agents/{a['id']}/history?limit=1000" for a in agents]
        )
        rona = {
            (agent["id"], entry["channel"])
            for agent, history in zip(agents, histories, strict=True)
            for entry in history["items"]
            if entry["event"] == "rona"
        }
        assert rona, "no agent was RONA'd: the ignored offers did not time out"
        assert rona == {
            (a["id"], channel)
            for a in agents
            for channel, c in a["channels"].items()
            if c["reason"] == "rona"
        }
        by_id = {a["id"]: a for a in agents}
        acd_by_id = {a["agent_id"]: a for a in acd["agents"]}
        for agent_id, channel in sorted(rona):
            channel_state = by_id[agent_id]["channels"][channel]
            assert (channel_state["state"], channel_state["reason"]) == ("not_ready", "rona")
            acd_agent = acd_by_id[by_id[agent_id]["acd_agent_id"]]
            assert (acd_agent["state"][channel], acd_agent["reason"][channel]) == (
                "not_ready",
                "rona",
            ), acd_agent
            bar = crm["media_bar"][by_id[agent_id]["crm_agent_id"]][channel]
            assert (bar["state"], bar["reason"]) == ("not_ready", "rona"), bar

        # Every load back to 0, in Harmony and at the ACD.
        loads = {
            (a["id"], ch): c["load"] for a in agents for ch, c in a["channels"].items() if c["load"]
        }
        assert loads == {}
        acd_loads = {
            (a["agent_id"], ch): n for a in acd["agents"] for ch, n in a["load"].items() if n
        }
        open_assignments = {
            rid: a
            for rid, a in acd["assignments"].items()
            if a["ended_at"] is None and (a["agent_id"], a["channel"]) in acd_loads
        }
        assert acd_loads == {}, f"open at the ACD: {open_assignments}; logs in {tmp_path}"
        print(
            f"states {dict(states)}; offers {dict(offer_statuses)}; shares "
            f"{ {k: round(v, 3) for k, v in observed.items()} }; rona {len(rona)}"
        )
