"""The outbox relay: claims due messages, sends them with no transaction open, records outcomes.

Claiming is one short transaction that leases rows under a fresh claim token (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so several replicas share the work). Sending happens outside any
transaction. Each outcome is recorded in a transaction of its own through the routing
interactions (retried if the database aborts it to break a deadlock), fenced by the claim
token: if the lease ran out and another relay claimed the row, this relay's outcome is dropped
and its consequences (failing an interaction, releasing an agent's capacity) do not happen.

A relay claims only what it can send within the lease (``concurrency`` sends at a time, each
bounded by ``send_timeout_seconds``) and, before each send, checks that the lease still covers
it, renewing it if not; a row whose claim was lost meanwhile is not sent. A message whose
outcome could not be recorded is claimed again when its lease ends; attempts are counted at
claim, so after ``max_attempts`` claims it is given up without being sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from dataclasses import replace
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
from harmony.routing.retry import run_with_retry

log = structlog.get_logger("harmony.outbox.relay")
MAX_BACKOFF_SECONDS = 60.0


def default_relay_name() -> str:
    """Host, process and a random suffix: who holds a claim, as stored on the outbox row."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
        send_timeout_seconds: float = 5.0,
        name: str | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self._registry = registry
        self._clock = clock
        self._concurrency = concurrency
        self._sending = asyncio.Semaphore(concurrency)
        self._poll_seconds = poll_seconds
        self._max_attempts = max_attempts
        self._base_backoff = base_backoff_seconds
        self._lease_seconds = lease_seconds
        self._send_timeout = timedelta(seconds=send_timeout_seconds)
        # As many as `concurrency` senders get through in one lease; at least one round.
        rounds = max(1, int(lease_seconds // send_timeout_seconds))
        self._claim_limit = max(1, min(batch_size, concurrency * rounds))
        self.name = name or default_relay_name()
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
                self._clock.now(), self._claim_limit, self._lease_seconds, self.name
            )
            await uow.commit()
        if entries:
            await asyncio.gather(*(self._handle(entry) for entry in entries))
        return len(entries)

    async def drain(self, max_rounds: int = 1000) -> None:
        """Send until nothing is due (for tests and one-shot commands)."""
        for _ in range(max_rounds):
            if await self.run_once() == 0:
                return

    async def _handle(self, entry: OutboxEntry) -> None:
        message = entry.message
        with structlog.contextvars.bound_contextvars(
            interaction_id=message.interaction_id, message_id=message.id
        ):
            try:
                if entry.attempts > self._max_attempts:
                    await self._give_up_unrecorded(entry)
                else:
                    await self._send(entry)
            except Exception:
                # The row keeps its claim until the lease ends, then is claimed again with one
                # more attempt counted: bounded by max_attempts, never re-sent forever.
                log.exception("message_outcome_not_recorded", type=message.type)

    async def _send(self, entry: OutboxEntry) -> None:
        message = entry.message
        try:
            async with self._sending:
                held = await self._still_held(entry)
                if held is None:
                    log.warning("message_claim_lost_before_send", type=message.type)
                    return
                entry = held
                adapter = self._registry.get(message.target_kind, message.target)
                # One deadline for the whole send: an adapter's own timeouts may be per phase,
                # and a send that outlives the lease would race the replica that claims it next.
                try:
                    async with asyncio.timeout(self._send_timeout.total_seconds()):
                        await adapter.send(message)
                except TimeoutError as exc:
                    raise TransientAdapterError(
                        f"{message.type} to {message.target_kind}:{message.target}: no answer "
                        f"within {self._send_timeout.total_seconds():g} s"
                    ) from exc
        except TransientAdapterError as exc:
            await self._retry_or_give_up(entry, str(exc), exc.retry_after)
            return
        except (PermanentAdapterError, NotFound) as exc:
            log.warning("message_refused", type=message.type, error=str(exc))
            recorded = await run_with_retry(
                self._uow_factory,
                interactions.message_failed,
                self._clock,
                message,
                str(exc),
                claim_token=entry.claim_token,
            )
            self._note_if_dropped(recorded, entry, "dead")
            return
        except AdapterError as exc:
            await self._retry_or_give_up(entry, str(exc), None)
            return
        recorded = await run_with_retry(
            self._uow_factory,
            interactions.message_sent,
            self._clock,
            message,
            claim_token=entry.claim_token,
        )
        if recorded:
            log.debug("message_sent", type=message.type, attempt=entry.attempts)
        self._note_if_dropped(recorded, entry, "sent")

    async def _still_held(self, entry: OutboxEntry) -> OutboxEntry | None:
        """The entry if its lease covers one more send (renewed if it would not)."""
        now = self._clock.now()
        if now + self._send_timeout <= entry.lease_until:
            return entry
        # A lease shorter than one send would run out mid-request: cover the send at least.
        lease_until = now + max(timedelta(seconds=self._lease_seconds), self._send_timeout)
        async with self._uow_factory() as uow:
            renewed = await uow.outbox.renew(entry.message.id, entry.claim_token, lease_until)
            await uow.commit()
        return replace(entry, lease_until=lease_until) if renewed else None

    def _note_if_dropped(self, recorded: bool, entry: OutboxEntry, outcome: str) -> None:
        if not recorded:
            log.warning(
                "message_outcome_dropped",
                type=entry.message.type,
                outcome=outcome,
                detail="the claim was lost: another relay holds this message",
            )

    async def _give_up_unrecorded(self, entry: OutboxEntry) -> None:
        """Claimed more often than max_attempts without an outcome on record: stop sending."""
        message = entry.message
        error = (
            f"no outcome recorded after {self._max_attempts} attempts"
            f" (last error: {entry.last_error or 'none'})"
        )
        log.error("message_given_up", type=message.type, attempts=entry.attempts, error=error)
        try:
            recorded = await run_with_retry(
                self._uow_factory,
                interactions.message_failed,
                self._clock,
                message,
                error,
                claim_token=entry.claim_token,
            )
        except Exception:
            log.exception("message_failed_not_recorded", type=message.type)
            async with self._uow_factory() as uow:
                recorded = await uow.outbox.mark_dead(
                    message.id, entry.claim_token, self._clock.now(), error
                )
                await uow.commit()
        self._note_if_dropped(recorded, entry, "dead")

    async def _retry_or_give_up(
        self, entry: OutboxEntry, error: str, retry_after: float | None
    ) -> None:
        message = entry.message
        if entry.attempts >= self._max_attempts:
            log.error("message_given_up", type=message.type, attempts=entry.attempts, error=error)
            recorded = await run_with_retry(
                self._uow_factory,
                interactions.message_failed,
                self._clock,
                message,
                f"{error} (after {entry.attempts} tries)",
                claim_token=entry.claim_token,
            )
            self._note_if_dropped(recorded, entry, "dead")
            return
        delay = min(self._base_backoff * 2 ** (entry.attempts - 1), MAX_BACKOFF_SECONDS)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF_SECONDS * 10))
        log.warning(
            "message_retry", type=message.type, attempt=entry.attempts, delay=delay, error=error
        )
        async with self._uow_factory() as uow:
            recorded = await uow.outbox.mark_retry(
                message.id,
                entry.claim_token,
                self._clock.now() + timedelta(seconds=delay),
                error,
            )
            await uow.commit()
        self._note_if_dropped(recorded, entry, "retry")
