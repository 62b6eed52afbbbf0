"""Warm connections: a connection's first run of a statement over the timers table plans it
over every partition of the horizon, and a new pooled connection paid that on the way of a
claim.

At the default 365-day horizon the table has about 368 partitions, and a hot statement's
first run on a connection spends 50 to 400 ms planning them (its generic plan, kept for the
connection's life: db/connection.py). A dispatcher's pool grows to a few connections in its
first seconds under load, and each new connection paid that for every statement on the way
of a claim: the first timers after a start arrived 300 to 600 ms late (bench.short_delays).

So a dispatcher runs its claim path once at start, in a ``rehearsal``: store calls chosen
to change nothing (the key query, a claim of a key in 2000, the record of an outcome for a
timer that does not exist, the reads of the resource and window passes, a reap limited to
no row). Their hot
statements are planned then, on the first connection, and noted with their arguments
(psycopg prepares a statement per text and argument types, so the same arguments give the
same prepared statement); every connection the pool adds runs the noted statements once
before it is handed out. Nothing is rolled back: psycopg forgets every prepared statement of
a connection at a rollback, so the rehearsed calls are no-ops instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg.rows import TupleRow

log = logging.getLogger(__name__)

# Set inside ``rehearsal``: the hot statements run are noted for new connections.
_REHEARSING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "timerhook_rehearsing", default=False
)


@contextlib.contextmanager
def rehearsal() -> Iterator[None]:
    """Store calls in this block run for real, so they must change nothing; the hot statements
    they run are noted, and every connection the pool adds runs them once before it serves."""
    token = _REHEARSING.set(True)
    try:
        yield
    finally:
        _REHEARSING.reset(token)


class Warmth:
    """The statements a pool's rehearsals ran, each with the arguments of its first run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runs: dict[str, Mapping[str, Any]] = {}

    async def replay(self, conn: psycopg.AsyncConnection[TupleRow]) -> int:
        """Runs every noted statement once on ``conn`` (a new connection: the pool's
        ``configure``); returns how many ran. One that fails (the connection aside) is passed
        over: the next real run plans it instead."""
        started = time.monotonic()
        done = 0
        for text, params in list(self.runs.items()):
            try:
                await conn.execute(text, params, prepare=True)
                done += 1
            except psycopg.Error as exc:
                if conn.broken:
                    raise
                log.debug("a new %s connection could not plan a statement ahead: %s",
                          self.name, exc)  # fmt: skip
        if done:
            log.debug(
                "a new %s connection planned %d statements ahead in %.0f ms",
                self.name, done, (time.monotonic() - started) * 1000,
            )  # fmt: skip
        return done


class NotingCursor(psycopg.AsyncCursor[Any]):
    """A cursor that notes the hot statements of a rehearsal in its pool's Warmth."""

    warmth: Warmth

    async def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None,
        binary: bool | None = None,
    ) -> NotingCursor:  # fmt: skip
        await super().execute(query, params, prepare=prepare, binary=binary)
        if _REHEARSING.get() and isinstance(params, Mapping):
            self.warmth.runs.setdefault(query, dict(params))
        return self


def cursor_class(warmth: Warmth) -> type[NotingCursor]:
    """A NotingCursor subclass noting into ``warmth``."""
    return type(f"NotingCursor_{warmth.name}", (NotingCursor,), {"warmth": warmth})
