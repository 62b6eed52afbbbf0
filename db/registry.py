"""The dispatcher registry and partition maintenance."""

from __future__ import annotations

import logging
from datetime import datetime

from psycopg.rows import class_row

from db.connection import PoolOwner
from db.models import Dispatcher, PeerBeat
from db.query_loader import query

log = logging.getLogger(__name__)


class DispatcherStore(PoolOwner):
    """Registration, heartbeats and the registry listing."""

    async def register(
        self, *, dispatcher_id: str, host: str, pid: int, pidns: str | None = None
    ) -> None:
        """Adds (or revives) this dispatcher's row."""
        params = {"id": dispatcher_id, "host": host, "pid": pid, "pidns": pidns}
        await self.run("dispatcher_register", params)

    async def deregister(self, *, dispatcher_id: str) -> None:
        """Marks this dispatcher stopped (a clean shutdown)."""
        await self.run("dispatcher_deregister", {"id": dispatcher_id})

    async def peers(self, *, dead_after_seconds: float) -> list[PeerBeat]:
        """The registered dispatchers that have not stopped, in id order, with their last
        heartbeat (and whether it is recent, for the split of the key claims), and the ones
        that stopped within dead_after_seconds (``stopped``)."""
        return await self.fetch_all(
            "dispatcher_peers", PeerBeat, {"dead_after_seconds": dead_after_seconds}
        )

    async def list(self, *, dead_after_seconds: float) -> list[Dispatcher]:
        """The registry, newest first, with liveness by the database clock."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Dispatcher))
            await cur.execute(query("dispatcher_list"), {"dead_after_seconds": dead_after_seconds})
            return await cur.fetchall()


class PartitionStore(PoolOwner):
    """Creates partitions ahead and drops them after retention."""

    async def ensure(self, *, horizon_days: int, now: datetime | None = None) -> int:
        """Creates the partitions the accepted horizon needs; returns how many were new."""

        async def op() -> int:
            async with self.connection() as conn:
                cur = await conn.execute(
                    query("partition_ensure"), {"horizon_days": horizon_days, "now": now}
                )
                row = await cur.fetchone()
                return int(row[0]) if row else 0

        made = await self.retrying(op, what="partition_ensure", budget=self.long_budget)
        if made:
            log.info("created %d timer partitions", made)
        return made

    async def drop_expired(self, *, retention_days: int, now: datetime | None = None) -> list[str]:
        """Drops partitions past retention that hold nothing pending; returns their names."""

        async def op() -> list[str]:
            async with self.connection() as conn:
                cur = await conn.execute(
                    query("partition_drop"), {"retention_days": retention_days, "now": now}
                )
                return [str(r[0]) for r in await cur.fetchall()]

        dropped = await self.retrying(op, what="partition_drop", budget=self.long_budget)
        if dropped:
            log.info("dropped %d timer partitions past retention: %s", len(dropped), dropped)
        return dropped

    async def names(self) -> list[str]:
        """Every partition name, oldest first."""
        async with self.connection() as conn:
            cur = await conn.execute(query("partition_list"))
            return [str(r[0]) for r in await cur.fetchall()]
