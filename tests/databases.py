"""Databases for tests: templates made once per session, and a copy of one per test.

Migrating (and starting the app, logging agents in) costs far more than copying. A session
migrates one SQLite file and one PostgreSQL template database to Alembic's head, builds further
templates from them on demand (``built_sqlite_template``, ``postgres_template(key, build)``),
and every test gets a copy: a file copy, or ``CREATE DATABASE ... TEMPLATE``. PostgreSQL copies
are made ahead and dropped behind in a background thread, so the tests rarely wait for them.
``drop_templates`` removes everything at the end of the session.

Import this module as ``tests.databases`` only: its templates are module state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
    sqlite: dict[str, Path] = field(default_factory=dict)
    postgres: dict[str, str] = field(default_factory=dict)


_templates = _Templates()
MIGRATED = "migrated"
Build = Callable[[str], Awaitable[None]]
T = TypeVar("T")


def _template_directory() -> Path:
    if _templates.directory is None:
        _templates.directory = Path(tempfile.mkdtemp(prefix="harmony-templates-"))
    return _templates.directory


def sqlite_template() -> Path:
    """A SQLite file at Alembic's head, migrated once per session (synchronously, so that any
    event loop may ask for it)."""
    if MIGRATED not in _templates.sqlite:
        path = _template_directory() / f"{MIGRATED}.db"
        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        try:
            with engine.begin() as connection:
                cfg = alembic_config()
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        finally:
            engine.dispose()
        _templates.sqlite[MIGRATED] = path
    return _templates.sqlite[MIGRATED]


def sqlite_copy(directory: Path, template: Path | None = None, name: str = "harmony.db") -> str:
    """Copy a template SQLite file (the migrated one by default) into ``directory``; its URL."""
    target = directory / name
    shutil.copyfile(template or sqlite_template(), target)
    return f"sqlite+aiosqlite:///{target}"


async def built_sqlite_template(key: str, build: Build) -> Path:
    """A copy of the migrated file that ``build(url)`` filled in, made once per session per key."""
    if key not in _templates.sqlite:
        path = _template_directory() / f"{key}.db"
        await build(sqlite_copy(path.parent, name=path.name))
        with contextlib.closing(sqlite3.connect(path)) as conn:  # WAL into the file we copy
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _templates.sqlite[key] = path
    return _templates.sqlite[key]


def _postgres_url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def _migrate(url: str) -> None:
    db = Database(url, SystemClock().now)
    try:
        await db.migrate()
    finally:
        await db.dispose()  # a template must have no connections when it is copied


async def postgres_template(key: str = MIGRATED, build: Build | None = None) -> str:
    """The name of a PostgreSQL database made once per session: at Alembic's head, then (for
    another key than the default) filled in by ``build(url)``. Dropped when the session ends."""
    if key not in _templates.postgres:
        problem = await _pg_reachable()
        if problem:
            require_postgres_or_skip(problem)
        source = None if key == MIGRATED else await postgres_template()
        name = f"harmony_template_{os.getpid()}_{uuid.uuid4().hex[:8]}_{key}"
        await _admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{source}"' if source else ""))
        try:
            await (build or _migrate)(_postgres_url(name))
        except BaseException:
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            raise
        _templates.postgres[key] = name
    return _templates.postgres[key]


class _Background:
    """A thread with its own event loop that creates the next copy of a template while a test
    runs and drops used databases after it: PostgreSQL copies files meanwhile, instead of the
    tests waiting for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.spares: dict[str | None, list[concurrent.futures.Future[str]]] = {}
        self.drops: list[concurrent.futures.Future[None]] = []

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def stop(self) -> None:
        """Drop the spares, wait for every drop, end the thread."""
        for spares in self.spares.values():
            for spare in spares:
                with contextlib.suppress(Exception):
                    self.drops.append(self.submit(_drop(spare.result())))
        for drop in self.drops:
            with contextlib.suppress(Exception):
                drop.result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


_background: list[_Background] = []
SPARES = 2  # copies made ahead per template: PostgreSQL makes them side by side


def _worker() -> _Background:
    if not _background:
        _background.append(_Background())
    return _background[0]


async def _create(template: str | None) -> str:
    name = f"harmony_test_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


async def _drop(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def fresh_postgres_database(
    *, empty: bool = False, template: str | None = None
) -> AsyncIterator[str]:
    """A new PostgreSQL database, dropped after use; its SQLAlchemy URL is yielded.

    It is a copy (``CREATE DATABASE ... TEMPLATE``) of ``template``, by default of the migrated
    template; with ``empty=True`` a database with no tables at all (migration tests, replicas
    racing to migrate). The copy was made while the previous test ran, when there was one."""
    if empty:
        problem = await _pg_reachable()
        if problem:
            require_postgres_or_skip(problem)
    elif template is None:
        template = await postgres_template()
    worker = _worker()
    spares = worker.spares.setdefault(template, [])
    name = await asyncio.wrap_future(spares.pop(0)) if spares else await _create(template)
    while len(spares) < SPARES:
        spares.append(worker.submit(_create(template)))
    try:
        yield _postgres_url(name)
    finally:
        worker.drops.append(worker.submit(_drop(name)))


def drop_templates() -> None:
    """Remove the session's databases and templates (called once, when the session ends)."""
    if _background:
        _background.pop().stop()

    async def drop_all(names: list[str]) -> None:
        for name in names:
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    if _templates.postgres:
        asyncio.run(drop_all(list(_templates.postgres.values())))
        _templates.postgres.clear()
    if _templates.directory is not None:
        shutil.rmtree(_templates.directory, ignore_errors=True)
        _templates.directory = None
        _templates.sqlite.clear()
