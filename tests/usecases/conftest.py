"""Fixtures for the use-case tests: Harmony's use cases on the real SQL unit of work (a copy of
a SQLite file migrated and seeded once per session), with two queues and three agents.

Every agent follows the built-in default profile (voice blocks chat and email, chat blocks
email, no wrap-up) with its own chat and email capacity, and is logged in and ready on every
channel it has capacity on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from harmony.db.tables import outbox
from harmony.routing import agents, interactions, rerouting
from harmony.routing.agent_state import DEFAULT_NOT_READY_REASONS
from harmony.routing.messages import TargetKind
from harmony.routing.model import Channel, ChannelStatus, Interaction, Queue
from harmony.scheduler import Scheduler
from harmony.testing import FakeClock
from tests.databases import built_sqlite_template, sqlite_copy
from tests.sql_store import InboxRow, OutboxRow, SqlStore

CRM = "generic"
ACD = "generic"

QUEUES = (
    Queue("support-chat", Channel.CHAT, ["support"]),
    Queue("support-email", Channel.EMAIL, []),
)
# (agent id, crm id, acd id, capacity)
AGENTS: tuple[tuple[str, str, str, dict[Channel, int]], ...] = (
    ("agent-1", "crm-1", "acd-1", {Channel.CHAT: 1, Channel.EMAIL: 2}),
    ("agent-2", "crm-2", "acd-2", {Channel.CHAT: 2, Channel.EMAIL: 0}),
    ("agent-3", "crm-3", "acd-3", {Channel.CHAT: 0, Channel.EMAIL: 0}),
)


@dataclass
class World:
    """The SQL store and a fake clock, with shortcuts for the CRM's and ACD's events and for
    reading back what they stored."""

    store: SqlStore
    clock: FakeClock
    event_prefix: str = "evt"
    _events: int = 0

    def event_id(self) -> str:
        self._events += 1
        return f"{self.event_prefix}-{self._events}"

    async def events_seen(self) -> list[InboxRow]:
        """The inbox, without the events the seed applied."""
        return [r for r in await self.store.inbox() if not r.event_id.startswith("seed-")]

    async def create(
        self,
        external_id: str,
        channel: Channel = Channel.CHAT,
        *,
        event_id: str | None = None,
        queue: str | None = None,
        **extra: Any,
    ) -> interactions.Outcome:
        return await interactions.receive_interaction(
            self.store.uow,
            self.clock,
            crm_adapter=extra.pop("crm_adapter", CRM),
            acd_adapter=extra.pop("acd_adapter", ACD),
            event_id=event_id or self.event_id(),
            new=interactions.NewInteraction(
                external_id=external_id,
                channel=channel,
                queue=queue or f"support-{channel.value}",
                **extra,
            ),
        )

    async def interaction(self, interaction_id: str) -> Interaction:
        found = await self.store.interaction(interaction_id)
        assert found is not None, f"no interaction {interaction_id}"
        return found

    async def request_id(self, interaction_id: str) -> str:
        """The interaction's current routing request."""
        interaction = await self.interaction(interaction_id)
        assert interaction.request_id is not None
        return interaction.request_id

    async def select(
        self, interaction_id: str, acd_agent_id: str, *, event_id: str | None = None
    ) -> interactions.Outcome:
        return await interactions.select_agent(
            self.store.uow(),
            self.clock,
            acd_adapter=ACD,
            event_id=event_id or self.event_id(),
            request_id=await self.request_id(interaction_id),
            acd_agent_id=acd_agent_id,
        )

    async def accept(
        self, external_id: str, crm_agent_id: str | None = None, *, event_id: str | None = None
    ) -> interactions.Outcome:
        return await interactions.accept_interaction(
            self.store.uow(),
            self.clock,
            crm_adapter=CRM,
            event_id=event_id or self.event_id(),
            external_id=external_id,
            crm_agent_id=crm_agent_id,
        )

    async def complete(
        self, external_id: str, *, event_id: str | None = None
    ) -> interactions.Outcome:
        return await interactions.complete_interaction(
            self.store.uow(),
            self.clock,
            crm_adapter=CRM,
            event_id=event_id or self.event_id(),
            external_id=external_id,
        )

    async def decline(
        self,
        external_id: str,
        crm_agent_id: str | None = None,
        *,
        reason: str | None = None,
        event_id: str | None = None,
    ) -> interactions.Outcome:
        return await rerouting.decline_interaction(
            self.store.uow(),
            self.clock,
            crm_adapter=CRM,
            event_id=event_id or self.event_id(),
            external_id=external_id,
            crm_agent_id=crm_agent_id,
            reason=reason,
        )

    async def abandon(
        self, external_id: str, *, cancelled: bool = False, event_id: str | None = None
    ) -> interactions.Outcome:
        return await rerouting.abandon_interaction(
            self.store.uow(),
            self.clock,
            crm_adapter=CRM,
            event_id=event_id or self.event_id(),
            external_id=external_id,
            cancelled=cancelled,
        )

    async def queued(self, interaction_id: str, *, event_id: str | None = None) -> None:
        await interactions.queue_request(
            self.store.uow(),
            self.clock,
            acd_adapter=ACD,
            event_id=event_id or self.event_id(),
            request_id=await self.request_id(interaction_id),
            position=1,
        )

    async def fire_due(self) -> int:
        """Advance nothing: fire every timer due at the clock's time, as a scheduler would."""
        return await Scheduler(self.store.uow, self.clock, claimer="test").run_once()

    async def after(self, seconds: float) -> int:
        """Move the clock on and fire what fell due."""
        self.clock.advance(seconds)
        return await self.fire_due()

    async def load(self, agent_id: str, channel: Channel = Channel.CHAT) -> int:
        agent = await self.store.agent(agent_id)
        assert agent is not None
        return agent.capacity_on(channel).load

    async def outbox_of(self, interaction_id: str, message_type: str) -> list[OutboxRow]:
        return await self.store.outbox(type=message_type, interaction_id=interaction_id)

    async def report(
        self,
        crm_agent_id: str,
        status: ChannelStatus,
        *,
        event: str = "agent.state_changed",
        reason: str | None = None,
        channels: tuple[Channel, ...] | None = None,
    ) -> agents.AgentOutcome:
        """The CRM's media bar reports a login, logout or readiness change."""
        return await agents.report_state(
            self.store.uow(),
            self.clock,
            reporter=agents.Reporter(TargetKind.CRM, CRM),
            event_id=self.event_id(),
            agent_ref=crm_agent_id,
            report=agents.StateReport(event=event, status=status, reason=reason, channels=channels),
            reasons=DEFAULT_NOT_READY_REASONS,
            acd_adapter=ACD,
        )


