"""Warm connections (db/warmth.py): the statements a dispatcher's claim path runs are planned
at its start, on every connection it keeps, and a connection its pool adds later plans them
before it serves; planning them changes nothing.

At the default horizon a statement's first run on a connection plans it over about 368
partitions (50 to 400 ms): paid under the first load, it made the first timers after a
start 300 to 600 ms late (bench.short_delays).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from db.database import Database
from db.query_loader import query
from db.warmth import rehearsal
from dispatcher.service import WARM_CONNECTIONS, Dispatcher
from tests.conftest import MakeTimer


async def _prepared(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """The statements prepared on ``conn`` by psycopg, by the first line of their text (the
    comment that opens each named query), with how many generic plans each has run."""
    cur = await conn.execute(
        "select statement, generic_plans from pg_prepared_statements where not from_sql",
        prepare=False,
    )
    found: dict[str, int] = {}
    for statement, generic in await cur.fetchall():
        first = str(statement).splitlines()[0]
        found[first] = found.get(first, 0) + int(generic)
    return found


def _first_line(name: str) -> str:
    return query(name).splitlines()[0]


async def _holding(pool: Any, count: int) -> list[psycopg.AsyncConnection[Any]]:
    return [await pool.getconn(timeout=10) for _ in range(count)]


async def test_a_connection_the_pool_adds_plans_the_rehearsed_statements_before_it_serves(
    db: Database,
) -> None:
    with rehearsal():
        await db.leases.due_keys(limit=64, lookahead_seconds=2.5)
        await db.leases.held_due(lookahead_seconds=1.5)
    assert await db.warm(3)
    held = await _holding(db.pool, 3)
    try:
        for conn in held:
            prepared = await _prepared(conn)
            for name in ("bucket_keys_due", "held_candidates"):
                assert prepared.get(_first_line(name), 0) >= 1, (name, prepared)
        # The same call after the rehearsal runs the statement prepared then: one free
        # connection (one the pool added), the call lands on it and prepares nothing new.
        added = held.pop()
        await db.pool.putconn(added)
        before = len(await _prepared_names(db, added))
        await db.leases.due_keys(limit=64, lookahead_seconds=2.5)
        assert len(await _prepared_names(db, added)) == before
    finally:
        for conn in held:
            await db.pool.putconn(conn)


async def _prepared_names(db: Database, expected: psycopg.AsyncConnection[Any]) -> list[str]:
    async with db.pool.connection(timeout=10) as conn:
        assert conn is expected
        cur = await conn.execute(
            "select name from pg_prepared_statements where not from_sql"
            " and statement like '-- The oldest (slot, shard) keys%%'",
            prepare=False,
        )
        return [str(r[0]) for r in await cur.fetchall()]


async def test_a_connection_without_a_rehearsal_plans_nothing_ahead(db: Database) -> None:
    """What the warm-up adds: a new connection of a pool that rehearsed nothing has none of the
    statements prepared."""
    assert await db.warm(2)
    held = await _holding(db.pool, 2)
    try:
        for conn in held:
            prepared = await _prepared(conn)
            assert _first_line("bucket_keys_due") not in prepared
    finally:
        for conn in held:
            await db.pool.putconn(conn)


async def test_a_dispatcher_plans_its_claim_path_at_start_and_changes_nothing(
    start_dispatcher: Callable[..., Awaitable[Dispatcher]], db: Database, make_timer: MakeTimer
) -> None:
    later = await make_timer(delay_ms=3_600_000)
    dispatcher = await start_dispatcher()
    pool = dispatcher.db.pool
    assert pool.get_stats().get("pool_size") == WARM_CONNECTIONS
    held = await _holding(pool, WARM_CONNECTIONS)
    try:
        for conn in held:
            prepared = await _prepared(conn)
            for name in (
                "window_work", "held_candidates", "bucket_keys_due", "bucket_claim",
                "timer_record", "lease_reap", "lease_renew",
            ):  # fmt: skip
                assert prepared.get(_first_line(name), 0) >= 1, (name, prepared)
    finally:
        for conn in held:
            await pool.putconn(conn)
    # The rehearsed claim and record touched nothing: the timer waits, no attempt was noted,
    # and the dispatcher registered once it was warm.
    timer = await db.timers.get(later.id)
    assert timer is not None and timer.state == "pending" and timer.attempts == 0
    async with db.pool.connection() as conn:
        cur = await conn.execute("select count(*) from timer_attempts")
        assert await cur.fetchone() == (0,)
    assert dispatcher.id in {d.id for d in await db.dispatchers.list(dead_after_seconds=30)}
