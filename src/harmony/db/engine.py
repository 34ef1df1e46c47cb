"""The database: engine set-up per dialect, units of work, health check, migrations."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from harmony.db.kept import KeptConnections
from harmony.db.recent import RecentQueues
from harmony.db.uow import Handoff, SqlUnitOfWork

REPO_MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"

# PostgreSQL advisory lock keys (64-bit, app-wide): replicas starting together on one database
# take turns to migrate and to apply the seed instead of racing through the same DDL and rows.
MIGRATION_LOCK = 0x4861726D6F6E7901  # "Harmony" + 1
SEED_LOCK = 0x4861726D6F6E7902
POOL_SIZE = 10
POOL_OVERFLOW = 5


def migrations_dir() -> Path:
    """Where the Alembic scripts live: HARMONY_MIGRATIONS_DIR, else the source tree's."""
    return Path(os.environ.get("HARMONY_MIGRATIONS_DIR") or REPO_MIGRATIONS)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config that needs no alembic.ini on disk."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_engine(
    url: str, pool_size: int = POOL_SIZE, max_overflow: int = POOL_OVERFLOW
) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys and its parent directory created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it costs three round trips (BEGIN, ";", ROLLBACK) per checkout; a connection
    # found dead is reported as transient instead (dialect.is_transient) and the use case runs
    # again on a fresh one. Overflow connections are closed when returned: a burst beyond the
    # pool's size pays a reconnect each time.
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=False
    )


class Database:
    """Owns the engine and hands out units of work."""

    def __init__(
        self,
        url: str,
        now: Callable[[], datetime],
        *,
        pool_size: int = POOL_SIZE,
        max_overflow: int = POOL_OVERFLOW,
    ) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size, max_overflow)
        self._now = now
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self.on_outbox_commit: Callable[[], None] | None = None
        # The relay running in this process, if any: it takes what commits promise (see Handoff).
        self.handoff: Handoff | None = None
        self.recent_queues = RecentQueues()
        # Units of work on asyncpg keep their connections checked out (harmony.db.kept).
        self.kept = (
            KeptConnections(self.engine, pool_size)
            if self.engine.dialect.driver == "asyncpg"
            else None
        )

    def uow(self) -> SqlUnitOfWork:
        """A unit of work that may write."""
        return SqlUnitOfWork(
            self.engine,
            self._now,
            self._write_lock,
            self.on_outbox_commit,
            self.handoff,
            self.recent_queues,
            self.kept,
        )

    def reader(self) -> SqlUnitOfWork:
        """A unit of work for queries only; on SQLite it does not wait for writers."""
        return SqlUnitOfWork(
            self.engine, self._now, None, None, None, self.recent_queues, self.kept
        )

    @contextlib.asynccontextmanager
    async def connection(self, *, keep: bool = True) -> AsyncIterator[AsyncConnection]:
        """A connection for work outside units of work, taken where units of work take theirs:
        on PostgreSQL a kept connection (the pool may have no other to give while they are
        kept), given back after; with ``keep=False`` returned to the pool instead."""
        if self.kept is None:
            async with self.engine.connect() as conn:
                yield conn
            return
        lease = await self.kept.take()
        try:
            yield lease.conn
        except BaseException:
            await self.kept.drop(lease)
            raise
        if keep:
            await self.kept.give_back(lease)
        else:
            await self.kept.drop(lease)

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.connection() as conn:
            await conn.execute(text("SELECT 1"))
            await conn.rollback()

    async def migrate(self) -> None:
        """Bring the schema to Alembic's head, one replica at a time.

        On PostgreSQL the migration runs in one transaction that first takes an advisory lock:
        a replica starting alongside waits, then finds the schema at head and does nothing.
        """
        async with self.connection() as conn, conn.begin():
            if not self.is_sqlite:
                lock = text("SELECT pg_advisory_xact_lock(:key)")
                await conn.execute(lock, {"key": MIGRATION_LOCK})
            await conn.run_sync(_upgrade_to_head)

    @contextlib.asynccontextmanager
    async def exclusively(self, key: int) -> AsyncIterator[None]:
        """Hold a PostgreSQL session advisory lock on ``key`` for the block (a no-op on SQLite,
        where one process is the only writer). The block may open units of work freely: the
        lock lives on a connection of its own."""
        if self.is_sqlite:
            yield
            return
        # Not kept after: a session lock must never outlive the block on a kept connection.
        async with self.connection(keep=False) as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            await conn.commit()
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                await conn.commit()

    async def dispose(self) -> None:
        """Close every pooled connection (the kept ones first)."""
        if self.kept is not None:
            await self.kept.close()
        await self.engine.dispose()


def _upgrade_to_head(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
