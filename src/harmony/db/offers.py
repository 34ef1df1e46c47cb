"""Offers of work to agents in the ``offers`` table (the port: ``routing.ports.OfferRepository``).

An offer is written in the transaction that reserves the agent's unit of capacity for it, and
decided in the one that gives the unit back (or keeps it: accepted), so the live offers and the
agents' loads agree. A partial unique index keeps one live offer per interaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, literal_column, select, update

from harmony.db.execution import Prepared, Statements
from harmony.db.tables import agents, offers
from harmony.routing.model import LIVE_OFFERS, Channel, Offer, OfferStatus

__all__ = ["SqlOffers"]

# Literal values, not an expanding IN list: statements run on the driver need fixed SQL, and
# PostgreSQL then matches the partial indexes' predicate.
_LIVE: list[Any] = [literal_column(f"'{status.value}'") for status in sorted(LIVE_OFFERS)]
_INSERT = Prepared(insert(offers))
_DECIDE = Prepared(
    update(offers)
    .where(offers.c.interaction_id == bindparam("b_interaction_id"), offers.c.status.in_(_LIVE))
    .values(
        status=bindparam("b_status"),
        decided_at=bindparam("b_at", type_=offers.c.decided_at.type),
        reason=bindparam("b_reason"),
    )
)
_LIVE_OF_INTERACTION = Prepared(
    select(offers).where(
        offers.c.interaction_id == bindparam("b_interaction_id"), offers.c.status.in_(_LIVE)
    )
)
_OF_INTERACTION = Prepared(
    select(offers)
    .where(offers.c.interaction_id == bindparam("b_interaction_id"))
    .order_by(offers.c.offered_at, offers.c.id)
)
_AGENTS_TRIED = Prepared(
    select(agents.c.acd_agent_id, func.min(offers.c.offered_at).label("first"))
    .select_from(offers.join(agents, agents.c.id == offers.c.agent_id))
    .where(offers.c.interaction_id == bindparam("b_interaction_id"))
    .group_by(agents.c.acd_agent_id)
    .order_by(func.min(offers.c.offered_at), agents.c.acd_agent_id)
)
_LATEST_OF_AGENT = Prepared(
    select(offers.c.status)
    .where(
        offers.c.agent_id == bindparam("b_agent_id"),
        offers.c.channel == bindparam("b_channel"),
        # Offers still pending are neither taken nor missed yet (and have no decision time).
        offers.c.decided_at.is_not(None),
    )
    # In the order they ended: an offer taken after an earlier one was made breaks the run.
    .order_by(offers.c.decided_at.desc(), offers.c.offered_at.desc(), offers.c.id.desc())
    .limit(bindparam("b_limit"))
)
_LIVE_OF_AGENT = Prepared(
    select(offers)
    .where(
        offers.c.agent_id == bindparam("b_agent_id"),
        offers.c.channel == bindparam("b_channel"),
        offers.c.status.in_(_LIVE),
    )
    .order_by(offers.c.offered_at, offers.c.id)
)


def _offer(row: Any) -> Offer:
    return Offer(
        id=row.id,
        interaction_id=row.interaction_id,
        agent_id=row.agent_id,
        channel=Channel(row.channel),
        status=OfferStatus(row.status),
        offered_at=row.offered_at,
        expires_at=row.expires_at,
        decided_at=row.decided_at,
        reason=row.reason,
    )


class SqlOffers:
    """``OfferRepository`` on the unit of work's statements."""

    def __init__(self, conn: Statements) -> None:
        self._conn = conn

    async def add(self, offer: Offer) -> None:
        """Insert a new offer with the unit of work's next write."""
        await self._conn.insert_later(
            _INSERT,
            [
                {
                    "id": offer.id,
                    "interaction_id": offer.interaction_id,
                    "agent_id": offer.agent_id,
                    "channel": offer.channel.value,
                    "status": offer.status.value,
                    "offered_at": offer.offered_at,
                    "expires_at": offer.expires_at,
                    "decided_at": offer.decided_at,
                    "reason": offer.reason,
                }
            ],
        )

    async def decide(
        self,
        interaction_id: str,
        status: OfferStatus,
        at: datetime,
        reason: str | None = None,
    ) -> None:
        """Record the outcome of the interaction's live offer with the unit of work's next
        write."""
        await self._conn.update_later(
            _DECIDE,
            {
                "b_interaction_id": interaction_id,
                "b_status": status.value,
                "b_at": at,
                "b_reason": None if reason is None else reason[:200],
            },
        )

    async def live(self, interaction_id: str) -> Offer | None:
        """The interaction's live offer, if any."""
        row = (
            await self._conn.execute(_LIVE_OF_INTERACTION, {"b_interaction_id": interaction_id})
        ).first()
        return _offer(row) if row else None

    async def of_interaction(self, interaction_id: str) -> list[Offer]:
        """Every offer of the interaction, oldest first."""
        rows = await self._conn.execute(_OF_INTERACTION, {"b_interaction_id": interaction_id})
        return [_offer(row) for row in rows]

    async def agents_tried(self, interaction_id: str) -> list[str]:
        """ACD ids of the agents offered the interaction, by their first offer."""
        rows = await self._conn.execute(_AGENTS_TRIED, {"b_interaction_id": interaction_id})
        return [row.acd_agent_id for row in rows]

    async def misses_in_a_row(
        self, agent_id: str, channel: Channel, *, up_to: int, declines_count: bool
    ) -> int:
        """Leading misses among the agent's latest ``up_to`` offers on the channel."""
        missed = {OfferStatus.TIMED_OUT.value}
        if declines_count:
            missed.add(OfferStatus.DECLINED.value)
        rows = await self._conn.execute(
            _LATEST_OF_AGENT,
            {"b_agent_id": agent_id, "b_channel": channel.value, "b_limit": up_to},
        )
        count = 0
        for row in rows:
            if row.status not in missed:
                break
            count += 1
        return count

    async def live_of_agent(self, agent_id: str, channel: Channel) -> list[Offer]:
        """The agent's live offers on ``channel``, oldest first."""
        rows = await self._conn.execute(
            _LIVE_OF_AGENT, {"b_agent_id": agent_id, "b_channel": channel.value}
        )
        return [_offer(row) for row in rows]
