"""The SQL implementation of the routing ports, on PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self

import structlog
from sqlalchemy import (
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from harmony.db.agents import SqlAgents, SqlProfiles
from harmony.db.cursor import interaction_cursor, read_interaction_cursor
from harmony.db.dialect import DIALECT_INSERTS, insert_for, is_transient, sqlstate
from harmony.db.execution import Prepared, Statements
from harmony.db.kept import KeptConnection, KeptConnections
from harmony.db.offers import SqlOffers
from harmony.db.recent import RecentQueues
from harmony.db.tables import (
    UtcDateTime,
    agent_mirrors,
    agents,
    inbox,
    interaction_history,
    interactions,
    outbox,
    outbox_sequences,
    queue_waiting,
    queues,
)
from harmony.db.timers import SqlTimers
from harmony.errors import Collided, Conflict, TryAgain
from harmony.routing.agent_state import Profile
from harmony.routing.ids import random_hex
from harmony.routing.messages import OutboundMessage, OutboxEntry, TargetKind
from harmony.routing.model import (
    WAITING_STATES,
    Channel,
    GuardedMove,
    HistoryEntry,
    Interaction,
    InteractionState,
    Queue,
)
from harmony.routing.ports import (
    Acknowledged,
    EventClaim,
    InboxEntry,
    InboxStatus,
    InteractionFilter,
    Page,
    QueueStats,
    ReceivedEvent,
)

log = structlog.get_logger("harmony.db")

STATE_COLUMNS: dict[InteractionState, str] = {
    state: f"{state.value}_at" for state in InteractionState if state != InteractionState.RECEIVED
}
WAITING_LITERALS: list[Any] = [
    literal_column(f"'{state.value}'") for state in sorted(WAITING_STATES)
]
OFFERED_LITERALS: list[Any] = [literal_column("'offered'"), literal_column("'delivered'")]
# Interaction state changes are the INFO story of a run: their own logger name.
state_log = structlog.get_logger("harmony.interactions")


# Statements the hot path runs are built once: building one and computing its cache key costs
# more CPU than PostgreSQL spends executing it. Parameters are bound by name at execution.
_INTERACTION_BY = {
    (key, for_update): Prepared(
        select(interactions).where(column == bindparam("b_key")).with_for_update()
        if for_update
        else select(interactions).where(column == bindparam("b_key"))
    )
    for key, column in (("id", interactions.c.id), ("request_id", interactions.c.request_id))
    for for_update in (False, True)
}
_BY_EXTERNAL_ID = (
    select(interactions)
    .where(interactions.c.crm_adapter == bindparam("b_crm_adapter"))
    .where(interactions.c.external_id == bindparam("b_external_id"))
)
_INTERACTION_BY_EXTERNAL_ID = {
    False: Prepared(_BY_EXTERNAL_ID),
    True: Prepared(_BY_EXTERNAL_ID.with_for_update()),
}
_INSERT_INTERACTION_HISTORY = Prepared(insert(interaction_history))
_INSERT_INTERACTION = {
    dialect: Prepared(dialect_insert(interactions).on_conflict_do_nothing())
    for dialect, dialect_insert in DIALECT_INSERTS.items()
}
_QUEUE_BY_NAME = Prepared(select(queues).where(queues.c.name == bindparam("b_name")))


def _store_inbox_row(dialect_insert: Any, rows: Any = None) -> Any:
    """INSERT the row (or ``rows``, a SELECT of ``INBOX_COLUMNS``), or on a stored one not yet
    applied take the new status, time and error (keeping a payload already stored): one
    statement, so a claim is one round trip."""
    statement = dialect_insert(inbox)
    if rows is not None:
        statement = statement.from_select(INBOX_COLUMNS, rows)
    return statement.on_conflict_do_update(
        index_elements=[inbox.c.source, inbox.c.event_id],
        set_={
            "status": statement.excluded.status,
            "handled_at": statement.excluded.handled_at,
            "error": statement.excluded.error,
            "payload": func.coalesce(inbox.c.payload, statement.excluded.payload),
            "interaction_id": func.coalesce(
                statement.excluded.interaction_id, inbox.c.interaction_id
            ),
        },
        where=inbox.c.status != InboxStatus.APPLIED.value,
    )


INBOX_COLUMNS = (
    "source",
    "event_id",
    "event_type",
    "received_at",
    "payload",
    "interaction_id",
    "status",
    "handled_at",
    "error",
)


def _locked_then_claimed(*where: Any) -> Prepared:
    """On PostgreSQL, one statement: lock the interaction ``where`` finds (FOR UPDATE), then
    claim the event for it, the insert reading the locked row, so the lock order's interaction
    comes before its inbox row; the interaction's columns, the CRM's id of the agent it names
    (``held_by_crm_agent_id``, read without a lock, as a separate read would) and ``claimed``
    (1 when claimed, 0 when applied before; no row when there is no such interaction)."""
    held_by = (
        select(agents.c.crm_agent_id)
        .where(agents.c.id == interactions.c.agent_id)
        .scalar_subquery()
        .label("held_by_crm_agent_id")
    )
    found = (
        select(interactions, held_by).where(*where).with_for_update(of=interactions).cte("found")
    )
    row = select(
        *(
            found.c.id
            if column == "interaction_id"
            else bindparam(f"c_{column}", type_=inbox.c[column].type)
            for column in INBOX_COLUMNS
        )
    )
    claim = _store_inbox_row(DIALECT_INSERTS["postgresql"], row)
    claimed = claim.returning(literal_column("1").label("one")).cte("claimed")
    count = select(func.count()).select_from(claimed).scalar_subquery().label("claimed")
    return Prepared(select(found, count))


_LOCKED_THEN_CLAIMED = {
    "external_id": _locked_then_claimed(
        interactions.c.crm_adapter == bindparam("b_crm_adapter"),
        interactions.c.external_id == bindparam("b_external_id"),
    ),
    "request_id": _locked_then_claimed(interactions.c.request_id == bindparam("b_key")),
}


# A one-write unit of work's claim and new interaction: plain INSERTs, which fail on a row
# stored before instead of answering or updating it (the careful path does that).
_INSERT_INBOX_ROW = Prepared(insert(inbox))
# Its parameters are prefixed: bare column names would also bind the columns of the rows it
# carries (history has an ``id`` too).
_ADD_INTERACTION = Prepared(
    insert(interactions).values(
        {
            column.name: bindparam(f"new_{column.name}", type_=column.type)
            for column in interactions.c
        }
    )
)
_STORE_INBOX_ROW = {
    dialect: Prepared(_store_inbox_row(dialect_insert))
    for dialect, dialect_insert in DIALECT_INSERTS.items()
}
_LINK_INBOX_ROW = Prepared(
    update(inbox)
    .where(inbox.c.source == bindparam("b_source"))
    .where(inbox.c.event_id == bindparam("b_event_id"))
)
_INSERT_OUTBOX = Prepared(insert(outbox))


def _interaction_from_row(row: Any) -> Interaction:
    times = {InteractionState.RECEIVED: row.received_at}
    for state, column in STATE_COLUMNS.items():
        value = getattr(row, column)
        if value is not None:
            times[state] = value
    return Interaction(
        id=row.id,
        crm_adapter=row.crm_adapter,
        external_id=row.external_id,
        channel=Channel(row.channel),
        queue=row.queue,
        priority=row.priority,
        skills=list(row.skills),
        customer=dict(row.customer),
        subject=row.subject,
        acd_adapter=row.acd_adapter,
        state=InteractionState(row.state),
        received_at=row.received_at,
        updated_at=row.updated_at,
        state_times=times,
        request_id=row.request_id,
        agent_id=row.agent_id,
        version=row.version,
        offers_made=row.offers_made,
        overflows=row.overflows,
        max_wait_at=row.max_wait_at,
    )


def _interaction_values(interaction: Interaction) -> dict[str, Any]:
    values: dict[str, Any] = {
        "state": interaction.state.value,
        "queue": interaction.queue,
        "request_id": interaction.request_id,
        "agent_id": interaction.agent_id,
        "updated_at": interaction.updated_at,
        "offers_made": interaction.offers_made,
        "overflows": interaction.overflows,
        "max_wait_at": interaction.max_wait_at,
    }
    for state, column in STATE_COLUMNS.items():
        values[column] = interaction.state_times.get(state)
    return values


# Statements of the relay's batches, built once (see _CLAIM_PG).
# By dialect and whether the rows are locked. PostgreSQL takes the ids as one array parameter (a
# statement compiled once); SQLite's IN list is rendered per call.
_IDS_IN = {
    "postgresql": interactions.c.id == any_(bindparam("ids", type_=ARRAY(String))),
    "sqlite": interactions.c.id.in_(bindparam("ids", expanding=True)),
}
_GET_MANY = {
    (dialect, for_update): Prepared(
        select(interactions).where(ids_in).order_by(interactions.c.id).with_for_update()
        if for_update
        else select(interactions).where(ids_in).order_by(interactions.c.id)
    )
    for dialect, ids_in in _IDS_IN.items()
    for for_update in (False, True)
}
_SAVED_COLUMNS = {
    "state",
    "queue",
    "request_id",
    "agent_id",
    "updated_at",
    "offers_made",
    "overflows",
    "max_wait_at",
    *STATE_COLUMNS.values(),
}
_SAVE = Prepared(
    update(interactions)
    .where(interactions.c.id == bindparam("saved_id"))
    .where(interactions.c.version == bindparam("read_version"))
    .values(
        version=interactions.c.version + 1,
        **{
            column: bindparam(f"new_{column}", type_=interactions.c[column].type)
            for column in sorted(_SAVED_COLUMNS)
        },
    )
)


def _new_interaction_row(interaction: Interaction) -> dict[str, Any]:
    return {
        "id": interaction.id,
        "crm_adapter": interaction.crm_adapter,
        "external_id": interaction.external_id,
        "channel": interaction.channel.value,
        "priority": interaction.priority,
        "skills": interaction.skills,
        "customer": interaction.customer,
        "subject": interaction.subject,
        "acd_adapter": interaction.acd_adapter,
        "received_at": interaction.received_at,
        "version": 0,
        **_interaction_values(interaction),
    }


def _prefixed_new_row(interaction: Interaction) -> dict[str, Any]:
    return {f"new_{column}": value for column, value in _new_interaction_row(interaction).items()}


def _payload_of(received: ReceivedEvent | None, source: str, event_id: str) -> str | None:
    """The body of the event being received, if (source, event_id) is that event."""
    if received is not None and (received.source, received.event_id) == (source, event_id):
        return received.payload
    return None


def _applied_inbox_row(
    claim: EventClaim, received: ReceivedEvent | None, interaction_id: str | None
) -> dict[str, Any]:
    """An inbox row storing ``claim``'s event as applied, with its body when it is the one
    being received."""
    return {
        "source": claim.source,
        "event_id": claim.event_id,
        "event_type": claim.event_type,
        "received_at": claim.at,
        "payload": _payload_of(received, claim.source, claim.event_id),
        "interaction_id": interaction_id,
        "status": InboxStatus.APPLIED.value,
        "handled_at": claim.at,
        "error": None,
    }


class SqlInteractions:
    """Interactions and their history in SQL."""

    def __init__(
        self,
        conn: Statements,
        received: ReceivedEvent | None = None,
        crm_agent_ids_read: dict[str, str] | None = None,
    ) -> None:
        self._conn = conn
        self._received = received
        # The CRM's ids of agents read along with an interaction, for ``SqlAgents``.
        self._crm_agent_ids_read = {} if crm_agent_ids_read is None else crm_agent_ids_read
        self.state_changes: list[HistoryEntry] = []
        # A save that met a newer version: its history went with its update, so this unit of
        # work must not commit (it never does in a use case: the Conflict rolls it back).
        self.conflicted = False

    async def get_by_external_id_claiming(
        self, crm_adapter: str, external_id: str, claim: EventClaim
    ) -> tuple[Interaction | None, bool]:
        """Lock it, then claim the event for it (one statement on PostgreSQL)."""
        key = {"b_crm_adapter": crm_adapter, "b_external_id": external_id}
        return await self._locked_then_claimed("external_id", key, claim)

    async def get_by_request_id_claiming(
        self, request_id: str, claim: EventClaim
    ) -> tuple[Interaction | None, bool]:
        """Lock it, then claim the event for it (one statement on PostgreSQL)."""
        return await self._locked_then_claimed("request_id", {"b_key": request_id}, claim)

    async def _locked_then_claimed(
        self, by: str, key: dict[str, Any], claim: EventClaim
    ) -> tuple[Interaction | None, bool]:
        values = _applied_inbox_row(claim, self._received, None)
        if self._conn.dialect.name == "postgresql":
            # The interaction's id comes from the locked row, not from a parameter.
            del values["interaction_id"]
            parameters = {**key, **{f"c_{name}": value for name, value in values.items()}}
            row = (await self._conn.execute(_LOCKED_THEN_CLAIMED[by], parameters)).first()
            if row is None:
                return None, False
            if row.agent_id is not None:
                self._crm_agent_ids_read[row.agent_id] = row.held_by_crm_agent_id
            return _interaction_from_row(row), bool(row.claimed)
        # Elsewhere (SQLite, one writer at a time): the same two steps, one after the other.
        if by == "external_id":
            found = await self.get_by_external_id(
                key["b_crm_adapter"], key["b_external_id"], for_update=True
            )
        else:
            found = await self.get_by_request_id(key["b_key"], for_update=True)
        if found is None:
            return None, False
        stored = await self._conn.execute(
            _STORE_INBOX_ROW[self._conn.dialect.name], {**values, "interaction_id": found.id}
        )
        return found, stored.rowcount == 1

    async def add_if_absent(self, interaction: Interaction) -> bool:
        """Insert unless the CRM external id exists (also under concurrent inserts)."""
        statement = _INSERT_INTERACTION[self._conn.dialect.name]
        result = await self._conn.execute(statement, _new_interaction_row(interaction))
        if result.rowcount == 0:
            return False
        await self._append_history(interaction)
        return True

    async def add(self, interaction: Interaction) -> None:
        """Insert, with its history; an external id stored before fails the INSERT."""
        if self._conn.carries_later_rows:
            # The history rides with the INSERT, in one statement.
            await self._append_history(interaction)
            await self._conn.execute(_ADD_INTERACTION, _prefixed_new_row(interaction))
            return
        # Inserted at once: the history's foreign key needs the interaction first.
        await self._conn.execute(_ADD_INTERACTION, _prefixed_new_row(interaction))
        await self._append_history(interaction)

    async def _one(self, statement: Any, parameters: dict[str, Any]) -> Interaction | None:
        row = (await self._conn.execute(statement, parameters)).first()
        return _interaction_from_row(row) if row else None

    async def get(self, interaction_id: str, *, for_update: bool = False) -> Interaction | None:
        """Load one interaction by id."""
        return await self._one(_INTERACTION_BY["id", for_update], {"b_key": interaction_id})

    async def get_many(
        self, interaction_ids: Collection[str], *, for_update: bool = False
    ) -> list[Interaction]:
        """Load several interactions in one query, in id order (the order their locks are
        taken in with ``for_update``); ids not found are left out."""
        if not interaction_ids:
            return []
        query = _GET_MANY[self._conn.dialect.name, for_update]
        rows = await self._conn.execute(query, {"ids": sorted(set(interaction_ids))})
        return [_interaction_from_row(row) for row in rows]

    async def get_by_external_id(
        self, crm_adapter: str, external_id: str, *, for_update: bool = False
    ) -> Interaction | None:
        """Load the interaction a CRM knows by ``external_id``."""
        return await self._one(
            _INTERACTION_BY_EXTERNAL_ID[for_update],
            {"b_crm_adapter": crm_adapter, "b_external_id": external_id},
        )

    async def get_by_request_id(
        self, request_id: str, *, for_update: bool = False
    ) -> Interaction | None:
        """Load the interaction whose routing request has this id."""
        return await self._one(_INTERACTION_BY["request_id", for_update], {"b_key": request_id})

    async def save(self, interaction: Interaction) -> None:
        """Write the new state if nobody else changed the row since it was read."""
        await self.save_many([interaction])

    async def save_many(self, changed: Sequence[Interaction]) -> None:
        """Write each one's new state if nobody else changed its row since it was read
        (Conflict otherwise); their new history in one multi-row insert, sent with the first
        update (a conflict rolls the whole unit of work back, history included)."""
        await self._append_history(*changed)
        for interaction in changed:
            values = _interaction_values(interaction)
            # _SAVE was built for these columns: one more would silently not be written.
            assert values.keys() == _SAVED_COLUMNS, "_SAVE is out of step with the columns"
            result = await self._conn.execute(
                _SAVE,
                {
                    "saved_id": interaction.id,
                    "read_version": interaction.version,
                    **{f"new_{column}": value for column, value in values.items()},
                },
            )
            if result.rowcount != 1:
                self.conflicted = True
                raise Conflict(
                    f"interaction {interaction.id} was changed concurrently; retry",
                    code="concurrent_update",
                )
            interaction.version += 1

    async def record_acknowledged(
        self, acknowledged: Sequence[Acknowledged], at: datetime, move: GuardedMove
    ) -> set[str]:
        """One statement on PostgreSQL (see ``_recording_acknowledged``); elsewhere the
        messages marked sent, then their interactions locked, moved or noted, and saved."""
        if not acknowledged:
            return set()
        acks = [ack for ack in acknowledged if ack.interaction_id is not None]
        if self._conn.dialect.name != "postgresql":
            held = [(ack.message_id, ack.claim_token) for ack in acknowledged]
            result = await self._conn.execute(_MARK_SENT_SQLITE, {"held": held, "sent_at": at})
            marked = set(result.scalars().all())
            await self._apply_acknowledged([a for a in acks if a.message_id in marked], at, move)
            return marked
        rows = await self._conn.execute(
            _recording_acknowledged(move.target),
            {
                "held_ids": [ack.message_id for ack in acknowledged],
                "held_tokens": [ack.claim_token for ack in acknowledged],
                "sent_at": at,
                "ack_message_ids": [ack.message_id for ack in acks],
                "ack_interaction_ids": [ack.interaction_id for ack in acks],
                "ack_causes": [ack.cause for ack in acks],
                "move_source": move.source.value,
                "move_target": move.target.value,
                "move_event": move.event,
                "note_event": move.otherwise,
            },
        )
        recorded: set[str] = set()
        moved: set[str] = set()
        for row in rows:
            (recorded if row.kind == "sent" else moved).add(row.id)
        causes = {ack.interaction_id: ack.cause for ack in reversed(acks)}
        self.state_changes.extend(
            HistoryEntry(
                interaction_id, at, move.event, move.source, move.target, causes[interaction_id]
            )
            for interaction_id in sorted(moved)
        )
        return recorded

    async def _apply_acknowledged(
        self, acks: Sequence[Acknowledged], at: datetime, move: GuardedMove
    ) -> None:
        loaded = await self.get_many(
            {ack.interaction_id for ack in acks if ack.interaction_id}, for_update=True
        )
        by_id = {interaction.id: interaction for interaction in loaded}
        for ack in sorted(acks, key=lambda ack: ack.message_id):
            interaction = by_id.get(ack.interaction_id or "")
            if interaction is None:
                continue
            if interaction.state == move.source:
                interaction.move_to(move.target, at, event=move.event, cause=ack.cause)
            else:
                interaction.note(move.otherwise, at, ack.cause, {})
        await self.save_many(loaded)

    async def _append_history(self, *changed: Interaction) -> None:
        entries = [entry for interaction in changed for entry in interaction.new_history]
        if not entries:
            return
        self.state_changes.extend(e for e in entries if e.from_state != e.to_state)
        # Nothing reads history back within a unit of work: it goes with the next write.
        await self._conn.insert_later(
            _INSERT_INTERACTION_HISTORY,
            [
                {
                    "interaction_id": entry.interaction_id,
                    "at": entry.at,
                    "event": entry.event,
                    "from_state": entry.from_state.value if entry.from_state else None,
                    "to_state": entry.to_state.value if entry.to_state else None,
                    "cause": entry.cause,
                    "detail": entry.detail,
                }
                for entry in entries
            ],
        )
        for interaction in changed:
            interaction.new_history.clear()

    async def search(
        self, flt: InteractionFilter, limit: int, cursor: str | None
    ) -> Page[Interaction]:
        """Keyset pagination on (received_at, id), oldest first."""
        query = select(interactions)
        if flt.state is not None:
            query = query.where(interactions.c.state == flt.state.value)
        if flt.channel is not None:
            query = query.where(interactions.c.channel == flt.channel.value)
        if flt.queue is not None:
            query = query.where(interactions.c.queue == flt.queue)
        if cursor is not None:
            after_at, after_id = read_interaction_cursor(cursor)
            query = query.where(
                or_(
                    interactions.c.received_at > after_at,
                    and_(interactions.c.received_at == after_at, interactions.c.id > after_id),
                )
            )
        query = query.order_by(interactions.c.received_at, interactions.c.id).limit(limit + 1)
        rows = (await self._conn.execute(query)).all()
        items = [_interaction_from_row(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = interaction_cursor(last.received_at, last.id)
        return Page(items, next_cursor)

    async def history(self, interaction_id: str) -> list[HistoryEntry]:
        """The interaction's history in insertion order."""
        rows = await self._conn.execute(
            select(interaction_history)
            .where(interaction_history.c.interaction_id == interaction_id)
            .order_by(interaction_history.c.id)
        )
        return [
            HistoryEntry(
                interaction_id=row.interaction_id,
                at=row.at,
                event=row.event,
                from_state=InteractionState(row.from_state) if row.from_state else None,
                to_state=InteractionState(row.to_state) if row.to_state else None,
                cause=row.cause,
                detail=dict(row.detail),
            )
            for row in rows
        ]


