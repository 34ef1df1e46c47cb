"""The scheduler: fires durable timers when they fall due, in every replica.

Each round claims a batch of due timers (``TimerRepository.claim_due``: on PostgreSQL one
statement, skipping timers another replica is claiming) and fires each in a unit of work of its
own (``routing.timers.fire``). A timer due while every replica was down is claimed by the first
round after start. A replica that dies holding claims leaves them to be claimed again when their
lease runs out; the claim token keeps a late finish from the dead one's successor from counting
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping
from functools import partial

import structlog

from harmony.routing.ports import ClaimedTimer, Clock, UnitOfWorkFactory
from harmony.routing.retry import DEFAULT_RETRY
from harmony.routing.timers import HANDLERS, TimerHandler, fire

log = structlog.get_logger("harmony.scheduler")

__all__ = ["Scheduler", "default_claimer"]


def default_claimer() -> str:
    """This process, as claims name it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Scheduler:
    """Claims and fires due timers every ``poll_seconds`` until stopped."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        clock: Clock,
        *,
        claimer: str | None = None,
        poll_seconds: float = 1.0,
        batch_size: int = 50,
        lease_seconds: float = 30.0,
        handlers: Mapping[str, TimerHandler] = HANDLERS,
    ) -> None:
        self._uows = uow_factory
        self._clock = clock
        self._claimer = claimer or default_claimer()
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._lease_seconds = lease_seconds
        self._handlers = handlers
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask ``run`` to return after the timer it is firing."""
        self._stopping.set()

    async def _claim(self) -> list[ClaimedTimer]:
        async with self._uows() as uow:
            claimed = await uow.timers.claim_due(
                self._clock.now(), self._batch_size, self._lease_seconds, self._claimer
            )
            await uow.commit()
        return claimed

    async def _fire(self, claimed: ClaimedTimer) -> bool:
        return await fire(self._uows(), self._clock, claimed, self._handlers)

    async def run_once(self) -> int:
        """Claim the timers due now and fire them; how many fired (a lost claim or a failed
        handler does not count: the timer fires again once its lease runs out)."""
        fired = 0
        for claimed in await self._claim():
            if self._stopping.is_set():
                break
            try:
                done = await DEFAULT_RETRY.call(partial(self._fire, claimed))
            except Exception:
                log.exception(
                    "timer_failed",
                    timer_id=claimed.id,
                    kind=claimed.timer.kind,
                    subject=claimed.timer.subject,
                    attempts=claimed.attempts,
                )
                continue
            if done:
                fired += 1
            else:
                log.info("timer_claim_lost", timer_id=claimed.id, kind=claimed.timer.kind)
        return fired

    async def run(self) -> None:
        """Fire due timers until stopped; a full batch is followed by the next at once."""
        while not self._stopping.is_set():
            fired = 0
            try:
                fired = await self.run_once()
            except Exception:
                log.exception("scheduler_round_failed")
            if fired >= self._batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll_seconds)
