"""Cancels and revocations: a pending timer cancelled, or the claim of one in flight revoked
and its owner's answer awaited (docs/architecture.md, "Once")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

from core.ids import bucket_of
from db.connection import Pool, PoolOwner
from db.dependencies import DependencyStore
from db.models import CancelResult, ClaimedTimer, RevocationState
from db.params import named_rows

# How long a cancel or a pause waits for the dispatchers holding rows it revoked to answer
# (dropped unsent, or already sent); they answer within milliseconds unless frozen.
REVOKE_WAIT_SECONDS = 2.0
REVOKE_POLL_SECONDS = 0.005
REVOKE_POLL_MAX_SECONDS = 0.1


class RevocationStore(PoolOwner):
    """Cancels timers and revokes claims; the owners answer through it."""

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self._dependencies = DependencyStore(pool)

    async def cancel(
        self, timer_id: uuid.UUID, *, tenant: str | None = None, now: datetime | None = None
    ) -> CancelResult | None:
        """Cancels the timer if it is pending; None if there is no such timer (of ``tenant``,
        when given)."""
        # One statement: a repeat after a lost connection finds the timer cancelled already,
        # which is the same answer.
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "tenant": tenant, "now": now}
        result = await self.fetch_one("timer_cancel", CancelResult, params)
        if result is not None and result.cancelled and result.dependents:
            await self._dependencies.resolve([timer_id])  # they fail at once, saying why
        return result

    async def revoked(
        self, rows: Sequence[tuple[uuid.UUID, datetime, int]]
    ) -> list[RevocationState]:
        """Where the revocations of these leases (id, bucket, token) stand."""
        if not rows:
            return []
        params = {
            **named_rows([(i, b) for i, b, _ in rows]), "token": [t for _, _, t in rows],
        }  # fmt: skip
        return await self.fetch_all("revocation_state", RevocationState, params)

    async def settle(
        self, leases: Sequence[tuple[uuid.UUID, datetime, int]], *,
        wait: float = REVOKE_WAIT_SECONDS,
    ) -> list[RevocationState]:  # fmt: skip
        """Waits, ``wait`` seconds at most, until the fate of every revoked lease (id,
        bucket, token) is known: its owner answered, or it is no longer in flight under that
        lease. Returns where each stands. Polled: the owners answer in milliseconds."""
        give_up = time.monotonic() + wait
        pause = REVOKE_POLL_SECONDS
        while True:
            states = await self.revoked(leases)
            if all(s.settled for s in states) or time.monotonic() >= give_up:
                return states
            await asyncio.sleep(pause)
            pause = min(pause * 2, REVOKE_POLL_MAX_SECONDS)  # quick answers are the rule

    async def answer(self, row: ClaimedTimer, *, owner: str, dropped: bool) -> None:
        """This dispatcher's answer to the revocation of a row it holds: dropped unsent (the
        timer cancelled) or its request gone out already."""
        params = {
            "id": row.id, "bucket": row.bucket, "token": row.lease_token, "owner": owner,
            "answer": "dropped" if dropped else "sending",
        }  # fmt: skip
        (dependents,), *_ = await self.rows("revocation_answer", params)
        if dependents:
            await self._dependencies.resolve([row.id])

    async def purge(self, *, now: datetime | None = None) -> int:
        """Deletes revocations older than a day whose claim no longer holds its row."""
        return await self.run("revocations_purge", {"now": now}, budget=self.long_budget)
