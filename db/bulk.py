"""Bulk create: a batch of timers written with one COPY in the caller's transaction.

``timer_insert`` computes each row in SQL (its id, bucket and shard per row, through
``unnest``); for a thousand rows COPY is about twice as fast here (docs/benchmarks.md). The
rows are the same: the due times come from the database clock, read in the same transaction
(``now()``, the transaction's start, as ``timer_insert`` reads it), and the ids from
``new_timer_ids``, the twin of the SQL function ``timerhook_id``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import TupleRow

from core.ids import EPOCH, new_timer_ids
from core.targets import host_of
from core.timing import time_left
from db.models import CreatedTimer, DeliveryOptions
from db.query_loader import query

_COPY = (
    "copy timers (id, bucket, due_at, run_at, slot, shard, url, payload, headers, timeout_ms,"
    " max_attempts, delivery, priority, resources, request_id, tenant, host, deadline_at)"
    " from stdin"
)
NULL = "\\N"


def _text(value: str | None) -> str:
    """A text (or JSON text) field of COPY's text format: backslash, tab, newline and carriage
    return escaped; None as NULL. (Compact JSON holds no raw control characters.)"""
    if value is None:
        return NULL
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _number(value: int | None) -> str:
    return NULL if value is None else str(value)


def _instant(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).isoformat()


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
    now_at = EPOCH + timedelta(milliseconds=now_ms)
    # an absolute ``at`` is its own due time; a delay counts from the database clock
    due = [o.at_ms if o.at_ms is not None else now_ms + d
           for d, o in zip(delays_ms, options, strict=True)]  # fmt: skip
    ids = new_timer_ids(due)
    created = []
    # One COPY in text format, written at once: per-row binary dumping in Python (and an
    # await per row) cost more than PostgreSQL's whole COPY of the batch.
    lines: list[str] = []
    seconds: dict[int, str] = {}  # whole seconds (buckets, slots), formatted once each
    shard = random.randrange
    for timer_id, due_ms, url, o in zip(ids, due, urls, options, strict=True):
        due_at = _instant(due_ms)
        second = -(-due_ms // 1000)
        bucket = seconds.get(second) or seconds.setdefault(second, _instant(second * 1000))
        deadline, run_at, slot = NULL, due_at, bucket
        if o.window_ms is not None:
            # waits for the window planner, and without it goes a second before its deadline
            # (never before its due time), as timer_insert
            deadline = _instant(due_ms + o.window_ms)
            run_ms = max(due_ms, due_ms + o.window_ms - 1000)
            run_at = _instant(run_ms)
            slot = _instant(-(-run_ms // 1000) * 1000)
        # resource names are letters, digits, '.', '_', ':' and '-' (api/schemas.py): an
        # array literal needs no quoting for them
        resources = "{" + ",".join(o.resources) + "}" if o.resources else NULL
        lines.append("\t".join((
            str(timer_id), bucket, due_at, run_at, slot, str(shard(shards)), _text(url),
            _text(o.payload), _text(o.headers), _number(o.timeout_ms),
            str(o.max_attempts), o.delivery, str(o.priority),
            resources, _text(o.request_id), _text(o.tenant), _text(host_of(url)), deadline,
        )))  # fmt: skip
        due_dt = EPOCH + timedelta(milliseconds=due_ms)
        created.append(CreatedTimer(timer_id, due_dt, time_left(due_dt, now_at)))
    lines.append("")
    async with conn.cursor().copy(_COPY) as copy:
        await copy.write("\n".join(lines))
    if wake_ms is not None and any(d - now_ms < wake_ms for d in due):
        await conn.execute(query("timers_wake"))
    return created
