"""Random interleavings of CRM, ACD and supervisor events and ACD selections, through the API.

After every step: no channel load is negative; a load above capacity is only ever the voice
calls the ACD reported (a call is a fact Harmony records, not work it offers), and the agent is
shown over capacity exactly then; every selection Harmony accepted went to an agent who could
take the work (judged by this test's own reading of the rules, not by Harmony's code); each
agent as ``GET /v1/agents/{id}`` shows it equals the state its recorded history replays to; and
the presence filter, evaluated in SQL, lists exactly the agents whose presence (from the routing
core) is the one asked for.

Events carry ``occurred_at`` from clocks up to 30 s behind or ahead: ordering is by arrival (no
sequence is sent), so the model needs no notion of staleness and none is ever reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from harmony.adapters.generic_http.protocol import encode, envelope
from harmony.adapters.generic_http.signing import Signer
from harmony.config import DEV_SECRET
from harmony.main import create_app
from harmony.routing.model import Channel
from tests.conftest import (
    HostRouter,
    RecordingPeer,
    ShiftedClock,
    make_settings,
    replay_history,
)
from tests.databases import fresh_postgres_database, sqlite_copy

AGENTS = ["a1", "a2", "a3"]
CHANNELS = ["voice", "chat", "email"]
BLOCKS = {"voice": ["chat", "email"], "chat": ["email"], "email": []}
CAPACITY = {"voice": 1, "chat": 2, "email": 1}
WRAP_UP = {"voice": 5, "chat": 3, "email": 0}
SEED = {
    "profiles": [{"name": "p", "capacity": CAPACITY, "wrap_up_seconds": WRAP_UP, "blocks": BLOCKS}],
    "queues": [
        {"name": "q-chat", "channel": "chat", "skills": []},
        {"name": "q-email", "channel": "email", "skills": []},
    ],
    "agents": [
        {"id": a, "crm_agent_id": f"crm-{a}", "acd_agent_id": f"acd-{a}", "profile": "p"}
        for a in AGENTS
    ],
}

agents = st.sampled_from(AGENTS)
channels = st.sampled_from(CHANNELS)
states = st.sampled_from(["ready", "not_ready", "logged_out"])
reasons = st.sampled_from([None, "break", "lunch"])


def stored_channels(view: dict[str, Any]) -> dict[str, Any]:
    """What is stored of an agent's channels: ``in_wrap_up`` follows the real clock, and a
    wrap-up may run out between two reads on a slow machine."""
    return {
        name: {k: v for k, v in channel.items() if k != "in_wrap_up"}
        for name, channel in view["channels"].items()
    }


def could_take(view: dict[str, Any], channel: str, now: datetime) -> bool:
    """This test's own statement of who may be offered work on ``channel``."""
    mine = view["channels"][channel]
    wrapping = mine["wrap_up_until"] and datetime.fromisoformat(mine["wrap_up_until"]) > now
    blocked = any(
        other["load"] > 0 and channel in BLOCKS[name]
        for name, other in view["channels"].items()
        if name != channel
    )
    return (
        mine["state"] == "ready"
        and not wrapping
        and mine["load"] < mine["capacity"]
        and not blocked
    )


