"""Per-minute caps: token buckets kept in PostgreSQL so that every dispatcher shares them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime

from psycopg.rows import class_row

from core.caps import HOST, TENANT, Cap, CappedScopes, Grant
from db.connection import PoolOwner
from db.query_loader import query

log = logging.getLogger(__name__)


def _scopes(scope: str | None, scopes: Sequence[str]) -> list[str]:
    return [scope, *scopes] if scope is not None else list(scopes)


class CapStore(PoolOwner):
    """Seeds, sets, takes from and lists the caps."""

    async def seed(self, *, scope: str, per_minute: int) -> None:
        """Sets a cap only if none is stored yet (the environment's starting value)."""
        await self.run("cap_seed", {"scope": scope, "per_minute": per_minute})

    async def set(self, *, scope: str, per_minute: int) -> None:
        """Sets a cap for every dispatcher at once; 0 removes the limit."""
        await self.run("cap_set", {"scope": scope, "per_minute": per_minute})
        log.info("cap %s set to %d/min", scope, per_minute)

    async def take(
        self,
        *,
        scope: str | None = None,
        scopes: Sequence[str] = (),
        wanted: int,
        now: datetime | None = None,
    ) -> Grant:
        """Takes up to ``wanted`` tokens from ``scope``, or from every cap of ``scopes`` at
        once (as many as the emptiest allows); grants them all when there is no cap.

        Not retried: a take whose commit was lost may have taken tokens, and taking them again
        would only slow sending a little, but reporting the failure is the honest answer.
        """
        async with self.connection() as conn:
            cur = await conn.execute(
                query("cap_take"),
                {"scopes": _scopes(scope, scopes), "wanted": wanted, "now": now},
            )
            row = await cur.fetchone()
        answered_at = time.monotonic()
        if row is None:
            return Grant(wanted, 0)
        return Grant(int(row[0]), int(row[1]), float(row[2]), answered_at)

    async def give_back(
        self, *, scope: str | None = None, scopes: Sequence[str] = (), n: int
    ) -> None:
        """Returns tokens taken but not used (to each of the scopes they were taken from)."""
        if n <= 0:
            return
        await self.run("cap_give_back", {"scopes": _scopes(scope, scopes), "n": n})

    async def capped(self) -> CappedScopes:
        """The tenants and hosts that have a cap of their own."""
        rows = await self.rows("cap_scopes", {})
        tenants = tuple(s[len(TENANT) :] for (s,) in rows if s.startswith(TENANT))
        hosts = tuple(s[len(HOST) :] for (s,) in rows if s.startswith(HOST))
        return CappedScopes(tenants, hosts)

    async def list(self) -> list[Cap]:
        """Every cap with its bucket's current fill."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Cap))
            await cur.execute(query("cap_list"))
            return await cur.fetchall()
