"""Group commit for creates: concurrent POST /timer requests share one INSERT and one commit.

Requests queue while an INSERT is running; the next INSERT takes all of them (up to
``max_batch``). No request waits for a timer or a batch to fill: under light load every batch
holds one row, under heavy load batches grow by themselves. A failure fails exactly the
requests of its batch, each with the same error, and nothing of that batch is half-written
(one statement, one commit).

The queue is bounded twice, so that overload and outages answer fast instead of piling up:
past ``max_queue`` waiting creates a new one is refused at once (Overloaded, a 503), and a
create still queued after ``timeout`` seconds while the database is away is taken out
unwritten (DatabaseUnavailable, a 503; while it answers, after BUSY_WAIT_SECONDS). Once its
INSERT is sent, a create waits for the answer: cutting it off then could leave the client not
knowing whether its timer exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from db.connection import BUSY_WAIT_SECONDS, DatabaseUnavailable, deadline
from db.database import Database
from db.models import CreatedTimer, DeliveryOptions

# How much longer than its oldest create's deadline a batch's INSERT may take (seconds).
INSERT_GRACE_SECONDS = 0.4

log = logging.getLogger(__name__)

_PLAIN = DeliveryOptions()


class Overloaded(RuntimeError):
    """More creates are waiting for the database than the queue holds; retry shortly."""


@dataclass(slots=True)
class _Pending:
    delay_ms: int
    url: str
    options: DeliveryOptions
    done: asyncio.Future[CreatedTimer] | None
    deadline: float = 0.0
    taken: bool = False


class CreateBatcher:
    """Batches creates; ``await start()``, then ``await create(...)``, then ``await stop()``."""

    def __init__(
        self,
        db: Database,
        *,
        shards: int,
        max_batch: int,
        writers: int = 2,
        max_queue: int = 5000,
        timeout: float = 1.0,
        wake_within_ms: int | None = None,
    ) -> None:
        self._db = db
        self._shards = shards
        self._max_batch = max_batch
        self._writers = writers
        self._max_queue = max_queue
        self._timeout = timeout
        self._wake_ms = wake_within_ms  # timers due sooner wake the dispatchers at commit
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._shed = 0  # creates refused in the current overload, logged when it ends

    async def start(self) -> None:
        """Starts the writer tasks (each uses one pooled connection per batch)."""
        self._tasks = [asyncio.create_task(self._writer()) for _ in range(self._writers)]

    async def stop(self) -> None:
        """Writes what is queued, then stops the writers."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(*self._tasks)

    @property
    def queued(self) -> int:
        """Creates waiting for their INSERT."""
        return len(self._queue)

    async def create(
        self, delay_ms: int, url: str, options: DeliveryOptions | None = None
    ) -> CreatedTimer:
        """Inserts one timer as part of the next batch; raises what its batch raised,
        Overloaded when the queue is full, DatabaseUnavailable when it waited too long."""
        options = options or _PLAIN
        if self._max_batch == 1:
            return (await self._insert([_Pending(delay_ms, url, options, None)]))[0]
        if len(self._queue) >= self._max_queue:
            if not self._shed:
                log.warning(
                    "shedding creates: %d are waiting for the database already (the most "
                    "TIMERHOOK_CREATE_QUEUE_MAX allows); answering 503 until they drain",
                    len(self._queue),
                )
            self._shed += 1
            raise Overloaded(f"{len(self._queue)} creates are waiting for the database")
        if self._shed and len(self._queue) < self._max_queue // 2:
            log.warning("stopped shedding creates: %d were refused with 503", self._shed)
            self._shed = 0
        done: asyncio.Future[CreatedTimer] = asyncio.get_running_loop().create_future()
        pending = _Pending(delay_ms, url, options, done, time.monotonic() + self._timeout)
        self._queue.append(pending)
        self._wake.set()
        busy_until = time.monotonic() + BUSY_WAIT_SECONDS
        timeout = self._timeout
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), timeout)
            except TimeoutError:
                if pending.taken:
                    return await done  # its INSERT is out: its answer decides
                if not self._db.outage.down and time.monotonic() < busy_until:
                    timeout = 0.25  # the database answers, the queue drains: wait on
                    continue
                self._queue.remove(pending)
                done.cancel()
                raise DatabaseUnavailable(
                    f"no database answer within {self._timeout:g} s; the timer was not created"
                ) from None

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            if self._queue:
                self._wake.set()  # more waiting: let another writer start on it
            for p in batch:
                p.taken = True
            try:
                # A pooled connection and the INSERT are waited for only as long as the oldest
                # create may wait, and a little more (its answer is due within the database
                # timeout plus half a second, a frozen database included).
                with deadline(min(p.deadline for p in batch) + INSERT_GRACE_SECONDS):
                    created = await self._insert(batch)
            except Exception as exc:
                for p in batch:
                    if p.done is not None and not p.done.done():
                        p.done.set_exception(exc)
                continue
            for p, timer in zip(batch, created, strict=True):
                if p.done is not None:
                    with contextlib.suppress(asyncio.InvalidStateError):  # the client went away
                        p.done.set_result(timer)

    async def _insert(self, batch: list[_Pending]) -> list[CreatedTimer]:
        return await self._db.creates.insert(
            [p.delay_ms for p in batch],
            [p.url for p in batch],
            shards=self._shards,
            options=[p.options for p in batch],
            wake_within_ms=self._wake_ms,
        )
