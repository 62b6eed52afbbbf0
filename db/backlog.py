"""What is waiting: the backlog histogram, the overdue summary and the counts, for the admin
CLI, /metrics and the dashboard. Each reads every partition, so each runs with a generic plan
(``PoolOwner.rows``): its cost does not grow with the horizon's partitions."""

from __future__ import annotations

import re

from db.connection import PoolOwner
from db.models import BacklogStep, Overdue

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The longest backlog window shown: the horizon and a day.
MAX_WINDOW_SECONDS = 366 * 86400


def window_seconds(text: str) -> int | None:
    """'90s', '10m', '2h', '1d' as seconds (at most MAX_WINDOW_SECONDS); None if not one."""
    match = re.fullmatch(r"(\d{1,6})([smhd])", text.strip())
    if not match or int(match.group(1)) == 0:
        return None
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    return seconds if seconds <= MAX_WINDOW_SECONDS else None


def step_for(window: int) -> int:
    """A histogram step that gives at most about 60 steps for the window."""
    for step in (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 21600, 86400):
        if window / step <= 60:
            return step
    return 86400


class BacklogStore(PoolOwner):
    """Read-only queries over pending work."""

    async def histogram(self, *, window_seconds: int, step_seconds: int) -> list[BacklogStep]:
        """Pending timers per step over the coming window."""
        params = {"window": window_seconds, "step": step_seconds}
        rows = await self.rows("backlog_histogram", params, generic=True)
        return [BacklogStep(at=r[0], pending=int(r[1])) for r in rows]

    async def counts(self) -> tuple[int, int]:
        """Pending timers (due or not) and dead letters."""
        (row,) = await self.rows("backlog_counts", {}, generic=True)
        return int(row[0]), int(row[1])

    async def overdue(self) -> Overdue:
        """The overdue summary."""
        (row,) = await self.rows("backlog_overdue", {}, generic=True)
        return Overdue(overdue=int(row[0]), oldest_age_seconds=row[1], in_flight=int(row[2]))