_QUEUE_POLICY_COLUMNS = (
    "offer_timeout_seconds",
    "routing_timeout_seconds",
    "max_wait_seconds",
    "max_offers",
    "overflow_queue",
)


def _queue(row: Any) -> Queue:
    return Queue(
        row.name,
        Channel(row.channel),
        list(row.skills),
        **{name: getattr(row, name) for name in _QUEUE_POLICY_COLUMNS},
    )


class SqlQueues:
    """Queues and their waiting counts in SQL."""

    def __init__(
        self, conn: Statements, now: Callable[[], datetime], recent: RecentQueues | None = None
    ) -> None:
        self._conn = conn
        self._now = now
        self._recent = recent

    async def get(self, name: str) -> Queue | None:
        """Load a queue by name."""
        row = (await self._conn.execute(_QUEUE_BY_NAME, {"b_name": name})).first()
        queue = _queue(row) if row else None
        if queue is not None and self._recent is not None:
            self._recent.keep(queue)
        return queue

    async def get_recent(self, name: str) -> Queue | None:
        """From the process's recent queues, else loaded (and kept)."""
        recent = self._recent.get(name) if self._recent is not None else None
        return recent if recent is not None else await self.get(name)

    async def upsert(self, queue: Queue) -> None:
        """Create or replace a queue's channel and skills in one statement (first writes race)."""
        if self._recent is not None:
            self._recent.forget(queue.name)
        now = self._now()
        values = {
            "channel": queue.channel.value,
            "skills": queue.skills,
            "updated_at": now,
            **{name: getattr(queue, name) for name in _QUEUE_POLICY_COLUMNS},
        }
        await self._conn.execute(
            insert_for(self._conn, queues)
            .values(name=queue.name, created_at=now, **values)
            .on_conflict_do_update(index_elements=[queues.c.name], set_=values)
        )

    async def stats(self, now: datetime) -> list[QueueStats]:
        """Counts kept by triggers (a few rows per queue) and each queue's oldest waiting
        interaction from the waiting index: no aggregate over the waiting rows themselves."""
        rows = await self._conn.execute(_QUEUE_STATS, {"since": now - timedelta(days=1)})
        return [
            QueueStats(
                _queue(row),
                waiting=int(row.waiting or 0),
                oldest_received_at=row.oldest,
                offered=int(row.offered or 0),
                abandoned_24h=int(row.abandoned or 0),
            )
            for row in rows
        ]


