"""The dispatcher process: ticks, the drain loop, timed sends, the recorder, maintenance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from db.caps import GLOBAL
from db.connection import DatabaseUnavailable
from db.database import Database
from db.models import Claim, ClaimedTimer, DueKey, SendOutcome, TimerState
from db.settings import Settings
from dispatcher.retry import decide
from dispatcher.sender import Result, Sender

log = logging.getLogger(__name__)

# How many (slot, shard) keys one pass of the drain loop looks at.
_KEYS_PER_PASS = 64
# The recorder writes outcomes at least this often (seconds) while sends complete.
_RECORD_INTERVAL = 0.05
# While a cap holds sending back, the drain loop asks for tokens this often (seconds), so the
# stream is smooth within each second, not a burst at every tick.
_CAPPED_POLL = 0.1


async def sleep_until(deadline: float) -> None:
    """Returns at ``time.monotonic() >= deadline``, never before.

    A single ``asyncio.sleep`` can end early: uvloop schedules it from the loop's cached time
    (read at the start of the loop iteration, so up to an iteration stale) in whole
    milliseconds. So it sleeps again for whatever is left.
    """
    # Polling the clock is the point here (an Event has nothing to wait for).
    while (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(max(left, 0.0005))


def new_dispatcher_id(host: str) -> str:
    """A registry id that says where the process runs and stays unique across restarts."""
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Dispatcher:
    """Claims due timers and sends them; ``await start()``, later ``await stop()``."""

    def __init__(self, db: Database, settings: Settings, *, dispatcher_id: str | None = None):
        self.db = db
        self.settings = settings
        self.id = dispatcher_id or new_dispatcher_id(settings.hostname)
        self.sender = Sender(
            timeout_seconds=settings.http_timeout_seconds,
            concurrency=settings.concurrency,
            allow_private=settings.allow_private_targets,
            signing_secrets=settings.signing_secrets,
            allowed_networks=settings.allowed_network_list,
        )
        # Claim every slot that can fall due before the tick after next: a row is then in hand
        # at least one tick before its time, so the claim's own duration never makes it late.
        self.lookahead_seconds = settings.tick_seconds + 1.5
        self.sent_total = 0
        self.failed_total = 0
        self.recorded_total = 0
        self._scheduler: AsyncIOScheduler | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._record_wake = asyncio.Event()
        self._sem = asyncio.Semaphore(settings.concurrency)
        # Every claimed row not yet recorded: waiting for its time, or being sent.
        self._claimed: dict[asyncio.Task[None], ClaimedTimer] = {}
        self._sending: set[asyncio.Task[None]] = set()
        # Outcomes waiting to be recorded, each with the monotonic instant of its retry (if any).
        self._outcomes: list[tuple[SendOutcome, float | None]] = []
        self._progress = asyncio.Condition()
        self._progress_waiters = 0
        self._drain_task: asyncio.Task[None] | None = None
        self._record_task: asyncio.Task[None] | None = None
        self._recording = True
        self._capped = False
        # True while a cap grants less than asked: then only rows already due are claimed, so
        # every token is spent at once (tokens taken for rows claimed ahead would all be spent
        # at their due time, in a burst).
        self._cap_binding = False
        self._pace_next = 0.0  # monotonic instant of the next paced send under a cap
        # Under a binding cap the drain runs ten times a second; it resumes these keys rather
        # than searching again (a search steps over the index entries of every row already
        # claimed from a herd, which grows as the herd drains). Cleared at every tick.
        self._resume_keys: list[DueKey] = []

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Registers, opens the HTTP session and starts the ticks and maintenance jobs."""
        await self.db.dispatchers.register(
            dispatcher_id=self.id, host=self.settings.hostname, pid=os.getpid()
        )
        await self.db.partitions.ensure(horizon_days=self.settings.horizon_days)
        if self.settings.max_per_minute:
            await self.db.caps.seed(scope=GLOBAL, per_minute=self.settings.max_per_minute)
        await self.sender.start()
        self._drain_task = asyncio.create_task(self._drain_loop(), name=f"drain-{self.id}")
        self._record_task = asyncio.create_task(self._record_loop(), name=f"record-{self.id}")
        self._scheduler = self._build_scheduler()
        self._scheduler.start()
        self._wake.set()  # whatever fell due while nothing ran goes out now
        log.info("dispatcher %s started", self.id)

    def _build_scheduler(self) -> AsyncIOScheduler:
        s = self.settings
        scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        first_tick = now.replace(microsecond=0) + timedelta(seconds=1)
        scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=s.tick_seconds, start_date=first_tick, timezone=UTC),
            id="tick", max_instances=1, coalesce=True, misfire_grace_time=None,
        )  # fmt: skip
        scheduler.add_job(
            self._heartbeat, IntervalTrigger(seconds=s.heartbeat_seconds, timezone=UTC),
            id="heartbeat", max_instances=1, coalesce=True,
        )  # fmt: skip
        scheduler.add_job(
            self._reap, IntervalTrigger(seconds=s.heartbeat_seconds, timezone=UTC),
            id="reap", max_instances=1, coalesce=True, next_run_time=now,
        )  # fmt: skip
        scheduler.add_job(
            self._maintain_partitions, CronTrigger(minute=7, timezone=UTC),
            id="partitions", max_instances=1, coalesce=True,
        )  # fmt: skip
        return scheduler

    async def stop(self) -> None:
        """Stops claiming, gives back unsent rows, finishes sends in progress, deregisters."""
        if self._stopping:
            return
        self._stopping = True
        log.info("dispatcher %s stopping", self.id)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        self._wake.set()
        async with self._progress:
            self._progress.notify_all()
        if self._drain_task is not None:
            await self._drain_task
        # Rows still waiting for their time were never sent: give them back.
        waiting = {t: row for t, row in self._claimed.items() if t not in self._sending}
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        released = await self._release(list(waiting.values()))
        # Sends in progress get the grace period; the rest keep their lease (reaped at once).
        if self._sending:
            _, late = await asyncio.wait(
                set(self._sending), timeout=self.settings.shutdown_grace_seconds
            )
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "%d sends outlived the grace period; their leases are reaped", len(late)
                )
                await asyncio.gather(*late, return_exceptions=True)
        # The recorder is told to finish, never cancelled: a cancel mid-flush would lose a batch.
        self._recording = False
        self._record_wake.set()
        if self._record_task is not None:
            await self._record_task
        await self._flush()
        await self.sender.close()
        await self.db.dispatchers.deregister(dispatcher_id=self.id)
        log.info(
            "dispatcher %s stopped: %d sent, %d failed, %d released unsent",
            self.id, self.sent_total, self.failed_total, released,
        )  # fmt: skip

    # -- ticks and claims ---------------------------------------------------------------

    async def _tick(self) -> None:
        self._resume_keys = []
        self._wake.set()

    async def _drain_loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.drain()
            except DatabaseUnavailable as exc:
                log.error("claim pass failed, trying again at the next tick: %s", exc)
            except Exception:
                log.exception("claim pass failed unexpectedly; trying again at the next tick")
            if self._capped and not self._stopping:
                await asyncio.sleep(_CAPPED_POLL)
                self._wake.set()

    async def drain(self, *, now: datetime | None = None) -> int:
        """Claims every due key it can (by ``now``, default the database clock); returns rows."""
        claimed = 0
        self._capped = False
        while not self._stopping:
            if self._cap_binding and self._resume_keys:
                keys, self._resume_keys = self._resume_keys, []
            else:
                lookahead = 0.0 if self._cap_binding else self.lookahead_seconds
                keys = await self.db.timers.due_keys(
                    limit=_KEYS_PER_PASS, lookahead_seconds=lookahead, now=now
                )
            progress = 0
            for index, key in enumerate(keys):
                if self._stopping:
                    break
                got = await self._claim(key, now)
                progress += got
                if self._capped:
                    self._resume_keys = keys[index:]  # this key may still hold rows
                    break
            claimed += progress
            # A cap said stop, nothing was claimable (none due, or every key held by another
            # dispatcher), or every due key was looked at: come back at the next tick or poll.
            if self._capped or progress == 0 or len(keys) < _KEYS_PER_PASS:
                break
        return claimed

    def _room(self) -> int:
        """How many more rows may be claimed: a buffer of two batches past the send limit."""
        limit = self.settings.concurrency + 2 * self.settings.batch_size
        return max(0, limit - len(self._claimed))

    async def _claim(self, key: DueKey, now: datetime | None) -> int:
        total = 0
        while not self._stopping:
            await self._wait_progress(lambda: self._room() > 0 or self._stopping)
            if self._stopping:
                break
            wanted = min(self.settings.batch_size, self._room())
            grant = await self.db.caps.take(scope=GLOBAL, wanted=wanted, now=now)
            batch = grant.granted
            self._cap_binding = batch < wanted
            if batch == 0:
                self._capped = True
                break
            claim = await self.db.timers.claim(
                key, owner=self.id, batch=batch,
                lease_seconds=self.settings.lease_seconds, now=now,
            )  # fmt: skip
            rows = claim.rows
            if len(rows) < batch:
                await self.db.caps.give_back(scope=GLOBAL, n=batch - len(rows))
            elif batch < wanted:
                self._capped = True
            if rows:
                self._schedule(claim, grant.per_minute)
            total += len(rows)
            if len(rows) < batch or self._capped:
                break
        return total

    def _schedule(self, claim: Claim, per_minute: int) -> None:
        """Starts a task per claimed row that sends it at the local instant of its run_at."""
        spacing = 60.0 / per_minute if per_minute else 0.0
        # The latest database clock reading of the claim, taken before it answered at
        # claim.answered_at: instants mapped through the pair can only err late.
        db_ref = max(row.db_now for row in claim.rows)
        for row in claim.rows:
            deadline = claim.answered_at + (row.run_at - db_ref).total_seconds()
            if spacing:
                # Under a cap, sends are paced 1/rate apart: a smooth stream, not a burst per
                # grant.
                deadline = max(deadline, self._pace_next, claim.answered_at)
                self._pace_next = deadline + spacing
            task = asyncio.create_task(self._send(row, deadline, db_ref, claim.answered_at))
            self._claimed[task] = row

    async def _send(
        self, row: ClaimedTimer, deadline: float, db_ref: datetime, answered_at: float
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            await sleep_until(deadline)
            async with self._sem:
                self._sending.add(task)
                sent_mono = time.monotonic()
                result = await self.sender.send(row)
            fired_at = db_ref + timedelta(seconds=sent_mono - answered_at)
            self._outcome(row, result, fired_at)
        finally:
            self._sending.discard(task)
            self._claimed.pop(task, None)
            if self._progress_waiters:  # most sends have no one waiting: skip the lock
                async with self._progress:
                    self._progress.notify_all()

    def _outcome(self, row: ClaimedTimer, result: Result, fired_at: datetime) -> None:
        retry_at = None
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
            state = decision.state
            if decision.delay is not None:
                # Counted from now, when the failure became known (Retry-After is relative to
                # the answer); turned into a database time when recorded, never earlier.
                retry_at = time.monotonic() + decision.delay
            elif state == "dead":
                log.warning("timer %s is dead after %d attempts", row.id, row.attempts)
        outcome = SendOutcome(
            row.id, row.bucket, state, result.status, result.error, fired_at, result.latency_ms
        )
        self._outcomes.append((outcome, retry_at))
        if len(self._outcomes) >= self.settings.batch_size:
            self._record_wake.set()

    # -- recording ----------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while self._recording:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._record_wake.wait(), _RECORD_INTERVAL)
            self._record_wake.clear()
            try:
                await self._flush()
            except DatabaseUnavailable as exc:
                log.error("recording outcomes failed, will retry: %s", exc)

    async def _flush(self) -> None:
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
        try:
            await self.db.timers.record(batch, owner=self.id)
        except BaseException:
            self._outcomes[:0] = pending  # keep them for the next flush
            raise
        # A retry due before the next tick's claim could see it is claimed now, so that it
        # goes out at its run_at and not up to a tick late.
        if any(o.retry_in is not None and o.retry_in < self.lookahead_seconds for o in batch):
            self._wake.set()
        async with self._progress:
            self.recorded_total += len(batch)
            self._progress.notify_all()

    async def _release(self, rows: list[ClaimedTimer]) -> int:
        try:
            return await self.db.timers.release(rows, owner=self.id)
        except DatabaseUnavailable as exc:
            log.error(
                "could not give back %d unsent rows (their leases expire): %s", len(rows), exc
            )
            return 0

    # -- signals for callers and tests --------------------------------------------------

    async def wait_recorded(self, count: int, timeout: float) -> None:
        """Waits until at least ``count`` outcomes were recorded in the database."""
        await self._wait_for(lambda: self.recorded_total >= count, timeout)

    async def wait_idle(self, timeout: float) -> None:
        """Waits until nothing claimed is waiting, being sent or unrecorded."""
        await self._wait_for(lambda: not self._claimed and not self._outcomes, timeout)

    async def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        await asyncio.wait_for(self._wait_progress(predicate), timeout)

    async def _wait_progress(self, predicate: Callable[[], bool]) -> None:
        self._progress_waiters += 1
        try:
            async with self._progress:
                await self._progress.wait_for(predicate)
        finally:
            self._progress_waiters -= 1

    @property
    def in_flight(self) -> int:
        """Rows claimed and not yet recorded."""
        return len(self._claimed)

    # -- maintenance --------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        await self._guarded(
            "heartbeat",
            self.db.dispatchers.heartbeat(
                dispatcher_id=self.id, in_flight=self.in_flight,
                sent_total=self.sent_total, failed_total=self.failed_total,
            ),
        )  # fmt: skip

    async def _reap(self) -> None:
        async def reap() -> None:
            reaped = await self.db.timers.reap(dead_after_seconds=self.settings.dead_after_seconds)
            if reaped:
                owners = sorted({r.lease_owner for r in reaped})
                log.warning("took back %d in-flight timers from %s", len(reaped), owners)
                self._wake.set()

        await self._guarded("lease reap", reap())

    async def _maintain_partitions(self) -> None:
        async def maintain() -> None:
            await self.db.partitions.ensure(horizon_days=self.settings.horizon_days)
            await self.db.partitions.drop_expired(retention_days=self.settings.retention_days)
            await self.db.timers.purge_idempotency(hours=self.settings.idempotency_hours)

        await self._guarded("partition maintenance", maintain())

    @staticmethod
    async def _guarded(what: str, op: Awaitable[object]) -> None:
        try:
            await op
        except DatabaseUnavailable as exc:
            log.error("%s failed, will run again: %s", what, exc)
        except Exception:
            log.exception("%s failed unexpectedly, will run again", what)


async def run_until_signalled(dispatcher: Dispatcher, stop: asyncio.Event) -> None:
    """Starts the dispatcher, waits for ``stop``, then stops it cleanly."""
    await dispatcher.start()
    try:
        await stop.wait()
    finally:
        await dispatcher.stop()
