"""The wall clock, behind the routing core's Clock port."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """Real time in UTC."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)
