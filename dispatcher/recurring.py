"""The schedule pass: makes the occurrences of recurring timers shortly before their times.

Run by the claim loop once a tick (and at start), before the claims, so that an occurrence
made now is claimed in the same pass and an outage's missed occurrences are coalesced before
any of them is sent (db/schedules.py, db/recurrence.py). Every dispatcher runs it; row locks
skipped by the others share the series between them.
"""

from __future__ import annotations

import logging
from datetime import datetime

from db.connection import DatabaseUnavailable
from db.database import Database
from db.settings import Settings

log = logging.getLogger(__name__)


class SchedulePass:
    """``due()`` once a tick; ``await run()`` in the claim loop makes what is due."""

    def __init__(self, db: Database, settings: Settings, *, lookahead_seconds: float) -> None:
        self.db = db
        self.settings = settings
        self.lookahead_seconds = lookahead_seconds
        self._due = True  # the first pass runs at start
        self._failing = False  # logged once per episode, not once per tick
        self.made_total = 0

    def due(self) -> None:
        """A tick: the next claim pass makes occurrences first."""
        self._due = True

    async def run(self, *, now: datetime | None = None) -> int:
        """Makes the occurrences due by now + lookahead (once per tick); returns how many."""
        if not self._due and now is None:
            return 0
        self._due = False
        try:
            made = await self.db.schedules.advance(
                lookahead_seconds=self.lookahead_seconds, shards=self.settings.shards,
                wake_ms=self.settings.wake_within_ms, now=now,
            )  # fmt: skip
        except DatabaseUnavailable:
            raise  # the outage is logged once by the pool
        except Exception:
            if not self._failing:
                log.exception("the schedule pass failed; recurring timers wait until it works")
            self._failing = True
            return 0
        if self._failing:
            log.warning("the schedule pass works again")
            self._failing = False
        self.made_total += made
        return made