def _queue_stats() -> Prepared:
    waiting = (
        select(queue_waiting.c.queue, func.sum(queue_waiting.c.waiting).label("waiting"))
        .group_by(queue_waiting.c.queue)
        .subquery()
    )
    # Literal states, so that PostgreSQL matches the partial index even in a generic plan.
    oldest = (
        select(func.min(interactions.c.received_at))
        .where(interactions.c.queue == queues.c.name)
        .where(interactions.c.state.in_(WAITING_LITERALS))
        .scalar_subquery()
    )
    offered = (
        select(func.count())
        .where(interactions.c.queue == queues.c.name)
        .where(interactions.c.state.in_(OFFERED_LITERALS))
        .scalar_subquery()
    )
    abandoned = (
        select(func.count())
        .where(interactions.c.queue == queues.c.name)
        .where(interactions.c.state == literal_column("'abandoned'"))
        .where(interactions.c.abandoned_at >= bindparam("since", type_=UtcDateTime))
        .scalar_subquery()
    )
    return Prepared(
        select(
            queues,
            waiting.c.waiting,
            oldest.label("oldest"),
            offered.label("offered"),
            abandoned.label("abandoned"),
        )
        .select_from(queues.outerjoin(waiting, waiting.c.queue == queues.c.name))
        .order_by(queues.c.name)
    )


