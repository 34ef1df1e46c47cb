"""What ``harmony bench`` is asked to do (cheap to import: the CLI reads it to build --help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_ADMIN_DSN", "PARTS", "BenchOptions"]

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_RATES = (10.0, 20.0, 40.0, 60.0, 80.0, 120.0, 160.0, 240.0, 320.0, 480.0, 640.0)
QUICK_RATES = (10.0, 20.0, 40.0, 80.0)
# The scale runs' baseline has this many waiting emails (and --agents agents).
SCALE_FEW_WAITING = 100
# Parts that --skip may name.
PARTS = ("ladder", "overload", "ceiling", "scale", "sims", "replicas")


@dataclass
class BenchOptions:
    """What ``harmony bench`` was asked to do."""

    admin_dsn: str = DEFAULT_ADMIN_DSN
    rates: tuple[float, ...] = DEFAULT_RATES
    duration: float = 10.0
    warmup: float = 2.0
    agents: int = 100
    quick: bool = False
    out: Path = Path("bench/results")
    skip: frozenset[str] = frozenset()
    wrk_connections: int = 32
    scale_agents: int = 10_000
    scale_waiting: int = 50_000
    # Seconds each phase may wait for the rest of a shared machine to go quiet.
    quiet_wait: float = 30.0
    # Seconds a phase waits for the backlog of its arrivals to drain.
    drain: float = 60.0
    keep_workdir: bool = False
    progress: Any = field(default=None, repr=False)

    @classmethod
    def quick_defaults(cls, **given: Any) -> BenchOptions:
        """The short run: fewer, shorter phases and only the main parts."""
        options = cls(**given)
        if "rates" not in given:
            options.rates = QUICK_RATES
        if "duration" not in given:
            options.duration = 4.0
        if "warmup" not in given:
            options.warmup = 1.0
        if "quiet_wait" not in given:
            options.quiet_wait = 3.0
        options.drain = 15.0
        options.skip = options.skip | {"scale", "sims", "replicas"}
        return options
