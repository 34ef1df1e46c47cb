"""Small fakes for what crosses the network (a CRM or ACD adapter) and for time (a clock).

For Harmony's own tests and for yours. The store is never faked: use cases run on the real SQL
unit of work (``harmony.db``; a SQLite file is cheap)::

    clock = FakeClock()
    acd = FakeAdapter(TargetKind.ACD)
    registry = AdapterRegistry()
    registry.register(acd)
    db = Database("sqlite+aiosqlite:///test.db", clock.now)
    await db.migrate()
    await interactions.receive_interaction(db.uow, clock, ...)
    await Relay(db.uow, registry, clock).drain()
    assert acd.sent_of_type("routing.requested")

``FakeClock`` is a settable clock; ``FakeAdapter`` is a CRM or ACD that records what it is sent
and fails on demand.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta

from harmony.adapters.base import AdapterError, PermanentAdapterError, TransientAdapterError
from harmony.adapters.generic_http.signing import Signer
from harmony.routing.messages import OutboundMessage, TargetKind

__all__ = ["FakeAdapter", "FakeClock"]


def _as_utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"FakeClock needs a timezone-aware datetime, got {at!r}")
    return at.astimezone(UTC)


class FakeClock:
    """A clock that moves only when told to (implements the ``Clock`` port)."""

    DEFAULT_START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

    def __init__(self, start: datetime | None = None) -> None:
        """Start at ``start`` (timezone-aware), or at 2026-01-01 09:00 UTC."""
        self._now = _as_utc(start or self.DEFAULT_START)

    def now(self) -> datetime:
        """The current fake time, timezone-aware UTC."""
        return self._now

    def set(self, at: datetime) -> None:
        """Jump to ``at`` (timezone-aware; kept in UTC), forwards or backwards."""
        self._now = _as_utc(at)

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds) and return the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("FakeClock.advance() only moves forward; use set() to go back")
        self._now += step
        return self._now


class FakeAdapter:
    """A CRM or ACD in memory (implements ``harmony.adapters.base.Adapter``).

    Every call to ``send`` is recorded in ``attempts``; the ones that succeed also in ``sent``.
    ``fail_next`` queues failures that the next sends raise, in order.
    """

    def __init__(
        self, kind: TargetKind, name: str = "generic", *, secret: str | None = None
    ) -> None:
        """``secret`` (``whsec_...``) makes ``verify_inbound`` check Standard Webhooks
        signatures for real; without it every inbound request is accepted."""
        self.kind: TargetKind = kind
        self.name: str = name
        self.sent: list[OutboundMessage] = []
        self.attempts: list[OutboundMessage] = []
        self._failures: deque[AdapterError] = deque()
        self._signer = Signer(secret) if secret is not None else None

    def verify_inbound(self, body: bytes, headers: dict[str, str]) -> None:
        """Raise ``SignatureError`` unless signed with the secret (when one was given)."""
        if self._signer is not None:
            self._signer.verify(body, headers)

    async def send(self, message: OutboundMessage) -> None:
        """Record the message, then raise the next queued failure if there is one."""
        self.attempts.append(message)
        if self._failures:
            raise self._failures.popleft()
        self.sent.append(message)

    def fail_next(
        self,
        count: int = 1,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        reason: str = "simulated failure",
    ) -> None:
        """Make the next ``count`` sends fail, transiently (the default) or permanently."""
        for _ in range(count):
            error: AdapterError
            what = f"{self.kind.value}:{self.name}: {reason}"
            if permanent:
                error = PermanentAdapterError(what)
            else:
                error = TransientAdapterError(what, retry_after)
            self._failures.append(error)

    def fail_with(self, error: AdapterError) -> None:
        """Make the next send raise exactly ``error``."""
        self._failures.append(error)

    def clear_failures(self) -> None:
        """Forget failures queued but not raised yet."""
        self._failures.clear()

    @property
    def pending_failures(self) -> int:
        """How many queued failures the next sends will still raise."""
        return len(self._failures)

    def sent_of_type(self, message_type: str) -> list[OutboundMessage]:
        """The messages of one type this adapter acknowledged, in order."""
        return [message for message in self.sent if message.type == message_type]
