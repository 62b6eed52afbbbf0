"""What timers wait for (``after``): locked and recorded in a create's transaction, resolved
when an outcome is final, purged once old."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import psycopg
from psycopg.rows import TupleRow

from core.ids import bucket_of
from core.states import TimerState, dependency_verdict
from db.connection import PoolOwner
from db.params import named_rows
from db.query_loader import query


class DependencyRefused(Exception):
    """A timer named in ``after`` cannot be waited for; the message says which and why."""


async def lock_dependencies(
    conn: psycopg.AsyncConnection[TupleRow], after: Sequence[uuid.UUID], tenant: str
) -> list[tuple[uuid.UUID, datetime, TimerState]]:
    """The timers a create waits for, locked to its commit: (id, bucket, state) each;
    DependencyRefused when one is not a one-shot timer of this tenant."""
    cur = await conn.execute(query("deps_lock"), named_rows([(i, bucket_of(i)) for i in after]))
    found = {r[0]: r for r in await cur.fetchall()}
    for timer_id in after:
        row = found.get(timer_id)
        if row is None or row[3] != tenant:
            raise DependencyRefused(f"no timer with id {str(timer_id)!r}")
        if row[4] is not None:
            raise DependencyRefused(
                f"{timer_id} is an occurrence of a recurring timer; only one-shot timers can "
                "be waited for"
            )
    return [(r[0], r[1], cast(TimerState, r[2])) for r in (found[i] for i in after)]


async def block_on(
    conn: psycopg.AsyncConnection[TupleRow], timer_id: uuid.UUID,
    deps: Sequence[tuple[uuid.UUID, datetime, TimerState]],
) -> None:  # fmt: skip
    """Records what a new timer waits for: failed at once if one of them ended failed, dead
    or cancelled; blocked while any is not delivered yet."""
    bucket = bucket_of(timer_id)
    failure, waiting = dependency_verdict([(d[0], d[2]) for d in deps])
    reason = f"after: waiting for {waiting} of its dependencies" if waiting else None
    params = {
        **named_rows([(d[0], d[1]) for d in deps]), "timer_id": timer_id,
        "timer_bucket": bucket, "reason": None if failure else reason,
    }  # fmt: skip
    await conn.execute(query("deps_insert"), params)
    if failure is not None:
        await conn.execute(
            query("deps_fail_new"),
            {"timer_id": timer_id, "timer_bucket": bucket,
             "reason": f"dependency {failure[0]} ended {failure[1]}"},
        )  # fmt: skip


class DependencyStore(PoolOwner):
    """Dependencies after the create: resolved, looked at again, read, purged."""

    async def resolve(self, ids: Sequence[uuid.UUID]) -> None:
        """The timers waiting for these (whose outcome is final): released when every one they
        wait for was delivered, failed at once when one ended failed, dead or cancelled, and
        so on down their own dependents. Safe to repeat (a crash before it is caught up by
        the maintenance job's ``resolve_stuck``)."""
        todo = list(ids)
        while todo:
            found = await self.rows("deps_resolve", {"id": todo}, generic=True)
            todo = list(found[0][0]) if found else []

    async def resolve_stuck(self) -> int:
        """Resolves the dependents a dispatcher left blocked when it died between recording an
        outcome and resolving it (or a lease reaped as failed); returns how many dependencies
        were looked at again. Reads nothing else while no timer waits for another."""
        (any_deps,), *_ = await self.rows("deps_any", {})
        if not any_deps:
            return 0
        stuck = [row[0] for row in await self.rows("deps_stuck", {}, generic=True)]
        if stuck:
            await self.resolve(stuck)
        return len(stuck)

    async def of(self, timer_id: uuid.UUID) -> list[tuple[uuid.UUID, TimerState]]:
        """The timers this one waits for (``after``), with their states."""
        rows = await self.rows(
            "deps_of", {"id": timer_id, "bucket": bucket_of(timer_id)}, generic=True
        )
        return [(r[0], r[1]) for r in rows]

    async def purge(self, *, retention_days: int) -> int:
        """Forgets what timers older than the retention waited for (once they wait no more)."""
        cutoff = datetime.now(UTC) - timedelta(days=retention_days + 1)
        return await self.run("deps_purge", {"cutoff": cutoff}, budget=self.long_budget)
