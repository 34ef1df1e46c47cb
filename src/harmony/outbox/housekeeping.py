"""Periodic upkeep that no request should pay for: forgetting inbox events past retention.

Every replica runs it; on PostgreSQL pruning skips rows another replica is deleting, so they
neither wait for nor deadlock with each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog

from harmony.routing import commands
from harmony.routing.ports import Clock, UnitOfWorkFactory

log = structlog.get_logger("harmony.housekeeping")


class Housekeeper:
    """Prunes the inbox every ``every_seconds`` until stopped."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        clock: Clock,
        *,
        inbox_retention: timedelta,
        every_seconds: float = 60.0,
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._inbox_retention = inbox_retention
        self._every_seconds = every_seconds
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask ``run`` to return."""
        self._stopping.set()

    async def run_once(self) -> int:
        """One round of upkeep; returns how many inbox events were forgotten."""
        return await commands.prune_inbox(self._uow_factory, self._clock, self._inbox_retention)

    async def run(self) -> None:
        """Upkeep until stopped; a failed round is logged and the next one comes as usual."""
        while not self._stopping.is_set():
            try:
                pruned = await self.run_once()
                if pruned:
                    log.info("inbox_pruned", events=pruned)
            except Exception:
                log.exception("housekeeping_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._every_seconds)
