"""Host circuits: target hosts backed off after repeated failures, shared by the fleet."""

from __future__ import annotations

import logging
from datetime import datetime

from db.connection import PoolOwner
from db.models import Circuit

log = logging.getLogger(__name__)


class _OpenUntil:
    __slots__ = ("open_until",)

    def __init__(self, open_until: datetime) -> None:
        self.open_until = open_until


class CircuitStore(PoolOwner):
    """Opens, closes and lists host circuits."""

    async def open(
        self, *, host: str, seconds: float, failures: int, reason: str, owner: str
    ) -> datetime:
        """Opens the host's circuit for ``seconds`` from the database's now; returns until."""
        params = {
            "host": host,
            "seconds": seconds,
            "failures": failures,
            "reason": reason,
            "owner": owner,
        }
        row = await self.fetch_one("circuit_open", _OpenUntil, params)
        assert row is not None
        return row.open_until

    async def close(self, *, host: str) -> None:
        """Closes the host's circuit (a send to it succeeded)."""
        await self.run("circuit_close", {"host": host})

    async def list(self, *, now: datetime | None = None) -> list[Circuit]:
        """Every circuit, open or not (a closed one lingers until a send succeeds)."""
        return await self.fetch_all("circuit_list", Circuit, {"now": now})
