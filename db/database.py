"""The Database facade: one pool and the stores that share it."""

from __future__ import annotations

from collections.abc import Callable

from db.access import KeyStore, TenantStore
from db.backlog import BacklogStore
from db.caps import CapStore
from db.circuits import CircuitStore
from db.connection import PoolOwner, make_pool
from db.listen import DueListener
from db.migrate import latest_version
from db.query_loader import query
from db.registry import DispatcherStore, PartitionStore
from db.schedules import ScheduleStore
from db.stats import StatsStore
from db.timers import TimerStore
from db.windows import WindowStore


class Database:
    """One pool and the stores that share it: what api/, dispatcher/ and cli/ hold on to."""

    def __init__(
        self, conninfo: str, *, max_size: int = 8, name: str = "timerhook", timeout: float = 1.0
    ) -> None:
        self.conninfo = conninfo
        self.pool = make_pool(conninfo, max_size=max_size, name=name, timeout=timeout)
        self.outage = self.pool.outage
        self._schema = PoolOwner(self.pool)
        self.timers = TimerStore(self.pool)
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

    def due_listener(self, wake: Callable[[], None]) -> DueListener:
        """A listener that calls ``wake`` when a timer due soon is created (db/listen.py)."""
        return DueListener(self.conninfo, wake)

    async def open(self) -> None:
        """Opens the pool and waits for a first connection (fails fast if unreachable)."""
        await self.pool.open(wait=True, timeout=30.0)

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
