"""The connection pool, the one place transient errors are retried, and the store base."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow, class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from db.query_loader import query
from db.warmth import Warmth, cursor_class

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the request can be retried later. ``str(exc)`` is
    the detail for the logs (the driver's text, with the server's host and port); ``public``
    says what failed in words an HTTP answer may carry."""

    def __init__(self, detail: str, public: str | None = None) -> None:
        super().__init__(detail)
        self.public = public or detail


# Errors after which the same statement can simply be run again.
TRANSIENT = (
    DatabaseUnavailable,
    psycopg.OperationalError,
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    PoolTimeout,
)

# How long a pool waits between connection attempts while the database is away: retried
# quickly, so that service resumes within a second of its return (psycopg_pool's own
# backoff doubles from 1 s without a ceiling short of its reconnect timeout).
RECONNECT_FIRST_DELAY = 0.2
RECONNECT_MAX_DELAY = 0.5
# Connection-level timeouts (libpq): a server that does not answer a connect, or a link that
# died without a reset, is noticed in seconds rather than at the kernel's TCP timeouts.
CONNECT_OPTIONS = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}

# How long an operation waits for a pooled connection while the database answers but every
# connection is in use (the pool's timeout applies once the database is known to be away).
BUSY_WAIT_SECONDS = 10.0

# Server-side bounds of every pooled connection, and the client-side bound of an operation
# that names no tighter deadline (TIMERHOOK_STATEMENT_TIMEOUT_SECONDS): a statement, a
# transaction left idle, unacknowledged data on the socket (a partition mid-query: the kernel
# would retransmit for about 15 minutes).
DEFAULT_STATEMENT_TIMEOUT = 60.0
TCP_USER_TIMEOUT_MS = 10_000
# The least share of an operation's budget left for its statements once it has a connection.
EXEC_SHARE = 0.25
# After the first cancel at a deadline, the second follows this much later (seconds).
SECOND_CANCEL_DELAY = 0.01

# When the current operation must be done by (monotonic): set by ``deadline``.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "timerhook_db_deadline", default=None
)


class NoAnswer(DatabaseUnavailable):
    """The database did not answer within the operation's deadline."""


class _HardDeadline:
    """Cancels the task running a block at ``at`` (monotonic), and once more a moment
    later, then raises NoAnswer from the block. psycopg answers a first cancel of a running
    query by asking the server to cancel it and waiting up to 10 s for that; a frozen server
    never answers, and the second cancel makes psycopg close the connection at once (the pool
    then discards it). A cancel that did not come from the deadline passes through."""

    def __init__(self, at: float, what: str) -> None:
        self._at = at
        self._what = what
        self._fired = 0
        self._inside = False
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        self._inside = True
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(max(0.0, self._at - time.monotonic()), self._fire)

    def _fire(self) -> None:
        if not self._inside or self._task is None:
            return
        self._fired += 1
        self._task.cancel()
        if self._fired == 1:
            self._handle = asyncio.get_running_loop().call_later(SECOND_CANCEL_DELAY, self._fire)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._inside = False
        if self._handle is not None:
            self._handle.cancel()
        if not self._fired or self._task is None:
            return
        for _ in range(self._fired):
            self._task.uncancel()
        if self._task.cancelling() == 0 and (
            kind is None or issubclass(kind, asyncio.CancelledError)
        ):
            raise NoAnswer(f"{self._what}: no answer from the database within the deadline")


