"""The outbox relay: claims due messages, sends them with no transaction open, records outcomes.

Claiming is one short transaction that leases rows under a fresh claim token (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so several replicas share the work). Sending happens outside any
transaction. Outcomes are recorded through the routing interactions (retried if the database
aborts the transaction to break a deadlock), fenced by the claim token: if the lease ran out and
another relay claimed the row, this relay's outcome is dropped and its consequences (failing an
interaction, releasing an agent's capacity) do not happen.

Acknowledged sends, the common outcome, are recorded in batches: one recorder at a time writes,
in one transaction, every acknowledgement that arrived while the previous batch was being
written (so a lone message is recorded at once, and under load one transaction records many).
Failures and retries, which are rare, are recorded one message at a time.

Messages without an ordering key that a transaction of this process promises skip the claim:
they are inserted already leased to the running relay (``take``), which sends them once the
transaction commits; should the process die first, they are claimed again when the lease ends.

While running, a claimer keeps up to the claim limit of messages in hand, claiming again as
soon as a commit promises new ones (``wake``), a send frees room the last claim left none of,
or the outcome of an ordered message lets the next one of its order go; it does not wait for
the messages in hand to be done. Idle, it polls every ``poll_seconds``.

A relay claims only what it can send within the lease (``concurrency`` sends at a time, each
bounded by ``send_timeout_seconds``) and, before each send, checks that the lease still covers
it, renewing it if not; a row whose claim was lost meanwhile is not sent. A message whose
outcome could not be recorded is claimed again when its lease ends; attempts are counted at
claim, so after ``max_attempts`` claims it is given up without being sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

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


def full_jitter(ceiling: float) -> float:
    """A wait drawn evenly from 0 to ``ceiling`` seconds ("full jitter")."""
    return random.uniform(0.0, ceiling)


# A send the peer acknowledged, and the future its sender awaits: True once recorded, False
# if the claim was lost, None if the outcome could not be recorded.
Acknowledged = tuple[OutboxEntry, "asyncio.Future[bool | None]"]


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
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self._registry = registry
        self._clock = clock
        self._concurrency = concurrency
        self._sending = asyncio.Semaphore(concurrency)
        self._poll_seconds = poll_seconds
        self._max_attempts = max_attempts
        self._base_backoff = base_backoff_seconds
        # Full jitter: a retry waits a random time up to the exponential ceiling, so relays
        # that failed together (a peer down) do not all come back at the same instant.
        self._jitter = jitter or full_jitter
        self._lease_seconds = lease_seconds
        self._send_timeout = timedelta(seconds=send_timeout_seconds)
        # As many as `concurrency` senders get through in one lease; at least one round.
        rounds = max(1, int(lease_seconds // send_timeout_seconds))
        self._claim_limit = max(1, min(batch_size, concurrency * rounds))
        self.name = name or default_relay_name()
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        # What ``run`` holds: one task per claimed message until its outcome is recorded.
        self._in_hand: set[asyncio.Task[None]] = set()
        # Messages in hand waiting for a send slot, by id: since when (admission's relay lag).
        self._waiting_since: dict[str, datetime] = {}
        # Set when a claim filled the room in hand: more may be due once a message is done.
        self._room_ran_out = False
        # Acknowledged sends waiting for the recorder, each with its sender's answer.
        self._acknowledged: list[Acknowledged] = []
        self._recorder: asyncio.Task[None] | None = None

    @property
    def claimer(self) -> str:
        """Who holds this relay's claims, as stored on the rows (its name)."""
        return self.name

    @property
    def lease_seconds(self) -> float:
        """How long a claim of this relay lasts."""
        return self._lease_seconds

    def take(self, entries: list[OutboxEntry]) -> None:
        """Send messages a transaction inserted already claimed for this relay (called once it
        committed). Stopping, it leaves them: they are claimed again when their lease ends."""
        if self._stopping.is_set():
            return
        for entry in entries:
            self._take_in_hand(entry, waiting_since=entry.created_at)

    def oldest_waiting(self) -> datetime | None:
        """Since when the message in hand that has waited longest for a send slot has waited
        (None if none waits): messages handed over are due but not in the database's view."""
        return min(self._waiting_since.values(), default=None)

    def wake(self) -> None:
        """Called after a commit that wrote outbox rows, so they go out without polling delay."""
        self._wakeup.set()

    def stop(self) -> None:
        """Ask ``run`` to stop claiming and return once the messages in hand are done."""
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and send until stopped; an unexpected error is logged and the loop carries on."""
        try:
            while not self._stopping.is_set():
                # Cleared before claiming: a commit during the claim brings another round.
                self._wakeup.clear()
                room = self._claim_limit - len(self._in_hand)
                self._room_ran_out = room <= 0
                if room > 0:
                    try:
                        entries = await self._claim(room)
                    except Exception:
                        log.exception("relay_claim_failed")
                        entries = []
                    for entry in entries:
                        self._take_in_hand(entry)
                    self._room_ran_out = len(entries) >= room
                if not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), self._poll_seconds)
        finally:
            if self._in_hand:
                await asyncio.gather(*self._in_hand, return_exceptions=True)

    def _take_in_hand(self, entry: OutboxEntry, waiting_since: datetime | None = None) -> None:
        self._waiting_since[entry.message.id] = waiting_since or self._clock.now()
        task = asyncio.create_task(self._handle(entry), name=f"relay-{entry.message.id}")
        self._in_hand.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._in_hand.discard(finished)
            self._waiting_since.pop(entry.message.id, None)
            # The next message of an ordered message's order may be due now; and a claim that
            # filled the room left due messages behind.
            if self._room_ran_out or entry.message.ordering_key is not None:
                self._wakeup.set()

        task.add_done_callback(done)

    async def run_once(self) -> int:
        """Claim one batch of due messages, send them and record their outcomes; returns how
        many were claimed."""
        entries = await self._claim(self._claim_limit)
        if entries:
            await asyncio.gather(*(self._handle(entry) for entry in entries))
        return len(entries)

    async def drain(self, max_rounds: int = 1000) -> None:
        """Send until nothing is due (for tests and one-shot commands)."""
        for _ in range(max_rounds):
            if await self.run_once() == 0:
                return

    async def _claim(self, limit: int) -> list[OutboxEntry]:
        async with self._uow_factory() as uow:
            entries = await uow.outbox.claim_due(
                self._clock.now(), limit, self._lease_seconds, self.name
            )
            await uow.commit()
        return entries

    async def _handle(self, entry: OutboxEntry) -> None:
        message = entry.message
        # Tokens, not ``bound_contextvars``, which copies every context variable to save them.
        tokens = structlog.contextvars.bind_contextvars(
            interaction_id=message.interaction_id, message_id=message.id
        )
        try:
            if entry.attempts > self._max_attempts:
                await self._give_up_unrecorded(entry)
            else:
                await self._send(entry)
        except Exception:
            # The row keeps its claim until the lease ends, then is claimed again with one
            # more attempt counted: bounded by max_attempts, never re-sent forever.
            log.exception("message_outcome_not_recorded", type=message.type)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _send(self, entry: OutboxEntry) -> None:
        message = entry.message
        async with self._sending:
            self._waiting_since.pop(message.id, None)
            held = await self._still_held(entry)
            if held is None:
                log.warning("message_claim_lost_before_send", type=message.type)
                return
            entry = held
            try:
                await self._deliver(entry)
            except (AdapterError, NotFound) as exc:
                failure: AdapterError | NotFound = exc
            else:
                # Recorded before the slot is given back: a sender holds no more unrecorded
                # sends than it has slots, and the next send waits for this outcome.
                outcome = await self._record_sent(entry)
                if outcome:
                    log.debug("message_sent", type=message.type, attempt=entry.attempts)
                elif outcome is not None:  # None: the recorder logged why
                    self._note_if_dropped(outcome, entry, "sent")
                return
        await self._record_failure(entry, failure)

    async def _deliver(self, entry: OutboxEntry) -> None:
        message = entry.message
        adapter = self._registry.get(message.target_kind, message.target)
        # One deadline for the whole send: an adapter's own timeouts may be per phase, and a
        # send that outlives the lease would race the replica that claims it next.
        try:
            async with asyncio.timeout(self._send_timeout.total_seconds()):
                await adapter.send(message)
        except TimeoutError as exc:
            raise TransientAdapterError(
                f"{message.type} to {message.target_kind}:{message.target}: no answer "
                f"within {self._send_timeout.total_seconds():g} s"
            ) from exc

    async def _record_failure(self, entry: OutboxEntry, failure: AdapterError | NotFound) -> None:
        """A failed send, recorded on its own: retried later, or given up on."""
        message = entry.message
        if isinstance(failure, TransientAdapterError):
            await self._retry_or_give_up(entry, str(failure), failure.retry_after)
        elif isinstance(failure, PermanentAdapterError | NotFound):
            log.warning("message_refused", type=message.type, error=str(failure))
            recorded = await run_with_retry(
                self._uow_factory,
                interactions.message_failed,
                self._clock,
                message,
                str(failure),
                claim_token=entry.claim_token,
            )
            self._note_if_dropped(recorded, entry, "dead")
        else:
            await self._retry_or_give_up(entry, str(failure), None)

    async def _record_sent(self, entry: OutboxEntry) -> bool | None:
        """Hand an acknowledged send to the recorder: True once recorded, False if the claim
        was lost, None if the outcome could not be recorded."""
        answer: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._acknowledged.append((entry, answer))
        if self._recorder is None or self._recorder.done():
            # A context of its own: not the log context of the sender that happened to start it.
            self._recorder = asyncio.create_task(
                self._record_acknowledged(), name="relay-record", context=contextvars.Context()
            )
        return await answer

    async def _record_acknowledged(self) -> None:
        """Record what was acknowledged, one transaction per batch, until nothing is left."""
        batch: list[Acknowledged] = []
        try:
            while self._acknowledged:
                batch, self._acknowledged = self._acknowledged, []
                await self._record_batch(batch)
        finally:
            # Cancelled mid-batch (shutdown): no sender waits for ever.
            for _, answer in (*batch, *self._acknowledged):
                if not answer.done():
                    answer.set_result(None)

    async def _record_batch(self, batch: list[Acknowledged]) -> None:
        try:
            recorded = await run_with_retry(
                self._uow_factory,
                interactions.messages_sent,
                self._clock,
                [(entry.message, entry.claim_token) for entry, _ in batch],
            )
        except Exception:
            if len(batch) == 1:
                self._answer_unrecorded(batch)
            else:
                # One message whose consequences cannot be applied must not hold back the
                # others: each is recorded on its own.
                log.warning("message_batch_not_recorded", count=len(batch), exc_info=True)
                await asyncio.gather(*(self._record_one(item) for item in batch))
            return
        for entry, answer in batch:
            if not answer.done():
                answer.set_result(entry.message.id in recorded)

    async def _record_one(self, item: Acknowledged) -> None:
        entry, answer = item
        try:
            recorded = await run_with_retry(
                self._uow_factory,
                interactions.message_sent,
                self._clock,
                entry.message,
                claim_token=entry.claim_token,
            )
        except Exception:
            self._answer_unrecorded([item])
            return
        if not answer.done():
            answer.set_result(recorded)

    def _answer_unrecorded(self, batch: list[Acknowledged]) -> None:
        for entry, answer in batch:
            log.exception(
                "message_outcome_not_recorded",
                type=entry.message.type,
                interaction_id=entry.message.interaction_id,
                message_id=entry.message.id,
            )
            if not answer.done():
                answer.set_result(None)

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
        ceiling = min(self._base_backoff * 2 ** (entry.attempts - 1), MAX_BACKOFF_SECONDS)
        delay = self._jitter(ceiling)
        if retry_after is not None:
            # The peer's own word is a floor: never sooner than it asked.
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
