"""Run a use case again, in a fresh unit of work, when the database aborted it to break a cycle.

Every use case takes the unit of work it runs in as its first argument and commits it once.
When PostgreSQL aborts that transaction (deadlock 40P01, serialization failure 40001), the
unit of work raises ``TryAgain`` and nothing was stored, so running the same use case with a
new unit of work is safe. Callers (routers, the relay, start-up) go through ``run_with_retry``::

    agent = await run_with_retry(db.uow, interactions.upsert_agent, clock, agent_id="a-1", ...)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from harmony.errors import TryAgain
from harmony.routing.ports import UnitOfWork

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded attempts with full-jitter exponential backoff between them."""

    attempts: int = 5
    base_delay: float = 0.01
    max_delay: float = 0.25
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def delay(self, failed_attempts: int) -> float:
        """A random pause up to ``base * 2**(n-1)`` (capped), so contenders spread out."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (failed_attempts - 1))
        return random.uniform(0, ceiling)

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``; on TryAgain, again, up to ``attempts`` times in all; the last
        TryAgain reaches the caller. Each attempt must open its own unit of work."""
        failed = 0
        while True:
            try:
                return await attempt()
            except TryAgain:
                failed += 1
                if failed >= self.attempts:
                    raise
            await self.sleep(self.delay(failed))

    async def run(
        self,
        new_uow: Callable[[], UnitOfWork],
        use_case: Callable[Concatenate[UnitOfWork, P], Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``use_case(new_uow(), *args, **kwargs)``, retried as ``call`` says."""
        return await self.call(lambda: use_case(new_uow(), *args, **kwargs))


DEFAULT_RETRY = RetryPolicy()


async def run_with_retry(
    new_uow: Callable[[], UnitOfWork],
    use_case: Callable[Concatenate[UnitOfWork, P], Awaitable[T]],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``use_case`` under the default policy (see ``RetryPolicy.run``)."""
    return await DEFAULT_RETRY.run(new_uow, use_case, *args, **kwargs)
