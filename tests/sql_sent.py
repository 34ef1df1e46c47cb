"""Watching the SQL asyncpg sends, for tests that check how many statements a use case costs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

SENDING = ("execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare")


@contextlib.contextmanager
def statements_sent(on: object | None = None) -> Iterator[list[str]]:
    """The SQL of every statement asyncpg sends from this thread (BEGIN and COMMIT included:
    simple queries go through ``execute``, SQLAlchemy's prepared statements through
    ``prepare``), or only on the driver connection ``on``. Other threads are left out: the
    suite's background thread copies and drops databases while tests run."""
    import asyncpg  # type: ignore[import-untyped]

    sent: list[str] = []
    thread = threading.get_ident()
    originals = {name: getattr(asyncpg.Connection, name) for name in SENDING}

    def recording(original: Any) -> Any:
        def send(this: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == thread and (on is None or this is on):
                sent.append(query)
            return original(this, query, *args, **kwargs)

        return send

    for name, original in originals.items():
        setattr(asyncpg.Connection, name, recording(original))
    try:
        yield sent
    finally:
        for name, original in originals.items():
            setattr(asyncpg.Connection, name, original)
