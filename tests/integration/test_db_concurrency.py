"""Several writers at once on PostgreSQL: one lock order, upserts, a locked start-up.

Every test here runs on a fresh PostgreSQL database with real concurrent connections: the app's
requests run concurrently on its connection pool, and replicas start as separate processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from harmony.clock import SystemClock
from harmony.db.engine import Database, alembic_config
from harmony.db.tables import agent_channels, agent_state_history, agents, profiles, queues
from harmony.errors import TryAgain
from harmony.routing import interactions
from harmony.routing.model import Agent, Channel, Queue
from harmony.routing.ports import UnitOfWork
from harmony.routing.retry import RetryPolicy, run_with_retry
from harmony.seed import load_seed
from tests.conftest import ROOT, SEED, Harness, replay_history
from tests.integration.test_agent_state import history

pytestmark = pytest.mark.postgres


# The ``harness`` of this module runs on PostgreSQL only: concurrency is the point.
ON_POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def _no_server_errors(responses: list[httpx.Response]) -> None:
    failed = [(r.status_code, r.text) for r in responses if r.status_code >= 500]
    assert failed == [], failed


def _profile_body(chat: int) -> dict[str, Any]:
    return {
        "capacity": {"voice": 1, "chat": chat, "email": 2},
        "wrap_up_seconds": {"voice": 2, "chat": 0, "email": 0},
        "blocks": {"voice": ["chat", "email"], "chat": ["email"], "email": []},
    }


@ON_POSTGRES_ONLY
async def test_state_changes_interleaved_with_profile_changes_neither_deadlock_nor_fail(
    harness: Harness,
) -> None:
    """A state change locks an agent and its channels; a profile change locks every agent of
    the profile and their channels. Interleaved, both complete and the stored state is whole."""
    h = harness
    members = [a.id for a in load_seed(SEED).agents if a.profile == "blended-chat3"]
    crm_ids = {a.id: a.crm_agent_id for a in load_seed(SEED).agents}
    rounds = 6
    for round_number in range(rounds):
        state = "not_ready" if round_number % 2 == 0 else "ready"
        chat = 4 if round_number % 2 == 0 else 3
        changes = [
            h.post_event("crm", "agent.state_changed", {"agent_id": crm_ids[a], "state": state})
            for a in members
        ]
        profile_puts = [
            h.client.put("/v1/profiles/blended-chat3", json=_profile_body(chat)) for _ in range(3)
        ]
        answers = await asyncio.gather(*changes, *profile_puts)
        _no_server_errors(answers)
        assert {a.status_code for a in answers[: len(changes)]} == {202}
        assert {a.status_code for a in answers[len(changes) :]} == {200}
    final_state, final_chat = "ready", 3
    for agent_id in members:
        view = (await h.client.get(f"/v1/agents/{agent_id}")).json()
        assert {n: c["state"] for n, c in view["channels"].items()} == dict.fromkeys(
            ("voice", "chat", "email"), final_state
        )
        assert view["channels"]["chat"]["capacity"] == final_chat
        # The history, replayed in order, leads to exactly what is stored.
        replayed = replay_history(agent_id, await history(h, agent_id))
        for name, channel in view["channels"].items():
            derived = replayed[Channel(name)]
            assert (derived.status.value, derived.load, derived.capacity) == (
                channel["state"],
                channel["load"],
                channel["capacity"],
            ), (agent_id, name)


@ON_POSTGRES_ONLY
async def test_selections_completions_and_profile_changes_interleaved(harness: Harness) -> None:
    """Interaction, then agent, then channel on every path: offers and completions on the
    profile's agents while the profile changes capacities."""
    h = harness
    ids = [(await h.create(f"lock-order-{n}")).json()["interaction_id"] for n in range(6)]
    await h.drain()
    selections = [
        h.post_event(
            "acd", "agent.selected", {"request_id": h.request_id_for(i), "agent_id": "acd-001"}
        )
        for i in ids[:3]
    ] + [
        h.post_event(
            "acd", "agent.selected", {"request_id": h.request_id_for(i), "agent_id": "acd-003"}
        )
        for i in ids[3:]
    ]
    profile_puts = [
        h.client.put("/v1/profiles/blended-chat3", json=_profile_body(4)) for _ in range(6)
    ]
    answers = await asyncio.gather(*selections, *profile_puts)
    _no_server_errors(answers)
    assert [a.status_code for a in answers[:6]] == [202] * 6, [a.text for a in answers[:6]]
    await h.drain()
    completions = [
        h.post_event("crm", "interaction.completed", {"external_id": f"lock-order-{n}"})
        for n in range(6)
    ]
    profile_puts = [
        h.client.put("/v1/profiles/blended-chat3", json=_profile_body(3)) for _ in range(6)
    ]
    answers = await asyncio.gather(*completions, *profile_puts)
    _no_server_errors(answers)
    assert [a.status_code for a in answers[:6]] == [202] * 6, [a.text for a in answers[:6]]
    for agent_id in ("agent-001", "agent-003"):
        chat = (await h.client.get(f"/v1/agents/{agent_id}")).json()["channels"]["chat"]
        assert (chat["load"], chat["capacity"]) == (0, 3)


