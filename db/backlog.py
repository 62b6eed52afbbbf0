"""What is waiting: the backlog histogram, the overdue summary and the counts, for the admin
CLI, /metrics and the dashboard. Each reads every partition, so each runs with a generic plan
(``PoolOwner.rows``): its cost does not grow with the horizon's partitions."""

from __future__ import annotations

from db.connection import PoolOwner
from db.models import BacklogStep, Overdue


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
