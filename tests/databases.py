"""Databases for tests: templates migrated once per session, and a copy of one per test.

Migrating costs far more than copying: a session migrates one SQLite file and one PostgreSQL
template database to Alembic's head, and every test gets a copy (a file copy, or
``CREATE DATABASE ... TEMPLATE``). ``drop_templates`` removes them at the end of the session.

Import this module as ``tests.databases`` only: its templates are module state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy
from alembic import command

from harmony.clock import SystemClock
from harmony.db.engine import Database, alembic_config

PG_ADMIN_DSN = os.environ.get("HARMONY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_reachable() -> str | None:
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def require_postgres_or_skip(reason: str) -> None:
    """With CI=true PostgreSQL is mandatory: fail, never skip."""
    message = f"PostgreSQL at {PG_ADMIN_DSN} unreachable ({reason})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI=true makes PostgreSQL tests mandatory")
    pytest.skip(message)


@dataclass
class _Templates:
    directory: Path | None = None
    sqlite: Path | None = None
    postgres: str | None = None


_templates = _Templates()


def _template_directory() -> Path:
    if _templates.directory is None:
        _templates.directory = Path(tempfile.mkdtemp(prefix="harmony-templates-"))
    return _templates.directory


def sqlite_template() -> Path:
    """A SQLite file at Alembic's head, migrated once per session (synchronously, so that any
    event loop may ask for it)."""
    if _templates.sqlite is None:
        path = _template_directory() / "migrated.db"
        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        try:
            with engine.begin() as connection:
                cfg = alembic_config()
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        finally:
            engine.dispose()
        _templates.sqlite = path
    return _templates.sqlite


def sqlite_copy(directory: Path, template: Path | None = None, name: str = "harmony.db") -> str:
    """Copy a template SQLite file (the migrated one by default) into ``directory``; its URL."""
    target = directory / name
    shutil.copyfile(template or sqlite_template(), target)
    return f"sqlite+aiosqlite:///{target}"


def _postgres_url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def postgres_template() -> str:
    """The name of a PostgreSQL database at Alembic's head, made once per session."""
    if _templates.postgres is None:
        problem = await _pg_reachable()
        if problem:
            require_postgres_or_skip(problem)
        name = f"harmony_template_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        await _admin(f'CREATE DATABASE "{name}"')
        db = Database(_postgres_url(name), SystemClock().now)
        try:
            await db.migrate()
        except BaseException:
            await db.dispose()
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            raise
        await db.dispose()  # a template must have no connections when it is copied
        _templates.postgres = name
    return _templates.postgres


@contextlib.asynccontextmanager
async def fresh_postgres_database(*, empty: bool = False) -> AsyncIterator[str]:
    """A new PostgreSQL database, dropped on exit; its SQLAlchemy URL is yielded.

    It is a copy of the migrated template (``CREATE DATABASE ... TEMPLATE``), or with
    ``empty=True`` a database with no tables at all (migration tests, replicas racing to
    migrate)."""
    if empty:
        problem = await _pg_reachable()
        if problem:
            require_postgres_or_skip(problem)
    template = None if empty else await postgres_template()
    name = f"harmony_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    await _admin(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield _postgres_url(name)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_templates() -> None:
    """Remove the session's templates (called once, when the session ends)."""
    if _templates.postgres is not None:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{_templates.postgres}" WITH (FORCE)'))
        _templates.postgres = None
    if _templates.directory is not None:
        shutil.rmtree(_templates.directory, ignore_errors=True)
        _templates.directory = _templates.sqlite = None
