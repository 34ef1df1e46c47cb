"""The schema exists only through Alembic, and the same migrations run on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from harmony.clock import SystemClock
from harmony.db.engine import Database, alembic_config
from harmony.db.tables import metadata


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _downgrade_to_base(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, "base")


async def test_head_matches_the_tables_and_downgrades_cleanly(empty_database_url: str) -> None:
    db = Database(empty_database_url, SystemClock().now)
    try:
        await db.migrate()
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert set(metadata.tables) <= tables
        async with db.engine.begin() as conn:
            await conn.run_sync(_downgrade_to_base)
        async with db.engine.connect() as conn:
            left = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert left <= {"alembic_version"}
        await db.migrate()  # and back up again: migrations are repeatable
        await db.migrate()  # a second upgrade at head is a no-op
    finally:
        await db.dispose()
