"""Requeue: dead letters (dead or failed timers) put back to pending, one or in bulk."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from core.ids import bucket_of
from db.connection import PoolOwner
from db.models import RequeueFilter, RequeueResult

log = logging.getLogger(__name__)

# Dead letters requeued per statement by a bulk requeue.
_REQUEUE_BATCH = 5000


class RequeueStore(PoolOwner):
    """Puts dead letters back into the bucket of now."""

    async def requeue(
        self, timer_id: uuid.UUID, *, tenant: str | None = None, now: datetime | None = None
    ) -> RequeueResult | None:
        """Requeues one dead or failed timer (due now, a fresh round of attempts); None if
        there is no such timer (of ``tenant``, when given)."""
        # A repeat finds the timer pending: it reports "not requeued", never requeues twice.
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "tenant": tenant, "now": now}
        return await self.fetch_one("timer_requeue", RequeueResult, params)

    async def requeue_matching(
        self, which: RequeueFilter, *, limit: int | None = None, now: datetime | None = None
    ) -> int:
        """Requeues the dead letters that match (at most ``limit``); returns how many. Runs in
        batches of a few thousand, each its own short transaction."""
        started = await self.clock(now)
        cutoff = min(which.finished_before, started) if which.finished_before else started
        total = 0
        while limit is None or total < limit:
            batch = _REQUEUE_BATCH if limit is None else min(_REQUEUE_BATCH, limit - total)
            params: dict[str, object] = {
                "states": list(which.states),
                "url_prefix": which.url_prefix,
                "finished_after": which.finished_after,
                "finished_before": cutoff,
                "limit": batch,
                "now": now,
            }

            done = await self.run("timers_requeue", params, budget=self.long_budget)
            total += done
            if done < batch:
                break
        if total:
            log.info("requeued %d dead letters", total)
        return total
