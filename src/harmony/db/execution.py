"""Running the hot path's statements: on PostgreSQL straight on the asyncpg connection.

SQLAlchemy's execution path costs about 175 µs of CPU per statement beyond asyncpg's own (a
greenlet per call, the execution context, the result object): measured on a primary-key SELECT,
259 µs through ``AsyncConnection.execute`` against 85 µs through asyncpg on the same connection
and transaction. A routed interaction runs over thirty statements, so that was about a quarter
of Harmony's CPU.

``Prepared`` marks a Core statement built once at import. ``Statements.execute`` runs it:

- on asyncpg, compiled once per set of parameter names by SQLAlchemy's own compiler (the SQL,
  the ``$n`` order, the bind and result processors of the column types, so values go in and come
  out exactly as through SQLAlchemy), then executed on the driver connection inside the unit of
  work's transaction; driver errors are raised as SQLAlchemy's (``IntegrityError``, a
  ``DBAPIError`` with ``connection_invalidated``), so callers handle one kind;
- anything else (SQLite, a statement built per call, a statement whose compiled form needs
  SQLAlchemy at run time: expanding ``IN`` lists, Python-side column defaults) goes through
  SQLAlchemy unchanged.

Rows that nothing reads back before the unit of work ends (history lines, outbox messages) are
inserted with ``insert_later``: on asyncpg they ride along with the unit of work's next write as
data-modifying CTEs of that statement (``WITH later_0 AS (INSERT ...) UPDATE ...``), or are sent
in one statement by ``flush`` before the commit, so they cost no round trip of their own. A
statement that reads or writes one of their tables, or that is not run here directly, sends them
first: nothing ever reads around a row it wrote. Elsewhere they are inserted at once. An UPDATE
whose outcome nobody reads (an agent's unit given back) goes the same way with ``update_later``,
its parameters renamed in the carrying statement.

``begin_now`` starts the driver's transaction at once instead of at the first statement, so
that statements run here are inside it. On a kept connection (``harmony.db.kept``) the unit of
work ends it with ``commit_now`` or ``rollback_now``, unless a statement through SQLAlchemy made
SQLAlchemy's own transaction, which then commits or rolls back as usual; on any other connection
the transaction is SQLAlchemy's from the start. This leans on four members of SQLAlchemy's
asyncpg adapter (``_start_transaction``, ``_transaction``, ``_call_and_discard`` and
``_handle_exception``), checked by the PostgreSQL tests of every use case.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, literal_column, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Delete, Executable, Insert, Update
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.util import find_tables
from sqlalchemy.sql.visitors import replacement_traverse

__all__ = ["Prepared", "Statements"]

Params = Mapping[str, Any]


class Prepared:
    """A statement built once, which ``Statements.execute`` may run on the driver directly."""

    __slots__ = ("_compiled", "carried_whole", "statement", "tables", "writes")

    def __init__(self, statement: Executable, *, carried_whole: bool | None = None) -> None:
        self.statement = statement
        # Written later as a statement of its own (an UPDATE, a DELETE, an INSERT ... ON
        # CONFLICT), its parameters renamed; a plain INSERT's rows are added as VALUES instead.
        self.carried_whole = (
            not isinstance(statement, Insert) if carried_whole is None else carried_whole
        )
        # What a row inserted later must not be read around by: every table the statement names.
        self.tables = frozenset(
            table.name
            for table in find_tables(cast(Any, statement), include_crud=True, include_aliases=True)
            if isinstance(table, Table)
        )
        self.writes = isinstance(statement, Insert | Update | Delete)
        # By the names of the parameters given, in the caller's order (each call site builds its
        # mapping the same way, so sorting them per execution would only cost time): an
        # INSERT's columns are those given.
        self._compiled: dict[tuple[str, ...], _Compiled | None] = {}

    def compiled(self, dialect: Dialect, names: tuple[str, ...]) -> _Compiled | None:
        """The statement for asyncpg with these parameter names (None: SQLAlchemy must run it)."""
        try:
            return self._compiled[names]
        except KeyError:
            pass
        compiled = _Compiled.of(self.statement, dialect, names)
        self._compiled[names] = compiled
        return compiled


class _Compiled:
    __slots__ = (
        "defaults",
        "order",
        "processed_columns",
        "processors",
        "returns_rows",
        "row",
        "sql",
        "writes",
    )

    def __init__(
        self,
        sql: str,
        order: tuple[str, ...],
        processors: dict[str, Callable[[Any], Any]],
        defaults: dict[str, Any],
        columns: list[str],
        row_processors: list[Callable[[Any], Any] | None],
    ) -> None:
        self.sql = sql
        self.order = order
        self.processors = processors
        self.defaults = defaults
        self.returns_rows = bool(columns)
        self.row: Any = namedtuple("Row", columns, rename=True) if columns else None
        # (column index, result processor) of the columns that have one.
        self.processed_columns = tuple(
            (index, processor)
            for index, processor in enumerate(row_processors)
            if processor is not None
        )
        self.writes = False

    @classmethod
    def of(
        cls, statement: Executable, dialect: Dialect, names: tuple[str, ...]
    ) -> _Compiled | None:
        # An INSERT without RETURNING of its own: compiled as for several rows, which leaves
        # out the RETURNING of the primary key that SQLAlchemy adds for ``inserted_primary_key``.
        plain_insert = isinstance(statement, Insert) and not statement._returning
        compiled: Any = cast(Any, statement).compile(
            dialect=dialect, column_keys=list(names), for_executemany=plain_insert
        )
        if (
            compiled.positiontup is None
            or compiled.insert_prefetch
            or compiled.update_prefetch
            or any(bind.expanding for bind in compiled.binds.values())
        ):
            return None
        order = tuple(compiled.positiontup)
        defaults = {
            name: value
            for name, value in compiled.construct_params(_check=False).items()
            if name not in names
        }
        columns = [entry.keyname for entry in compiled._result_columns]
        row_processors = [
            entry.type._cached_result_processor(dialect, None) for entry in compiled._result_columns
        ]
        made = cls(
            compiled.string,
            order,
            dict(compiled._bind_processors),
            defaults,
            columns,
            row_processors,
        )
        made.writes = isinstance(statement, Insert | Update | Delete)
        return made

    def arguments(self, params: Params) -> list[Any]:
        processors = self.processors
        defaults = self.defaults
        values = []
        for name in self.order:
            value = params[name] if name in params else defaults[name]
            processor = processors.get(name)
            # Called for None too, as SQLAlchemy does (JSON stores None as JSON null).
            values.append(value if processor is None else processor(value))
        return values

    def make_rows(self, records: Sequence[Any]) -> list[Any]:
        assert self.row is not None
        make = self.row._make
        processed = self.processed_columns
        if not processed:
            return [make(record) for record in records]
        rows = []
        for record in records:
            # Only the columns that have a processor are touched: most have none.
            values = list(record)
            for index, processor in processed:
                values[index] = processor(values[index])
            rows.append(make(values))
        return rows


# The statement that carries rows inserted later when nothing else does (``flush``).
_NOTHING_ELSE = Prepared(select(literal_column("1")))
# Statements carrying rows inserted later, compiled once per shape: the carrier and its
# parameter names, then each table's insert (its statement, column names, row count). Bounded:
# row counts vary, and a shape beyond the bound is sent as separate statements instead.
_CarriedShape = tuple[Prepared, tuple[str, ...], tuple[tuple[Prepared, tuple[str, ...], int], ...]]
# The compiled statement, and the names of the carried rows' parameters: per insert, per row,
# in its columns' order.
_Carried = tuple["_Compiled", tuple[tuple[tuple[str, ...], ...], ...]]
_CARRIED: dict[_CarriedShape, _Carried | None] = {}
_CARRIED_SHAPES_MAX = 512


def _renamed(statement: Any, names: dict[str, str]) -> Any:
    """``statement`` with its parameters named in ``names`` renamed to their values."""

    def rename(element: Any, **_: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in names:
            return bindparam(names[element.key], type_=element.type)
        return None

    return replacement_traverse(statement, {}, rename)


def _carrying(shape: _CarriedShape, dialect: Dialect) -> _Carried | None:
    try:
        return _CARRIED[shape]
    except KeyError:
        pass
    carrier, names, later = shape
    ctes = []
    row_names = []
    for number, (statement, columns, count) in enumerate(later):
        rows = tuple(
            tuple(f"later_{number}_{row}_{column}" for column in columns) for row in range(count)
        )
        row_names.append(rows)
        if statement.carried_whole:
            # An UPDATE written later: its own parameters, renamed so as not to meet the
            # carrier's or another carried statement's.
            renamed = _renamed(statement.statement, dict(zip(columns, rows[0], strict=True)))
            ctes.append(renamed.cte(f"later_{number}"))
            continue
        table = cast(Insert, statement.statement).table
        values = [
            {
                column: bindparam(name, type_=table.c[column].type)
                for column, name in zip(columns, row, strict=True)
            }
            for row in rows
        ]
        ctes.append(insert(table).values(values).cte(f"later_{number}"))
    compiled = _Compiled.of(cast(Any, carrier.statement).add_cte(*ctes), dialect, names)
    if compiled is not None:
        compiled.writes = True
    carried = None if compiled is None else (compiled, tuple(row_names))
    if len(_CARRIED) < _CARRIED_SHAPES_MAX:
        _CARRIED[shape] = carried
    return carried


class DirectResult:
    """What ``Statements.execute`` returns on asyncpg: the part of SQLAlchemy's ``Result``
    that the repositories use (rows read by attribute, like SQLAlchemy's)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def first(self) -> Any:
        """The first row, or None."""
        return self._rows[0] if self._rows else None

    def all(self) -> list[Any]:
        """Every row."""
        return self._rows

    def scalar(self) -> Any:
        """The first column of the first row, or None."""
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        """The first column of the one row there must be."""
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0][0]

    def scalars(self) -> _Scalars:
        """The first column of every row."""
        return _Scalars([row[0] for row in self._rows])


