"""The connection pool, the one place transient errors are retried, and the store base."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow, class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from db.query_loader import query

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Errors after which the same statement can simply be run again.
TRANSIENT = (
    psycopg.OperationalError,
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    PoolTimeout,
)


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the request can be retried later."""


async def retry_transient(op: Callable[[], Awaitable[T]], *, what: str, attempts: int = 4) -> T:
    """Runs an idempotent database operation, retrying transient errors with backoff.

    Only operations that are safe to repeat go through here; a failure that outlasts the
    retries becomes DatabaseUnavailable with the cause logged.
    """
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        ):
            with attempt:
                return await op()
    except TRANSIENT as exc:
        log.error("database operation %s failed after %d attempts: %s", what, attempts, exc)
        raise DatabaseUnavailable(f"{what}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def _configure(conn: psycopg.AsyncConnection[TupleRow]) -> None:
    # Every timestamp leaves the database in UTC, whatever the server's TimeZone.
    await conn.execute("set timezone = 'UTC'")


def make_pool(conninfo: str, *, max_size: int, name: str) -> AsyncConnectionPool:
    """An unopened pool of autocommit connections; open it with ``await pool.open()``."""
    return AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        configure=_configure,
        timeout=10.0,
        kwargs={"application_name": f"timerhook-{name}", "autocommit": True},
    )


class PoolOwner:
    """Base of the stores: shares one pool and offers connection and transaction helpers."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """A pooled autocommit connection; pool exhaustion becomes DatabaseUnavailable."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            log.error("no database connection within the pool timeout: %s", exc)
            raise DatabaseUnavailable(str(exc)) from exc

    async def fetch_one(self, name: str, model: type[T], params: Mapping[str, Any]) -> T | None:
        """Runs the named single-statement query (its own transaction) and returns its one row
        as ``model``, or None; transient errors are retried, so the query must be safe to run
        again."""

        async def op() -> T | None:
            async with self.connection() as conn:
                cur = conn.cursor(row_factory=class_row(model))
                await cur.execute(query(name), params)
                return await cur.fetchone()

        return await retry_transient(op, what=name)

    async def fetch_all(self, name: str, model: type[T], params: Mapping[str, Any]) -> list[T]:
        """Like fetch_one, for every row."""

        async def op() -> list[T]:
            async with self.connection() as conn:
                cur = conn.cursor(row_factory=class_row(model))
                await cur.execute(query(name), params)
                return await cur.fetchall()

        return await retry_transient(op, what=name)

    async def run(self, name: str, params: Mapping[str, Any]) -> int:
        """Runs the named single-statement query, retried like fetch_one; returns its rowcount."""

        async def op() -> int:
            async with self.connection() as conn:
                cur = await conn.execute(query(name), params)
                return cur.rowcount

        return await retry_transient(op, what=name)
