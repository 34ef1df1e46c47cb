"""The outbox relay: claims due messages, sends them with no transaction open, records outcomes.

Claiming is one short transaction that leases rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so several replicas share the work). Sending happens outside any transaction. Each outcome is
recorded in a transaction of its own through the routing interactions.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog

from harmony.adapters.base import (
    AdapterError,
    AdapterRegistry,
    PermanentAdapterError,
    TransientAdapterError,
)
from harmony.errors import NotFound
from harmony.routing import interactions
from harmony.routing.messages import OutboxEntry
from harmony.routing.ports import Clock, UnitOfWorkFactory

log = structlog.get_logger("harmony.outbox.relay")
MAX_BACKOFF_SECONDS = 60.0


class Relay:
    """Sends what the outbox promised, at least once, with an idempotency key per message."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        registry: AdapterRegistry,
        clock: Clock,
        *,
        batch_size: int = 100,
        concurrency: int = 32,
        poll_seconds: float = 0.5,
        max_attempts: int = 8,
        base_backoff_seconds: float = 0.5,
        lease_seconds: float = 30.0,
    ) -> None:
        self._uow_factory = uow_factory
        self._registry = registry
        self._clock = clock
        self._batch_size = batch_size
        self._sending = asyncio.Semaphore(concurrency)
        self._poll_seconds = poll_seconds
        self._max_attempts = max_attempts
        self._base_backoff = base_backoff_seconds
        self._lease_seconds = lease_seconds
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        """Called after a commit that wrote outbox rows, so they go out without polling delay."""
        self._wakeup.set()

    def stop(self) -> None:
        """Ask ``run`` to return after the batch in hand."""
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        """Relay until stopped; an unexpected error is logged and the loop carries on."""
        while not self._stopping.is_set():
            try:
                sent = await self.run_once()
            except Exception:
                log.exception("relay_batch_failed")
                sent = 0
            if sent == 0 and not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._poll_seconds)
                self._wakeup.clear()

    async def run_once(self) -> int:
        """Claim one batch of due messages and send them; returns how many were claimed."""
        async with self._uow_factory() as uow:
            entries = await uow.outbox.claim_due(
                self._clock.now(), self._batch_size, self._lease_seconds
            )
            await uow.commit()
        if entries:
            await asyncio.gather(*(self._send(entry) for entry in entries))
        return len(entries)

    async def drain(self, max_rounds: int = 1000) -> None:
        """Send until nothing is due (for tests and one-shot commands)."""
        for _ in range(max_rounds):
            if await self.run_once() == 0:
                return

    async def _send(self, entry: OutboxEntry) -> None:
        message = entry.message
        with structlog.contextvars.bound_contextvars(
            interaction_id=message.interaction_id, message_id=message.id
        ):
            try:
                async with self._sending:
                    adapter = self._registry.get(message.target_kind, message.target)
                    await adapter.send(message)
            except TransientAdapterError as exc:
                await self._retry_or_give_up(entry, str(exc), exc.retry_after)
                return
            except (PermanentAdapterError, NotFound) as exc:
                log.warning("message_refused", type=message.type, error=str(exc))
                await interactions.message_failed(
                    self._uow_factory(), self._clock, message, str(exc)
                )
                return
            except AdapterError as exc:
                await self._retry_or_give_up(entry, str(exc), None)
                return
            log.debug("message_sent", type=message.type, attempt=entry.attempts)
            await interactions.message_sent(self._uow_factory(), self._clock, message)

    async def _retry_or_give_up(
        self, entry: OutboxEntry, error: str, retry_after: float | None
    ) -> None:
        message = entry.message
        if entry.attempts >= self._max_attempts:
            log.error("message_given_up", type=message.type, attempts=entry.attempts, error=error)
            await interactions.message_failed(
                self._uow_factory(), self._clock, message, f"{error} (after {entry.attempts} tries)"
            )
            return
        delay = min(self._base_backoff * 2 ** (entry.attempts - 1), MAX_BACKOFF_SECONDS)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF_SECONDS * 10))
        log.warning(
            "message_retry", type=message.type, attempt=entry.attempts, delay=delay, error=error
        )
        async with self._uow_factory() as uow:
            await uow.outbox.mark_retry(
                message.id, self._clock.now() + timedelta(seconds=delay), error
            )
            await uow.commit()
