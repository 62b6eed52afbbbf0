"""Group commit for creates: concurrent POST /timer requests share one INSERT and one commit.

Requests queue while an INSERT is running; the next INSERT takes all of them (up to
``max_batch``). No request waits for a timer or a batch to fill: under light load every batch
holds one row, under heavy load batches grow by themselves. A failure fails exactly the
requests of its batch, each with the same error, and nothing of that batch is half-written
(one statement, one commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from db.database import Database
from db.models import CreatedTimer, DeliveryOptions

log = logging.getLogger(__name__)

_PLAIN = DeliveryOptions()


@dataclass(slots=True)
class _Pending:
    delay_ms: int
    url: str
    options: DeliveryOptions
    done: asyncio.Future[CreatedTimer] | None


class CreateBatcher:
    """Batches creates; ``await start()``, then ``await create(...)``, then ``await stop()``."""

    def __init__(self, db: Database, *, shards: int, max_batch: int, writers: int = 2) -> None:
        self._db = db
        self._shards = shards
        self._max_batch = max_batch
        self._writers = writers
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Starts the writer tasks (each uses one pooled connection per batch)."""
        self._tasks = [asyncio.create_task(self._writer()) for _ in range(self._writers)]

    async def stop(self) -> None:
        """Writes what is queued, then stops the writers."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(*self._tasks)

    async def create(
        self, delay_ms: int, url: str, options: DeliveryOptions | None = None
    ) -> CreatedTimer:
        """Inserts one timer as part of the next batch; raises what its batch raised."""
        options = options or _PLAIN
        if self._max_batch == 1:
            return (await self._insert([_Pending(delay_ms, url, options, None)]))[0]
        done: asyncio.Future[CreatedTimer] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(delay_ms, url, options, done))
        self._wake.set()
        return await done

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
            try:
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
        return await self._db.timers.insert(
            [p.delay_ms for p in batch],
            [p.url for p in batch],
            shards=self._shards,
            options=[p.options for p in batch],
        )