# Built once: building it cost more CPU than PostgreSQL spent running it.
_QUEUE_STATS = _queue_stats()


class SqlInbox:
    """Incoming events with their verified payloads, unique on (source, event id)."""

    def __init__(self, conn: Statements, received: ReceivedEvent | None) -> None:
        self._conn = conn
        self._received = received

    def _row(self, source: str, event_id: str) -> Any:
        return and_(inbox.c.source == source, inbox.c.event_id == event_id)

    async def claim(
        self,
        source: str,
        event_id: str,
        event_type: str,
        at: datetime,
        interaction_id: str | None = None,
    ) -> bool:
        """Store the event applied, or flip a refused one to applied; False if it was applied
        before. On PostgreSQL a concurrent claim blocks on the row until this transaction ends,
        then finds it applied; if this transaction rolls back instead, the waiting claim takes
        it."""
        values = self._applied_row(source, event_id, event_type, at, interaction_id)
        result = await self._conn.execute(_STORE_INBOX_ROW[self._conn.dialect.name], values)
        return bool(result.rowcount == 1)

    async def claim_with_next_write(
        self, source: str, event_id: str, event_type: str, at: datetime, interaction_id: str
    ) -> None:
        """Insert the event applied, with the next write; a row stored before fails it."""
        values = self._applied_row(source, event_id, event_type, at, interaction_id)
        await self._conn.insert_later(_INSERT_INBOX_ROW, [values])

    def _applied_row(
        self,
        source: str,
        event_id: str,
        event_type: str,
        at: datetime,
        interaction_id: str | None,
    ) -> dict[str, Any]:
        claim = EventClaim(source, event_id, event_type, at)
        return _applied_inbox_row(claim, self._received, interaction_id)

    async def mark_failed(self, source: str, event_id: str, error: str, at: datetime) -> None:
        """Write the refusal on a row not applied meanwhile (by a concurrent delivery); the
        event being received is stored with it, since its own transaction rolled back."""
        failed = {"status": InboxStatus.FAILED.value, "handled_at": at, "error": error[:2000]}
        received = self._received
        if received is None or (received.source, received.event_id) != (source, event_id):
            await self._conn.execute(
                update(inbox)
                .where(self._row(source, event_id))
                .where(inbox.c.status != InboxStatus.APPLIED.value)
                .values(**failed)
            )
            return
        values = {
            "source": source,
            "event_id": event_id,
            "event_type": received.event_type,
            "received_at": at,
            "payload": received.payload,
            "interaction_id": None,
            **failed,
        }
        await self._conn.execute(_STORE_INBOX_ROW[self._conn.dialect.name], values)

    async def get(self, source: str, event_id: str) -> InboxEntry | None:
        """One stored event."""
        row = (await self._conn.execute(select(inbox).where(self._row(source, event_id)))).first()
        if row is None:
            return None
        return InboxEntry(**{**row._mapping, "status": InboxStatus(row.status)})

    async def prune(self, received_before: datetime, limit: int) -> int:
        """Delete old rows; on PostgreSQL rows another transaction holds are skipped, so
        replicas pruning at once neither wait for nor deadlock with each other."""
        doomed = (
            select(inbox.c.source, inbox.c.event_id)
            .where(inbox.c.received_at < received_before)
            .order_by(inbox.c.received_at)
            .limit(limit)
        )
        if self._conn.dialect.name == "postgresql":
            doomed = doomed.with_for_update(skip_locked=True)
        keys = [tuple(row) for row in (await self._conn.execute(doomed)).all()]
        if not keys:
            return 0
        await self._conn.execute(
            delete(inbox).where(tuple_(inbox.c.source, inbox.c.event_id).in_(keys))
        )
        return len(keys)

    async def link(self, source: str, event_id: str, interaction_id: str) -> None:
        """Note the interaction an event concerned."""
        await self._conn.execute(
            _LINK_INBOX_ROW,
            {"b_source": source, "b_event_id": event_id, "interaction_id": interaction_id},
        )

    async def interaction_for(self, source: str, event_id: str) -> str | None:
        """The interaction a previously applied event concerned."""
        interaction_id: str | None = (
            await self._conn.execute(
                select(inbox.c.interaction_id).where(self._row(source, event_id))
            )
        ).scalar()
        return interaction_id