@contextlib.contextmanager
def deadline(at: float) -> Iterator[None]:
    """Database operations in this block wait for a pooled connection until ``at`` (monotonic)
    at most, instead of the pool's whole timeout."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class Outage:
    """Whether a pool can reach the database, as its last connection attempts and operations
    saw it. Each change is logged once (not once per failed operation), and recovery wakes
    whoever asked to be told (the dispatcher's loops)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: float | None = None
        self.failures = 0
        self._listeners: list[Callable[[], None]] = []

    @property
    def down(self) -> bool:
        """True from the first failure until the next success."""
        return self.since is not None

    def on_recovery(self, listener: Callable[[], None]) -> None:
        """Calls ``listener`` (on the event loop) each time the database is reachable again."""
        self._listeners.append(listener)

    def failed(self, what: str, exc: BaseException) -> None:
        """A connection attempt or an operation failed for want of the database."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.error(
                "database unreachable from %s (%s: %s); failing fast and reconnecting every "
                "%.1f s until it is back",
                self.name, what, _one_line(exc), RECONNECT_MAX_DELAY,
            )  # fmt: skip

    def recovered(self) -> None:
        """A connection or an operation succeeded."""
        if self.since is None:
            return
        took, failures = time.monotonic() - self.since, self.failures
        self.since, self.failures = None, 0
        log.warning(
            "database reachable again from %s after %.1f s (%d operations failed meanwhile)",
            self.name, took, failures,
        )  # fmt: skip
        for listener in self._listeners:
            listener()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _ConnectAttempts(AttemptWithBackoff):
    INITIAL_DELAY = RECONNECT_FIRST_DELAY

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_DELAY)


class Pool(AsyncConnectionPool):
    """psycopg's pool, reconnecting every RECONNECT_MAX_DELAY at most while the database is
    away, and keeping an Outage up to date from its connection attempts."""

    outage: Outage
    warmth: Warmth
    statement_timeout: float

    async def _connect(self, timeout: float | None = None) -> Any:
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            self.outage.failed("connect", exc)
            raise
        self.outage.recovered()
        return conn

    async def _get_ready_connection(self, timeout: float | None) -> Any:
        # Last in, first out: the connection given back last is handed out again, so the hot
        # statements run on few connections, each of which has them prepared already. At the
        # 365-day horizon a statement's first run on a connection plans it over every
        # partition (50 to 170 ms); psycopg_pool's own order (first in, first out) rotates
        # every statement through every connection and paid that once per connection, which
        # made the first seconds of a dispatcher late. The least recently used connection
        # stays first, where the pool's shrinking takes idle ones from.
        if len(self._pool) > 1:
            self._pool.rotate(1)
        return await super()._get_ready_connection(timeout)

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        if attempt is None:
            # Never given up on: the attempts go on, quietly, for as long as the outage lasts.
            attempt = _ConnectAttempts(timeout=self.reconnect_timeout)
        await super()._add_connection(attempt, growing)


class _NoReconnectNoise(logging.Filter):
    """psycopg_pool warns at every failed reconnect and every connection the outage broke;
    the Outage says it once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("error connecting in", "discarding closed connection"))


logging.getLogger("psycopg.pool").addFilter(_NoReconnectNoise())


