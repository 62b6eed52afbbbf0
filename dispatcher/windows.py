"""The window pass: plans the fleet's windowed sends once a tick (db/windows.py), before the
claims, so that the rows it gives instants to are claimed ahead and sent at those instants
like any timer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from db.database import Database
from db.windows import WindowPlan
from dispatcher.passes import TickPass


class WindowPass(TickPass):
    """``due()`` once a tick; ``await run()`` in the claim loop plans what is due."""

    def __init__(
        self, db: Database, *, lookahead_seconds: float, ahead_seconds: float,
        cap_binding: Callable[[], bool] = lambda: False,
    ) -> None:  # fmt: skip
        super().__init__(
            self._plan, failed="the window plan failed; windowed timers go a second before "
            "their deadlines until it works", works="the window plan works again",
        )  # fmt: skip
        self.db = db
        self.lookahead_seconds = lookahead_seconds
        self.ahead_seconds = ahead_seconds  # how far ahead each plan reaches
        self.cap_binding = cap_binding  # the global cap binds: exact timers go first
        self.last = WindowPlan(0.0, 0)

    async def rehearse(self) -> None:
        """Reads the work a plan reads (in a ``db.warmth.rehearsal`` at start)."""
        await self.db.windows.work(lookahead_seconds=self.lookahead_seconds)

    async def _plan(self, now: datetime | None) -> int:
        self.last = await self.db.windows.plan(
            lookahead_seconds=self.lookahead_seconds,
            ahead_seconds=self.ahead_seconds,
            now=now,
            hold=self.cap_binding(),
        )
        return self.last.planned
