"""What /metrics, /dispatchers and the dashboard show, read from the database and cached.

Everything here describes the whole deployment, not this process: the send statistics are
what every dispatcher reported (db/stats.py), the backlog and registry are tables. So the
figures are right whether the dispatchers run in this process (``serve``) or elsewhere.

Each read is cached for a few seconds and shared by every caller (one query in flight per
figure, however many scrapers and dashboards poll), so looking never costs a scan per look.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

from core.caps import Cap
from db.database import Database
from db.models import BacklogStep, Dispatcher, Overdue, TimerSummary
from db.stats import BOUNDS, OUTCOMES, SecondStats, Totals

T = TypeVar("T")

# How long a figure read from the database is served before it is read again (seconds), and
# the longest it is kept after a slow read; the dashboard polls every second, so a change shows
# on the page within about two seconds.
FRESH_SECONDS = 0.5
MAX_HOLD_SECONDS = 1.5
# The dashboard's history: the last 15 minutes, one point per 5 seconds.
HISTORY_SECONDS = 900
HISTORY_STEP = 5
# Crashed dispatchers (no heartbeat, never deregistered) stay listed this long.
GONE_AFTER_SECONDS = 3600.0


class ProcessMetrics:
    """The metrics the API keeps itself, in its own registry (several apps in one process, as
    in the tests, never collide). Under ``timerhook api --workers N`` (PROMETHEUS_MULTIPROC_DIR
    set by the parent) the workers' counters are summed from prometheus-client's shared files,
    so whichever worker answers a scrape shows every worker's creates."""

    def __init__(self) -> None:
        # No `_created` timestamp series beside each counter (prometheus-client's default):
        # Prometheus does not use them, and they double the lines of the page.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = CollectorRegistry()
        self.created = Counter(
            "timerhook_timers_created", "Timers created through this API.", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.created_once = self.created.labels(kind="once")
        self.created_recurring = self.created.labels(kind="recurring")
        self.shared = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        if self.shared:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            ProcessCollector(registry=self.registry)


class Cached(Generic[T]):
    """An async read kept for ``ttl`` seconds, or longer when the read is slow: a read that
    took d seconds is kept d / ``share`` seconds (at most ``max_hold``), so that polling keeps
    the database busy at most ``share`` of the time with it. Concurrent callers share one
    read."""

    def __init__(
        self, read: Callable[[], Awaitable[T]], ttl: float, *, share: float = 0.1,
        max_hold: float = MAX_HOLD_SECONDS,
    ) -> None:  # fmt: skip
        self._read = read
        self._ttl = ttl
        self._share = share
        self._max_hold = max(ttl, max_hold)
        self._hold = ttl
        self._value: T | None = None
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._at < self._hold

    async def get(self) -> T:
        """The cached value, read again once it is older than its hold time."""
        if self._fresh():
            assert self._value is not None
            return self._value
        async with self._lock:
            if not self._fresh():
                started = time.monotonic()
                self._value = await self._read()
                self._at = time.monotonic()
                slow = (self._at - started) / self._share
                self._hold = max(self._ttl, min(slow, self._max_hold))
            assert self._value is not None
            return self._value


@dataclass(frozen=True, slots=True)
class Counts:
    """Pending and dead timers, and the overdue summary."""

    pending: int
    dead: int
    overdue: Overdue


@dataclass(frozen=True, slots=True)
class Point:
    """One step of the dashboard's history."""

    at: datetime
    sent_per_second: float
    failed_per_second: float
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None


def quantile(q: float, buckets: Sequence[int], bounds: Sequence[float] = BOUNDS) -> float | None:
    """The q-quantile of a histogram (per-bucket counts, the last one past every bound),
    interpolated linearly inside its bucket as Prometheus' histogram_quantile does; None for
    an empty histogram; the last bound when the quantile lies past it."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]


def history(
    seconds: Sequence[SecondStats], *, end: datetime, span: int = HISTORY_SECONDS,
    step: int = HISTORY_STEP,
) -> list[Point]:  # fmt: skip
    """Per-second statistics binned into ``step``-second points over the ``span`` before
    ``end``, with no gaps: a step without sends is a zero (and no lateness)."""
    last = int(end.timestamp()) // step * step
    first = last - span + step
    sent = [0] * (span // step)
    failed = [0] * (span // step)
    lateness = [[0] * (len(BOUNDS) + 1) for _ in range(span // step)]
    for s in seconds:
        i = (int(s.second.timestamp()) // step * step - first) // step
        if not 0 <= i < len(sent):
            continue
        sent[i] += sum(s.counts.values())
        failed[i] += sum(s.counts[o] for o in OUTCOMES if o != "delivered")
        lateness[i] = [a + b for a, b in zip(lateness[i], s.lateness, strict=True)]
    points = []
    for i in range(len(sent)):
        p50, p99 = quantile(0.5, lateness[i]), quantile(0.99, lateness[i])
        point = Point(
            at=datetime.fromtimestamp(first + i * step, UTC),
            sent_per_second=sent[i] / step, failed_per_second=failed[i] / step,
            lateness_p50_ms=None if p50 is None else p50 * 1000,
            lateness_p99_ms=None if p99 is None else p99 * 1000,
        )  # fmt: skip
        points.append(point)
    return points


class Observer:
    """The cached figures of one API process."""

    def __init__(self, db: Database, *, dead_after_seconds: float) -> None:
        self.db = db
        self.dead_after_seconds = dead_after_seconds
        self.counts = Cached(self._counts, FRESH_SECONDS)
        self.totals: Cached[Totals] = Cached(db.stats.totals, FRESH_SECONDS)
        self.caps: Cached[list[Cap]] = Cached(db.caps.list, FRESH_SECONDS)
        self.dispatchers = Cached(self._dispatchers, FRESH_SECONDS)
        self.dead_letters = Cached(self._dead_letters, FRESH_SECONDS)
        self.recent = Cached(self._recent, FRESH_SECONDS)
        self.backlog_minute = Cached(lambda: self._backlog(60, 1), FRESH_SECONDS)
        self.backlog_hour = Cached(lambda: self._backlog(3600, 60), FRESH_SECONDS)
        self.backlog_day = Cached(lambda: self._backlog(86_400, 3600), FRESH_SECONDS)

    async def _counts(self) -> Counts:
        pending, dead = await self.db.backlog.counts()
        return Counts(pending=pending, dead=dead, overdue=await self.db.backlog.overdue())

    async def _dispatchers(self) -> list[Dispatcher]:
        rows = await self.db.dispatchers.list(dead_after_seconds=self.dead_after_seconds)
        now = datetime.now(UTC)
        # Stopped ones for a minute (a restart shows), crashed ones for an hour.
        return [
            d
            for d in rows
            if d.alive
            or (now - d.heartbeat_at).total_seconds()
            < (60.0 if d.stopped_at is not None else GONE_AFTER_SECONDS)
        ]

    async def _dead_letters(self) -> list[TimerSummary]:
        return await self.db.timers.listing(states=["dead"], limit=20)

    async def _recent(self) -> list[Point]:
        seconds = await self.db.stats.recent(seconds=HISTORY_SECONDS + HISTORY_STEP)
        return history(seconds, end=datetime.now(UTC))

    async def _backlog(self, window: int, step: int) -> list[BacklogStep]:
        return await self.db.backlog.histogram(window_seconds=window, step_seconds=step)
