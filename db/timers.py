"""Reading timers: one by id (straight to its partition), listings, attempts, counts, and
what the next pass would look at."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from core.ids import bucket_of
from core.plan import PlanRow
from core.states import TIMER_STATES, TimerState
from db.connection import PoolOwner
from db.models import Attempt, Timer, TimerSummary
from db.query_loader import query


class TimerStore(PoolOwner):
    """The reads of the timers table."""

    async def get(
        self, timer_id: uuid.UUID, *, tenant: str | None = None, now: datetime | None = None
    ) -> Timer | None:
        """The timer with this id, looked up in the one partition its id names; with
        ``tenant``, only if it belongs to that tenant."""
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "tenant": tenant, "now": now}
        return await self.fetch_one("timer_get", Timer, params)

    async def plan_candidates(
        self, *, lookahead_seconds: float, limit: int, now: datetime | None = None
    ) -> list[PlanRow]:
        """What the next pass would look at (``timerhook plan``)."""
        params = {"lookahead": lookahead_seconds, "limit": limit, "now": now}
        return await self.fetch_all("plan_candidates", PlanRow, params)

    async def counts(self) -> dict[str, int]:
        """How many timers are in each state."""
        async with self.connection() as conn:
            cur = await conn.execute(query("timer_counts"))
            return {str(state): int(n) for state, n in await cur.fetchall()}

    async def listing(
        self,
        *,
        states: Sequence[TimerState] = TIMER_STATES,
        limit: int,
        after: uuid.UUID | None = None,
        tenant: str | None = None,
        once_only: bool = False,
    ) -> list[TimerSummary]:
        """Up to ``limit`` timers in the given states (of ``tenant``, when given), in id (due)
        order after ``after``; ``once_only``: not the occurrences of recurring timers."""
        params = {
            "tenant": tenant,
            "once_only": once_only,
            "states": list(states),
            "limit": limit,
            "after": after,
            "after_bucket": bucket_of(after) if after else None,
        }
        # A generic plan: planned once per connection, not over every partition per page.
        return await self.fetch_all("timer_list", TimerSummary, params, generic=True)

    async def attempts(self, timer_id: uuid.UUID) -> list[Attempt]:
        """Every recorded attempt of a timer, oldest first."""
        params = {"id": timer_id, "bucket": bucket_of(timer_id)}
        return await self.fetch_all("attempt_list", Attempt, params)
