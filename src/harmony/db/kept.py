"""Connections kept checked out between units of work, on PostgreSQL.

A unit of work that checks a connection out of SQLAlchemy's pool, wraps it, and gives it back
pays for it each time: greenlet switches, a ``Connection`` and an ``AsyncConnection`` with
their event dispatch, the pool's checkout and checkin, the driver connection looked up through
a greenlet again. About 85 µs of CPU together, against 50 µs for the one statement that most
units of work run; a routed interaction runs about seven of them.

So units of work on asyncpg take one of a few connections this process keeps checked out,
wrapped once: at most as many as the pool keeps (the rest, taken under a burst, are given back to
the pool at once, which closes them as it closes its overflow). A connection is kept only when it
comes back idle and healthy: not closed, not invalidated (a driver error that found it dead
invalidates it), in no transaction. One that is not goes back to the pool, which discards it;
the next unit of work connects anew, as it would have with the pool alone.

Units of work on a kept connection start and end their transactions on the driver (see
``Statements.begin_now`` and ``commit_now``) unless a statement went through SQLAlchemy,
which then commits its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["KeptConnection", "KeptConnections"]


@dataclass(slots=True)
class KeptConnection:
    """A pooled connection checked out once: SQLAlchemy's wrapper and the asyncpg adapter under
    it."""

    conn: AsyncConnection
    adapted: Any

    def reusable(self) -> bool:
        """Open, healthy and idle: fit for the next unit of work as it is."""
        conn = self.conn
        return (
            not conn.closed
            and not conn.invalidated
            and not conn.in_transaction()
            and self.adapted._transaction is None
        )


class KeptConnections:
    """The connections units of work take and give back (most recently used first)."""

    def __init__(self, engine: AsyncEngine, keep: int) -> None:
        self._engine = engine
        self._keep = keep
        self._idle: list[KeptConnection] = []
        self._closed = False

    @property
    def idle(self) -> int:
        """How many connections wait to be taken."""
        return len(self._idle)

    async def take(self) -> KeptConnection:
        """An idle kept connection, else a new one from the pool (waiting, as the pool does,
        while every connection it may open is out)."""
        while self._idle:
            kept = self._idle.pop()
            if kept.reusable():
                return kept
            await kept.conn.close()
        conn = await self._engine.connect()
        try:
            fairy = await conn.get_raw_connection()
        except BaseException:
            await conn.close()
            raise
        return KeptConnection(conn, fairy.dbapi_connection)

    async def give_back(self, kept: KeptConnection) -> None:
        """Keep ``kept`` for the next unit of work if it is fit and there is room; otherwise
        return it to the pool."""
        if not self._closed and len(self._idle) < self._keep and kept.reusable():
            self._idle.append(kept)
            return
        await kept.conn.close()

    async def drop(self, kept: KeptConnection) -> None:
        """Return ``kept`` to the pool whatever its state (a caller that cannot vouch for it)."""
        await kept.conn.close()

    async def close(self) -> None:
        """Return every idle connection to the pool and keep none from now on."""
        self._closed = True
        idle, self._idle = self._idle, []
        for kept in idle:
            await kept.conn.close()
