"""Timer rows: insert, look up, claim, record, release and reap leases."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

from psycopg import errors as pg_errors
from psycopg.rows import class_row

from db.connection import TRANSIENT, DatabaseUnavailable, PoolOwner, retry_transient
from db.ids import bucket_of, lock_key
from db.models import (
    TIMER_STATES,
    Attempt,
    CancelResult,
    Claim,
    ClaimedTimer,
    CreatedTimer,
    DeliveryOptions,
    DueKey,
    IdempotentCreate,
    ReapedLease,
    RequeueFilter,
    RequeueResult,
    SendOutcome,
    Timer,
    TimerState,
    TimerSummary,
)
from db.query_loader import query

log = logging.getLogger(__name__)

T = TypeVar("T")

_PLAIN = DeliveryOptions()
# Dead letters requeued per statement by a bulk requeue.
_REQUEUE_BATCH = 5000


def _insert_params(
    delays_ms: Sequence[int],
    urls: Sequence[str],
    options: Sequence[DeliveryOptions] | None,
    *,
    shards: int,
    now: datetime | None,
) -> dict[str, object]:
    opts = options or [_PLAIN] * len(delays_ms)
    return {
        "delay_ms": list(delays_ms),
        "url": list(urls),
        "payload": [o.payload for o in opts],
        "headers": [o.headers for o in opts],
        "timeout_ms": [o.timeout_ms for o in opts],
        "max_attempts": [o.max_attempts for o in opts],
        "delivery": [o.delivery for o in opts],
        "shards": shards,
        "now": now,
    }


class TimerStore(PoolOwner):
    """Every query on the timers table."""

    async def insert(
        self,
        delays_ms: Sequence[int],
        urls: Sequence[str],
        *,
        shards: int,
        now: datetime | None = None,
        options: Sequence[DeliveryOptions] | None = None,
    ) -> list[CreatedTimer]:
        """Inserts timers in one statement and one commit; returns them in input order.

        ``options`` gives each timer's request shape and policy (default: the plain request).
        Not retried on a lost connection: the commit may have happened, and a blind retry
        would create a second timer. The caller reports the failure instead.
        """
        params = _insert_params(delays_ms, urls, options, shards=shards, now=now)

        async def once() -> list[CreatedTimer]:
            async with self.connection() as conn:
                cur = await conn.execute(query("timer_insert"), params)
                rows = await cur.fetchall()
            return [CreatedTimer(id=r[1], due_at=r[2], time_left=int(r[3])) for r in rows]

        return await self._inserting(once, ahead_ms=max(delays_ms, default=0), now=now)

    async def insert_idempotent(
        self,
        *,
        key: str,
        fingerprint: str,
        delay_ms: int,
        url: str,
        shards: int,
        options: DeliveryOptions | None = None,
    ) -> IdempotentCreate:
        """Creates one timer for a keyed request, or finds the one an earlier request with the
        same key created. Lookup, insert and record share one transaction under a lock on the
        key. Not retried on a lost connection, like insert."""
        params = _insert_params(
            [delay_ms], [url], [options] if options else None, shards=shards, now=None
        )

        async def once() -> IdempotentCreate:
            async with self.connection() as conn, conn.transaction():
                await conn.execute(query("idempotency_lock"), {"key": key})
                cur = await conn.execute(query("idempotency_get"), {"key": key})
                earlier = await cur.fetchone()
                if earlier is not None:
                    return IdempotentCreate(
                        timer_id=earlier[1], replayed=True, conflict=earlier[0] != fingerprint
                    )
                cur = await conn.execute(query("timer_insert"), params)
                row = await cur.fetchone()
                assert row is not None
                await conn.execute(
                    query("idempotency_record"),
                    {"key": key, "fingerprint": fingerprint, "timer_id": row[1]},
                )
            return IdempotentCreate(timer_id=row[1], replayed=False, conflict=False)

        return await self._inserting(once, ahead_ms=delay_ms, now=None)

    async def _inserting(
        self, once: Callable[[], Awaitable[T]], *, ahead_ms: int, now: datetime | None
    ) -> T:
        """Runs an insert; a day without a partition (maintenance behind, say after days down)
        gets its partitions made on the spot and the insert runs once more. A lost database
        becomes DatabaseUnavailable; nothing was written then, or the caller cannot know."""
        try:
            try:
                return await once()
            except pg_errors.CheckViolation as exc:
                if "no partition" not in str(exc):
                    raise
                log.warning("a timer's partition was missing; creating partitions now")
            async with self.connection() as conn:
                await conn.execute(
                    query("partition_ensure_ahead"), {"ahead_ms": ahead_ms, "now": now}
                )
            return await once()
        except TRANSIENT as exc:
            log.error("timer insert failed, no timer created: %s", exc)
            raise DatabaseUnavailable(f"timer_insert: {exc}") from exc

    async def purge_idempotency(self, *, hours: int, now: datetime | None = None) -> int:
        """Forgets idempotency keys older than ``hours``; returns how many."""
        return await self.run("idempotency_purge", {"hours": hours, "now": now})

    async def get(self, timer_id: uuid.UUID, *, now: datetime | None = None) -> Timer | None:
        """The timer with this id, looked up in the one partition its id names."""
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "now": now}
        return await self.fetch_one("timer_get", Timer, params)

    async def cancel(
        self, timer_id: uuid.UUID, *, now: datetime | None = None
    ) -> CancelResult | None:
        """Cancels the timer if it is pending; None if there is no such timer."""
        # One statement: a repeat after a lost connection finds the timer cancelled already,
        # which is the same answer.
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "now": now}
        return await self.fetch_one("timer_cancel", CancelResult, params)

    async def due_keys(
        self, *, limit: int, lookahead_seconds: float = 0.0, now: datetime | None = None
    ) -> list[DueKey]:
        """The oldest (slot, shard) keys with rows due by now + lookahead."""
        params = {"limit": limit, "lookahead": lookahead_seconds, "now": now}
        return await self.fetch_all("bucket_keys_due", DueKey, params)

    async def claim(
        self,
        key: DueKey,
        *,
        owner: str,
        batch: int,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> Claim:
        """Leases up to ``batch`` pending rows of one key; none if another dispatcher holds it."""
        params = {
            "slot": key.slot,
            "shard": key.shard,
            "lock_key": lock_key(key.slot, key.shard),
            "owner": owner,
            "batch": batch,
            "lease_seconds": lease_seconds,
            "now": now,
        }

        async def op() -> Claim:
            async with self.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=class_row(ClaimedTimer))
                await cur.execute(query("bucket_claim"), params)
                rows = await cur.fetchall()
                # Read before the commit, whose flush to disk can take tens of milliseconds.
                answered_at = time.monotonic()
            return Claim(rows, answered_at)

        # A claim that failed mid-way rolled back whole, so running it again is safe.
        return await retry_transient(op, what="bucket_claim")

    async def record(self, outcomes: Sequence[SendOutcome], *, owner: str) -> int:
        """Records send outcomes and their attempts in one statement; returns how many rows
        it recorded (a row whose lease was taken back is not)."""
        if not outcomes:
            return 0
        params = {
            "id": [o.id for o in outcomes],
            "bucket": [o.bucket for o in outcomes],
            "state": [o.state for o in outcomes],
            "status": [o.status for o in outcomes],
            "error": [o.error for o in outcomes],
            "fired_at": [o.fired_at for o in outcomes],
            "latency_ms": [o.latency_ms for o in outcomes],
            "retry_in": [o.retry_in for o in outcomes],
            "owner": owner,
        }
        # Conditioned on the lease (state and owner), so a repeat changes nothing more.
        return await self.run("timer_record", params)

    async def release(self, timers: Sequence[ClaimedTimer], *, owner: str) -> int:
        """Gives leased rows that were never sent back to pending."""
        if not timers:
            return 0
        params = {
            "id": [t.id for t in timers],
            "bucket": [t.bucket for t in timers],
            "owner": owner,
        }
        return await self.run("lease_release", params)

    async def reap(
        self, *, dead_after_seconds: float, now: datetime | None = None
    ) -> list[ReapedLease]:
        """Takes back the rows leased by dead dispatchers or with expired leases: at_least_once
        rows return to pending, at_most_once rows end failed."""
        params = {"dead_after_seconds": dead_after_seconds, "now": now}
        return await self.fetch_all("lease_reap", ReapedLease, params)

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
    ) -> list[TimerSummary]:
        """Up to ``limit`` timers in the given states, in id (due) order after ``after``."""
        params = {
            "states": list(states),
            "limit": limit,
            "after": after,
            "after_bucket": bucket_of(after) if after else None,
        }
        return await self.fetch_all("timer_list", TimerSummary, params)

    async def attempts(self, timer_id: uuid.UUID) -> list[Attempt]:
        """Every recorded attempt of a timer, oldest first."""
        params = {"id": timer_id, "bucket": bucket_of(timer_id)}
        return await self.fetch_all("attempt_list", Attempt, params)

    async def requeue(
        self, timer_id: uuid.UUID, *, now: datetime | None = None
    ) -> RequeueResult | None:
        """Requeues one dead or failed timer (due now, a fresh round of attempts); None if
        there is no such timer."""
        # A repeat finds the timer pending: it reports "not requeued", never requeues twice.
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "now": now}
        return await self.fetch_one("timer_requeue", RequeueResult, params)

    async def requeue_matching(
        self, which: RequeueFilter, *, limit: int | None = None, now: datetime | None = None
    ) -> int:
        """Requeues the dead letters that match (at most ``limit``); returns how many. Runs in
        batches of a few thousand, each its own short transaction."""
        async with self.connection() as conn:
            cur = await conn.execute(query("clock_now"), {"now": now})
            row = await cur.fetchone()
        assert row is not None
        started: datetime = row[0]
        cutoff = min(which.finished_before, started) if which.finished_before else started
        total = 0
        while limit is None or total < limit:
            batch = _REQUEUE_BATCH if limit is None else min(_REQUEUE_BATCH, limit - total)
            params: dict[str, object] = {
                "states": list(which.states),
                "url_prefix": which.url_prefix,
                "finished_after": which.finished_after,
                "finished_before": cutoff,
                "limit": batch,
                "now": now,
            }

            done = await self.run("timers_requeue", params)
            total += done
            if done < batch:
                break
        if total:
            log.info("requeued %d dead letters", total)
        return total