class _NoCutNoise(logging.Filter):
    """psycopg warns for every connection a deadline closed (``_HardDeadline``'s second
    cancel); the Outage says it once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("query cancellation interrupted")


logging.getLogger("psycopg").addFilter(_NoCutNoise())


async def retry_transient(
    op: Callable[[], Awaitable[T]], *, what: str, outage: Outage, budget: float, attempts: int = 4
) -> T:
    """Runs an idempotent database operation, retrying transient errors with backoff, all
    within ``budget`` seconds (waits for a pooled connection included).

    Only operations that are safe to repeat go through here; a failure that outlasts the
    retries or the budget becomes DatabaseUnavailable (the Outage logs it, once).
    """
    try:
        with deadline(time.monotonic() + budget):
            result = await _retrying(op, budget=budget, attempts=attempts)
        outage.recovered()
        return result
    except DatabaseUnavailable:
        raise
    except TRANSIENT as exc:
        if not isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
            outage.failed(what, exc)
        log.debug("database operation %s failed: %s", what, exc)
        raise DatabaseUnavailable(
            f"{what}: {_one_line(exc)}", "no answer within the timeout, or the connection failed"
        ) from exc


async def _retrying(op: Callable[[], Awaitable[T]], *, budget: float, attempts: int) -> T:
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT),
        stop=stop_after_attempt(attempts) | stop_after_delay(budget),
        wait=wait_exponential(multiplier=0.05, max=0.25) + wait_random(0, 0.05),
        reraise=True,
    ):
        with attempt:
            return await op()
    raise AssertionError("unreachable")  # pragma: no cover


async def _configure(conn: psycopg.AsyncConnection[TupleRow], warmth: Warmth) -> None:
    # Every timestamp leaves the database in UTC, whatever the server's TimeZone.
    await conn.execute("set timezone = 'UTC'")
    # Statements run often (psycopg prepares a statement on its 5th run on a connection) keep
    # one generic plan: PostgreSQL prunes partitions when it starts executing, instead of
    # planning every partition of the horizon again on every run (50 to 600 ms per statement
    # at 365 days, whose estimate makes its default choose such custom plans). Measured in
    # docs/benchmarks.md; tests/integration/test_plans.py holds it.
    await conn.execute("set plan_cache_mode = force_generic_plan")
    # ... from their first run, not their 5th: until psycopg prepares a statement, every run
    # of it is planned afresh over every partition, so the first few claims of each pooled
    # connection took 100 ms and more, and a stream starting on a fresh dispatcher ran at a
    # third of its rate for several seconds (bench.windows).
    conn.prepare_threshold = 0
    # A new connection plans the pool's hot statements before it serves (db/warmth.py).
    conn.cursor_factory = cursor_class(warmth)
    await warmth.replay(conn)


def make_pool(
    conninfo: str, *, max_size: int, name: str, timeout: float = 1.0,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
) -> Pool:  # fmt: skip
    """An unopened pool of autocommit connections; open it with ``await pool.open()``.

    ``timeout`` bounds an operation (TIMERHOOK_DB_TIMEOUT_SECONDS), its wait for a connection
    and its statements alike: while the database is away or frozen, requests get their 503
    within it instead of hanging. ``statement_timeout`` bounds every statement and idle
    transaction on the server, and on the client an operation that names no deadline."""
    bound_ms = round(statement_timeout * 1000)
    server_bounds = (
        f"-c statement_timeout={bound_ms} -c idle_in_transaction_session_timeout={bound_ms}"
    )
    warmth = Warmth(name)

    async def configure(conn: psycopg.AsyncConnection[TupleRow]) -> None:
        await _configure(conn, warmth)

    pool = Pool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        configure=configure,
        timeout=timeout,
        reconnect_timeout=10 * 365 * 86_400.0,
        kwargs={
            "application_name": f"timerhook-{name}", "autocommit": True, **CONNECT_OPTIONS,
            "options": server_bounds, "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        },
    )  # fmt: skip
    pool.outage = Outage(name)
    pool.warmth = warmth
    pool.statement_timeout = statement_timeout
    return pool


def model_row(cls: type[T]) -> Callable[[Any], Callable[[Sequence[Any]], T]]:
    """psycopg's ``class_row`` for a hot query: when the columns are the dataclass's first
    fields in order, rows are built positionally (no mapping of names per row)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def factory(cur: Any) -> Callable[[Sequence[Any]], T]:
        columns = [c.name for c in cur.description or ()]
        if columns == names[: len(columns)]:
            return lambda values: cls(*values)
        return lambda values: cls(**dict(zip(columns, values, strict=True)))

    return factory


