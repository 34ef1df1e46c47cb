"""What the SQL store holds, read back for assertions: the test side of the real unit of work.

Domain objects (interactions, agents, histories, profiles, queues) are read through Harmony's
own repositories, so a test sees exactly what a use case would load; the outbox, inbox, mirrors
and voice calls, which no port lists, are read from their tables. ``dump()`` is every row of
every table, for "a refused event changed nothing stored".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from harmony.db.engine import Database
from harmony.db.tables import agent_mirrors, inbox, metadata, outbox, voice_calls
from harmony.db.uow import SqlUnitOfWork
from harmony.routing.agent_state import AgentStateEntry, Profile
from harmony.routing.messages import OutboundMessage, TargetKind
from harmony.routing.model import (
    Agent,
    Channel,
    ChannelStatus,
    HistoryEntry,
    Interaction,
    Offer,
    Queue,
)
from harmony.routing.ports import AgentFilter, InteractionFilter, QueueStats, Timer, VoiceCall

PENDING, SENT, DEAD = "pending", "sent", "dead"


@dataclass(frozen=True)
class OutboxRow:
    """One outbox row: a promised message and how its delivery is going."""

    message: OutboundMessage
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class InboxRow:
    """One incoming event the inbox has seen."""

    source: str
    event_id: str
    event_type: str
    received_at: datetime
    interaction_id: str | None


@dataclass(frozen=True)
class MirrorRow:
    """An agent state change Harmony told a CRM or ACD, kept to recognise its echo."""

    id: str
    agent_id: str
    channel: Channel
    target_kind: TargetKind
    status: ChannelStatus
    reason: str | None
    sent_at: datetime
    echoed_at: datetime | None


class SqlStore:
    """A migrated database and its units of work, with readers of what is committed."""

    def __init__(self, url: str, now: Callable[[], datetime]) -> None:
        self.db = Database(url, now)
        self._now = now

    def uow(self) -> SqlUnitOfWork:
        """A unit of work that may write (what the use cases are given)."""
        return self.db.uow()

    async def close(self) -> None:
        await self.db.dispose()

    async def _rows(self, query: Any) -> list[Any]:
        async with self.db.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    # Through the repositories ------------------------------------------------------------

    async def interaction(self, interaction_id: str) -> Interaction | None:
        async with self.db.reader() as uow:
            return await uow.interactions.get(interaction_id)

    async def interactions(self) -> list[Interaction]:
        """Every interaction, oldest first (every page of an unfiltered search)."""
        found: list[Interaction] = []
        cursor = None
        async with self.db.reader() as uow:
            while True:
                page = await uow.interactions.search(InteractionFilter(), 500, cursor)
                found += page.items
                cursor = page.next_cursor
                if cursor is None:
                    return found

    async def history(self, interaction_id: str) -> list[HistoryEntry]:
        async with self.db.reader() as uow:
            return await uow.interactions.history(interaction_id)

    async def queue_stats(self) -> list[QueueStats]:
        async with self.db.reader() as uow:
            return await uow.queues.stats(self._now())

    async def offers(self, interaction_id: str) -> list[Offer]:
        """The interaction's offers, oldest first."""
        async with self.db.reader() as uow:
            return await uow.offers.of_interaction(interaction_id)

    async def timers(self) -> list[Timer]:
        """Every timer still to fire, earliest first."""
        async with self.db.reader() as uow:
            return await uow.timers.pending()

    async def timer_of(self, interaction_id: str) -> Timer | None:
        """The interaction's deadline timer, if it has one."""
        found = [t for t in await self.timers() if t.subject == interaction_id]
        assert len(found) <= 1
        return found[0] if found else None

    async def agent(self, agent_id: str) -> Agent | None:
        async with self.db.reader() as uow:
            return await uow.agents.get(agent_id)

    async def agents(self) -> list[Agent]:
        """Every agent, by id (every page of an unfiltered search)."""
        found: list[Agent] = []
        cursor = None
        async with self.db.reader() as uow:
            while True:
                page = await uow.agents.search(AgentFilter(), self._now(), 500, cursor)
                found += page.items
                cursor = page.next_cursor
                if cursor is None:
                    return found

    async def agent_history(self, agent_id: str) -> list[AgentStateEntry]:
        """The agent's whole state history, oldest first (every page)."""
        entries: list[AgentStateEntry] = []
        cursor = None
        async with self.db.reader() as uow:
            while True:
                page = await uow.agents.history(agent_id, 500, cursor)
                entries += page.items
                cursor = page.next_cursor
                if cursor is None:
                    return entries

    async def profile(self, name: str) -> Profile | None:
        async with self.db.reader() as uow:
            return await uow.profiles.get(name)

    async def queue(self, name: str) -> Queue | None:
        async with self.db.reader() as uow:
            return await uow.queues.get(name)

    # From the tables ---------------------------------------------------------------------

    async def inbox(self) -> list[InboxRow]:
        """Every incoming event seen, in the order first seen."""
        rows = await self._rows(select(inbox).order_by(inbox.c.received_at, inbox.c.event_id))
        return [
            InboxRow(r.source, r.event_id, r.event_type, r.received_at, r.interaction_id)
            for r in rows
        ]

    async def outbox(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        interaction_id: str | None = None,
    ) -> list[OutboxRow]:
        """Outbox rows, oldest first, optionally filtered."""
        query = select(outbox).order_by(outbox.c.created_at, outbox.c.id)
        if status is not None:
            query = query.where(outbox.c.status == status)
        if type is not None:
            query = query.where(outbox.c.type == type)
        if interaction_id is not None:
            query = query.where(outbox.c.interaction_id == interaction_id)
        return [_outbox_row(r) for r in await self._rows(query)]

    async def outbox_record(self, message_id: str) -> OutboxRow | None:
        rows = await self._rows(select(outbox).where(outbox.c.id == message_id))
        return _outbox_row(rows[0]) if rows else None

    async def mirrors(self) -> list[MirrorRow]:
        """Every agent state change mirrored to a CRM or ACD, in the order mirrored."""
        rows = await self._rows(
            select(agent_mirrors).order_by(agent_mirrors.c.sent_at, agent_mirrors.c.id)
        )
        return [
            MirrorRow(
                r.id,
                r.agent_id,
                Channel(r.channel),
                TargetKind(r.target_kind),
                ChannelStatus(r.status),
                r.reason,
                r.sent_at,
                r.echoed_at,
            )
            for r in rows
        ]

    async def voice_calls(self) -> list[VoiceCall]:
        rows = await self._rows(
            select(voice_calls).order_by(voice_calls.c.acd_adapter, voice_calls.c.call_id)
        )
        return [
            VoiceCall(r.acd_adapter, r.call_id, r.agent_id, r.started_at, r.ended_at) for r in rows
        ]

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in a stable order: equal before and after means unchanged."""
        tables: dict[str, list[tuple[Any, ...]]] = {}
        async with self.db.engine.connect() as conn:
            for table in metadata.sorted_tables:
                rows = (await conn.execute(select(table))).all()
                tables[table.name] = sorted((tuple(r) for r in rows), key=repr)
        return tables


def _outbox_row(row: Any) -> OutboxRow:
    return OutboxRow(
        message=OutboundMessage(
            target_kind=TargetKind(row.target_kind),
            target=row.target,
            type=row.type,
            interaction_id=row.interaction_id,
            payload=dict(row.payload),
            id=row.id,
            attempts=row.attempts,
        ),
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        sent_at=row.sent_at,
        last_error=row.last_error,
    )
