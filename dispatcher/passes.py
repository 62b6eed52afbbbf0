"""A pass the claim loop runs once a tick, before its claims (the schedule pass, the window
plan): run at most once per tick, its failures logged once per episode, not once per tick."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from db.connection import DatabaseUnavailable

log = logging.getLogger(__name__)


class TickPass:
    """``due()`` once a tick; ``await run()`` in the claim loop runs ``step`` if due."""

    def __init__(
        self, step: Callable[[datetime | None], Awaitable[int]], *, failed: str, works: str
    ) -> None:
        self._step = step
        self._failed = failed  # logged with the traceback when the step starts failing
        self._works = works  # logged when it works again
        self._due = True  # the first pass runs at start
        self._failing = False

    def due(self) -> None:
        """A tick: the next claim pass runs this one first."""
        self._due = True

    async def run(self, *, now: datetime | None = None) -> int:
        """Runs the step if a tick asked for it (always, with an injected ``now``); returns
        what it did (0 when it failed: the next tick tries again)."""
        if not self._due and now is None:
            return 0
        self._due = False
        try:
            done = await self._step(now)
        except DatabaseUnavailable:
            raise  # the outage is logged once by the pool
        except Exception:
            if not self._failing:
                log.exception(self._failed)
            self._failing = True
            return 0
        if self._failing:
            log.warning(self._works)
            self._failing = False
        return done
