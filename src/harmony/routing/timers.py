"""Durable timers' use cases: what each kind does when it fires, in one handler table.

A timer fires in one transaction with what it does: the handler runs (locking what it guards,
the store's lock order: domain rows before the timer), then the timer is removed under the claim
that leased it. If that claim was lost (the timer was replaced, or another scheduler took it
after the lease ran out), the unit of work rolls back and nothing happened: a timer fires once
for what it was armed for. Each handler checks on firing that what the timer guards still holds
(its ``guard``, the version of that thing when it was armed), and does nothing if it does not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from harmony.routing import rerouting
from harmony.routing.agents import WRAP_UP_TIMER
from harmony.routing.deadlines import TIMER_KIND
from harmony.routing.ports import ClaimedTimer, Clock, Timer, UnitOfWork

__all__ = ["HANDLERS", "TimerHandler", "fire"]

TimerHandler = Callable[[UnitOfWork, Timer, datetime], Awaitable[None]]

# Each kind of timer and the use case that handles it when it fires.
HANDLERS: Mapping[str, TimerHandler] = {
    TIMER_KIND: rerouting.on_deadline,
    WRAP_UP_TIMER: rerouting.on_wrap_up_end,
}


async def fire(
    uow: UnitOfWork,
    clock: Clock,
    claimed: ClaimedTimer,
    handlers: Mapping[str, TimerHandler] = HANDLERS,
) -> bool:
    """Do what ``claimed`` was armed for and remove it, in one transaction; False, with nothing
    done, when its claim was lost."""
    async with uow:
        uow.timers.firing(claimed)
        # A kind no code handles is removed all the same: it would be claimed again forever.
        handler = handlers.get(claimed.timer.kind)
        if handler is not None:
            await handler(uow, claimed.timer, clock.now())
        if not await uow.timers.finish(claimed.id, claimed.claim_token):
            return False
        await uow.commit()
    return True
