"""The one place where the database clock meets this process's monotonic clock.

Every due decision is made on PostgreSQL's clock; sends are timed on ``time.monotonic()``. A
claim returns each row's ``clock_timestamp()`` and notes the local monotonic instant as its
rows arrive (docs/architecture.md, "The claim protocol"); that pair maps one clock onto the
other, erring late, never early.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from db.models import Claim


async def sleep_until(deadline: float) -> None:
    """Returns at ``time.monotonic() >= deadline``, never before.

    A single ``asyncio.sleep`` can end early: uvloop schedules it from the loop's cached time
    (read at the start of the loop iteration, so up to an iteration stale) in whole
    milliseconds. So it sleeps again for whatever is left.
    """
    # Polling the clock is the point here (an Event has nothing to wait for).
    while (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(max(left, 0.0005))


@dataclass(frozen=True, slots=True)
class ClockMap:
    """A database instant and the local monotonic instant known to be no earlier than it."""

    db_ref: datetime
    mono_ref: float

    @classmethod
    def of(cls, claim: Claim) -> ClockMap:
        """The latest database reading of a claim, paired with the instant it had answered."""
        return cls(max(row.db_now for row in claim.rows), claim.answered_at)

    def local(self, at: datetime) -> float:
        """The monotonic instant of a database instant (never before it)."""
        return self.mono_ref + (at - self.db_ref).total_seconds()

    def database(self, mono: float) -> datetime:
        """The database instant of a monotonic instant (the estimate recorded as fired_at)."""
        return self.db_ref + timedelta(seconds=mono - self.mono_ref)
