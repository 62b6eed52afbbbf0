"""Creating timers: one statement (``timer_insert``), a keyed create with its idempotency
record, quota and dependencies in one transaction, and a batch (COPY, db/bulk.py)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow

from core.ids import due_at_of
from core.targets import host_of
from core.timing import time_left
from db.access import take_create_quota
from db.bulk import copy_timers
from db.connection import TRANSIENT, DatabaseUnavailable, PoolOwner
from db.dependencies import block_on, lock_dependencies
from db.models import BatchCreate, CreatedTimer, DeliveryOptions, IdempotentCreate, QuotaRefusal
from db.params import array_literal, number_or_null, quoted_or_null
from db.query_loader import query

log = logging.getLogger(__name__)


class QuotaExceeded(Exception):
    """A tenant's quota refused a create; nothing was written."""

    def __init__(self, refusal: QuotaRefusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


T = TypeVar("T")

_PLAIN = DeliveryOptions()


def insert_params(
    delays_ms: Sequence[int],
    urls: Sequence[str],
    options: Sequence[DeliveryOptions] | None,
    *,
    shards: int,
    now: datetime | None,
    wake_ms: int | None = None,
) -> dict[str, object]:
    opts = options or [_PLAIN] * len(delays_ms)
    # Arrays as text literals joined in C (see array_literal): psycopg's list dumper walks
    # each element in Python, and this runs for every create.
    text, number = quoted_or_null, number_or_null
    return {
        "delay_ms": array_literal(map(str, delays_ms)),
        "url": array_literal(map(text, urls)),
        "payload": array_literal(text(o.payload) for o in opts),
        "headers": array_literal(text(o.headers) for o in opts),
        "timeout_ms": array_literal(number(o.timeout_ms) for o in opts),
        "max_attempts": array_literal(number(o.max_attempts) for o in opts),
        "delivery": array_literal(text(o.delivery) for o in opts),
        "priority": array_literal(number(o.priority) for o in opts),
        "resources": array_literal(
            text(" ".join(o.resources) if o.resources else None) for o in opts
        ),
        "request_id": array_literal(text(o.request_id) for o in opts),
        "tenant": array_literal(text(o.tenant) for o in opts),
        "host": array_literal(text(host_of(u)) for u in urls),
        "at_ms": array_literal(number(o.at_ms) for o in opts),
        "window_ms": array_literal(number(o.window_ms) for o in opts),
        "shards": shards,
        "now": now,
        "wake_ms": wake_ms,
    }


def _replayed(ids: Sequence[uuid.UUID], at: datetime) -> list[CreatedTimer]:
    """The timers of an earlier batch as its replay answers them: time_left counted from
    ``at`` (the database clock), as GET /timer/{id} counts it."""
    return [
        CreatedTimer(id=i, due_at=due_at_of(i), time_left=time_left(due_at_of(i), at)) for i in ids
    ]


async def earlier_create(
    conn: psycopg.AsyncConnection[TupleRow], key: str
) -> tuple[str, uuid.UUID, list[uuid.UUID] | None] | None:
    """Inside a keyed create's transaction: locks the key until the commit and returns what an
    earlier request with it made (its fingerprint, its timer or series, a batch's timers), or
    None if none did."""
    await conn.execute(query("idempotency_lock"), {"key": key})
    cur = await conn.execute(query("idempotency_get"), {"key": key})
    row = await cur.fetchone()
    return (row[0], row[1], row[2]) if row is not None else None


async def record_create(
    conn: psycopg.AsyncConnection[TupleRow], key: str, fingerprint: str, made: uuid.UUID,
    batch: list[uuid.UUID] | None = None,
) -> None:  # fmt: skip
    """Remembers what a keyed create made, in its transaction."""
    await conn.execute(
        query("idempotency_record"),
        {"key": key, "fingerprint": fingerprint, "timer_id": made, "timer_ids": batch},
    )


async def begin_create(
    conn: psycopg.AsyncConnection[TupleRow], *, key: str | None, tenant: str, quota: bool,
    count: int = 1,
) -> tuple[str, uuid.UUID, list[uuid.UUID] | None] | None:  # fmt: skip
    """How every create's transaction starts (one timer, a batch, a series): with ``key``, the
    key locked and looked up, and what an earlier request with it made returned (a replay
    spends nothing; see ``earlier_create``); then, with ``quota``, the tenant's quotas
    checked and spent for ``count`` timers (QuotaExceeded, nothing written). None: go on
    and make it, then ``record_create`` with the key."""
    if key is not None:
        earlier = await earlier_create(conn, key)
        if earlier is not None:
            return earlier
    if quota:
        refusal = await take_create_quota(conn, tenant, count=count)
        if refusal is not None:
            raise QuotaExceeded(refusal)
    return None


class CreateStore(PoolOwner):
    """Inserts timers, once each, whatever is retried."""

    async def insert(
        self,
        delays_ms: Sequence[int],
        urls: Sequence[str],
        *,
        shards: int,
        now: datetime | None = None,
        options: Sequence[DeliveryOptions] | None = None,
        wake_within_ms: int | None = None,
    ) -> list[CreatedTimer]:
        """Inserts timers in one statement and one commit; returns them in input order.

        ``options`` gives each timer's request shape and policy (default: the plain request).
        ``wake_within_ms``: a timer due within that many milliseconds wakes the dispatchers
        at the commit (LISTEN/NOTIFY, db/listen.py); None wakes none.
        Not retried on a lost connection: the commit may have happened, and a blind retry
        would create a second timer. The caller reports the failure instead.
        """
        params = insert_params(
            delays_ms, urls, options, shards=shards, now=now, wake_ms=wake_within_ms
        )

        async def once() -> list[CreatedTimer]:
            async with self.connection() as conn:
                cur = await conn.execute(query("timer_insert"), params)
                rows = await cur.fetchall()
            return [
                CreatedTimer(id=r[1], due_at=r[2], time_left=time_left(r[2], r[3])) for r in rows
            ]

        return await self._inserting(once, ahead_ms=max(delays_ms, default=0), now=now)

    async def insert_idempotent(
        self,
        *,
        key: str | None,
        fingerprint: str,
        delay_ms: int,
        url: str,
        shards: int,
        options: DeliveryOptions | None = None,
        quota: bool = False,
        wake_within_ms: int | None = None,
        after: Sequence[uuid.UUID] = (),
    ) -> IdempotentCreate:
        """Creates one timer for a keyed request, or finds the one an earlier request with the
        same key created. Lookup, insert and record share one transaction under a lock on the
        key. Not retried on a lost connection, like insert.

        ``quota``: the timer's tenant has quotas; they are checked (and a creates token
        spent) in the same transaction, after the key's lookup (a replay spends nothing), and
        a refusal raises QuotaExceeded with nothing written. ``key`` None: a plain create.
        ``after``: timers of the same tenant it waits for (DependencyRefused, nothing
        written, when one is unknown, another tenant's, or an occurrence of a series).
        """
        params = insert_params(
            [delay_ms], [url], [options] if options else None, shards=shards, now=None,
            wake_ms=wake_within_ms,
        )  # fmt: skip
        tenant = options.tenant if options else "default"

        async def once() -> IdempotentCreate:
            async with self.connection() as conn, conn.transaction():
                earlier = await begin_create(conn, key=key, tenant=tenant, quota=quota)
                if earlier is not None:
                    return IdempotentCreate(
                        timer_id=earlier[1], replayed=True, conflict=earlier[0] != fingerprint
                    )
                deps = await lock_dependencies(conn, after, tenant) if after else []
                cur = await conn.execute(query("timer_insert"), params)
                row = await cur.fetchone()
                assert row is not None
                if after:
                    await block_on(conn, row[1], deps)
                if key is not None:
                    await record_create(conn, key, fingerprint, row[1])
            return IdempotentCreate(timer_id=row[1], replayed=False, conflict=False)

        return await self._inserting(once, ahead_ms=delay_ms, now=None)

    async def insert_batch(
        self,
        delays_ms: Sequence[int],
        urls: Sequence[str],
        options: Sequence[DeliveryOptions],
        *,
        shards: int,
        key: str | None = None,
        fingerprint: str = "",
        quota: bool = False,
        wake_within_ms: int | None = None,
        now: datetime | None = None,
    ) -> BatchCreate:
        """Creates a batch of timers with one COPY and one commit, all or none; returns them in
        input order. ``key``: as insert_idempotent (the earlier batch's timers, by its key, or
        a conflict when the body differs). ``quota``: the tenant's quotas are checked for the
        whole batch (every timer is its tenant's: ``options[0].tenant``). Not retried on a
        lost connection, like insert."""
        tenant = options[0].tenant if options else "default"

        async def once() -> BatchCreate:
            async with self.connection() as conn, conn.transaction():
                earlier = await begin_create(
                    conn, key=key, tenant=tenant, quota=quota, count=len(delays_ms)
                )
                if earlier is not None:
                    if earlier[0] != fingerprint or earlier[2] is None:
                        return BatchCreate([], replayed=True, conflict=True)
                    clock = await conn.execute(query("clock_now"), {"now": now})
                    (at,) = await clock.fetchone() or (None,)
                    return BatchCreate(_replayed(earlier[2], at), replayed=True, conflict=False)
                created = await copy_timers(
                    conn, delays_ms, urls, options, shards=shards, wake_ms=wake_within_ms, now=now
                )
                if key is not None:
                    ids = [c.id for c in created]
                    await record_create(conn, key, fingerprint, ids[0], ids)
            return BatchCreate(created, replayed=False, conflict=False)

        return await self._inserting(once, ahead_ms=max(delays_ms, default=0), now=now)

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
        except DatabaseUnavailable:
            raise
        except TRANSIENT as exc:  # a statement-level failure: nothing was written
            raise DatabaseUnavailable(f"timer_insert: {exc}", "the insert failed") from exc

    async def purge_idempotency(self, *, hours: int, now: datetime | None = None) -> int:
        """Forgets idempotency keys older than ``hours``; returns how many."""
        return await self.run(
            "idempotency_purge", {"hours": hours, "now": now}, budget=self.long_budget
        )