class _Scalars(list[Any]):
    def all(self) -> list[Any]:
        return list(self)


def _status_count(status: str) -> int:
    # asyncpg returns the command tag: "UPDATE 3", "INSERT 0 1", "DELETE 0".
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


class Statements:
    """Executes a unit of work's statements on its connection (see the module's docstring)."""

    def __init__(self, conn: AsyncConnection, adapted: Any = None) -> None:
        self._conn = conn
        self._dialect = conn.dialect
        # SQLAlchemy's asyncpg adapter under ``conn``, when the caller has it at hand already.
        self._given: Any = adapted
        self._adapted: Any = None
        self._driver: Any = None
        # Rows to insert with the next write or at flush: (insert statement, rows) in order.
        self._later: list[tuple[Prepared, list[Params]]] = []

    @property
    def dialect(self) -> Dialect:
        """The connection's dialect."""
        return self._dialect

    @property
    def carries_later_rows(self) -> bool:
        """Whether rows inserted later wait for the next write (on asyncpg) instead of going
        in at once: a row they refer to by foreign key must then be written by that write,
        not before them."""
        return self._driver is not None

    async def begin_now(self) -> None:
        """Start the transaction now (on asyncpg; elsewhere SQLAlchemy starts it as usual)."""
        adapted = await self._take_driver()
        if adapted is None:
            return
        try:
            await adapted._start_transaction()
        except Exception as exc:
            await self._raise_translated(exc, "BEGIN")

    async def commit_now(self) -> None:
        """Commit the transaction ``begin_now`` started on the driver, if one is open there
        (a statement run through SQLAlchemy makes SQLAlchemy's own: commit that one instead)."""
        adapted = self._adapted
        if adapted is None or adapted._transaction is None:
            return
        try:
            await adapted._call_and_discard(adapted._transaction.commit)
        except Exception as exc:
            await self._raise_translated(exc, "COMMIT")

    async def rollback_now(self) -> None:
        """Roll back the transaction ``begin_now`` started on the driver, if one is open."""
        adapted = self._adapted
        if adapted is None or adapted._transaction is None:
            return
        try:
            await adapted._call_and_discard(adapted._transaction.rollback)
        except Exception as exc:
            # The connection is in no state to be used again whatever the error was.
            if not self._conn.invalidated:
                await self._conn.invalidate()
            await self._raise_translated(exc, "ROLLBACK")

    async def without_transaction(self) -> None:
        """Run statements on the driver in its own autocommit mode, each atomic by itself,
        with no transaction around them (on asyncpg; elsewhere SQLAlchemy's as usual)."""
        await self._take_driver()

    async def _take_driver(self) -> Any:
        """The asyncpg connection under SQLAlchemy's, from now on run on directly (None where
        the driver is another, or SQLAlchemy has begun a transaction on it already)."""
        if self._dialect.driver != "asyncpg":
            return None
        adapted = self._given
        if adapted is None:
            fairy = await self._conn.get_raw_connection()
            adapted = fairy.dbapi_connection
        if adapted is None or adapted._transaction is not None:  # pragma: no cover
            return None
        self._adapted = adapted
        self._driver = adapted.driver_connection
        return adapted

    async def insert_later(self, statement: Prepared, rows: list[Params]) -> None:
        """Insert ``rows`` with ``statement`` (a plain INSERT, each row naming the same
        columns in the same order) before the next statement that names their table, and at
        the latest at ``flush``; at once where statements are not run here directly."""
        if not rows:
            return
        if self._driver is None:
            await self.execute(statement, rows)
            return
        self._later.append((statement, rows))

    async def update_later(self, statement: Prepared, params: Params) -> None:
        """Run ``statement``, an UPDATE (or a DELETE, an upsert: ``carried_whole``) whose
        outcome nobody reads, as ``insert_later`` inserts
        rows: before the next statement that names its table, with the next write, at the
        latest at ``flush``; at once where statements are not run here directly."""
        if self._driver is None:
            await self.execute(statement, params)
            return
        self._later.append((statement, [params]))

    async def flush(self) -> None:
        """Send the rows still waiting to be inserted and the updates waiting to be written
        (before a commit)."""
        if not self._later:
            return
        carried = self._carry(_NOTHING_ELSE, (), {}, many=False) if len(self._later) > 1 else None
        if carried is not None:
            await self._run(*carried, many=False)
            return
        later, self._later = self._later, []
        for statement, rows in later:
            await self.execute(statement, rows[0] if statement.carried_whole else rows)

    async def execute(self, statement: Prepared | Executable, params: Any = None) -> Any:
        """Run ``statement`` with ``params`` (a mapping, or a list of them for an INSERT of
        several rows); the result reads like SQLAlchemy's."""
        if self._driver is None or not isinstance(statement, Prepared):
            await self.flush()
            target = statement.statement if isinstance(statement, Prepared) else statement
            return await self._through_sqlalchemy(target, params)
        many = isinstance(params, list)
        first: Params = (params[0] if params else {}) if many else (params or {})
        names = tuple(first)
        if self._later:
            carried = self._carry(statement, names, first, many=many)
            if carried is not None:
                return await self._run(*carried, many=False)
            await self.flush()
        compiled = statement.compiled(self._dialect, names)
        if compiled is None:
            return await self._through_sqlalchemy(statement.statement, params)
        return await self._run(compiled, params if many else first, many=many)

    async def _through_sqlalchemy(self, statement: Executable, params: Any) -> Any:
        return await self._conn.execute(statement, params)

    def _later_tables(self) -> frozenset[str]:
        return frozenset().union(*(inserted.tables for inserted, _ in self._later))

    async def _run(self, compiled: _Compiled, params: Any, *, many: bool) -> DirectResult:
        try:
            if many:
                if compiled.returns_rows:  # pragma: no cover - not used so
                    raise TypeError("several rows with RETURNING: use SQLAlchemy")
                await self._driver.executemany(
                    compiled.sql, [compiled.arguments(p) for p in params]
                )
                return DirectResult([], len(params))
            arguments = compiled.arguments(params)
            if compiled.returns_rows:
                records = await self._driver.fetch(compiled.sql, *arguments)
                return DirectResult(compiled.make_rows(records), len(records))
            status = await self._driver.execute(compiled.sql, *arguments)
            return DirectResult([], _status_count(status))
        except Exception as exc:
            await self._raise_translated(exc, compiled.sql)
            raise  # pragma: no cover - _raise_translated always raises

    def _carry(
        self, statement: Prepared, names: tuple[str, ...], params: Params, *, many: bool
    ) -> tuple[_Compiled, Params] | None:
        """``statement`` compiled to carry the rows waiting to be inserted, with its parameters
        and theirs; None where it must not (it reads or writes one of their tables, it is not a
        write, or runs for several rows) and they must be sent before it."""
        later = self._later
        if statement is not _NOTHING_ELSE and (
            many
            or not statement.writes
            or any(inserted.tables & statement.tables for inserted, _ in later)
        ):
            return None
        shape = (
            statement,
            names,
            tuple((inserted, tuple(rows[0]), len(rows)) for inserted, rows in later),
        )
        carried = _carrying(shape, self._dialect)
        if carried is None:
            return None
        compiled, names_of_rows = carried
        merged = dict(params)
        for (_, rows), row_names in zip(later, names_of_rows, strict=True):
            for row, names_of_row in zip(rows, row_names, strict=True):
                merged.update(zip(names_of_row, row.values(), strict=True))
        self._later = []
        return compiled, merged

    async def _raise_translated(self, exc: Exception, sql: str) -> None:
        """Raise ``exc`` as SQLAlchemy would have: its DBAPI error wrapped in ``DBAPIError``'s
        subclass, the connection invalidated when the driver found it dead."""
        dbapi = self._dialect.loaded_dbapi
        try:
            if isinstance(exc, dbapi.Error):
                raise exc
            self._adapted._handle_exception(exc)
        except dbapi.Error as translated:
            dead = self._dialect.is_disconnect(translated, self._adapted, None)
            if dead:
                await self._conn.invalidate()
            raise DBAPIError.instance(
                sql,
                None,
                translated,
                dbapi.Error,
                connection_invalidated=dead,
                dialect=self._dialect,
            ) from exc