@ON_POSTGRES_ONLY
async def test_a_crm_id_taken_by_a_transaction_still_open_is_refused_naming_its_agent(
    harness: Harness,
) -> None:
    """The check for taken ids cannot see an agent another transaction has inserted and not
    committed yet; the insert then waits for it and fails on the unique index once it commits.
    That failure is tried again, so the answer names the agent that took the id, as the check
    does (and a first put of the same agent racing itself is an update, not a refusal)."""
    h = harness
    body = {"name": "Second", "crm_agent_id": "crm-race", "acd_agent_id": "acd-second"}
    async with h.container.db.uow() as first:
        await first.agents.upsert(
            Agent(
                id="agent-first",
                name="First",
                crm_agent_id="crm-race",
                acd_agent_id="acd-first",
                skills=[],
                channels={},
                profile="blended-chat2",
                crm_adapter="generic",
            ),
            {},
        )
        second = asyncio.create_task(
            h.client.put("/v1/agents/agent-second", json={**body, "profile": "blended-chat2"})
        )
        await asyncio.sleep(0.3)  # the second put reaches the unique index and waits
        assert not second.done()
        await first.commit()
    answer = await second
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "agent_id_taken"
    assert "already belongs to agent agent-first" in answer.json()["detail"]


@ON_POSTGRES_ONLY
async def test_concurrent_first_puts_of_an_agent_a_queue_and_a_profile(harness: Harness) -> None:
    h = harness
    agent_body = {
        "name": "New Agent",
        "crm_agent_id": "crm-new",
        "acd_agent_id": "acd-new",
        "skills": ["support"],
        "profile": "blended-chat2",
    }
    queue_body = {"channel": "email", "skills": ["vip"]}
    answers = await asyncio.gather(
        *(h.client.put("/v1/profiles/fresh-profile", json=_profile_body(5)) for _ in range(8)),
        *(h.client.put("/v1/queues/fresh-queue", json=queue_body) for _ in range(8)),
        *(h.client.put("/v1/agents/agent-new", json=agent_body) for _ in range(8)),
    )
    _no_server_errors(answers)
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    async with h.container.db.reader() as uow:
        stored = await uow.agents.get("agent-new")
        queue = await uow.queues.get("fresh-queue")
        profile = await uow.profiles.get("fresh-profile")
    assert stored is not None and queue is not None and profile is not None
    assert {c: s.capacity for c, s in stored.channels.items()} == {
        Channel.VOICE: 1,
        Channel.CHAT: 2,
        Channel.EMAIL: 2,
    }
    assert (queue.channel, queue.skills) == (Channel.EMAIL, ["vip"])
    assert profile.capacity[Channel.CHAT] == 5
    # Created once: one line per channel, the repeats changed nothing.
    lines = await history(h, "agent-new")
    assert sorted(line["channel"] for line in lines) == ["chat", "email", "voice"]


@ON_POSTGRES_ONLY
async def test_a_crm_agent_id_taken_concurrently_is_a_conflict_not_an_error(
    harness: Harness,
) -> None:
    h = harness
    for attempt in range(4):
        body = {"name": "x", "crm_agent_id": f"crm-dup-{attempt}", "acd_agent_id": ""}
        answers = await asyncio.gather(
            *(
                h.client.put(
                    f"/v1/agents/dup-{attempt}-{n}",
                    json={**body, "acd_agent_id": f"acd-dup-{attempt}-{n}"},
                )
                for n in range(2)
            )
        )
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        [refused] = [a for a in answers if a.status_code == 409]
        assert refused.json()["error"] == "agent_id_taken"
        assert f"crm-dup-{attempt}" in refused.json()["detail"]
        async with h.container.db.reader() as uow:
            taken = await uow.agents.get_by_crm_id(f"crm-dup-{attempt}")
            winner = next(a for a in answers if a.status_code == 200).json()["id"]
            loser = f"dup-{attempt}-0" if winner.endswith("-1") else f"dup-{attempt}-1"
            assert taken is not None and taken.id == winner
            assert await uow.agents.get(loser) is None


# One replica's start: the lifespan of ``create_app`` (migrate on start, then the seed), then exit.
REPLICA_START = """
import asyncio, sys
from pathlib import Path
from harmony.config import Settings
from harmony.main import create_app

async def start() -> None:
    settings = Settings(database_url=sys.argv[1], seed_file=Path(sys.argv[2]))
    app = create_app(settings, run_relay=False)
    async with app.router.lifespan_context(app):
        pass

asyncio.run(start())
"""


async def _start_replica(url: str) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        REPLICA_START,
        url,
        str(SEED),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


