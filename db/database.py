"""The Database facade: one pool and the stores that share it."""

from __future__ import annotations

from db.backlog import BacklogStore
from db.caps import CapStore
from db.circuits import CircuitStore
from db.connection import make_pool, retry_transient
from db.query_loader import query
from db.registry import DispatcherStore, PartitionStore
from db.timers import TimerStore


class Database:
    """One pool and the stores that share it: what api/, dispatcher/ and cli/ hold on to."""

    def __init__(self, conninfo: str, *, max_size: int = 8, name: str = "timerhook") -> None:
        self.conninfo = conninfo
        self.pool = make_pool(conninfo, max_size=max_size, name=name)
        self.timers = TimerStore(self.pool)
        self.dispatchers = DispatcherStore(self.pool)
        self.partitions = PartitionStore(self.pool)
        self.caps = CapStore(self.pool)
        self.backlog = BacklogStore(self.pool)
        self.circuits = CircuitStore(self.pool)

    async def open(self) -> None:
        """Opens the pool and waits for a first connection (fails fast if unreachable)."""
        await self.pool.open(wait=True, timeout=30.0)

    async def ping(self) -> None:
        """One round trip to the database (health checks); raises DatabaseUnavailable."""

        async def op() -> None:
            async with self.pool.connection() as conn:
                await conn.execute(query("database_ping"))

        await retry_transient(op, what="ping", attempts=2)

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self.pool.close()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
