"""The recorder: send outcomes buffered and written in batches; retries scheduled; resource
holds released; rows given back for an open circuit; why rows wait.

One task flushes at least every 50 ms while sends complete (at once when a batch fills or a
row that held resources finishes, so the next row waiting for them goes without delay). Each
flush is one statement guarded by the lease (docs/architecture.md, "The claim protocol"); a
flush that fails keeps its outcomes for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from core.logs import timer_context
from core.settings import Settings
from core.states import TimerState
from db.connection import DatabaseUnavailable
from db.database import Database
from db.models import ClaimedTimer, SendOutcome
from dispatcher.retry import decide
from dispatcher.sender import Result
from dispatcher.stats import SendStats

log = logging.getLogger(__name__)

# Outcomes are written at least this often (seconds) while sends complete.
RECORD_INTERVAL = 0.05


class Recorder:
    """Buffers outcomes, waiting notes and deferrals, and writes them; ``wake_claims`` is
    called when a write makes work claimable sooner (a retry due soon, a hold released)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        owner: str,
        retry_soon_seconds: float,
        wake_claims: Callable[[], None],
        recorded: Callable[[int], None],
        stats: SendStats,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.stats = stats
        self.settings = settings
        self.owner = owner
        self.retry_soon_seconds = retry_soon_seconds
        self._wake_claims = wake_claims
        self._recorded = recorded
        self._changed = changed
        # Waiting notes written so far (a signal for callers and tests, with ``changed``).
        self.notes_written = 0
        self.sent_total = 0
        self.failed_total = 0
        # Outcomes waiting to be written, each with the monotonic instant of its retry (if any).
        self._outcomes: list[tuple[SendOutcome, float | None]] = []
        self._notes: dict[tuple[uuid.UUID, datetime], str] = {}
        self._deferred: dict[tuple[datetime, str], list[ClaimedTimer]] = {}
        # Outcomes and deferrals taken out of the buffers for a write not yet committed.
        self._writing: dict[uuid.UUID, tuple[uuid.UUID, datetime, int]] = {}
        # When the lease of each outcome not yet written was made or last renewed (monotonic):
        # only the old ones need renewing (``held_leases``).
        self._leased_at: dict[uuid.UUID, float] = {}
        self._wake = asyncio.Event()
        self._running = True
        self._task: asyncio.Task[None] | None = None

    @property
    def unwritten(self) -> int:
        """Outcomes and deferrals not yet written, counting those whose write is running."""
        deferred = sum(len(rows) for rows in self._deferred.values())
        return len(self._outcomes) + deferred + len(self._writing)

    def held_leases(
        self, leased_before: float | None = None
    ) -> list[tuple[uuid.UUID, datetime, int]]:
        """The leases (id, bucket, token) of the rows whose outcome or deferral is not written
        yet: still held, so renewed by the heartbeat. With ``leased_before`` (monotonic), only
        the outcomes whose lease was made or renewed before it (the rule for rows held), and
        every deferral: an outcome is written within a flush (50 ms) unless the database is
        away, so renewing every fresh one would write each row twice at full speed (the
        renewal, then the record)."""
        at = self._leased_at

        def waiting(row_id: uuid.UUID) -> bool:
            return leased_before is None or at.get(row_id, float("-inf")) < leased_before

        leases = [(o.id, o.bucket, o.token) for o, _ in self._outcomes if waiting(o.id)]
        leases += [lease for lease in self._writing.values() if waiting(lease[0])]
        leases += [
            (row.id, row.bucket, row.lease_token)
            for rows in self._deferred.values()
            for row in rows
        ]
        return leases

    def start(self) -> None:
        """Starts the flush loop."""
        self._task = asyncio.create_task(self._loop(), name=f"record-{self.owner}")

    async def stop(self) -> None:
        """Writes what is left and ends the loop; it is told to finish, never cancelled (a
        cancel mid-flush would lose a batch)."""
        self._running = False
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()

    def wake(self) -> None:
        """Flushes now (the database is back after an outage)."""
        self._wake.set()

    # -- what the send path hands in ------------------------------------------------------

    def outcome(
        self, row: ClaimedTimer, result: Result, fired_at: datetime, *, ended: bool = False,
        leased_at: float = float("-inf"),
    ) -> None:  # fmt: skip
        """Decides what a send's result makes of the row (delivered, a retry, failed, dead)
        and buffers it; ``ended``: its series was deleted or paused meanwhile, so a failure
        that would be retried cancels it instead; ``leased_at``: when the row's lease was made
        or last renewed (monotonic; unknown: renewed at every heartbeat until written)."""
        retry_at = None
        delay = None
        if result.failure is None:
            state: TimerState = "delivered"
            self.sent_total += 1
        else:
            self.failed_total += 1
            decision = decide(
                result.failure, delivery=row.delivery, attempt=row.attempts - row.round_start,
                attempts_left=row.attempts_left, base=self.settings.retry_base_seconds,
                cap=self.settings.retry_max_seconds,
            )  # fmt: skip
            state, delay = decision.state, decision.delay
            if ended and delay is not None:
                state, delay = "cancelled", None
            if delay is not None:
                # Counted from now, when the failure became known (Retry-After is relative to
                # the answer); turned into a database time when recorded, never earlier.
                retry_at = time.monotonic() + delay
        lateness = (fired_at - row.run_at).total_seconds()
        counted = "retried" if delay is not None else "failed" if state == "cancelled" else state
        self.stats.observe(counted, lateness, result, fired_at)
        if state != "delivered" or log.isEnabledFor(logging.DEBUG):
            self._log_attempt(row, result, state, delay, lateness)
        held = row.resources is not None
        outcome = SendOutcome(
            row.id, row.bucket, state, result.status, result.error, fired_at, result.latency_ms,
            held=held, token=row.lease_token,
        )  # fmt: skip
        self._outcomes.append((outcome, retry_at))
        self._leased_at[row.id] = leased_at
        if held or len(self._outcomes) >= self.settings.batch_size:
            self._wake.set()

    def _log_attempt(
        self, row: ClaimedTimer, result: Result, state: TimerState, delay: float | None,
        lateness: float,
    ) -> None:  # fmt: skip
        """One line per attempt at DEBUG; at INFO and above only failures (WARNING) and
        deaths (ERROR), each with the timer's context (its request id, this dispatcher)."""
        extra = timer_context(
            row.id, request_id=row.request_id, dispatcher_id=self.owner, attempt=row.attempts,
            url=row.url,
        )  # fmt: skip
        if state == "delivered":
            log.debug(
                "webhook delivered: HTTP %s in %.1f ms, %.1f ms after its due time",
                result.status, result.latency_ms or 0.0, lateness * 1000, extra=extra,
            )  # fmt: skip
        elif delay is not None:
            log.warning("webhook failed: %s; retry in %.0f s", result.error, delay, extra=extra)
        elif state == "dead":
            log.error(
                "webhook failed: %s; the timer is dead after %d attempts (a dead letter)",
                result.error, row.attempts, extra=extra,
            )  # fmt: skip
        else:
            log.warning("webhook failed: %s; the timer failed (not retried)", result.error,
                        extra=extra)  # fmt: skip

    def note(self, row: ClaimedTimer, reason: str) -> None:
        """Says why a row waits (its ``waiting_on``), written with the next flush."""
        self._notes[(row.id, row.bucket)] = reason

    def defer(self, row: ClaimedTimer, until: datetime, reason: str) -> None:
        """Gives an unsent row back, pending until ``until``, its attempt not counted; its
        ``reason`` replaces a note not written yet (the wait it told of is over)."""
        self._notes.pop((row.id, row.bucket), None)
        self._deferred.setdefault((until, reason), []).append(row)
        self._wake.set()

    # -- writing --------------------------------------------------------------------------

    async def _loop(self) -> None:
        while self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECORD_INTERVAL)
            self._wake.clear()
            try:
                await self.flush()
            except DatabaseUnavailable as exc:
                # Kept for the next flush; the outage is logged once by the pool.
                log.debug("recording outcomes failed, will retry: %s", exc)

    async def rehearse(self) -> None:
        """Records one outcome for a timer that does not exist: called in a
        ``db.warmth.rehearsal`` at start, so the record is planned before the first send."""
        now = datetime.now(UTC)
        outcome = SendOutcome(
            uuid.uuid4(), now.replace(microsecond=0), "delivered", 200, None, now, 1.0
        )
        await self.db.records.record([outcome], owner=self.owner)

    async def flush(self) -> None:
        """Writes every buffered outcome, deferral and note."""
        await self._flush_deferred()
        await self._flush_notes()
        if not self._outcomes:
            return
        pending, self._outcomes = self._outcomes, []
        now = time.monotonic()
        # A retry's delay is what is left of it now; the record adds it to the database's now(),
        # which is read after this, so the retry can only err late (by the record's round trip).
        batch = [
            o if retry_at is None else replace(o, retry_in=max(0.0, retry_at - now))
            for o, retry_at in pending
        ]
        writing = {o.id: (o.id, o.bucket, o.token) for o in batch}
        self._writing.update(writing)
        try:
            recorded = await self.db.records.record(batch, owner=self.owner)
        except BaseException:
            self._outcomes[:0] = pending  # keep them for the next flush
            raise
        finally:
            for row_id in writing:
                self._writing.pop(row_id, None)
        for o in batch:
            self._notes.pop((o.id, o.bucket), None)
            self._leased_at.pop(o.id, None)
        if recorded < len(batch):
            await self._stale(batch, recorded)
        # A retry due before the next tick's claim could see it is claimed now, so that it
        # goes out at its run_at and not up to a tick late; a released hold lets the next
        # row waiting for it go now.
        if any(
            o.held or (o.retry_in is not None and o.retry_in < self.retry_soon_seconds)
            for o in batch
        ):
            self._wake_claims()
        self._recorded(len(batch))

    async def _flush_deferred(self) -> None:
        while self._deferred:
            # Taken out before the write: rows deferred while it runs start a new list.
            (until, reason), rows = self._deferred.popitem()
            writing = {row.id: (row.id, row.bucket, row.lease_token) for row in rows}
            self._writing.update(writing)
            try:
                await self.db.leases.release(rows, owner=self.owner, until=until, reason=reason)
            except BaseException:
                self._deferred.setdefault((until, reason), [])[:0] = rows
                raise
            finally:
                for row_id in writing:
                    self._writing.pop(row_id, None)
            self._recorded(0)

    async def _stale(self, batch: list[SendOutcome], recorded: int) -> None:
        """Outcomes the record refused: written already by an earlier try whose answer was
        lost, or stale, their lease taken over (this dispatcher was declared dead while it
        paused, and a peer owns the timer now). The stale ones are counted in
        timerhook_stale_outcomes_total and said once per flush, never dropped silently."""
        try:
            written = await self.db.records.recorded_before(batch)
        except DatabaseUnavailable:
            written = recorded  # the rest counted as stale: said rather than lost
        stale = len(batch) - written
        if stale <= 0:
            return
        self.stats.stale += stale
        log.warning(
            "%d send outcomes were not recorded: their leases had been taken over (this "
            "dispatcher was declared dead while paused); the new owner records those timers",
            stale,
        )

    async def _flush_notes(self) -> None:
        if not self._notes:
            return
        notes, self._notes = self._notes, {}
        try:
            await self.db.leases.note_waiting([(i, b, why) for (i, b), why in notes.items()])
        except DatabaseUnavailable:
            # Only a display: a note lost to an outage is not worth holding outcomes back.
            log.debug("could not note why %d rows wait", len(notes))
            return
        self.notes_written += len(notes)
        self._changed()

    async def release(self, rows: list[ClaimedTimer]) -> int:
        """Gives leased rows that were never sent back to pending (a clean shutdown)."""
        try:
            return await self.db.leases.release(rows, owner=self.owner)
        except DatabaseUnavailable as exc:
            log.error(
                "could not give back %d unsent rows (their leases expire): %s", len(rows), exc
            )
            return 0
