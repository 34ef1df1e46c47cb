"""Agents, their channel states, skills, profiles and state history in SQL.

Reads are set-based: a page of agents costs three queries whatever its size (agents, their
channels, their skills), and every filter is evaluated in the database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError

from harmony.db.cursor import (
    agent_cursor,
    history_cursor,
    read_agent_cursor,
    read_history_cursor,
)
from harmony.db.dialect import insert_for
from harmony.db.execution import Prepared, Statements
from harmony.db.tables import (
    agent_channels,
    agent_mirrors,
    agent_sequences,
    agent_skills,
    agent_state_history,
    agents,
    profiles,
    voice_calls,
)
from harmony.errors import Conflict, TryAgain, ValidationFailed
from harmony.routing.agent_state import AgentStateEntry, Presence, Profile, StateOutcome
from harmony.routing.messages import TargetKind
from harmony.routing.model import Agent, Channel, ChannelState, ChannelStatus
from harmony.routing.ports import AgentFilter, Page, VoiceCall


def _channel_state(row: Any) -> ChannelState:
    return ChannelState(
        channel=Channel(row.channel),
        capacity=row.capacity,
        load=row.load + row.overflow,
        status=ChannelStatus(row.status),
        reason=row.reason,
        since=row.since,
        source_at=row.source_at,
        wrap_up_until=row.wrap_up_until,
        next_status=ChannelStatus(row.next_status) if row.next_status else None,
        next_reason=row.next_reason,
    )


# What an Agent is built from, in the order ``_load`` unpacks it.
AGENT_COLUMNS = (
    agents.c.id,
    agents.c.name,
    agents.c.crm_adapter,
    agents.c.crm_agent_id,
    agents.c.acd_agent_id,
    agents.c.profile,
    agents.c.login_failures,
)
# ChannelState's fields in its own order after the first ones.
CHANNEL_COLUMNS = (
    agent_channels.c.agent_id,
    agent_channels.c.channel,
    agent_channels.c.capacity,
    agent_channels.c.load,
    agent_channels.c.overflow,
    agent_channels.c.status,
    agent_channels.c.reason,
    agent_channels.c.since,
    agent_channels.c.source_at,
    agent_channels.c.wrap_up_until,
    agent_channels.c.next_status,
    agent_channels.c.next_reason,
)
# The channels and skills of a page of agents, on PostgreSQL (``SqlAgents._load``).
_IDS = bindparam("ids", type_=ARRAY(String))
_CHANNELS_OF = Prepared(select(*CHANNEL_COLUMNS).where(agent_channels.c.agent_id == any_(_IDS)))
_SKILLS_OF = Prepared(
    select(agent_skills.c.agent_id, agent_skills.c.skill)
    .where(agent_skills.c.agent_id == any_(_IDS))
    .order_by(agent_skills.c.skill)
)
# A page of agents with no filter: ids after the cursor's ("" before the first page).
_AGENT_PAGE = Prepared(
    select(*AGENT_COLUMNS)
    .where(agents.c.id > bindparam("after", type_=String))
    .order_by(agents.c.id)
    .limit(bindparam("page_limit", type_=Integer))
)
CHANNELS = {channel.value: channel for channel in Channel}
STATUSES = {status.value: status for status in ChannelStatus}


def _profile(row: Any) -> Profile:
    return Profile.from_names(
        row.name,
        row.capacity,
        row.wrap_up_seconds,
        row.blocks,
        row.rona_after,
        bool(row.rona_counts_decline),
        bool(row.return_accepted_email),
    )


def _presence_condition(presence: Presence, now: datetime) -> Any:
    """SQL for ``agent_state.presence`` (keep the two in step).

    Each presence is at most one NOT EXISTS beside its EXISTS: a channel that holds work or is
    wrapping up rules out the presences below it, and without work held "logged in" is "some
    channel not logged out" (with none ready either, "some channel not ready"). Stacked
    anti-joins made PostgreSQL judge that one agent matched and sort them all rather than walk
    them in id order up to the page's limit; the holding test is two column tests for the
    same reason (a sum has no statistics).
    """

    def any_channel(*conditions: Any) -> Any:
        return exists().where(agent_channels.c.agent_id == agents.c.id, *conditions)

    holding = or_(agent_channels.c.load > 0, agent_channels.c.overflow > 0)
    wrapping = agent_channels.c.wrap_up_until > now
    ready = agent_channels.c.status == ChannelStatus.READY.value
    signed_in = agent_channels.c.status != ChannelStatus.LOGGED_OUT.value
    if presence == Presence.LOGGED_OUT:
        return not_(any_channel(or_(signed_in, holding)))
    if presence == Presence.BUSY:
        return any_channel(holding)
    if presence == Presence.WRAP_UP:
        return and_(any_channel(wrapping), any_channel(signed_in), not_(any_channel(holding)))
    if presence == Presence.READY:
        return and_(any_channel(ready), not_(any_channel(or_(holding, wrapping))))
    # Signed in, not ready and holding nothing: some channel is not ready.
    not_ready = agent_channels.c.status == ChannelStatus.NOT_READY.value
    return and_(any_channel(not_ready), not_(any_channel(or_(holding, wrapping, ready))))


# Skills as one JSON array per agent, so one agent loads in one statement.
_SKILLS_ARRAY = {"postgresql": func.json_agg, "sqlite": func.json_group_array}


def _one_agent(dialect: str, key: str, for_update: bool) -> Any:
    skills = (
        select(_SKILLS_ARRAY[dialect](agent_skills.c.skill, type_=JSON))
        .where(agent_skills.c.agent_id == agents.c.id)
        .scalar_subquery()
        .label("skills")
    )
    statement = (
        select(
            agents,
            *(agent_channels.c[name] for name in _CHANNEL_COLUMNS),
            skills,
            profiles.c.capacity.label("profile_capacity"),
            profiles.c.wrap_up_seconds.label("profile_wrap_up_seconds"),
            profiles.c.blocks.label("profile_blocks"),
            profiles.c.rona_after.label("profile_rona_after"),
            profiles.c.rona_counts_decline.label("profile_rona_counts_decline"),
            profiles.c.return_accepted_email.label("profile_return_accepted_email"),
        )
        .select_from(
            agents.outerjoin(agent_channels, agent_channels.c.agent_id == agents.c.id).join(
                profiles, profiles.c.name == agents.c.profile
            )
        )
        .where(agents.c[key] == bindparam("b_key"))
        .order_by(agent_channels.c.channel)
    )
    # The agent row only: its channels are changed only by whoever holds it (the lock order).
    return statement.with_for_update(of=agents) if for_update else statement


_CHANNEL_COLUMNS = (
    "channel",
    "capacity",
    "load",
    "overflow",
    "status",
    "reason",
    "since",
    "source_at",
    "wrap_up_until",
    "next_status",
    "next_reason",
)
# Built once (building a statement costs more CPU than running it), by dialect, lookup key and
# whether the agent row is locked.
_ONE_AGENT = {
    (dialect, key, for_update): Prepared(_one_agent(dialect, key, for_update))
    for dialect in _SKILLS_ARRAY
    for key in ("id", "acd_agent_id", "crm_agent_id")
    for for_update in (False, True)
}


def _one_agent_reserving() -> Any:
    """On PostgreSQL, one statement: lock the agent the ACD names (``locked``), then reserve a
    unit of the channel as ``_reserve`` does (``reserved``, after the lock: its agent id is
    the locked row's); the agent's columns as ``_one_agent`` reads them, from before the
    reservation, and ``reserved`` (1 when made, else 0)."""
    locked = (
        select(agents.c.id)
        .where(agents.c.acd_agent_id == bindparam("b_key"))
        .with_for_update()
        .cte("locked")
    )
    reserved = (
        update(agent_channels)
        .where(agent_channels.c.agent_id == select(locked.c.id).scalar_subquery())
        .where(agent_channels.c.channel == bindparam("b_channel"))
        .where(agent_channels.c.load + agent_channels.c.overflow < agent_channels.c.capacity)
        .where(agent_channels.c.status == ChannelStatus.READY.value)
        .where(agent_channels.c.next_status.is_(None))
        .values(load=agent_channels.c.load + 1)
        .returning(agent_channels.c.agent_id)
        .cte("reserved")
    )
    made = select(func.count()).select_from(reserved).scalar_subquery().label("reserved")
    return _one_agent("postgresql", "acd_agent_id", False).add_columns(made)


_ONE_AGENT_RESERVING = Prepared(_one_agent_reserving())


def _reserve(require_ready: bool) -> Any:
    statement = (
        update(agent_channels)
        .where(agent_channels.c.agent_id == bindparam("b_agent_id"))
        .where(agent_channels.c.channel == bindparam("b_channel"))
        .where(agent_channels.c.load + agent_channels.c.overflow < agent_channels.c.capacity)
        .values(load=agent_channels.c.load + 1)
    )
    if require_ready:
        statement = statement.where(
            agent_channels.c.status == ChannelStatus.READY.value,
            agent_channels.c.next_status.is_(None),
        )
    return statement


_RESERVE = {require_ready: Prepared(_reserve(require_ready)) for require_ready in (False, True)}
_OVERFLOWING = agent_channels.c.overflow > 0
# A unit held beyond capacity goes first, so ``load`` stays what capacity allows.
_RELEASE = Prepared(
    update(agent_channels)
    .where(agent_channels.c.agent_id == bindparam("b_agent_id"))
    .where(agent_channels.c.channel == bindparam("b_channel"))
    .where(agent_channels.c.load + agent_channels.c.overflow > 0)
    .values(
        overflow=case(
            (_OVERFLOWING, agent_channels.c.overflow - 1), else_=agent_channels.c.overflow
        ),
        load=case((_OVERFLOWING, agent_channels.c.load), else_=agent_channels.c.load - 1),
        wrap_up_until=func.coalesce(
            bindparam("b_wrap_up_until", type_=agent_channels.c.wrap_up_until.type),
            agent_channels.c.wrap_up_until,
        ),
    )
)
_INSERT_HISTORY = Prepared(insert(agent_state_history))
_PROFILE_BY_NAME = Prepared(select(profiles).where(profiles.c.name == bindparam("b_name")))


class SqlAgents:
    """Agents in SQL; ``for_update`` takes a row lock on PostgreSQL."""

    def __init__(
        self,
        conn: Statements,
        now: Callable[[], datetime],
        profiles_read: dict[str, Profile],
        crm_agent_ids_read: dict[str, str] | None = None,
    ) -> None:
        self._conn = conn
        self._now = now
        self._profiles_read = profiles_read
        # Agent id -> the CRM's id, as this unit of work read them along with an interaction.
        self._crm_agent_ids_read = {} if crm_agent_ids_read is None else crm_agent_ids_read

    async def _load(
        self, condition: Any, *, for_update: bool = False, limit: int | None = None
    ) -> list[Agent]:
        query = select(*AGENT_COLUMNS).where(condition).order_by(agents.c.id)
        if limit is not None:
            query = query.limit(limit)
        if for_update:
            query = query.with_for_update()
        return await self._with_channels_and_skills((await self._conn.execute(query)).all())

    async def _with_channels_and_skills(self, agent_rows: Sequence[Any]) -> list[Agent]:
        """The agents of these rows (``AGENT_COLUMNS``), their channels and skills read in two
        statements."""
        if not agent_rows:
            return []
        ids = [row[0] for row in agent_rows]
        if self._conn.dialect.name == "postgresql":
            # Built once, ids as one array: run on the driver, a page's rows cost no
            # SQLAlchemy result machinery.
            channel_rows = await self._conn.execute(_CHANNELS_OF, {"ids": ids})
            skill_rows = await self._conn.execute(_SKILLS_OF, {"ids": ids})
        else:
            channel_rows = await self._conn.execute(
                select(*CHANNEL_COLUMNS).where(agent_channels.c.agent_id.in_(ids))
            )
            skill_rows = await self._conn.execute(
                select(agent_skills.c.agent_id, agent_skills.c.skill)
                .where(agent_skills.c.agent_id.in_(ids))
                .order_by(agent_skills.c.skill)
            )
        channels: dict[str, dict[Channel, ChannelState]] = {agent_id: {} for agent_id in ids}
        for (
            agent_id,
            channel,
            capacity,
            load,
            overflow,
            status,
            reason,
            since,
            source_at,
            wrap_up_until,
            next_status,
            next_reason,
        ) in channel_rows:
            # Positional and without Enum calls: a page of agents builds hundreds of these.
            channels[agent_id][CHANNELS[channel]] = ChannelState(
                CHANNELS[channel],
                capacity,
                load + overflow,
                STATUSES[status],
                reason,
                since,
                source_at,
                wrap_up_until,
                STATUSES[next_status] if next_status else None,
                next_reason,
            )
        skills: dict[str, list[str]] = {agent_id: [] for agent_id in ids}
        for agent_id, skill in skill_rows:
            skills[agent_id].append(skill)
        return [
            Agent(
                id=agent_id,
                name=name,
                crm_agent_id=crm_agent_id,
                acd_agent_id=acd_agent_id,
                skills=skills[agent_id],
                channels=channels[agent_id],
                profile=profile,
                crm_adapter=crm_adapter,
                login_failures=login_failures,
            )
            for (
                agent_id,
                name,
                crm_adapter,
                crm_agent_id,
                acd_agent_id,
                profile,
                login_failures,
            ) in agent_rows
        ]

    async def _one(self, key: str, value: str, for_update: bool) -> Agent | None:
        """One agent with its channels and skills in one round trip (the hot path's read)."""
        statement = _ONE_AGENT[self._conn.dialect.name, key, for_update]
        return self._agent_of((await self._conn.execute(statement, {"b_key": value})).all())

    def _agent_of(self, rows: list[Any]) -> Agent | None:
        """The agent ``_one_agent``'s rows describe (None for no rows)."""
        if not rows:
            return None
        first = rows[0]
        # The agent's profile came along (it is read next on every hot path): remembered for
        # this transaction, so reading it costs no round trip.
        self._profiles_read[first.profile] = Profile.from_names(
            first.profile,
            first.profile_capacity,
            first.profile_wrap_up_seconds,
            first.profile_blocks,
            first.profile_rona_after,
            bool(first.profile_rona_counts_decline),
            bool(first.profile_return_accepted_email),
        )
        return Agent(
            id=first.id,
            name=first.name,
            crm_agent_id=first.crm_agent_id,
            acd_agent_id=first.acd_agent_id,
            skills=sorted(first.skills or []),
            channels={
                Channel(row.channel): _channel_state(row) for row in rows if row.channel is not None
            },
            profile=first.profile,
            crm_adapter=first.crm_adapter,
            login_failures=first.login_failures,
        )

    async def get_by_acd_id_reserving(
        self, acd_agent_id: str, channel: Channel
    ) -> tuple[Agent | None, bool]:
        """One statement on PostgreSQL (``_one_agent_reserving``); elsewhere the agent locked,
        then the unit reserved."""
        if self._conn.dialect.name != "postgresql":
            agent = await self._one("acd_agent_id", acd_agent_id, True)
            return agent, agent is not None and await self.reserve(agent.id, channel)
        rows = (
            await self._conn.execute(
                _ONE_AGENT_RESERVING, {"b_key": acd_agent_id, "b_channel": channel.value}
            )
        ).all()
        return self._agent_of(rows), bool(rows) and rows[0].reserved == 1

    async def crm_agent_id_of(self, agent_id: str) -> str | None:
        """The CRM's id of the agent: no round trip when this unit of work read it already."""
        if agent_id in self._crm_agent_ids_read:
            return self._crm_agent_ids_read[agent_id]
        agent = await self.get(agent_id)
        return None if agent is None else agent.crm_agent_id

    async def get(self, agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by Harmony's id."""
        return await self._one("id", agent_id, for_update)

    async def get_by_acd_id(self, acd_agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by the id the ACD uses."""
        return await self._one("acd_agent_id", acd_agent_id, for_update)

    async def get_by_crm_id(self, crm_agent_id: str, *, for_update: bool = False) -> Agent | None:
        """Load an agent by the id the CRM uses."""
        return await self._one("crm_agent_id", crm_agent_id, for_update)

    async def search(
        self, flt: AgentFilter, now: datetime, limit: int, cursor: str | None
    ) -> Page[Agent]:
        """Filters become EXISTS subqueries on the channel and skill indexes."""
        after = read_agent_cursor(cursor) if cursor is not None else ""
        filters: list[Any] = []
        if flt.profile is not None:
            filters.append(agents.c.profile == flt.profile)
        if flt.channel is not None or flt.status is not None:
            channel_conditions = [agent_channels.c.agent_id == agents.c.id]
            if flt.channel is not None:
                channel_conditions.append(agent_channels.c.channel == flt.channel.value)
            if flt.status is not None:
                channel_conditions.append(agent_channels.c.status == flt.status.value)
            filters.append(exists().where(*channel_conditions))
        for skill in flt.skills:
            filters.append(
                exists().where(
                    agent_skills.c.agent_id == agents.c.id, agent_skills.c.skill == skill
                )
            )
        if flt.presence is not None:
            filters.append(_presence_condition(flt.presence, now))
        if filters:
            found = await self._load(and_(agents.c.id > after, *filters), limit=limit + 1)
        else:
            # No filter: the page's statement is built once (the operators' most common read).
            rows = await self._conn.execute(_AGENT_PAGE, {"after": after, "page_limit": limit + 1})
            found = await self._with_channels_and_skills(rows.all())
        items = found[:limit]
        next_cursor = agent_cursor(items[-1].id) if len(found) > limit else None
        return Page(items, next_cursor)

    async def upsert(
        self, agent: Agent, capacity_override: dict[Channel, int]
    ) -> list[ChannelState]:
        """Create or update, keeping states and loads; capacity = override or profile's.

        Locks in the unit of work's order: the profile FOR SHARE (a concurrent change of that
        profile waits, or is waited for), the agent row (written by one INSERT ... ON CONFLICT,
        so concurrent first writes of one agent queue up instead of failing), then its
        channels in name order.
        """
        now = self._now()
        profile_row = (
            await self._conn.execute(
                select(profiles).where(profiles.c.name == agent.profile).with_for_update(read=True)
            )
        ).first()
        if profile_row is None:
            raise ValidationFailed(
                f"profile: unknown profile '{agent.profile}'", code="unknown_profile"
            )
        profile = _profile(profile_row)
        await self._refuse_taken_ids(agent)
        values = {
            "name": agent.name,
            "crm_adapter": agent.crm_adapter,
            "crm_agent_id": agent.crm_agent_id,
            "acd_agent_id": agent.acd_agent_id,
            "profile": agent.profile,
            "updated_at": now,
        }
        try:
            await self._conn.execute(
                insert_for(self._conn, agents)
                .values(id=agent.id, created_at=now, login_failures=0, **values)
                .on_conflict_do_update(index_elements=[agents.c.id], set_=values)
            )
        except IntegrityError as exc:
            # A transaction the check above could not see yet inserted one of these ids and
            # committed first: another agent (the check, run again, refuses naming it) or this
            # same agent put twice at once (run again, it is an update). The transaction is
            # aborted now, so the use case runs again in a fresh one.
            raise TryAgain(
                f"crm_agent_id '{agent.crm_agent_id}' or acd_agent_id '{agent.acd_agent_id}' "
                "was stored meanwhile by another transaction"
            ) from exc
        await self._conn.execute(delete(agent_skills).where(agent_skills.c.agent_id == agent.id))
        if agent.skills:
            await self._conn.execute(
                insert(agent_skills), [{"agent_id": agent.id, "skill": s} for s in agent.skills]
            )
        current = {
            Channel(row.channel): row
            for row in await self._conn.execute(
                select(agent_channels)
                .where(agent_channels.c.agent_id == agent.id)
                .order_by(agent_channels.c.channel)
                .with_for_update()
            )
        }
        changed: list[ChannelState] = []
        for channel in sorted(Channel):
            override = capacity_override.get(channel)
            wanted = override if override is not None else profile.capacity.get(channel, 0)
            row = current.get(channel)
            if row is None:
                await self._conn.execute(
                    insert(agent_channels).values(
                        agent_id=agent.id,
                        channel=channel.value,
                        capacity=wanted,
                        load=0,
                        capacity_override=override,
                        status=ChannelStatus.LOGGED_OUT.value,
                    )
                )
                changed.append(ChannelState(channel, wanted, 0))
                continue
            if row.load > wanted:
                raise Conflict(
                    f"capacity.{channel.value}: {wanted} is below the {row.load} "
                    "interaction(s) the agent holds now",
                    code="capacity_below_load",
                )
            await self._conn.execute(
                update(agent_channels)
                .where(agent_channels.c.agent_id == agent.id)
                .where(agent_channels.c.channel == channel.value)
                .values(capacity=wanted, capacity_override=override)
            )
            if row.capacity != wanted:
                changed.append(replace(_channel_state(row), capacity=wanted))
        return changed

    async def _refuse_taken_ids(self, agent: Agent) -> None:
        """Conflict (409) naming the agent that already has this CRM or ACD id."""
        clash = (
            await self._conn.execute(
                select(agents.c.id)
                .where(agents.c.id != agent.id)
                .where(
                    or_(
                        agents.c.crm_agent_id == agent.crm_agent_id,
                        agents.c.acd_agent_id == agent.acd_agent_id,
                    )
                )
            )
        ).first()
        if clash is not None:
            raise Conflict(
                f"crm_agent_id '{agent.crm_agent_id}' or acd_agent_id '{agent.acd_agent_id}' "
                f"already belongs to agent {clash.id}",
                code="agent_id_taken",
            )

    async def save_channel(self, agent_id: str, state: ChannelState) -> None:
        """Store status, reason, since, source time and wrap-up; the load is not touched."""
        await self._conn.execute(
            update(agent_channels)
            .where(agent_channels.c.agent_id == agent_id)
            .where(agent_channels.c.channel == state.channel.value)
            .values(
                status=state.status.value,
                reason=state.reason,
                since=state.since,
                source_at=state.source_at,
                wrap_up_until=state.wrap_up_until,
                next_status=state.next_status.value if state.next_status else None,
                next_reason=state.next_reason,
            )
        )

    async def reserve(self, agent_id: str, channel: Channel, *, require_ready: bool = True) -> bool:
        """One conditional UPDATE: atomic across transactions and replicas.

        Work held beyond capacity (``overflow``) counts: no unit is free until it ends.
        """
        result = await self._conn.execute(
            _RESERVE[require_ready], {"b_agent_id": agent_id, "b_channel": channel.value}
        )
        return bool(result.rowcount == 1)

    async def hold_over_capacity(self, agent_id: str, channel: Channel) -> None:
        """Count one unit a peer reports beyond capacity, outside the CHECKed ``load``."""
        await self._conn.execute(
            update(agent_channels)
            .where(agent_channels.c.agent_id == agent_id)
            .where(agent_channels.c.channel == channel.value)
            .values(overflow=agent_channels.c.overflow + 1)
        )

    async def release(
        self, agent_id: str, channel: Channel, wrap_up_until: datetime | None = None
    ) -> None:
        """Give one unit back, never below zero (one held beyond capacity goes first); start
        wrap-up if given. Written with the unit of work's next write (``update_later``)."""
        await self._conn.update_later(
            _RELEASE,
            {"b_agent_id": agent_id, "b_channel": channel.value, "b_wrap_up_until": wrap_up_until},
        )

    async def count_login_failure(self, agent_id: str) -> None:
        """Add one to the agent's login failures."""
        await self._conn.execute(
            update(agents)
            .where(agents.c.id == agent_id)
            .values(login_failures=agents.c.login_failures + 1)
        )

    async def append_history(self, entries: list[AgentStateEntry]) -> None:
        """Append lines in one INSERT, sent with the unit of work's next write (nothing reads
        history back within one)."""
        if not entries:
            return
        await self._conn.insert_later(
            _INSERT_HISTORY,
            [
                {
                    "agent_id": e.agent_id,
                    "at": e.at,
                    "channel": e.channel.value if e.channel else None,
                    "source": e.source,
                    "source_at": e.source_at,
                    "sequence": e.sequence,
                    "event": e.event,
                    "outcome": e.outcome.value,
                    "status": e.status.value if e.status else None,
                    "reason": e.reason,
                    "load": e.load,
                    "capacity": e.capacity,
                    "wrap_up_until": e.wrap_up_until,
                    "detail": e.detail,
                }
                for e in entries
            ],
        )

    async def history(self, agent_id: str, limit: int, cursor: str | None) -> Page[AgentStateEntry]:
        """Keyset on the history id, oldest first."""
        query = select(agent_state_history).where(agent_state_history.c.agent_id == agent_id)
        if cursor is not None:
            query = query.where(agent_state_history.c.id > read_history_cursor(cursor))
        rows = (
            await self._conn.execute(query.order_by(agent_state_history.c.id).limit(limit + 1))
        ).all()
        items = [
            AgentStateEntry(
                agent_id=row.agent_id,
                at=row.at,
                channel=Channel(row.channel) if row.channel else None,
                source=row.source,
                event=row.event,
                outcome=StateOutcome(row.outcome),
                status=ChannelStatus(row.status) if row.status else None,
                reason=row.reason,
                load=row.load,
                capacity=row.capacity,
                wrap_up_until=row.wrap_up_until,
                source_at=row.source_at,
                sequence=row.sequence,
                detail=dict(row.detail),
            )
            for row in rows[:limit]
        ]
        next_cursor = history_cursor(rows[limit - 1].id) if len(rows) > limit else None
        return Page(items, next_cursor)

    async def last_sequence(self, agent_id: str, source: str) -> int | None:
        """The highest sequence applied from ``source``."""
        value = (
            await self._conn.execute(
                select(agent_sequences.c.sequence)
                .where(agent_sequences.c.agent_id == agent_id)
                .where(agent_sequences.c.source == source)
            )
        ).scalar()
        return int(value) if value is not None else None

    async def set_sequence(self, agent_id: str, source: str, sequence: int) -> None:
        """Upsert the highest sequence applied from ``source``."""
        await self._conn.execute(
            insert_for(self._conn, agent_sequences)
            .values(agent_id=agent_id, source=source, sequence=sequence)
            .on_conflict_do_update(
                index_elements=[agent_sequences.c.agent_id, agent_sequences.c.source],
                set_={"sequence": sequence},
            )
        )

    async def add_mirror(
        self,
        message_id: str,
        agent_id: str,
        channel: Channel,
        target: TargetKind,
        status: ChannelStatus,
        reason: str | None,
        at: datetime,
    ) -> None:
        """Remember what Harmony told ``target``."""
        await self._conn.execute(
            insert(agent_mirrors).values(
                id=message_id,
                agent_id=agent_id,
                channel=channel.value,
                target_kind=target.value,
                status=status.value,
                reason=reason,
                sent_at=at,
            )
        )

    async def take_echo(
        self,
        agent_id: str,
        channel: Channel,
        source: TargetKind,
        status: ChannelStatus,
        reason: str | None,
        since: datetime,
        echo_of: str | None,
        at: datetime,
    ) -> bool:
        """Consume the oldest unconsumed matching mirror (or the one named by ``echo_of``)."""
        query = (
            select(agent_mirrors.c.id)
            .where(agent_mirrors.c.agent_id == agent_id)
            .where(agent_mirrors.c.channel == channel.value)
            .where(agent_mirrors.c.target_kind == source.value)
            .where(agent_mirrors.c.echoed_at.is_(None))
        )
        # An echo repeats what was mirrored; one naming its mirror may arrive late.
        query = query.where(
            agent_mirrors.c.status == status.value,
            (agent_mirrors.c.reason == reason)
            if reason is not None
            else agent_mirrors.c.reason.is_(None),
            agent_mirrors.c.id == echo_of
            if echo_of is not None
            else agent_mirrors.c.sent_at >= since,
        )
        found = (await self._conn.execute(query.order_by(agent_mirrors.c.sent_at).limit(1))).first()
        if found is None:
            return False
        await self._conn.execute(
            update(agent_mirrors).where(agent_mirrors.c.id == found.id).values(echoed_at=at)
        )
        return True

    async def voice_call(self, acd_adapter: str, call_id: str) -> VoiceCall | None:
        """A call Harmony heard of."""
        row = (
            await self._conn.execute(
                select(voice_calls)
                .where(voice_calls.c.acd_adapter == acd_adapter)
                .where(voice_calls.c.call_id == call_id)
            )
        ).first()
        if row is None:
            return None
        return VoiceCall(row.acd_adapter, row.call_id, row.agent_id, row.started_at, row.ended_at)

    async def save_voice_call(self, call: VoiceCall) -> None:
        """Insert the call or update its start and end."""
        values = {
            "agent_id": call.agent_id,
            "started_at": call.started_at,
            "ended_at": call.ended_at,
        }
        await self._conn.execute(
            insert_for(self._conn, voice_calls)
            .values(acd_adapter=call.acd_adapter, call_id=call.call_id, **values)
            .on_conflict_do_update(
                index_elements=[voice_calls.c.acd_adapter, voice_calls.c.call_id], set_=values
            )
        )


class SqlProfiles:
    """Channel profiles in SQL."""

    def __init__(
        self, conn: Statements, now: Callable[[], datetime], read: dict[str, Profile]
    ) -> None:
        self._conn = conn
        self._now = now
        # Profiles this transaction has read already (loading an agent reads its profile).
        self._read = read

    async def get(self, name: str) -> Profile | None:
        """Load a profile by name (once per transaction)."""
        if name in self._read:
            return self._read[name]
        row = (await self._conn.execute(_PROFILE_BY_NAME, {"b_name": name})).first()
        if row is None:
            return None
        self._read[name] = _profile(row)
        return self._read[name]

    async def all(self) -> list[Profile]:
        """Every profile by name."""
        rows = await self._conn.execute(select(profiles).order_by(profiles.c.name))
        return [_profile(row) for row in rows]

    async def upsert(self, profile: Profile) -> list[tuple[str, ChannelState]]:
        """Replace the profile and carry its capacities to its agents' channels.

        Locks in the unit of work's order: the profile row (one INSERT ... ON CONFLICT), its
        agents in id order, then their channels by (agent, channel name); only then does
        anything change.
        """
        now = self._now()
        values = {
            **profile.as_names(),
            "rona_after": profile.rona_after,
            "rona_counts_decline": profile.rona_counts_decline,
            "return_accepted_email": profile.return_accepted_email,
            "updated_at": now,
        }
        self._read[profile.name] = profile
        await self._conn.execute(
            insert_for(self._conn, profiles)
            .values(name=profile.name, created_at=now, **values)
            .on_conflict_do_update(index_elements=[profiles.c.name], set_=values)
        )
        members = (
            (
                await self._conn.execute(
                    select(agents.c.id)
                    .where(agents.c.profile == profile.name)
                    .order_by(agents.c.id)
                    .with_for_update()
                )
            )
            .scalars()
            .all()
        )
        if not members:
            return []
        rows = (
            await self._conn.execute(
                select(agent_channels)
                .where(agent_channels.c.agent_id.in_(members))
                .where(agent_channels.c.capacity_override.is_(None))
                .order_by(agent_channels.c.agent_id, agent_channels.c.channel)
                .with_for_update()
            )
        ).all()
        moving: dict[Channel, list[str]] = {}
        changed: list[tuple[str, ChannelState]] = []
        for row in rows:
            channel = Channel(row.channel)
            wanted = profile.capacity.get(channel, 0)
            if row.load > wanted:
                raise Conflict(
                    f"capacity.{channel.value}: {wanted} is below the {row.load} "
                    f"interaction(s) agent {row.agent_id} holds now",
                    code="capacity_below_load",
                )
            if row.capacity != wanted:
                moving.setdefault(channel, []).append(row.agent_id)
                changed.append((row.agent_id, replace(_channel_state(row), capacity=wanted)))
        for channel, agent_ids in sorted(moving.items()):
            await self._conn.execute(
                update(agent_channels)
                .where(agent_channels.c.channel == channel.value)
                .where(agent_channels.c.agent_id.in_(agent_ids))
                .values(capacity=profile.capacity.get(channel, 0))
            )
        return changed