async def settle_outbox(store: SqlStore, clock: FakeClock) -> None:
    """Mark every pending outbox message sent, as if a relay had delivered them."""
    async with store.db.engine.begin() as conn:
        await conn.execute(
            update(outbox)
            .where(outbox.c.status == "pending")
            .values(status="sent", sent_at=clock.now())
        )


async def seed(store: SqlStore, clock: FakeClock) -> None:
    """Add the standard queues and agents through the use cases, and log the agents in ready."""
    world = World(store, clock, event_prefix="seed")
    for queue in QUEUES:
        await interactions.upsert_queue(store.uow(), queue)
    for agent_id, crm_id, acd_id, capacity in AGENTS:
        await interactions.upsert_agent(
            store.uow(),
            clock,
            agent_id=agent_id,
            name=agent_id.title(),
            crm_agent_id=crm_id,
            acd_agent_id=acd_id,
            skills=["support"],
            capacity=capacity,
        )
        await world.report(crm_id, ChannelStatus.READY, event="agent.logged_in")
    await settle_outbox(store, clock)  # the ACD has heard of the logins already


async def seeded_template() -> Path:
    """The migrated SQLite file with ``seed`` applied, made once per session: the seed's clock
    is a fresh FakeClock, the same start as every test's, so a copy is as good as seeding."""

    async def build(url: str) -> None:
        store = SqlStore(url, FakeClock().now)
        try:
            await seed(store, FakeClock())
        finally:
            await store.close()

    return await built_sqlite_template("world", build)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(clock: FakeClock, tmp_path: Path) -> AsyncIterator[SqlStore]:
    seeded = SqlStore(sqlite_copy(tmp_path, await seeded_template()), clock.now)
    yield seeded
    await seeded.close()


@pytest.fixture
def world(store: SqlStore, clock: FakeClock) -> World:
    return World(store, clock)
