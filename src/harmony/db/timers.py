"""Durable timers in the ``scheduled`` table (the port: ``routing.ports.TimerRepository``).

A timer is armed in the transaction of the state that needs it and removed in the transaction of
what firing it did, so a timer fires at most once for what it was armed for: the scheduler that
claimed it removes it under its claim token, which a replacement or a later claim changes. A
timer claimed by a scheduler that died is claimed again once its lease runs out.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, literal, null, or_, select, update

from harmony.db.dialect import DIALECT_INSERTS
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
_ARMED_COLUMNS = ("id", "kind", "subject", "guard", "detail", "due_at", "created_at")
_ARMED_VALUES: dict[str, Any] = {
    **{name: bindparam(f"t_{name}", type_=scheduled.c[name].type) for name in _ARMED_COLUMNS},
    "attempts": literal(0),
}


def _upsert(dialect_insert: Any) -> Prepared:
    """Arm a timer, replacing the one of its kind for its subject under a new id and with no
    claim: a scheduler holding the old one can no longer remove it (``finish``)."""
    statement = dialect_insert(scheduled).values(_ARMED_VALUES)
    excluded = statement.excluded
    return Prepared(
        statement.on_conflict_do_update(
            index_elements=[scheduled.c.kind, scheduled.c.subject],
            set_={
                "id": excluded.id,
                "guard": excluded.guard,
                "detail": excluded.detail,
                "due_at": excluded.due_at,
                "created_at": excluded.created_at,
                "attempts": literal(0),
                "claim_token": null(),
                "claimed_by": null(),
                "claimed_until": null(),
            },
        ),
        carried_whole=True,
    )


_ARM = {dialect: _upsert(dialect_insert) for dialect, dialect_insert in DIALECT_INSERTS.items()}
_ARM_FIRST = Prepared(
    insert(scheduled).values(_ARMED_VALUES),
    carried_whole=True,
)


def _claimed(row: Any, token: str) -> ClaimedTimer:
    timer = Timer(row.kind, row.subject, row.due_at, row.guard, dict(row.detail))
    return ClaimedTimer(row.id, timer, token, row.attempts)


class SqlTimers:
    """``TimerRepository`` on the unit of work's statements."""

    def __init__(self, conn: Statements) -> None:
        self._conn = conn
        # (kind, subject) of the timers this unit of work wrote with its next write: a second
        # change to one of them is sent at once, after the first (the next write's parts run
        # in no set order, and must not touch one row twice).
        self._written_later: set[tuple[str, str]] = set()
        self._firing: ClaimedTimer | None = None
        # What the handler of the timer being fired scheduled next for its kind and subject:
        # a timer, or None for nothing (disarmed).
        self._after_firing: tuple[Timer, datetime] | None = None

    def _is_firing(self, kind: str, subject: str) -> bool:
        firing = self._firing
        return firing is not None and (firing.timer.kind, firing.timer.subject) == (kind, subject)

    async def _write(self, key: tuple[str, str], statement: Prepared, params: Any) -> None:
        if key in self._written_later:
            await self._conn.execute(statement, params)
            return
        self._written_later.add(key)
        await self._conn.update_later(statement, params)

    @staticmethod
    def _values(timer: Timer, now: datetime) -> dict[str, Any]:
        return {
            "t_id": f"tmr_{random_hex()}",
            "t_kind": timer.kind,
            "t_subject": timer.subject,
            "t_guard": timer.guard[:200],
            "t_detail": timer.detail,
            "t_due_at": timer.due_at,
            "t_created_at": now,
        }

    async def arm(self, timer: Timer, now: datetime) -> None:
        """Schedule ``timer``, replacing (with a new id, so an old claim cannot remove it) any
        timer of its kind for its subject; written with the unit of work's next write."""
        if self._is_firing(timer.kind, timer.subject):
            self._after_firing = (timer, now)
            return
        key = (timer.kind, timer.subject)
        await self._write(key, _ARM[self._conn.dialect.name], self._values(timer, now))

    async def arm_first(self, timer: Timer, now: datetime) -> None:
        """Schedule the first timer of its kind for a new subject, as a plain insert."""
        self._written_later.add((timer.kind, timer.subject))
        await self._conn.update_later(_ARM_FIRST, self._values(timer, now))

    async def disarm(self, kind: str, subject: str) -> None:
        """Remove the timer of ``kind`` for ``subject``, if any."""
        if self._is_firing(kind, subject):
            self._after_firing = None
            return
        await self._write((kind, subject), _DISARM, {"b_kind": kind, "b_subject": subject})

    def firing(self, claimed: ClaimedTimer) -> None:
        """Hold back what the handler of ``claimed`` arms for its kind and subject until
        ``finish`` removed it."""
        self._firing = claimed
        self._after_firing = None

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
        """Remove a fired timer still held under ``claim_token``; then arm what its handler
        scheduled next for the same kind and subject."""
        result = await self._conn.execute(_FINISH, {"b_id": timer_id, "b_token": claim_token})
        if result.rowcount != 1:
            return False
        firing, following = self._firing, self._after_firing
        self._firing = self._after_firing = None
        if firing is not None and firing.id == timer_id and following is not None:
            await self.arm_first(*following)
        return True

    async def pending(self) -> list[Timer]:
        """Every timer still to fire, earliest first."""
        rows = await self._conn.execute(
            select(scheduled).order_by(scheduled.c.due_at, scheduled.c.id)
        )
        return [Timer(r.kind, r.subject, r.due_at, r.guard, dict(r.detail)) for r in rows]