class PoolOwner:
    """Base of the stores: shares one pool and offers connection and transaction helpers."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.outage = pool.outage

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """A pooled autocommit connection, for a block that must be done by the operation's
        deadline (``deadline``; without one, the statement timeout): past it the block is
        cancelled, the connection closed, and NoAnswer raised. One that broke (the server went
        away) becomes DatabaseUnavailable, and so does none in time (see _getconn)."""
        conn = await self._getconn()
        given = _DEADLINE.get()
        # The statements get a share of the budget of their own, however long the wait for a
        # connection took: a cut statement closes its connection and counts as an outage,
        # which a busy pool must not cause.
        until = (
            max(given, time.monotonic() + EXEC_SHARE * self.pool.timeout)
            if given is not None
            else time.monotonic() + self.pool.statement_timeout
        )
        try:
            async with _HardDeadline(until, self.pool.outage.name):
                yield conn
        except NoAnswer as exc:
            self.outage.failed("query", exc)
            raise
        except psycopg.OperationalError as exc:
            if not conn.broken:
                raise  # a statement-level error (a cancel, a lock timeout)
            self.outage.failed("query", exc)
            raise DatabaseUnavailable(
                f"connection lost: {_one_line(exc)}", "the connection was lost"
            ) from exc
        finally:
            await self.pool.putconn(conn)

    async def _getconn(self) -> psycopg.AsyncConnection[TupleRow]:
        """Waits for a pooled connection until the operation's deadline (the pool's timeout,
        TIMERHOOK_DB_TIMEOUT_SECONDS, by default). Past it, while the database is known to be
        away, gives up: requests answer 503 fast. While it answers and every connection is
        merely busy, keeps waiting, up to BUSY_WAIT_SECONDS, since the queue is draining (an
        overload is shed by the create queue's bound instead). While the database is known to
        be away, waits one reconnect at most."""
        now = time.monotonic()
        deadline = _DEADLINE.get() or now + self.pool.timeout
        if self.outage.down:
            # failing fast: a connection comes within one reconnect of the pool, or not yet
            # (a dispatcher's 5 s wait per operation made a heartbeat outlast two intervals)
            deadline = min(deadline, now + RECONNECT_MAX_DELAY)
        busy_until = now + BUSY_WAIT_SECONDS
        while True:
            try:
                conn: psycopg.AsyncConnection[TupleRow] = await self.pool.getconn(
                    timeout=max(0.001, deadline - time.monotonic())
                )
                return conn
            except PoolTimeout as exc:
                now = time.monotonic()
                if self.outage.down or now >= busy_until:
                    detail = "database unreachable" if self.outage.down else "every connection busy"
                    raise DatabaseUnavailable(
                        f"no connection within the timeout ({detail})"
                    ) from exc
                deadline = min(now + 0.25, busy_until)

    async def retrying(
        self, op: Callable[[], Awaitable[T]], *, what: str, budget: float | None = None
    ) -> T:
        """retry_transient within this pool's timeout (or ``budget`` seconds: maintenance
        that may take longer, as the partitions of the whole horizon do)."""
        return await retry_transient(
            op, what=what, outage=self.outage, budget=budget or self.pool.timeout
        )

    @property
    def long_budget(self) -> float:
        """The budget of maintenance work: the statement timeout."""
        return self.pool.statement_timeout

    async def clock(self, now: datetime | None = None) -> datetime:
        """The database clock (or ``now``)."""
        async with self.connection() as conn:
            cur = await conn.execute(query("clock_now"), {"now": now})
            row = await cur.fetchone()
        assert row is not None
        now_read: datetime = row[0]
        return now_read

    async def fetch_one(self, name: str, model: type[T], params: Mapping[str, Any]) -> T | None:
        """Runs the named single-statement query (its own transaction) and returns its one row
        as ``model``, or None; transient errors are retried, so the query must be safe to run
        again."""

        async def op() -> T | None:
            async with self.connection() as conn:
                cur = conn.cursor(row_factory=class_row(model))
                await cur.execute(query(name), params)
                return await cur.fetchone()

        return await self.retrying(op, what=name)

    async def fetch_all(
        self, name: str, model: type[T], params: Mapping[str, Any], *, generic: bool = False
    ) -> list[T]:
        """Like fetch_one, for every row; ``generic``: as in ``rows``."""

        async def op() -> list[T]:
            async with self.connection() as conn:
                cur = conn.cursor(row_factory=class_row(model))
                await cur.execute(query(name), params, prepare=generic or None)
                return await cur.fetchall()

        return await self.retrying(op, what=name)

    async def rows(
        self, name: str, params: Mapping[str, Any], *, generic: bool = False
    ) -> list[tuple[Any, ...]]:
        """Every row of a named read-only query, as tuples; retried like fetch_one.

        ``generic``: prepared from its first run, not its fifth, so that it runs on one
        generic plan per connection (the pools' plan_cache_mode) from the start. For reads
        over every partition that run rarely (the dashboard's, the CLI's), whose planning grows
        with the horizon (about 90 ms at 365 days) while they execute in a few milliseconds.
        """

        async def op() -> list[tuple[Any, ...]]:
            async with self.connection() as conn:
                cur = await conn.execute(query(name), params, prepare=generic or None)
                return await cur.fetchall()

        return await self.retrying(op, what=name)

    async def run(
        self, name: str, params: Mapping[str, Any], *, budget: float | None = None
    ) -> int:
        """Runs the named single-statement query, retried like fetch_one; returns its rowcount."""

        async def op() -> int:
            async with self.connection() as conn:
                cur = await conn.execute(query(name), params)
                return cur.rowcount

        return await self.retrying(op, what=name, budget=budget)
