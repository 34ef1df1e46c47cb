"""Queues as read a moment ago, kept by the process for the hot path.

Every new interaction names its queue, and a queue's definition (channel, skills) changes
rarely: reading it again for each creation cost one of the creation's two round trips on
PostgreSQL. ``RecentQueues`` keeps what was read for ``ttl`` seconds (default 1). A change made
through this process is seen at once (``forget`` on upsert); one made by another replica is
seen within ``ttl``, as if the creation had arrived that much earlier. A name not found is not
kept, so a queue created elsewhere is found at once. The cache is bounded: past ``limit`` names
it is cleared (a contact center has tens or hundreds of queues, not thousands).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harmony.routing.model import Queue

__all__ = ["RecentQueues"]

DEFAULT_TTL_SECONDS = 1.0
DEFAULT_LIMIT = 10_000


class RecentQueues:
    """Queues by name, each kept ``ttl`` seconds after it was read (by ``monotonic``)."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._limit = limit
        self._kept: dict[str, tuple[float, Queue]] = {}

    def get(self, name: str) -> Queue | None:
        """The queue if read less than ``ttl`` seconds ago (a copy: callers may not share it)."""
        kept = self._kept.get(name)
        if kept is None:
            return None
        until, queue = kept
        if self._monotonic() >= until:
            del self._kept[name]
            return None
        return _copy(queue)

    def keep(self, queue: Queue) -> None:
        """Remember ``queue`` as just read."""
        if len(self._kept) >= self._limit:
            self._kept.clear()
        copy = _copy(queue)
        self._kept[queue.name] = (self._monotonic() + self._ttl, copy)

    def forget(self, name: str) -> None:
        """Drop ``name``: this process is changing it."""
        self._kept.pop(name, None)


def _copy(queue: Queue) -> Queue:
    # The constructor, not dataclasses.replace: a third of the cost, on every event's read.
    return Queue(
        queue.name,
        queue.channel,
        list(queue.skills),
        queue.offer_timeout_seconds,
        queue.routing_timeout_seconds,
        queue.max_wait_seconds,
        queue.max_offers,
        queue.overflow_queue,
    )
