"""The dispatcher registry and partition maintenance."""

from __future__ import annotations

import logging
from datetime import datetime

from psycopg.rows import class_row

from db.connection import PoolOwner
from db.models import Dispatcher
from db.query_loader import query

log = logging.getLogger(__name__)


class DispatcherStore(PoolOwner):
    """Registration, heartbeats and the registry listing."""

    async def register(self, *, dispatcher_id: str, host: str, pid: int) -> None:
        """Adds (or revives) this dispatcher's row."""
        await self.run("dispatcher_register", {"id": dispatcher_id, "host": host, "pid": pid})

    async def heartbeat(
        self, *, dispatcher_id: str, in_flight: int, sent_total: int, failed_total: int
    ) -> bool:
        """Proves this dispatcher alive; False if its row is gone (someone removed it)."""
        params = {
            "id": dispatcher_id,
            "in_flight": in_flight,
            "sent_total": sent_total,
            "failed_total": failed_total,
        }

        async def op() -> bool:
            async with self.connection() as conn:
                cur = await conn.execute(query("dispatcher_heartbeat"), params)
                return await cur.fetchone() is not None

        return await self.retrying(op, what="dispatcher_heartbeat")

    async def deregister(self, *, dispatcher_id: str) -> None:
        """Marks this dispatcher stopped (a clean shutdown)."""
        await self.run("dispatcher_deregister", {"id": dispatcher_id})

    async def peers(self, *, dead_after_seconds: float) -> list[str]:
        """The ids of the live dispatchers, in id order."""
        async with self.connection() as conn:
            cur = await conn.execute(
                query("dispatcher_peers"), {"dead_after_seconds": dead_after_seconds}
            )
            return [str(row[0]) for row in await cur.fetchall()]

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

        made = await self.retrying(op, what="partition_ensure")
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

        dropped = await self.retrying(op, what="partition_drop")
        if dropped:
            log.info("dropped %d timer partitions past retention: %s", len(dropped), dropped)
        return dropped

    async def names(self) -> list[str]:
        """Every partition name, oldest first."""
        async with self.connection() as conn:
            cur = await conn.execute(query("partition_list"))
            return [str(r[0]) for r in await cur.fetchall()]