class AgentStateMachine(RuleBasedStateMachine):
    """Runs on a copy of the migrated SQLite template, or on a PostgreSQL database cloned from
    the migrated template (``database="postgres"``)."""

    database = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(_tmpdir())
        seed_file = self.tmp / "seed.json"
        seed_file.write_text(json.dumps(SEED))
        self.acd, self.crm = RecordingPeer(), RecordingPeer()
        self.clock = ShiftedClock()
        self.postgres: contextlib.AbstractAsyncContextManager[str] | None = None
        if self.database == "postgres":
            self.postgres = fresh_postgres_database()
            try:
                url = self.run(self.postgres.__aenter__())
            except BaseException:
                self.loop.close()
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        else:
            url = sqlite_copy(self.tmp)
        # The copy is at Alembic's head already; the seed is this machine's own.
        config = make_settings(url, seed_file=seed_file, migrate_on_start=False)
        self.app = create_app(
            config,
            clock=self.clock,
            transport=HostRouter({"acd.test": self.acd.app(), "crm.test": self.crm.app()}),
            run_relay=False,
        )
        self.lifespan = self.app.router.lifespan_context(self.app)
        self.run(self.lifespan.__aenter__())
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://harmony"
        )
        self.ids = itertools.count()
        self.waiting: list[tuple[str, str]] = []  # (interaction id, channel) awaiting an agent
        self.delivered: list[str] = []  # external ids held by an agent
        self.calls: dict[str, list[str]] = {a: [] for a in AGENTS}

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.run(self.lifespan.__aexit__(None, None, None))
        if self.postgres is not None:
            self.run(self.postgres.__aexit__(None, None, None))
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def post(self, kind: str, event_type: str, data: dict[str, Any], offset: float = 0) -> Any:
        message = envelope(event_type, data)
        message["occurred_at"] = (self.clock.now() + timedelta(seconds=offset)).isoformat()
        body = encode(message)
        headers = {
            "content-type": "application/json",
            **Signer(DEV_SECRET).headers(message["id"], body),
        }
        return self.run(
            self.client.post(f"/v1/{kind}/generic/events", content=body, headers=headers)
        )

    def view(self, agent: str) -> dict[str, Any]:
        response = self.run(self.client.get(f"/v1/agents/{agent}"))
        assert response.status_code == 200, response.text
        return dict(response.json())

    # --- sources of change -------------------------------------------------------------------

    @rule(
        agent=agents,
        chans=st.lists(channels, min_size=1, max_size=3, unique=True),
        state=states,
        reason=reasons,
        offset=st.sampled_from([-30, 0, 30]),
    )
    def crm_media_bar(
        self, agent: str, chans: list[str], state: str, reason: str | None, offset: float
    ) -> None:
        data: dict[str, Any] = {"agent_id": f"crm-{agent}", "channels": chans, "state": state}
        if reason and state == "not_ready":
            data["reason"] = reason
        response = self.post("crm", "agent.state_changed", data, offset)
        assert response.status_code == 202, response.text
        assert response.json()["status"] != "ignored_stale"

    @rule(agent=agents, channel=channels, state=states, offset=st.sampled_from([-30, 0, 30]))
    def acd_state(self, agent: str, channel: str, state: str, offset: float) -> None:
        response = self.post(
            "acd",
            "agent.state_changed",
            {"agent_id": f"acd-{agent}", "channels": [channel], "state": state},
            offset,
        )
        assert response.status_code == 202, response.text
        assert response.json()["status"] != "ignored_stale"

    @rule(agent=agents, channel=channels, state=states, reason=reasons)
    def supervisor(self, agent: str, channel: str, state: str, reason: str | None) -> None:
        body: dict[str, Any] = {"channel": channel, "state": state}
        if reason and state == "not_ready":
            body["reason"] = reason
        before = self.view(agent)
        response = self.run(self.client.put(f"/v1/agents/{agent}/state", json=body))
        assert response.status_code in (200, 409), response.text
        if response.status_code == 409:
            assert self.view(agent) == before

    @rule(agent=agents)
    def voice_starts(self, agent: str) -> None:
        call = f"call-{next(self.ids)}"
        response = self.post("acd", "voice.started", {"agent_id": f"acd-{agent}", "call_id": call})
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "applied"
        self.calls[agent].append(call)

    @precondition(lambda self: any(self.calls.values()))
    @rule(data=st.data())
    def voice_ends(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from([a for a in AGENTS if self.calls[a]]))
        call = self.calls[agent].pop(0)
        response = self.post("acd", "voice.ended", {"agent_id": f"acd-{agent}", "call_id": call})
        assert response.status_code == 202, response.text

    @rule(channel=st.sampled_from(["chat", "email"]))
    def interaction_arrives(self, channel: str) -> None:
        external = f"{channel}-{next(self.ids)}"
        response = self.post(
            "crm",
            "interaction.created",
            {"external_id": external, "channel": channel, "queue": f"q-{channel}"},
        )
        assert response.status_code == 202, response.text
        self.waiting.append((response.json()["interaction_id"], channel))

    @precondition(lambda self: bool(self.waiting))
    @rule(data=st.data(), agent=agents)
    def acd_selects(self, data: st.DataObject, agent: str) -> None:
        interaction_id, channel = data.draw(st.sampled_from(self.waiting))
        self.run(self.app.state.container.relay.drain())
        request_id = next(
            m["data"]["request_id"]
            for m in self.acd.of_type("routing.requested")
            if m["data"]["interaction_id"] == interaction_id
        )
        before = self.view(agent)
        allowed = could_take(before, channel, self.clock.now())
        response = self.post(
            "acd", "agent.selected", {"request_id": request_id, "agent_id": f"acd-{agent}"}
        )
        if allowed:
            assert response.status_code == 202, (response.text, before)
            self.waiting.remove((interaction_id, channel))
            detail = self.run(self.client.get(f"/v1/interactions/{interaction_id}")).json()
            self.delivered.append(detail["external_id"])
        else:
            assert response.status_code == 409, (response.text, before)
            assert response.json()["error"] == "agent_unavailable"
            assert stored_channels(self.view(agent)) == stored_channels(before)

    @precondition(lambda self: bool(self.delivered))
    @rule(data=st.data())
    def agent_completes(self, data: st.DataObject) -> None:
        external = data.draw(st.sampled_from(self.delivered))
        self.delivered.remove(external)
        response = self.post("crm", "interaction.completed", {"external_id": external})
        assert response.status_code == 202, response.text

    @rule()
    def relay_runs(self) -> None:
        self.run(self.app.state.container.relay.drain())

    @rule(seconds=st.sampled_from([1, 4, 10]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # --- what must always hold ---------------------------------------------------------------

    @invariant()
    def loads_within_capacity_and_history_replays(self) -> None:
        for agent in AGENTS:
            view = self.view(agent)
            lines = self.run(
                self.client.get(f"/v1/agents/{agent}/history", params={"limit": 1000})
            ).json()["items"]
            replayed = replay_history(agent, lines)
            for name, channel in view["channels"].items():
                assert channel["load"] >= 0, (agent, name, channel)
                if name == "voice":  # only calls load voice here, however many there are
                    assert channel["load"] == len(self.calls[agent]), (agent, channel)
                else:
                    assert channel["load"] <= channel["capacity"], (agent, name, channel)
                over = channel["load"] > channel["capacity"]
                assert channel["over_capacity"] is over, (agent, name, channel)
                derived = replayed[Channel(name)]
                wrap = (
                    datetime.fromisoformat(channel["wrap_up_until"])
                    if channel["wrap_up_until"]
                    else None
                )
                assert (
                    derived.status.value,
                    derived.reason,
                    derived.load,
                    derived.capacity,
                    derived.wrap_up_until,
                ) == (
                    channel["state"],
                    channel["reason"],
                    channel["load"],
                    channel["capacity"],
                    wrap,
                ), (agent, name)

    @invariant()
    def the_presence_filter_agrees_with_each_agents_presence(self) -> None:
        listed: set[str] = set()
        # Wrap-up first: it only ever ends while the test reads, so no agent falls between.
        for presence in ("wrap_up", "busy", "ready", "not_ready", "logged_out"):
            page = self.run(self.client.get("/v1/agents", params={"presence": presence}))
            assert page.status_code == 200, page.text
            for item in page.json()["items"]:
                # Each item's presence was derived in Python at the same instant as the filter.
                assert item["presence"] == presence, (presence, item)
                listed.add(item["id"])
        assert listed == set(AGENTS)


def _tmpdir() -> str:
    return tempfile.mkdtemp(prefix="harmony-prop-")


class AgentStateMachineOnPostgres(AgentStateMachine):
    database = "postgres"


def test_agent_state_machine_on_sqlite() -> None:
    run_state_machine_as_test(
        AgentStateMachine,
        settings=settings(
            max_examples=10,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.postgres
def test_agent_state_machine_on_postgres() -> None:
    """Fewer examples: each one clones a database (row locks and constraints are PostgreSQL's)."""
    run_state_machine_as_test(
        AgentStateMachineOnPostgres,
        settings=settings(
            max_examples=4,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