def _due(query: Any) -> Any:
    """``query`` narrowed to due pending rows (``:due_at``) not waiting behind an earlier row of
    their ordering key, oldest due first, at most ``:claim_limit``."""
    earlier = outbox.alias("earlier")
    return (
        query.where(outbox.c.status == "pending")
        .where(outbox.c.next_attempt_at <= bindparam("due_at"))
        .where(
            or_(
                outbox.c.ordering_key.is_(None),
                ~select(earlier.c.id)
                .where(earlier.c.ordering_key == outbox.c.ordering_key)
                .where(earlier.c.status == "pending")
                .where(earlier.c.ordering_seq < outbox.c.ordering_seq)
                .exists(),
            )
        )
        .order_by(outbox.c.next_attempt_at, outbox.c.created_at, outbox.c.ordering_seq)
        .limit(bindparam("claim_limit", type_=Integer))
    )


# The relay's statements, built once: building one and computing its cache key costs more
# than executing it. Each takes its values as parameters of the execution.
_LEASE = {
    "attempts": outbox.c.attempts + 1,
    "next_attempt_at": bindparam("lease_until", type_=outbox.c.next_attempt_at.type),
    "claim_token": bindparam("token", type_=outbox.c.claim_token.type),
    "claimed_by": bindparam("claimer", type_=outbox.c.claimed_by.type),
}
# PostgreSQL: pick and lease in one statement. ARRAY(subquery) keeps the subquery's order,
# which RETURNING does not: each row's place in it puts the batch back in the order the rows
# became due.
_PICKED = select(
    func.array(
        _due(select(outbox.c.id)).with_for_update(skip_locked=True, of=outbox).scalar_subquery()
    ).label("ids")
).cte("picked")
_CLAIM_PG = Prepared(
    update(outbox)
    .where(outbox.c.id == any_(_PICKED.c.ids))
    .values(_LEASE)
    .returning(*outbox.c, func.array_position(_PICKED.c.ids, outbox.c.id).label("place"))
)
# SQLite: select, then lease what was selected.
_DUE_SQLITE = _due(select(outbox))
_LEASE_SQLITE = (
    update(outbox).where(outbox.c.id.in_(bindparam("ids", expanding=True))).values(_LEASE)
)
_SENT = {
    "status": "sent",
    "sent_at": bindparam("sent_at", type_=outbox.c.sent_at.type),
    "last_error": None,
}
# Each row fenced by its own claim token. PostgreSQL joins the (id, token) pairs given as two
# arrays (a statement compiled once); SQLite's list of pairs is rendered per call.
_HELD = (
    func.unnest(
        bindparam("held_ids", type_=ARRAY(String)), bindparam("held_tokens", type_=ARRAY(String))
    )
    .table_valued("id", "token")
    .render_derived(name="held")
)
# The first step of ``_recording_acknowledged``'s statement on PostgreSQL; SQLite marks the
# messages sent with ``_MARK_SENT_SQLITE``, then runs the rest as separate steps.
_MARK_SENT_PG = (
    update(outbox)
    .where(outbox.c.id == _HELD.c.id)
    .where(outbox.c.claim_token == _HELD.c.token)
    .where(outbox.c.status == "pending")
    .values(_SENT)
    .returning(outbox.c.id)
)
_MARK_SENT_SQLITE = Prepared(
    update(outbox)
    .where(tuple_(outbox.c.id, outbox.c.claim_token).in_(bindparam("held", expanding=True)))
    .where(outbox.c.status == "pending")
    .values(_SENT)
    .returning(outbox.c.id)
)


