"""What differs between PostgreSQL and SQLite at the driver boundary: upserts and errors."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

# SQLSTATEs for which PostgreSQL aborted the transaction only to let another one through:
# the same work in a new transaction may succeed.
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
TRANSIENT_SQLSTATES = frozenset({DEADLOCK_DETECTED, SERIALIZATION_FAILURE})


# The INSERT constructs that support ``on_conflict_do_nothing`` / ``on_conflict_do_update``,
# by dialect name: statements built once at import pick theirs by the connection's dialect.
DIALECT_INSERTS: dict[str, Any] = {"postgresql": pg_insert, "sqlite": sqlite_insert}


def insert_for(conn: Any, table: Table) -> Any:
    """An INSERT that supports ``on_conflict_do_nothing`` / ``on_conflict_do_update``, for
    the dialect of ``conn`` (anything with a ``dialect``)."""
    return DIALECT_INSERTS[conn.dialect.name](table)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE a driver error carries (asyncpg and psycopg both expose ``sqlstate``)."""
    if not isinstance(exc, DBAPIError):
        return None
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return str(code) if code else None


def is_transient(exc: BaseException) -> bool:
    """A deadlock, a serialization failure or a connection found dead: a retry on a fresh
    connection may succeed. Pooled connections are not pinged before use (a round trip per
    transaction), so a connection that died while idle shows up here instead, once; SQLAlchemy
    has then invalidated the pool's older connections too."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return sqlstate(exc) in TRANSIENT_SQLSTATES