async def test_two_replicas_start_together_on_an_empty_database(empty_postgres_url: str) -> None:
    """Two processes migrate at start and apply the seed on one empty database, together:
    both come up, and the schema and the seed are there once."""
    results = await asyncio.gather(*(_start_replica(empty_postgres_url) for _ in range(3)))
    for code, output in results:
        assert code == 0, output[-3000:]
    db = Database(empty_postgres_url, SystemClock().now)
    try:
        async with db.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            counts = {
                table.name: (await conn.execute(select(func.count()).select_from(table))).scalar()
                for table in (agents, profiles, queues, agent_channels)
            }
            capacity_lines = (
                await conn.execute(
                    select(func.count())
                    .select_from(agent_state_history)
                    .where(agent_state_history.c.event == "capacity_changed")
                )
            ).scalar()
            heads = ScriptDirectory.from_config(alembic_config()).get_heads()
        assert [row.version_num for row in version] == heads
        # default + the seed's two profiles; each agent's three channels created once.
        assert counts == {"agents": 12, "profiles": 3, "queues": 4, "agent_channels": 36}
        assert capacity_lines == 36
        async with db.reader() as uow:
            agent = await uow.agents.get("agent-002")
        assert agent is not None
        assert {c.value: s.capacity for c, s in agent.channels.items()} == {
            "voice": 1,
            "chat": 2,
            "email": 2,
        }
    finally:
        await db.dispose()


async def test_a_deadlock_is_wrapped_at_the_boundary_and_retried(postgres_url: str) -> None:
    """Two units of work lock two agents in opposite orders: PostgreSQL aborts one (40P01); the
    unit of work turns that into TryAgain, and the retry helper runs it again to success."""
    db = Database(postgres_url, SystemClock().now)
    try:
        await db.migrate()
        for n in (1, 2):
            await interactions.upsert_agent(
                db.uow(),
                SystemClock(),
                agent_id=f"a{n}",
                name="",
                crm_agent_id=f"c{n}",
                acd_agent_id=f"d{n}",
                skills=[],
            )
        both_hold_one = asyncio.Barrier(2)
        attempts: list[str] = []
        raised: list[BaseException] = []

        async def lock_crosswise(uow: UnitOfWork, first: str, second: str) -> None:
            attempts.append(first)
            async with uow:
                await uow.agents.get(first, for_update=True)
                if attempts.count(first) == 1:
                    await both_hold_one.wait()
                try:
                    await uow.agents.get(second, for_update=True)
                except BaseException as exc:
                    raised.append(exc)
                    raise
                await uow.commit()

        no_wait = RetryPolicy(sleep=_no_sleep)
        await asyncio.gather(
            no_wait.run(db.uow, lock_crosswise, "a1", "a2"),
            no_wait.run(db.uow, lock_crosswise, "a2", "a1"),
        )
        assert len(raised) == 1  # PostgreSQL broke the cycle once
        assert sorted(attempts) == ["a1", "a1", "a2"] or sorted(attempts) == ["a1", "a2", "a2"]
    finally:
        await db.dispose()


async def _no_sleep(_: float) -> None:
    return None


async def test_retries_are_bounded_and_jittered() -> None:
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    calls = 0

    async def always_contended(_: UnitOfWork) -> None:
        nonlocal calls
        calls += 1
        raise TryAgain("deadlock detected")

    policy = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, sleep=record)
    with pytest.raises(TryAgain):
        await policy.run(_unused_uow, always_contended)
    assert calls == 4
    assert len(delays) == 3
    assert all(0 <= d <= 0.05 for d in delays)


def _unused_uow() -> UnitOfWork:
    # The use cases above never open it; a retry only needs a fresh one per attempt.
    return None  # type: ignore[return-value]


async def test_run_with_retry_returns_the_use_case_result(postgres_url: str) -> None:
    db = Database(postgres_url, SystemClock().now)
    try:
        await db.migrate()
        stored = await run_with_retry(
            db.uow,
            interactions.upsert_agent,
            SystemClock(),
            agent_id="r1",
            name="",
            crm_agent_id="c-r1",
            acd_agent_id="d-r1",
            skills=[],
        )
        assert stored.id == "r1"
    finally:
        await db.dispose()


async def test_a_pooled_connection_that_died_while_idle_costs_a_retry_not_an_error(
    postgres_url: str,
) -> None:
    # Connections are not pinged before use (a round trip per transaction): one killed while
    # idle in the pool must fail its first use as TryAgain, and the retry must go through.
    db = Database(postgres_url, SystemClock().now, pool_size=1, max_overflow=0)
    try:
        async with db.connection() as conn:
            doomed = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await conn.rollback()
        killer = Database(postgres_url, SystemClock().now)
        try:
            async with killer.engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": doomed})
        finally:
            await killer.dispose()

        queue = Queue(name="after-kill", channel=Channel.CHAT, skills=["support"])
        await run_with_retry(db.uow, interactions.upsert_queue, queue)

        async with db.connection() as conn:
            stored = (
                await conn.execute(select(queues.c.name).where(queues.c.name == "after-kill"))
            ).scalar_one_or_none()
            now_serving = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert stored == "after-kill"
        assert now_serving != doomed
    finally:
        await db.dispose()