@functools.cache
def _recording_acknowledged(target: InteractionState) -> Prepared:
    """On PostgreSQL, one statement: mark the held messages sent (``sent``); lock, in id
    order, the interactions of those recorded that name one (``locked``: FOR UPDATE reads the
    latest committed state, after waiting for a concurrent event that holds the row); move
    those in the move's source state to ``target`` (``moved``); and write each recorded
    acknowledgement's history line from the state locked: the move, or the note (a second
    acknowledgement of one interaction in the batch is noted against the state the first left).
    Returns ``("sent", message id)`` and ``("moved", interaction id)`` rows. Built on first
    use, once per target state (only the delivery's is used today)."""
    text_array = ARRAY(Text)
    sent = _MARK_SENT_PG.cte("sent")
    acks = (
        func.unnest(
            bindparam("ack_message_ids", type_=text_array),
            bindparam("ack_interaction_ids", type_=text_array),
            bindparam("ack_causes", type_=text_array),
        )
        .table_valued("message_id", "interaction_id", "cause")
        .render_derived(name="acks")
    )
    recorded_acks = (
        select(
            acks.c.message_id,
            acks.c.interaction_id,
            acks.c.cause,
            func.row_number()
            .over(partition_by=acks.c.interaction_id, order_by=acks.c.message_id)
            .label("nth"),
        )
        .where(acks.c.message_id.in_(select(sent.c.id)))
        .cte("recorded_acks")
    )
    locked = (
        select(interactions.c.id, interactions.c.state)
        .where(interactions.c.id.in_(select(recorded_acks.c.interaction_id)))
        .order_by(interactions.c.id)
        .with_for_update(of=interactions)
        .cte("locked")
    )
    source = bindparam("move_source", type_=String)
    target_state = bindparam("move_target", type_=String)
    at = bindparam("sent_at", type_=outbox.c.sent_at.type)
    moved = (
        update(interactions)
        .where(interactions.c.id == locked.c.id)
        .where(locked.c.state == source)
        .values(
            {
                "state": target_state,
                STATE_COLUMNS[target]: at,
                "updated_at": at,
                "version": interactions.c.version + 1,
            }
        )
        .returning(interactions.c.id)
        .cte("moved")
    )
    moves = and_(recorded_acks.c.nth == 1, locked.c.state == source)
    state_after = case((locked.c.state == source, target_state), else_=locked.c.state)
    history = insert(interaction_history).from_select(
        ["interaction_id", "at", "event", "from_state", "to_state", "cause", "detail"],
        select(
            recorded_acks.c.interaction_id,
            at,
            case(
                (moves, bindparam("move_event", type_=String)),
                else_=bindparam("note_event", type_=String),
            ),
            case((moves, locked.c.state), else_=state_after),
            state_after,
            recorded_acks.c.cause,
            cast(literal_column("'{}'"), interaction_history.c.detail.type),
        )
        .select_from(recorded_acks.join(locked, locked.c.id == recorded_acks.c.interaction_id))
        .order_by(recorded_acks.c.interaction_id, recorded_acks.c.nth),
    )
    return Prepared(
        select(literal("sent").label("kind"), sent.c.id)
        .add_cte(history.cte("history"))
        .union_all(select(literal("moved").label("kind"), moved.c.id))
    )


# The due message a relay has waited longest to send: what admission control samples.
_OLDEST_DUE = Prepared(_due(select(outbox.c.next_attempt_at)))


def _claimed(row: Any, attempts: int, token: str, lease_until: datetime) -> OutboxEntry:
    return OutboxEntry(
        message=OutboundMessage(
            target_kind=TargetKind(row.target_kind),
            target=row.target,
            type=row.type,
            interaction_id=row.interaction_id,
            payload=dict(row.payload),
            id=row.id,
            attempts=attempts,
            ordering_key=row.ordering_key,
            sequence=row.ordering_seq,
            supersede_key=row.supersede_key,
        ),
        attempts=attempts,
        created_at=row.created_at,
        claim_token=token,
        lease_until=lease_until,
        last_error=row.last_error,
    )


class Handoff(Protocol):
    """A relay in this process that takes the messages a transaction promised, already claimed
    for it, once the transaction commits: no claim transaction and no wake-up between a commit
    and the send. Crash-safe as any claim: a message whose relay died is claimed again when
    its lease ends."""

    @property
    def claimer(self) -> str:
        """Who holds the claims, as stored on the rows."""
        ...

    @property
    def lease_seconds(self) -> float:
        """How long a claim lasts before another relay may take the message."""
        ...

    def take(self, entries: list[OutboxEntry]) -> None:
        """Send these committed messages, each leased to this relay under its claim token."""
        ...


