"""The window pass: plans the fleet's windowed sends once a tick (db/windows.py), before the
claims, so that the rows it gives instants to in the coming second are claimed in the same
pass and sent at those instants like any timer."""

from __future__ import annotations

import logging
from datetime import datetime

from db.connection import DatabaseUnavailable
from db.database import Database
from db.windows import WindowPlan

log = logging.getLogger(__name__)


class WindowPass:
    """``due()`` once a tick; ``await run()`` in the claim loop plans what is due."""

    def __init__(self, db: Database, *, lookahead_seconds: float, ahead_seconds: float) -> None:
        self.db = db
        self.lookahead_seconds = lookahead_seconds
        self.ahead_seconds = ahead_seconds  # a tick: the next plan takes on from there
        self._due = True
        self._failing = False  # logged once per episode, not once per tick
        self.last = WindowPlan(0.0, 0)

    def due(self) -> None:
        """A tick: the next claim pass plans windowed sends first."""
        self._due = True

    async def run(self, *, now: datetime | None = None) -> int:
        """Plans the windowed sends of the next tick (once per tick); returns how many."""
        if not self._due and now is None:
            return 0
        self._due = False
        try:
            self.last = await self.db.windows.plan(
                lookahead_seconds=self.lookahead_seconds, ahead_seconds=self.ahead_seconds,
                now=now,
            )  # fmt: skip
        except DatabaseUnavailable:
            raise  # the outage is logged once by the pool
        except Exception:
            if not self._failing:
                log.exception("the window plan failed; windowed timers go at their deadlines")
            self._failing = True
            return 0
        if self._failing:
            log.warning("the window plan works again")
            self._failing = False
        return self.last.planned
