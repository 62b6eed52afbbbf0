"""SLA windows: spreading windowed timers at the lowest steady rate that meets every deadline.

A windowed timer may be sent at any moment from its due time to its deadline; the rate needed
now is ``core.windows.yds_rate`` over the windowed work released (due by now).

``WindowStore.plan`` is the shared planner: every dispatcher calls it once a tick; one row
(``window_pacer``) holds where the sends planned so far end, so that the fleet plans one
stream, not one per dispatcher. A plan picks the next rows
(earliest deadline first) and gives each a run_at spread evenly over the planned interval,
never before its due time nor after its deadline; the key claims then send them at exactly
that instant, like any timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from core.windows import yds_rate
from db.connection import PoolOwner
from db.query_loader import query

# Rows one plan gives instants to at most.
MAX_PER_PLAN = 50_000
# The statements over timers here run prepared from their first run (psycopg prepares a
# statement on its fifth otherwise): until then each run is planned over every partition,
# 100 ms and more at the default horizon, which made the first seconds of a windowed stream
# uneven (bench.windows).


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """What one plan did: the rate it planned at, and the rows it gave instants to."""

    rate: float
    planned: int


class WindowStore(PoolOwner):
    """The window planner's queries."""

    async def work(self, *, lookahead_seconds: float) -> list[tuple[datetime, int]]:
        """The released windowed work not yet planned, per tenth of a second of deadline (for
        GET /backlog and ``timerhook backlog``)."""
        rows = await self.rows(
            "window_work", {"now": None, "lookahead": lookahead_seconds}, generic=True
        )
        return [(r[0], int(r[1])) for r in rows]

    async def plan(
        self, *, lookahead_seconds: float, ahead_seconds: float, now: datetime | None = None,
        hold: bool = False,
    ) -> WindowPlan:  # fmt: skip
        """Plans the windowed sends of the fleet up to now + ``ahead_seconds``, from where the
        last plan (of any dispatcher) ended, at the YDS rate of the work released now.
        ``hold``: the global cap binds: timers without a window take its tokens first, so only
        the windowed rows that cannot wait any longer are planned."""
        async with self.connection() as conn, conn.transaction():
            cur = await conn.execute(query("window_pacer_lock"), {"now": now})
            row = await cur.fetchone()
            assert row is not None
            start, db_now = row  # where the last plan's sends end, or now
            cur = await conn.execute(
                query("window_work"), {"now": now, "lookahead": lookahead_seconds}
            )
            work = [(r[0], int(r[1])) for r in await cur.fetchall()]
            end = db_now + timedelta(seconds=ahead_seconds)
            if not work:  # nothing planned: the next work starts from its plan's now
                await conn.execute(query("window_pacer_set"), {"planned_until": start})
                return WindowPlan(0.0, 0)
            # the work not planned yet goes after what is planned already: from ``start``
            rate = yds_rate(start, work)
            span = max(0.0, (end - start).total_seconds())
            # Rows whose deadline comes before the plan after next could reach the claims
            # unplanned (they take a row a lookahead before its run_at, the deadline): they
            # are planned now too, on at the same rate, each by its deadline at the latest.
            near = end + timedelta(seconds=ahead_seconds + lookahead_seconds + 1)
            must = sum(c for d, c in work if d <= near)
            total = sum(c for _, c in work)
            paced = 0 if hold else math.floor(rate * span)
            count = min(max(paced, must), total, MAX_PER_PLAN)
            step = 1 / rate  # the rate is positive: there is work
            if count:
                await conn.execute(
                    query("window_pick"),
                    {"now": now, "lookahead": lookahead_seconds, "n": count, "start": start,
                     "step": step},
                )  # fmt: skip
            # the next plan goes on where these sends end; what is less than one send is
            # carried over as time, not as a fraction
            planned = start + timedelta(seconds=count * step)
            await conn.execute(query("window_pacer_set"), {"planned_until": planned})
        return WindowPlan(rate, count)
