"""What a forked child makes: for tests of state that must not be shared with a parent."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection


def _make_and_send(make: Callable[[], str], count: int, connection: Connection) -> None:
    connection.send([make() for _ in range(count)])
    connection.close()


def made_in_forked_child(make: Callable[[], str], count: int) -> list[str]:
    """``count`` results of ``make()`` in a child forked from this process."""
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_make_and_send, args=(make, count, sending))
    child.start()
    made: list[str] = receiving.recv()
    child.join(timeout=10)
    assert child.exitcode == 0
    return made