class SqlOutbox:
    """Promised outbound messages.

    A claim leases a row by pushing ``next_attempt_at`` to the end of the lease and stamping it
    with a fresh claim token; every outcome is written only ``WHERE claim_token = <the one
    claimed>`` while the row is pending, so a relay whose lease was taken over cannot overwrite
    the outcome of the relay that holds it.
    """

    def __init__(self, conn: Statements, handoff: Handoff | None = None) -> None:
        self._conn = conn
        self._handoff = handoff
        self.added = 0
        # Messages inserted already claimed for the handoff relay, for it to take after commit.
        self.claimed: list[OutboxEntry] = []
        self._claim_token: str | None = None

    async def next_sequence(self, ordering_key: str) -> int:
        """The next number for ``ordering_key``; the counter row stays locked until commit, so
        numbers follow the order in which the transactions using them commit."""
        statement = (
            insert_for(self._conn, outbox_sequences)
            .values(ordering_key=ordering_key, sequence=1)
            .on_conflict_do_update(
                index_elements=[outbox_sequences.c.ordering_key],
                set_={"sequence": outbox_sequences.c.sequence + 1},
            )
            .returning(outbox_sequences.c.sequence)
        )
        return int((await self._conn.execute(statement)).scalar_one())

    async def add(self, message: OutboundMessage, at: datetime) -> None:
        """Store the message, due now; an unsent older message it supersedes is retired."""
        if message.supersede_key is not None:
            await self._supersede(message, at)
        values = {
            "id": message.id,
            "target_kind": message.target_kind.value,
            "target": message.target,
            "type": message.type,
            "interaction_id": message.interaction_id,
            "payload": message.payload,
            "status": "pending",
            "attempts": 0,
            "created_at": at,
            "next_attempt_at": at,
            "ordering_key": message.ordering_key,
            "ordering_seq": message.sequence,
            "supersede_key": message.supersede_key,
            "claim_token": None,
            "claimed_by": None,
        }
        # Ordered and superseding messages wait for the claim, which knows what precedes them.
        handoff = self._handoff
        if handoff is not None and message.ordering_key is None and message.supersede_key is None:
            if self._claim_token is None:
                self._claim_token = random_hex()
            lease_until = at + timedelta(seconds=handoff.lease_seconds)
            values.update(
                attempts=1,
                next_attempt_at=lease_until,
                claim_token=self._claim_token,
                claimed_by=handoff.claimer[:200],
            )
            self.claimed.append(
                OutboxEntry(
                    message=replace(message, attempts=1),
                    attempts=1,
                    created_at=at,
                    claim_token=self._claim_token,
                    lease_until=lease_until,
                    last_error=None,
                )
            )
        # Nothing reads it back before the commit: it goes with the next write.
        await self._conn.insert_later(_INSERT_OUTBOX, [values])
        self.added += 1

    async def _supersede(self, message: OutboundMessage, at: datetime) -> None:
        # Only rows no relay holds: one being sent keeps going, and the newer one follows it.
        retired = (
            (
                await self._conn.execute(
                    update(outbox)
                    .where(outbox.c.supersede_key == message.supersede_key)
                    .where(outbox.c.status == "pending")
                    .where(outbox.c.claim_token.is_(None))
                    .values(
                        status="superseded",
                        next_attempt_at=at,
                        last_error=f"superseded by {message.id}",
                    )
                    .returning(outbox.c.id)
                )
            )
            .scalars()
            .all()
        )
        if retired:
            # Never sent, so never echoed back: nothing to recognise.
            await self._conn.execute(delete(agent_mirrors).where(agent_mirrors.c.id.in_(retired)))

    async def claim_due(
        self, now: datetime, limit: int, lease_seconds: float, claimer: str
    ) -> list[OutboxEntry]:
        """Lease due rows under a new claim token, counting the attempt.

        A row whose ordering key has an earlier pending row (unsent, or in flight) waits for it.
        On PostgreSQL one statement picks and leases the rows, skipping (not waiting for) rows
        other relays are claiming; on SQLite, whose writers take turns, a select then an update.
        """
        token = random_hex()
        lease_until = now + timedelta(seconds=lease_seconds)
        params = {
            "due_at": now,
            "claim_limit": limit,
            "lease_until": lease_until,
            "token": token,
            "claimer": claimer[:200],
        }
        if self._conn.dialect.name == "postgresql":
            leased = sorted(
                (await self._conn.execute(_CLAIM_PG, params)).all(), key=lambda row: row.place
            )
            return [_claimed(row, row.attempts, token, lease_until) for row in leased]
        rows = (await self._conn.execute(_DUE_SQLITE, params)).all()
        if rows:
            await self._conn.execute(_LEASE_SQLITE, {**params, "ids": [row.id for row in rows]})
        return [_claimed(row, row.attempts + 1, token, lease_until) for row in rows]

    def _held(self, message_id: str, claim_token: str) -> Any:
        return (
            update(outbox)
            .where(outbox.c.id == message_id)
            .where(outbox.c.claim_token == claim_token)
            .where(outbox.c.status == "pending")
        )

    async def renew(self, message_id: str, claim_token: str, lease_until: datetime) -> bool:
        """Extend a lease still held; False if the claim was lost."""
        result = await self._conn.execute(
            self._held(message_id, claim_token).values(next_attempt_at=lease_until)
        )
        return bool(result.rowcount == 1)

    async def mark_sent(self, message_id: str, claim_token: str, at: datetime) -> bool:
        """Acknowledged by the receiver; False (nothing written) if the claim was lost."""
        result = await self._conn.execute(
            self._held(message_id, claim_token).values(status="sent", sent_at=at, last_error=None)
        )
        return bool(result.rowcount == 1)

    async def mark_retry(
        self, message_id: str, claim_token: str, next_attempt_at: datetime, error: str
    ) -> bool:
        """Release the claim and try again at ``next_attempt_at``; False if the claim was lost."""
        result = await self._conn.execute(
            self._held(message_id, claim_token).values(
                next_attempt_at=next_attempt_at, last_error=error[:2000], claim_token=None
            )
        )
        return bool(result.rowcount == 1)

    async def mark_dead(self, message_id: str, claim_token: str, at: datetime, error: str) -> bool:
        """Given up on; False (nothing written) if the claim was lost."""
        result = await self._conn.execute(
            self._held(message_id, claim_token).values(
                status="dead", sent_at=None, last_error=error[:2000], next_attempt_at=at
            )
        )
        return bool(result.rowcount == 1)

    async def pending_count(self) -> int:
        """Messages still to send."""
        count = (
            await self._conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
            )
        ).scalar()
        return int(count or 0)

    async def oldest_due(self, now: datetime) -> datetime | None:
        """When the longest-waiting message a relay could claim now became due (not one
        waiting for a retry, nor one held behind an earlier message of its ordering key);
        None if there is none."""
        parameters = {"due_at": now, "claim_limit": 1}
        due: datetime | None = (await self._conn.execute(_OLDEST_DUE, parameters)).scalar()
        return due


def _raise_try_again_if_transient(exc: BaseException) -> None:
    if not is_transient(exc):
        return
    code = sqlstate(exc) or "connection lost"
    log.warning("transaction_aborted_for_retry", sqlstate=code)
    raise TryAgain(
        f"the database aborted the transaction ({code}); try again (the same event id is "
        "recognised, so a retry never applies it twice)"
    ) from exc


class _OneStatement(Statements):
    """Statements of a single-statement unit of work: the one runs in autocommit, and a second
    is refused, since it would not be atomic with the first."""

    def __init__(self, conn: AsyncConnection, adapted: Any = None) -> None:
        super().__init__(conn, adapted)
        self._ran = False

    async def execute(self, statement: Prepared | Any, params: Any = None) -> Any:
        """Run the one statement; refuse another."""
        if self._ran:
            raise RuntimeError("a single-statement unit of work ran a second statement")
        self._ran = True
        return await super().execute(statement, params)

    async def insert_later(self, statement: Prepared, rows: list[Any]) -> None:
        """Insert at once: this is the one statement."""
        if rows:
            await self.execute(statement, rows)

    async def update_later(self, statement: Prepared, params: Any) -> None:
        """Update at once: this is the one statement."""
        await self.execute(statement, params)


class _OneWrite(Statements):
    """Statements of a one-write unit of work on asyncpg: reads, each in autocommit, then one
    write carrying every row inserted later. Anything that would make a second write, or send
    those rows on their own before the write, is refused before it is sent: it would not be
    atomic with the first."""

    def __init__(self, conn: AsyncConnection, adapted: Any = None) -> None:
        super().__init__(conn, adapted)
        self._wrote = False

    async def execute(self, statement: Prepared | Any, params: Any = None) -> Any:
        """Run a read, or the one write (with the rows inserted later); refuse the rest."""
        if not isinstance(statement, Prepared):
            raise RuntimeError("a one-write unit of work runs prepared statements only")
        if statement.writes and self._wrote:
            raise RuntimeError("a one-write unit of work wrote a second time")
        if self._later and (isinstance(params, list) or statement.tables & self._later_tables()):
            raise RuntimeError("a one-write unit of work would send rows inserted later alone")
        return await super().execute(statement, params)

    async def _run(self, compiled: Any, params: Any, *, many: bool) -> Any:
        if compiled.writes or many:
            if self._wrote:
                raise RuntimeError("a one-write unit of work wrote a second time")
            self._wrote = True
        return await super()._run(compiled, params, many=many)

    async def _through_sqlalchemy(self, statement: Any, params: Any) -> Any:
        raise RuntimeError("a one-write unit of work runs its statements on the driver only")


