"""Durable timers in the ``scheduled`` table (the port: ``routing.ports.TimerRepository``).

A timer is armed in the transaction of the state that needs it and removed in the transaction of
what firing it did, so a timer fires at most once for what it was armed for: the scheduler that
claimed it removes it under its claim token, which a replacement or a later claim changes. A
timer claimed by a scheduler that died is claimed again once its lease runs out.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, update

from harmony.db.dialect import insert_for
from harmony.db.execution import Prepared, Statements
from harmony.db.tables import scheduled
from harmony.routing.ids import random_hex
from harmony.routing.ports import ClaimedTimer, Timer

__all__ = ["SqlTimers"]

_DUE = and_(
    scheduled.c.due_at <= bindparam("now"),
    or_(scheduled.c.claimed_until.is_(None), scheduled.c.claimed_until < bindparam("now")),
)
_LEASE_VALUES = {
    "claim_token": bindparam("token"),
    "claimed_by": bindparam("claimer"),
    "claimed_until": bindparam("lease_until"),
    "attempts": scheduled.c.attempts + 1,
}
_RETURNED = (
    scheduled.c.id,
    scheduled.c.kind,
    scheduled.c.subject,
    scheduled.c.guard,
    scheduled.c.detail,
    scheduled.c.due_at,
    scheduled.c.attempts,
)

# PostgreSQL: pick and lease in one statement, skipping rows another scheduler is claiming.
_picked = (
    select(scheduled.c.id)
    .where(_DUE)
    .order_by(scheduled.c.due_at, scheduled.c.id)
    .limit(bindparam("claim_limit"))
    .with_for_update(skip_locked=True)
    .cte("picked")
)
_CLAIM_PG = Prepared(
    update(scheduled)
    .where(scheduled.c.id == _picked.c.id)
    .values(_LEASE_VALUES)
    .returning(*_RETURNED)
)
# SQLite: one writer at a time, so a select then an update of what it found.
_DUE_SQLITE = Prepared(
    select(scheduled.c.id)
    .where(_DUE)
    .order_by(scheduled.c.due_at, scheduled.c.id)
    .limit(bindparam("claim_limit"))
)
_LEASE_SQLITE = (
    update(scheduled)
    .where(scheduled.c.id.in_(bindparam("ids", expanding=True)))
    .values(_LEASE_VALUES)
    .returning(*_RETURNED)
)
_FINISH = Prepared(
    delete(scheduled).where(
        scheduled.c.id == bindparam("b_id"), scheduled.c.claim_token == bindparam("b_token")
    )
)
_DISARM = Prepared(
    delete(scheduled).where(
        scheduled.c.kind == bindparam("b_kind"), scheduled.c.subject == bindparam("b_subject")
    )
)


def _claimed(row: Any, token: str) -> ClaimedTimer:
    timer = Timer(row.kind, row.subject, row.due_at, row.guard, dict(row.detail))
    return ClaimedTimer(row.id, timer, token, row.attempts)


class SqlTimers:
    """``TimerRepository`` on the unit of work's statements."""

    def __init__(self, conn: Statements) -> None:
        self._conn = conn

    async def arm(self, timer: Timer, now: datetime) -> None:
        """Schedule ``timer``, replacing (with a new id, so an old claim cannot remove it) any
        timer of its kind for its subject."""
        values = {
            "id": f"tmr_{random_hex()}",
            "guard": timer.guard[:200],
            "detail": timer.detail,
            "due_at": timer.due_at,
            "created_at": now,
            "attempts": 0,
            "claim_token": None,
            "claimed_by": None,
            "claimed_until": None,
        }
        statement = insert_for(self._conn, scheduled).values(
            kind=timer.kind, subject=timer.subject, **values
        )
        await self._conn.execute(
            statement.on_conflict_do_update(
                index_elements=[scheduled.c.kind, scheduled.c.subject], set_=values
            )
        )

    async def disarm(self, kind: str, subject: str) -> None:
        """Remove the timer of ``kind`` for ``subject``, if any."""
        await self._conn.execute(_DISARM, {"b_kind": kind, "b_subject": subject})

    async def claim_due(
        self, now: datetime, limit: int, lease_seconds: float, claimer: str
    ) -> list[ClaimedTimer]:
        """Lease due timers under a new claim token (see the port)."""
        token = random_hex()
        params = {
            "now": now,
            "claim_limit": limit,
            "token": token,
            "claimer": claimer[:200],
            "lease_until": now + timedelta(seconds=lease_seconds),
        }
        if self._conn.dialect.name == "postgresql":
            rows = (await self._conn.execute(_CLAIM_PG, params)).all()
        else:
            ids = [row.id for row in (await self._conn.execute(_DUE_SQLITE, params)).all()]
            if not ids:
                return []
            rows = (await self._conn.execute(_LEASE_SQLITE, {**params, "ids": ids})).all()
        return [_claimed(row, token) for row in sorted(rows, key=lambda r: (r.due_at, r.id))]

    async def finish(self, timer_id: str, claim_token: str) -> bool:
        """Remove a fired timer still held under ``claim_token``."""
        result = await self._conn.execute(_FINISH, {"b_id": timer_id, "b_token": claim_token})
        return bool(result.rowcount == 1)

    async def pending(self) -> list[Timer]:
        """Every timer still to fire, earliest first."""
        rows = await self._conn.execute(
            select(scheduled).order_by(scheduled.c.due_at, scheduled.c.id)
        )
        return [Timer(r.kind, r.subject, r.due_at, r.guard, dict(r.detail)) for r in rows]
