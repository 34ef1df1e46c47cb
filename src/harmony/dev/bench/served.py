"""``harmony serve`` as the benchmark runs it, counting SQL statements when asked.

``python -m harmony.dev.bench.served [serve options]`` is exactly ``harmony serve`` (same
settings, same uvicorn: one worker, and uvloop and httptools, which uvicorn's ``auto`` picks when
they are importable; this module refuses to start without them, so a benchmark never runs on the
slower defaults unnoticed).

With ``HARMONY_BENCH_STATS=FILE`` set it also counts, from outside Harmony's code, the SQL
statements sent to PostgreSQL (each call of asyncpg that sends one, wrapped at class level: both
SQLAlchemy's and Harmony's direct ones; BEGIN, COMMIT and ROLLBACK are not counted), the
COMMITs among those, pool checkouts (SQLAlchemy's event: a unit of work on a kept connection
makes none) and, each time it gets SIGUSR1, rewrites FILE with
``{"statements", "checkouts", "commits", "pid", "snapshot"}``: the counts since start and how
many snapshots were asked for. On request, not on a timer: a thread rewriting the file ten times
a second cost 4% of Harmony's CPU at 40 routed/s, which the benchmark would have charged to
Harmony. Unset, nothing is counted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["SqlCounter", "main"]

STATS_ENV = "HARMONY_BENCH_STATS"


_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _is_transaction_control(query: Any) -> bool:
    return isinstance(query, str) and query.lstrip().upper().startswith(_CONTROL)


class SqlCounter:
    """Counts the statements, pool checkouts and commits sent from the thread that installed it.

    Harmony's server sends every statement from its event loop's thread, the one that installs
    the counter; another thread's (the test suite copying databases ahead) are not Harmony's."""

    def __init__(self) -> None:
        self._thread = threading.get_ident()
        self.statements = 0
        self.checkouts = 0
        self.commits = 0
        self.snapshots = 0
        self._wrapped: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        """Wrap asyncpg's statement-sending methods and listen on SQLAlchemy's Pool class, so
        connections and pools made later are counted too."""
        self._thread = threading.get_ident()
        import asyncpg  # type: ignore[import-untyped]
        from asyncpg.prepared_stmt import PreparedStatement  # type: ignore[import-untyped]
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        for cls, names in (
            (asyncpg.Connection, ("fetch", "fetchrow", "fetchval", "executemany")),
            (PreparedStatement, ("fetch", "fetchrow", "fetchval", "executemany", "cursor")),
        ):
            for name in names:
                self._wrap(cls, name)
        self._wrap(asyncpg.Connection, "execute", control=True)
        event.listen(Pool, "checkout", self._checkout)

    def uninstall(self) -> None:
        """Undo ``install`` (for tests: the benchmark's process counts until it ends)."""
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        for cls, name, original in reversed(self._wrapped):
            setattr(cls, name, original)
        self._wrapped.clear()
        event.remove(Pool, "checkout", self._checkout)

    def _wrap(self, cls: Any, name: str, control: bool = False) -> None:
        original = getattr(cls, name)
        self._wrapped.append((cls, name, original))
        setattr(cls, name, self._counting(original, control))

    def _counting(self, method: Any, control: bool = False) -> Any:
        counter = self

        def counted(this: Any, *args: Any, **kwargs: Any) -> Any:
            if counter._mine():
                if control and len(args) == 1 and _is_transaction_control(args[0]):
                    # Counted where it reaches the driver: units of work on kept connections
                    # commit there, not through SQLAlchemy.
                    if args[0].lstrip().upper().startswith("COMMIT"):
                        counter.commits += 1
                else:
                    counter.statements += 1
            return method(this, *args, **kwargs)

        return counted

    def _mine(self) -> bool:
        return threading.get_ident() == self._thread

    def _checkout(self, *_: Any) -> None:
        if self._mine():
            self.checkouts += 1

    def snapshot(self) -> dict[str, int]:
        """The counts so far."""
        return {
            "statements": self.statements,
            "checkouts": self.checkouts,
            "commits": self.commits,
            "pid": os.getpid(),
            "snapshot": self.snapshots,
        }

    def write_on_signal(self, path: Path) -> None:
        """Rewrite ``path`` atomically whenever the process gets SIGUSR1 (see
        ``Stack.sql_counts``), and once now."""

        def write(*_: Any) -> None:
            self.snapshots += 1
            scratch = path.with_suffix(".tmp")
            scratch.write_text(json.dumps(self.snapshot()))
            os.replace(scratch, path)

        signal.signal(signal.SIGUSR1, write)
        write()


def main(argv: list[str] | None = None) -> int:
    """Check uvloop and httptools, install the counter if asked, then run ``harmony serve``."""
    missing = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(
            f"harmony bench: {', '.join(missing)} not installed (pip install 'uvicorn[standard]')"
        )
    target = os.environ.get(STATS_ENV)
    if target:
        counter = SqlCounter()
        counter.install()
        counter.write_on_signal(Path(target))
    from harmony.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
