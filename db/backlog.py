"""What is waiting: the backlog histogram and the overdue summary for the admin CLI."""

from __future__ import annotations

from db.connection import PoolOwner
from db.models import BacklogStep, Overdue
from db.query_loader import query


class BacklogStore(PoolOwner):
    """Read-only queries over pending work."""

    async def histogram(self, *, window_seconds: int, step_seconds: int) -> list[BacklogStep]:
        """Pending timers per step over the coming window."""
        async with self.connection() as conn:
            cur = await conn.execute(
                query("backlog_histogram"), {"window": window_seconds, "step": step_seconds}
            )
            return [BacklogStep(at=r[0], pending=int(r[1])) for r in await cur.fetchall()]

    async def counts(self) -> tuple[int, int]:
        """Pending timers (due or not) and dead letters."""
        async with self.connection() as conn:
            cur = await conn.execute(query("backlog_counts"))
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async def overdue(self) -> Overdue:
        """The overdue summary."""
        async with self.connection() as conn:
            cur = await conn.execute(query("backlog_overdue"))
            row = await cur.fetchone()
        assert row is not None
        return Overdue(overdue=int(row[0]), oldest_age_seconds=row[1], in_flight=int(row[2]))
