"""The benchmark's arithmetic: percentiles, verdicts on a rate, and CPU and memory from /proc.

Pure functions apart from the /proc readers, so the rules that decide the reported figures are
unit-tested.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcessCpu",
    "RateVerdict",
    "best_rate",
    "max_sustained",
    "percentile",
    "postgres_cpu_ms",
    "proc_cpu_ms",
    "proc_rss_mb",
    "spread",
    "sustains",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# A rate is sustained when its goodput is within this fraction of what was offered...
GOODPUT_TOLERANCE = 0.05
# ...and create -> delivery p99 stays under this many milliseconds.
P99_LIMIT_MS = 1000.0
# The ladder of rates stops after the first whose goodput is below this fraction of offered.
STOP_BELOW = 0.90


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p95, p99 and max of ``values``, rounded to 0.1."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50)),
        "p95": rounded(percentile(values, 95)),
        "p99": rounded(percentile(values, 99)),
        "max": rounded(max(values)) if values else None,
    }


@dataclass(frozen=True)
class RateVerdict:
    """What one offered rate gave: the inputs of the verdicts below."""

    offered: float
    goodput: float
    p99_delivery_ms: float | None


def sustains(verdict: RateVerdict) -> bool:
    """Goodput within ``GOODPUT_TOLERANCE`` of offered and delivery p99 under the limit."""
    return (
        verdict.goodput >= verdict.offered * (1 - GOODPUT_TOLERANCE)
        and verdict.p99_delivery_ms is not None
        and verdict.p99_delivery_ms < P99_LIMIT_MS
    )


def falls_behind(verdict: RateVerdict) -> bool:
    """Goodput clearly below offered: the ladder of rates goes no higher."""
    return verdict.goodput < verdict.offered * STOP_BELOW


def max_sustained(verdicts: Iterable[RateVerdict]) -> float:
    """The best goodput among the sustained rates (0 if none was)."""
    return max((v.goodput for v in verdicts if sustains(v)), default=0.0)


def best_rate(verdicts: Sequence[RateVerdict]) -> tuple[float, str]:
    """The best sustained goodput, or, when no rate was sustained, the best goodput measured
    (the plateau), with which of the two it is."""
    sustained = max_sustained(verdicts)
    if sustained:
        return sustained, "sustained"
    return max((v.goodput for v in verdicts), default=0.0), "plateau"


def next_probe(verdicts: Sequence[RateVerdict]) -> float | None:
    """One more rate worth trying between the best sustained rate and the plateau, or None.

    When the rates that fell behind still routed clearly more than the best sustained one (the
    ladder's steps are coarse), 95% of that plateau is tried, rounded to a whole rate; when
    that rate was offered already, 95% of what the lowest rate missed routed instead.
    """
    best = max_sustained(verdicts)
    behind = sorted(
        (v for v in verdicts if falls_behind(v) or not sustains(v)), key=lambda v: v.offered
    )
    if not behind:
        return None
    tried = [v.offered for v in verdicts]
    for goodput in (max(v.goodput for v in behind), behind[0].goodput):
        probe = float(math.floor(goodput * 0.95))
        if probe > best * 1.05 and all(abs(offered - probe) >= 0.5 for offered in tried):
            return probe
    return None


# --- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after its closing one.
    return text[text.rindex(")") + 2 :].split()


def proc_cpu_ms(pid: int, children: bool = False) -> float:
    """User + system CPU of ``pid`` in ms (plus its waited-for children's when asked)."""
    fields = _stat_fields(pid)
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks * 1000.0 / CLOCK_TICKS


def proc_rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB, or None if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


@dataclass
class ProcessCpu:
    """CPU of one process between two readings."""

    pid: int
    children: bool = False
    start: float = 0.0

    def mark(self) -> None:
        """Start counting from now."""
        self.start = self.now()

    def now(self) -> float:
        """Total CPU ms so far (0 if the process is gone)."""
        try:
            return proc_cpu_ms(self.pid, self.children)
        except (OSError, ValueError, IndexError):
            return 0.0

    def since_mark(self) -> float:
        """CPU ms since ``mark``."""
        return self.now() - self.start


def postgres_cpu_ms(postmaster_pid: int) -> float:
    """CPU ms of the whole PostgreSQL server: the postmaster, its live children and (through
    the postmaster's ``cutime``) every child that has exited. Every database of the server
    counts, so other users of the same server show up here too."""
    total = proc_cpu_ms(postmaster_pid, children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(fields[1]) == postmaster_pid:
            total += (int(fields[11]) + int(fields[12])) * 1000.0 / CLOCK_TICKS
    return total


def machine_busy_ms() -> tuple[float, float]:
    """(busy, total) CPU ms of the whole machine since boot, summed over every core."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # guest time is already counted in user: leave it out of the sum
    total = sum(ticks[:8])
    return (total - idle) * 1000.0 / CLOCK_TICKS, total * 1000.0 / CLOCK_TICKS


class BackendCpu:
    """CPU of the PostgreSQL backends serving one database, sampled while a window runs.

    Backends come and go (a pool's overflow connections close), so the set is read again at
    each ``sample``: what a backend used before it exited is counted up to its last sample.
    """

    def __init__(self) -> None:
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def sample(self, pids: Iterable[int], fresh: bool = False) -> None:
        """Read the CPU of ``pids``; ``fresh`` marks the window's start (their CPU so far is
        not counted). A pid first seen later started inside the window: all its CPU counts."""
        for pid in pids:
            try:
                used = proc_cpu_ms(pid)
            except (OSError, ValueError, IndexError):
                continue
            if pid not in self._first:
                self._first[pid] = used if fresh else 0.0
            self._last[pid] = used

    def used_ms(self) -> float:
        """CPU ms the sampled backends used between their first and last samples."""
        return sum(self._last[pid] - self._first[pid] for pid in self._last)


def parent_pid(pid: int) -> int:
    """The parent of ``pid``."""
    return int(_stat_fields(pid)[1])
