"""The Database facade: one pool and the stores that share it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from db.access import KeyStore, TenantStore
from db.backlog import BacklogStore
from db.caps import CapStore
from db.circuits import CircuitStore
from db.connection import DEFAULT_STATEMENT_TIMEOUT, PoolOwner, make_pool
from db.creating import CreateStore
from db.dependencies import DependencyStore
from db.leases import LeaseStore
from db.listen import DueListener
from db.migrate import latest_version
from db.query_loader import query
from db.recording import RecordStore
from db.registry import DispatcherStore, PartitionStore
from db.requeue import RequeueStore
from db.revocations import RevocationStore
from db.schedules import ScheduleStore
from db.stats import StatsStore
from db.timers import TimerStore
from db.windows import WindowStore


class Database:
    """One pool and the stores that share it: what api/, dispatcher/ and cli/ hold on to."""

    def __init__(
        self, conninfo: str, *, max_size: int = 8, name: str = "timerhook", timeout: float = 1.0,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:  # fmt: skip
        self.conninfo = conninfo
        self.pool = make_pool(
            conninfo, max_size=max_size, name=name, timeout=timeout,
            statement_timeout=statement_timeout,
        )  # fmt: skip
        self.outage = self.pool.outage
        self._schema = PoolOwner(self.pool)
        self.timers = TimerStore(self.pool)
        self.creates = CreateStore(self.pool)
        self.leases = LeaseStore(self.pool)
        self.records = RecordStore(self.pool)
        self.revocations = RevocationStore(self.pool)
        self.requeues = RequeueStore(self.pool)
        self.dependencies = DependencyStore(self.pool)
        self.dispatchers = DispatcherStore(self.pool)
        self.partitions = PartitionStore(self.pool)
        self.caps = CapStore(self.pool)
        self.backlog = BacklogStore(self.pool)
        self.circuits = CircuitStore(self.pool)
        self.stats = StatsStore(self.pool)
        self.keys = KeyStore(self.pool)
        self.tenants = TenantStore(self.pool)
        self.schedules = ScheduleStore(self.pool)
        self.windows = WindowStore(self.pool)

    def due_listener(
        self, wake: Callable[[], None], revoke: Callable[[str], None] | None = None
    ) -> DueListener:
        """A listener that calls ``wake`` when a timer due soon is created, and ``revoke``
        with each revocation's payload (db/listen.py)."""
        return DueListener(self.conninfo, wake, revoke)

    async def open(self) -> None:
        """Opens the pool and waits for a first connection (fails fast if unreachable)."""
        await self.pool.open(wait=True, timeout=30.0)

    async def warm(self, connections: int, *, timeout: float = 30.0) -> bool:
        """Opens pooled connections up to ``connections`` (at most the pool's size) and keeps
        them, each of them planning the statements rehearsed so far before it serves
        (db/warmth.py), rather than one at a time under the first load and again after an
        idle spell; waits until they are in the pool (False if not within ``timeout``). The
        pool opens them side by side; nothing else may hold a connection meanwhile."""
        size = min(connections, self.pool.max_size)
        if size > self.pool.min_size:
            await self.pool.resize(min_size=size, max_size=self.pool.max_size)
        # Polled: psycopg_pool's own wait() is for a pool just opened and closes it on a
        # timeout, where a slow warm-up should only be reported.
        deadline = time.monotonic() + timeout
        while self.pool.get_stats().get("pool_available", 0) < size:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def not_ready(self) -> str | None:
        """Why this process cannot serve (the database does not answer, or its schema is not
        the one this code expects), or None when it can. One round trip (/readyz)."""

        async def op() -> int:
            async with self._schema.connection() as conn:
                cur = await conn.execute(query("schema_version"))
                row = await cur.fetchone()
            return int(row[0]) if row else 0

        version = await self._schema.retrying(op, what="schema_version")
        expected = latest_version()
        if version < expected:
            return f"the schema is at version {version}, this code needs {expected}: run migrate"
        if version > expected:
            return f"the schema is at version {version}, newer than this code ({expected})"
        return None

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self.pool.close()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
