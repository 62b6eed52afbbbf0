"""Every wait on the database has a deadline: a statement past it is cut on the client (the
query cancelled, the connection closed) and on the server (statement_timeout)."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from db.connection import NoAnswer, deadline
from db.database import Database


async def test_a_statement_past_its_deadline_is_cut_and_the_pool_goes_on(db: Database) -> None:
    started = time.monotonic()
    with pytest.raises(NoAnswer), deadline(time.monotonic() + 0.5):
        async with db.timers.connection() as conn:
            await conn.execute("select pg_sleep(5)")
    assert time.monotonic() - started < 1.0
    # The next operation gets a working connection: the cut one was discarded or reset.
    assert (await db.timers.clock()) is not None
    assert await db.dispatchers.peers(dead_after_seconds=10) == []
    assert not db.outage.down  # said once, and over at the next success


async def test_a_cancel_that_is_not_the_deadline_passes_through(db: Database) -> None:
    """The deadline turns only its own cancel into NoAnswer; a task cancelled by its caller
    stays cancelled."""

    async def sleeper() -> None:
        with deadline(time.monotonic() + 30):
            async with db.timers.connection() as conn:
                await conn.execute("select pg_sleep(5)")

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_server_bounds_every_statement_and_idle_transaction(db: Database) -> None:
    async with db.timers.connection() as conn:
        cur = await conn.execute(
            "select current_setting('statement_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        )
        assert await cur.fetchone() == ("1min", "1min")
        assert conn.info.get_parameters()["tcp_user_timeout"] == "10000"
    with pytest.raises(psycopg.errors.QueryCanceled):
        async with db.timers.connection() as conn:
            await conn.execute("set statement_timeout = 100")
            try:
                await conn.execute("select pg_sleep(1)")
            finally:
                await conn.execute("reset statement_timeout")
