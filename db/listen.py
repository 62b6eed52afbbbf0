"""Wake-ups by LISTEN/NOTIFY: a create whose timer falls due within the dispatchers' claim
window says so at its commit (``pg_notify`` in ``timer_insert``), and every dispatcher's
listener wakes its claimer at once instead of at its next tick.

One extra connection per dispatcher, outside the pool. A notification is only a hint: a lost
one (the listener reconnecting, the database away) costs at most a tick, the next tick claims
what is due as before, so nothing depends on it being delivered.

The same connection hears revocations (``timerhook_revoke``, payload 'owner id token'): a
cancel or a pause met a row a dispatcher had claimed. A lost one leaves the request that
revoked without an answer: it says so (409), never 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "timerhook_due"
REVOKE_CHANNEL = "timerhook_revoke"
# Between tries while the database cannot be reached (the pool logs the outage itself).
RETRY_SECONDS = 1.0


class DueListener:
    """Calls ``wake`` whenever a timer due soon is created; ``start()``, later ``stop()``."""

    def __init__(
        self, conninfo: str, wake: Callable[[], None],
        revoke: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self._conninfo = conninfo
        self._wake = wake
        self._revoke = revoke
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while LISTEN is in effect (for tests)

    def start(self) -> None:
        """Starts listening in the background."""
        self._task = asyncio.create_task(self._run(), name="due-listener")

    async def stop(self) -> None:
        """Stops listening and closes the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5
                )
                async with conn:
                    await conn.execute(f"listen {CHANNEL}")
                    if self._revoke is not None:
                        await conn.execute(f"listen {REVOKE_CHANNEL}")
                    self.listening.set()
                    self._wake()  # whatever was created while nobody listened
                    async for note in conn.notifies():
                        if note.channel == REVOKE_CHANNEL and self._revoke is not None:
                            self._revoke(note.payload)
                        else:
                            self._wake()
            except psycopg.Error as exc:
                log.debug("due listener: %s; listening again in %.0f s", exc, RETRY_SECONDS)
            self.listening.clear()
            await asyncio.sleep(RETRY_SECONDS)
