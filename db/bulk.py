"""Bulk create: a batch of timers written with one COPY in the caller's transaction.

``timer_insert`` computes each row in SQL (its id, bucket and shard per row, through
``unnest``); for a thousand rows COPY is about twice as fast here (docs/benchmarks.md). The
rows are the same: the due times come from the database clock, read in the same transaction
(``now()``, the transaction's start, as ``timer_insert`` reads it), and the ids from
``new_timer_ids``, the twin of the SQL function ``timerhook_id``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from db.ids import EPOCH, new_timer_ids
from db.models import CreatedTimer, DeliveryOptions
from db.query_loader import query
from db.targets import host_of

_COPY = (
    "copy timers (id, bucket, due_at, run_at, slot, shard, url, payload, headers, timeout_ms,"
    " max_attempts, delivery, priority, resources, request_id, tenant, host, deadline_at)"
    " from stdin (format binary)"
)
_TYPES = [
    "uuid", "timestamptz", "timestamptz", "timestamptz", "timestamptz", "int2", "text", "jsonb",
    "jsonb", "int4", "int4", "text", "int2", "text[]", "text", "text", "text", "timestamptz",
]  # fmt: skip


def _as_is(text: str) -> str:
    return text


def _json(text: str | None) -> Jsonb | None:
    """Compact JSON text as a jsonb value, not encoded again."""
    return None if text is None else Jsonb(text, dumps=_as_is)


async def copy_timers(
    conn: psycopg.AsyncConnection[TupleRow],
    delays_ms: Sequence[int],
    urls: Sequence[str],
    options: Sequence[DeliveryOptions],
    *,
    shards: int,
    wake_ms: int | None,
    now: datetime | None = None,
) -> list[CreatedTimer]:
    """Writes the timers in one COPY inside the caller's transaction; returns them in input
    order. A timer due within ``wake_ms`` wakes the dispatchers at the commit, as
    ``timer_insert`` does (one notification for the batch)."""
    cur = await conn.execute(query("clock_ms"), {"now": now})
    row = await cur.fetchone()
    assert row is not None
    now_ms = int(row[0])
    # an absolute ``at`` is its own due time; a delay counts from the database clock
    due = [o.at_ms if o.at_ms is not None else now_ms + d
           for d, o in zip(delays_ms, options, strict=True)]  # fmt: skip
    ids = new_timer_ids(due)
    created = []
    rows: list[tuple[Any, ...]] = []
    for timer_id, due_ms, url, o in zip(ids, due, urls, options, strict=True):
        due_at = EPOCH + timedelta(milliseconds=due_ms)
        bucket = EPOCH + timedelta(seconds=math.ceil(due_ms / 1000))
        deadline, run_at, slot = None, due_at, bucket
        if o.window_ms is not None:
            # waits for the window planner, and without it goes a second before its deadline
            # (never before its due time), as timer_insert
            deadline = EPOCH + timedelta(milliseconds=due_ms + o.window_ms)
            run_ms = max(due_ms, due_ms + o.window_ms - 1000)
            run_at = EPOCH + timedelta(milliseconds=run_ms)
            slot = EPOCH + timedelta(seconds=math.ceil(run_ms / 1000))
        rows.append((
            timer_id, bucket, due_at, run_at, slot, random.randrange(shards), url,
            _json(o.payload), _json(o.headers), o.timeout_ms, o.max_attempts or 8,
            o.delivery or "at_least_once", o.priority or 5,
            list(o.resources) if o.resources else None, o.request_id, o.tenant, host_of(url),
            deadline,
        ))  # fmt: skip
        time_left = max(0, -(-(due_ms - now_ms) // 1000))
        created.append(CreatedTimer(id=timer_id, due_at=due_at, time_left=time_left))
    async with conn.cursor().copy(_COPY) as copy:
        copy.set_types(_TYPES)
        for values in rows:
            await copy.write_row(values)
    if wake_ms is not None and any(d - now_ms < wake_ms for d in due):
        await conn.execute(query("timers_wake"))
    return created
