"""What this dispatcher sent, counted per second until its next heartbeat reports it to the
database (db/stats.py), where /metrics and the dashboard read every dispatcher's sum."""

from __future__ import annotations

import bisect
import logging
from datetime import UTC, datetime

from db.connection import DatabaseUnavailable
from db.database import Database
from db.stats import BOUNDS, SecondStats
from dispatcher.sender import Result

log = logging.getLogger(__name__)


class SendStats:
    """Counts sends per second of their going out; ``report()`` adds them to the database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._seconds: dict[int, SecondStats] = {}
        self._lateness_sum = 0.0
        self._latency_sum = 0.0
        self.cap_waits = 0
        # outcomes not recorded because their lease had been taken over (stale tokens)
        self.stale = 0

    def observe(self, outcome: str, lateness: float, result: Result, fired_at: datetime) -> None:
        """Counts one attempt: its outcome, its lateness (due to sent, seconds) and latency."""
        second = int(fired_at.timestamp())
        stats = self._seconds.get(second)
        if stats is None:
            stats = self._seconds[second] = SecondStats(datetime.fromtimestamp(second, UTC))
        stats.counts[outcome] += 1
        lateness = max(0.0, lateness)
        latency = (result.latency_ms or 0.0) / 1000
        stats.lateness[bisect.bisect_left(BOUNDS, lateness)] += 1
        stats.latency[bisect.bisect_left(BOUNDS, latency)] += 1
        self._lateness_sum += lateness
        self._latency_sum += latency

    async def report(self) -> None:
        """Adds what was counted since the last report; kept for the next one if it fails."""
        if not self._seconds and not self.cap_waits and not self.stale:
            return
        seconds, self._seconds = self._seconds, {}
        sums = (self._lateness_sum, self._latency_sum, self.cap_waits, self.stale)
        self._lateness_sum = self._latency_sum = 0.0
        self.cap_waits = self.stale = 0
        try:
            await self.db.stats.add(
                list(seconds.values()), lateness_sum=sums[0], latency_sum=sums[1],
                cap_waits=sums[2], stale=sums[3],
            )  # fmt: skip
        except BaseException:
            self._merge_back(seconds, sums)
            raise

    def _merge_back(
        self, seconds: dict[int, SecondStats], sums: tuple[float, float, int, int]
    ) -> None:
        for second, old in seconds.items():
            new = self._seconds.setdefault(second, old)
            if new is not old:
                for outcome, n in old.counts.items():
                    new.counts[outcome] += n
                new.lateness = [a + b for a, b in zip(new.lateness, old.lateness, strict=True)]
                new.latency = [a + b for a, b in zip(new.latency, old.latency, strict=True)]
        self._lateness_sum += sums[0]
        self._latency_sum += sums[1]
        self.cap_waits += sums[2]
        self.stale += sums[3]

    async def final_report(self) -> None:
        """The last report, at a clean stop; what cannot be written is said once."""
        try:
            await self.report()
        except DatabaseUnavailable as exc:
            log.warning("the last send statistics were not written: %s", exc)
