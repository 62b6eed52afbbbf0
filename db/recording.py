"""Recording send outcomes: each fenced by its lease's token, in one statement per batch."""

from __future__ import annotations

from collections.abc import Sequence

from db.connection import Pool, PoolOwner
from db.dependencies import DependencyStore
from db.models import SendOutcome
from db.params import array_literal, named_rows, number_or_null, quoted_or_null


class RecordStore(PoolOwner):
    """Writes the outcomes of sends."""

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self._dependencies = DependencyStore(pool)

    async def record(self, outcomes: Sequence[SendOutcome], *, owner: str) -> int:
        """Records send outcomes and their attempts in one statement, each fenced by its
        lease's token; returns how many rows it recorded (a stale outcome, whose lease was
        taken over, is not)."""
        if not outcomes:
            return 0
        # The arrays go as text literals joined in C: psycopg's list dumper walks each
        # element in Python, which was an eighth of the dispatcher's CPU at full speed.
        buckets = [o.bucket for o in outcomes]
        params = {
            "id": array_literal(map(str, (o.id for o in outcomes))),
            "bucket": array_literal(b.isoformat() for b in buckets),
            "first_bucket": min(buckets),
            "last_bucket": max(buckets),
            "state": array_literal(o.state for o in outcomes),
            "status": array_literal(number_or_null(o.status) for o in outcomes),
            "error": array_literal(quoted_or_null(o.error) for o in outcomes),
            "fired_at": array_literal(o.fired_at.isoformat() for o in outcomes),
            "latency_ms": array_literal(number_or_null(o.latency_ms) for o in outcomes),
            "retry_in": array_literal(number_or_null(o.retry_in) for o in outcomes),
            "held": [o.id for o in outcomes if o.held],
            "token": array_literal(str(o.token) for o in outcomes),
            "owner": owner,
        }
        # Conditioned on the lease (state and owner), so a repeat changes nothing more.
        (recorded, resolve), *_ = await self.rows("timer_record", params)
        if resolve:
            await self._dependencies.resolve(resolve)
        return int(recorded)

    async def recorded_before(self, outcomes: Sequence[SendOutcome]) -> int:
        """How many of a record's outcomes are written, by it or by an earlier try whose
        answer was lost (``timer_record_repeats``); the rest are stale."""
        if not outcomes:
            return 0
        params = {
            **named_rows([(o.id, o.bucket) for o in outcomes]),
            "fired_at": [o.fired_at for o in outcomes],
        }
        (count,), *_ = await self.rows("timer_record_repeats", params)
        return int(count)
