"""The schedule pass: makes the occurrences of recurring timers shortly before their times.

Run by the claim loop once a tick (and at start), before the claims, so that an occurrence
made now is claimed in the same pass and an outage's missed occurrences are coalesced before
any of them is sent (db/schedules.py, core/recurrence.py). Every dispatcher runs it; row locks
skipped by the others share the series between them.
"""

from __future__ import annotations

from datetime import datetime

from core.settings import Settings
from db.database import Database
from dispatcher.passes import TickPass


class SchedulePass(TickPass):
    """``due()`` once a tick; ``await run()`` in the claim loop makes what is due."""

    def __init__(self, db: Database, settings: Settings, *, lookahead_seconds: float) -> None:
        super().__init__(
            self._make, failed="the schedule pass failed; recurring timers wait until it works",
            works="the schedule pass works again",
        )  # fmt: skip
        self.db = db
        self.settings = settings
        self.lookahead_seconds = lookahead_seconds
        self.made_total = 0

    async def _make(self, now: datetime | None) -> int:
        made = await self.db.schedules.advance(
            lookahead_seconds=self.lookahead_seconds, shards=self.settings.shards,
            wake_ms=self.settings.wake_within_ms, now=now,
        )  # fmt: skip
        self.made_total += made
        return made