class SqlUnitOfWork:
    """One database transaction exposing the repositories.

    On SQLite one process is the only writer, so write units of work take a process-wide lock
    instead of meeting ``database is locked`` under concurrency.

    Lock order. Every unit of work that writes takes its row locks in this one order, so two
    of them can wait for each other but never in a cycle:

    1. the relay's own outbox rows when it records outcomes, a batch of them in one
       statement (nobody waits for one while holding more); then
    2. the interaction an event concerns, if it exists (``get..(for_update=True)``, or
       ``get_by_..._claiming``, whose one statement's insert reads the locked row): taken
       before the event's inbox row, so the claim can store which interaction it was; several
       (the deliveries of a batch of the relay's outcomes) in id order, in one query (the
       acknowledgements' statement on PostgreSQL, ``get_many`` elsewhere); then
    3. the inbox row of the event (the claim's ``INSERT ... ON CONFLICT``: deliveries of one
       event queue up here). A created interaction is inserted after it: that insert waits at
       most for a concurrent create of the same external id, which holds no other lock; then
    4. the profile, where provisioning changes one (``upsert_profile`` updates it,
       ``upsert_agent`` reads its agent's FOR SHARE so the two serialise); then
    5. the agent (``agents.get..(for_update=True)``, or the agent row an upsert writes); a use
       case touching several agents (a profile change) locks them in id order; then
    6. the agent's channels, in channel-name order: chat, email, voice (what ``sorted()`` and
       ``ORDER BY channel`` give); nothing changes a channel without holding its agent; then
    7. rows owned by that agent and interaction (history, mirrors, sequences, voice calls,
       outbox messages, offers, timers), which nobody else locks; a scheduler claims due
       timers in a transaction of their own, and fires one by locking what it guards first,
       then removing it.

    Reads that need no lock (a profile's wrap-up, a queue) may happen at any point.

    Should PostgreSQL still abort the transaction for a deadlock (40P01) or a serialization
    failure (40001), leaving the unit of work raises ``TryAgain`` (chained to the driver's
    error): nothing was stored, and ``harmony.routing.retry`` runs the use case again.
    """

    interactions: SqlInteractions
    agents: SqlAgents
    profiles: SqlProfiles
    queues: SqlQueues
    inbox: SqlInbox
    outbox: SqlOutbox
    timers: SqlTimers
    offers: SqlOffers

    def __init__(
        self,
        engine: AsyncEngine,
        now: Callable[[], datetime],
        write_lock: asyncio.Lock | None,
        on_outbox_commit: Callable[[], None] | None,
        handoff: Handoff | None = None,
        recent_queues: RecentQueues | None = None,
        kept: KeptConnections | None = None,
    ) -> None:
        self._engine = engine
        self._kept = kept
        self._lease: KeptConnection | None = None
        self._now = now
        self._write_lock = write_lock
        self._on_outbox_commit = on_outbox_commit
        self._handoff = handoff
        self._recent_queues = recent_queues
        self._conn: AsyncConnection | None = None
        self._statements: Statements | None = None
        self._holds_lock = False
        self._received: ReceivedEvent | None = None
        self._single = False
        self._one_write = False

    def receiving(self, event: ReceivedEvent) -> Self:
        """Note the event this unit of work applies (its payload goes into its inbox row)."""
        self._received = event
        return self

    def single_statement(self) -> Self:
        """This unit of work runs one statement: on PostgreSQL without BEGIN and COMMIT around
        it (two round trips fewer), elsewhere in a transaction as usual."""
        self._single = True
        return self

    def one_write(self) -> Self:
        """This unit of work reads, then writes once (see the port): on PostgreSQL without
        BEGIN and COMMIT (two round trips fewer), its rows added before the write carried by
        it; elsewhere in a transaction as usual. A write meeting a constraint raises
        ``Collided`` on leaving."""
        self._one_write = True
        return self

    async def __aenter__(self) -> Self:
        if self._write_lock is not None:
            await self._write_lock.acquire()
            self._holds_lock = True
        try:
            adapted = None
            if self._kept is not None:
                self._lease = await self._kept.take()
                self._conn, adapted = self._lease.conn, self._lease.adapted
            else:
                self._conn = await self._engine.connect()
            statements = Statements(self._conn, adapted)
            if self._single and self._conn.dialect.driver == "asyncpg":
                statements = _OneStatement(self._conn, adapted)
                await statements.without_transaction()
            elif self._one_write and self._conn.dialect.driver == "asyncpg":
                statements = _OneWrite(self._conn, adapted)
                await statements.without_transaction()
            else:
                if self._lease is None:
                    await self._conn.begin()
                await statements.begin_now()
            self._statements = statements
        except BaseException as exc:
            await self._cleanup()
            _raise_try_again_if_transient(exc)
            raise
        crm_agent_ids_read: dict[str, str] = {}
        self.interactions = SqlInteractions(statements, self._received, crm_agent_ids_read)
        profiles_read: dict[str, Profile] = {}
        self.agents = SqlAgents(statements, self._now, profiles_read, crm_agent_ids_read)
        self.profiles = SqlProfiles(statements, self._now, profiles_read)
        self.queues = SqlQueues(statements, self._now, self._recent_queues)
        self.inbox = SqlInbox(statements, self._received)
        self.outbox = SqlOutbox(statements, self._handoff)
        self.timers = SqlTimers(statements)
        self.offers = SqlOffers(statements)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._conn is not None and self._conn.in_transaction():
                await self._conn.rollback()
            if self._statements is not None:
                await self._statements.rollback_now()
        finally:
            await self._cleanup()
        if exc is not None:
            if self._one_write and isinstance(exc, IntegrityError):
                raise Collided(f"the one write met a stored row: {sqlstate(exc)}") from exc
            _raise_try_again_if_transient(exc)

    async def _cleanup(self) -> None:
        try:
            if self._lease is not None and self._kept is not None:
                lease, self._lease, self._conn = self._lease, None, None
                await self._kept.give_back(lease)
            elif self._conn is not None:
                await self._conn.close()
                self._conn = None
        finally:
            if self._holds_lock and self._write_lock is not None:
                self._holds_lock = False
                self._write_lock.release()

    async def commit(self) -> None:
        """Commit, then wake the relay if this transaction promised outbound messages."""
        assert self._conn is not None and self._statements is not None
        if self.interactions.conflicted:
            raise Conflict(
                "a save in this unit of work met a concurrent update: it cannot commit; retry",
                code="concurrent_update",
            )
        await self._statements.flush()
        if self._conn.in_transaction():
            await self._conn.commit()
        await self._statements.commit_now()
        # The one INFO line per interaction state change, written once the change is durable.
        for change in self.interactions.state_changes:
            state_log.info(
                "interaction_state_changed",
                interaction_id=change.interaction_id,
                history_event=change.event,
                from_state=change.from_state.value if change.from_state else None,
                to_state=change.to_state.value if change.to_state else None,
                cause=change.cause,
            )
        self.interactions.state_changes.clear()
        handed = 0
        if self.outbox.claimed and self._handoff is not None:
            claimed, self.outbox.claimed = self.outbox.claimed, []
            handed = len(claimed)
            self._handoff.take(claimed)
        # Messages left for the claim (ordered ones): wake the relay for them.
        if self.outbox.added > handed and self._on_outbox_commit is not None:
            self._on_outbox_commit()
