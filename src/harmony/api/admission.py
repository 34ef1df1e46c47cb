"""Admission control for inbound events: refuse early and cheaply what cannot be taken now.

Two checks, each answered ``503 {"error": "overloaded", ...}`` with ``Retry-After``, which the
protocol tells senders to retry; a refused event is not stored, so its retry is its first
delivery:

- **Slots.** At most ``max_inflight`` events are applied at once. An event that finds every
  slot taken waits ``wait_seconds`` at most for one. The slot covers the use case only: the
  body is read, verified and parsed first (microseconds of work for a body in hand), so a
  sender that trickles its bytes cannot hold a slot. Bounding the use cases bounds the database
  connections inbound work holds, so the relay, which shares the pool, is never queued behind it.
- **Relay lag.** Events that start new work (``interaction.created``) are refused while the
  oldest outbound message a relay could send has been due for more than ``max_lag_seconds``:
  the relays are not keeping up, and more new work would only lengthen every delivery. Events
  about work already under way (a selection, an acceptance, a completion, agent state) are
  still taken, since they finish it. The lag is sampled by ``run`` every ``sample_seconds``
  (one indexed query), never per request. It is measured in seconds rather than messages so
  that one setting fits a fast machine and a slow one.

Operator endpoints and health checks never pass through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from harmony.errors import HarmonyError
from harmony.routing import commands

__all__ = ["Admission", "Overloaded"]

log = structlog.get_logger("harmony.admission")

# Between two `inbound_refused` warnings: one line per interval under sustained overload.
LOG_EVERY_SECONDS = 10.0
# The least an event that finishes work under way waits for a slot before it is refused.
FINISHING_WAIT_SECONDS = 1.0


class Overloaded(HarmonyError):
    """Harmony cannot take this event now; nothing was stored, the sender should retry after
    ``retry_after`` seconds."""

    status_code = 503
    code = "overloaded"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class _Slot:
    """What ``Admission.slot`` returns: the slots an event holds while it is applied (a plain
    class: every event enters one, and generator-based context managers cost several times
    more)."""

    __slots__ = ("_admission", "_held", "_new_work")

    def __init__(self, admission: Admission, new_work: bool) -> None:
        self._admission = admission
        self._new_work = new_work
        self._held: tuple[asyncio.Semaphore, ...] = ()

    async def __aenter__(self) -> None:
        admission = self._admission
        if self._new_work:
            await admission._take(admission._new_work_slots, admission._wait)
            try:
                await admission._take(admission._slots, admission._wait)
            except BaseException:
                admission._new_work_slots.release()
                raise
            self._held = (admission._new_work_slots, admission._slots)
        else:
            await admission._take(admission._slots, max(admission._wait, FINISHING_WAIT_SECONDS))
            self._held = (admission._slots,)
        admission.in_flight += 1

    async def __aexit__(self, *_: object) -> None:
        self._admission.in_flight -= 1
        for slots in self._held:
            slots.release()
        self._held = ()


class Admission:
    """The slots and the lag check of the inbound event routes (one per process)."""

    def __init__(
        self,
        *,
        max_inflight: int,
        wait_seconds: float,
        retry_after_seconds: int,
        max_lag_seconds: float,
        read_lag: Callable[[], Awaitable[float]] | None = None,
        sample_seconds: float = 0.25,
    ) -> None:
        """``read_lag()`` is how long the oldest message a relay could send has been due, in
        seconds (0 if none is); without it, or with ``max_lag_seconds`` 0, there is no lag
        check."""
        self._slots = asyncio.Semaphore(max_inflight)
        # New interactions may hold all but a quarter of the slots: under a flood of creates,
        # the callbacks that finish work already taken (selections, acceptances, completions)
        # still find a slot, so accepted work keeps moving while new work is refused.
        self._new_work_slots = asyncio.Semaphore(max(1, max_inflight - max(1, max_inflight // 4)))
        self.max_inflight = max_inflight
        self._wait = wait_seconds
        self._retry_after = retry_after_seconds
        self._max_lag = max_lag_seconds
        self._read_lag = read_lag if max_lag_seconds > 0 else None
        self._sample_seconds = sample_seconds
        self.relay_lag = 0.0
        self.in_flight = 0
        self.refused: dict[str, int] = {"busy": 0, "lag": 0}
        self._logged: dict[str, int] = dict(self.refused)
        self._logged_at = 0.0
        self._stopping = asyncio.Event()

    def check_new_work(self, command: commands.Command) -> None:
        """Raise ``Overloaded`` if ``command`` starts new work while the relays lag behind."""
        if (
            self._read_lag is not None
            and self.relay_lag > self._max_lag
            and isinstance(command, commands.CreateInteraction)
        ):
            self.refused["lag"] += 1
            raise Overloaded(
                f"outbound messages have waited {self.relay_lag:.1f} s to be relayed (more "
                f"than {self._max_lag:g} s); new interactions are refused until they catch up",
                retry_after=self._retry_after,
            )

    def slot(self, command: commands.Command) -> _Slot:
        """Hold one of the ``max_inflight`` slots for the ``async with`` block (a new
        interaction: one of the slots new work may use, too); raise ``Overloaded`` if none
        frees up within the wait.

        Events that finish work under way wait up to a second at least: refusing them only
        delays work already accepted, by the sender's Retry-After."""
        return _Slot(self, isinstance(command, commands.CreateInteraction))

    async def _take(self, slots: asyncio.Semaphore, wait: float) -> None:
        if not slots.locked():
            await slots.acquire()
            return
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                await slots.acquire()
        except TimeoutError:
            self.refused["busy"] += 1
            raise Overloaded(
                f"{self.max_inflight} events are being applied; none finished within {wait:g} s",
                retry_after=self._retry_after,
            ) from None

    async def sample(self) -> float:
        """Read the relay lag now (what ``run`` does periodically) and return it."""
        if self._read_lag is not None:
            self.relay_lag = await self._read_lag()
        return self.relay_lag

    def stop(self) -> None:
        """Ask ``run`` to return."""
        self._stopping.set()

    async def run(self) -> None:
        """Sample the relay lag until stopped, and log refusals at most every 10 s."""
        while not self._stopping.is_set():
            try:
                await self.sample()
            except Exception:
                # A failed sample keeps the last value: the database's own errors show where
                # the requests that need it fail.
                log.warning("relay_lag_sample_failed", exc_info=True)
            self._log_refusals()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._sample_seconds)

    def _log_refusals(self) -> None:
        now = time.monotonic()
        if self.refused == self._logged or now - self._logged_at < LOG_EVERY_SECONDS:
            return
        log.warning(
            "inbound_refused",
            busy=self.refused["busy"] - self._logged["busy"],
            lag=self.refused["lag"] - self._logged["lag"],
            relay_lag_seconds=round(self.relay_lag, 3),
            max_inflight=self.max_inflight,
            max_relay_lag_seconds=self._max_lag,
        )
        self._logged = dict(self.refused)
        self._logged_at = now
