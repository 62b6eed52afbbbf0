"""The dispatcher process: lifecycle and wiring of its stages (claimer, planner, sender,
recorder, maintenance), and the signals callers and tests wait on."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from core.caps import GLOBAL, CappedStream
from core.settings import Settings
from db.connection import DatabaseUnavailable
from db.database import Database
from db.models import Claim
from db.warmth import rehearsal
from dispatcher.claimer import Claimer
from dispatcher.clock import sleep_until
from dispatcher.maintenance import SCAN_SHARE, Maintenance
from dispatcher.ownership import Ownership, PeerWatch, pid_namespace
from dispatcher.pipeline import Pipeline
from dispatcher.planner import CAP_POLL_SECONDS, Planner
from dispatcher.recorder import Recorder
from dispatcher.recurring import SchedulePass
from dispatcher.sender import Sender
from dispatcher.stats import SendStats
from dispatcher.windows import WindowPass

__all__ = ["Dispatcher", "run_until_signalled", "sleep_until"]

log = logging.getLogger(__name__)


# How many pooled connections a dispatcher keeps open and warm from its start: the claim
# loop, the recorder and the maintenance jobs that meet at a tick (db/warmth.py).
WARM_CONNECTIONS = 4
# A held row's lease is renewed once it is older than this share of the lease.
RENEW_SHARE = 0.3


def new_dispatcher_id(host: str) -> str:
    """A registry id that says where the process runs and stays unique across restarts."""
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def make_sender(settings: Settings) -> Sender:
    """The sender the settings describe."""
    return Sender(
        timeout_seconds=settings.http_timeout_seconds,
        concurrency=settings.concurrency,
        allow_private=settings.allow_private_targets,
        signing_secrets=settings.signing_secrets,
        allowed_networks=settings.allowed_network_list,
    )


# While the database is away at start, the preparation is tried again this often (seconds):
# the pool's own reconnect pace.
START_RETRY_SECONDS = 0.5


class Dispatcher:
    """Claims due timers and sends them; ``await start()``, later ``await stop()``."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        dispatcher_id: str | None = None,
        sender: Sender | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.id = dispatcher_id or new_dispatcher_id(settings.hostname)
        self.sender = sender or make_sender(settings)
        self.recorded_total = 0
        self._stopping = False
        # Set when the database comes back: lost claim answers may have leased rows to us.
        self._take_back_pending = False
        self._wake = asyncio.Event()
        # Until when the leases held are safe to send under (confirmed at every heartbeat), and
        # which peers are dead by what this process saw of their heartbeats.
        self.ownership = Ownership(
            dead_after_seconds=settings.dead_after_seconds, lease_seconds=settings.lease_seconds
        )
        self.pidns = pid_namespace()
        self.watch = PeerWatch(
            owner=self.id, dead_after_seconds=settings.dead_after_seconds,
            max_gap=min(settings.dead_after_seconds / 2, 2 * settings.heartbeat_seconds + 1),
            host=settings.hostname, pidns=self.pidns,
        )  # fmt: skip
        self.planner = Planner(db, settings, owner=self.id, changed=self._signal)
        self.claimer = Claimer(
            db, settings, self.planner, owner=self.id, hand_over=self._hand_over,
            room=self._room, wait_for_room=self._wait_for_room, stopping=lambda: self._stopping,
        )  # fmt: skip
        self.lookahead_seconds = self.claimer.lookahead_seconds
        self.schedules = SchedulePass(db, settings, lookahead_seconds=self.lookahead_seconds)
        # windowed sends are planned a tick beyond the next one, so that each is claimed a
        # tick before its instant (a claim slowed down by the database does not bunch them)
        self.windows = WindowPass(
            db, lookahead_seconds=self.lookahead_seconds, ahead_seconds=settings.tick_seconds + 1,
            cap_binding=lambda: self.planner.cap_binding,
        )  # fmt: skip
        self.stats = SendStats(db)
        self.recorder = Recorder(
            db, settings, owner=self.id, retry_soon_seconds=self.lookahead_seconds,
            wake_claims=self._wake.set, recorded=self._on_recorded, stats=self.stats,
            changed=self._signal,
        )  # fmt: skip
        self.maintenance = Maintenance(
            db, settings, self.planner, owner=self.id, tick=self._on_tick,
            renew=self._renew, watch=self.watch, stats=self.stats, refresh=self._refresh,
            peers=self.claimer.set_peers,
        )  # fmt: skip
        self._progress = asyncio.Condition()
        self._progress_waiters = 0
        # When the last whole claim pass began (UTC), for wait_pass_after.
        self.last_pass: datetime | None = None
        self._next_sweep = float("-inf")  # when the heartbeat next looks for unheld rows
        self._drain_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Every claimed row's way out: its instant, its host, still owned, sent, recorded.
        self.pipeline = Pipeline(
            db, owner=self.id, planner=self.planner, sender=self.sender, recorder=self.recorder,
            ownership=self.ownership, progress=self._notify, waited=self._waited, spawn=self._spawn,
        )  # fmt: skip
        # A timer created due within the claim window wakes the claimer at once; a revocation
        # reaches the owner of the row at once.
        self.listener = db.due_listener(self._wake.set, self.pipeline.on_revoke)

    @property
    def sent_total(self) -> int:
        """Webhooks delivered (2xx) by this dispatcher."""
        return self.recorder.sent_total

    @property
    def failed_total(self) -> int:
        """Sends that failed (any failure, retried or not)."""
        return self.recorder.failed_total

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Plans its statements ahead, registers, opens the HTTP session and starts the
        stages and maintenance jobs. A database away at start is waited for (said once):
        a dispatcher restarted during an outage starts when it is back, not crashes."""
        waited = False
        while True:
            try:
                await self._prepare()
                break
            except DatabaseUnavailable as exc:
                if not waited:
                    log.warning("the database is away at start (%s); waiting for it", exc)
                    waited = True
                await asyncio.sleep(START_RETRY_SECONDS)
        if waited:
            log.info("the database is back: dispatcher %s starts", self.id)
        await self.sender.start()
        self._drain_task = asyncio.create_task(self._drain_loop(), name=f"drain-{self.id}")
        self.recorder.start()
        self.maintenance.start()
        self.listener.start()
        self.db.outage.on_recovery(self._database_back)
        self._wake.set()  # whatever fell due while nothing ran goes out now
        log.info("dispatcher %s started", self.id)

    async def _prepare(self) -> None:
        """What start does in the database, safe to run again: partitions, the cap's seed,
        the statements planned ahead, the warm connections, the registration."""
        await self.db.partitions.ensure(horizon_days=self.settings.horizon_days)
        if self.settings.max_per_minute:
            await self.db.caps.seed(scope=GLOBAL, per_minute=self.settings.max_per_minute)
        await self._refresh()
        # A pass's statements, the record and the reap are planned now, not when the first timer
        # comes, on the connections a tick needs; connections added later plan them before
        # they serve (db/warmth.py).
        with rehearsal():
            await self.windows.rehearse()
            await self.claimer.rehearse()
            await self.recorder.rehearse()
            await self.maintenance.rehearse()
        if not await self.db.warm(WARM_CONNECTIONS):
            log.warning("the pool did not open %d connections within 30 s", WARM_CONNECTIONS)
        # Registered once it can claim on time: what waits for a dispatcher waits for that.
        await self._register()
        await self.maintenance.learn_peers()  # the split of the keys, then every heartbeat
        # Before the first pass: a peer found dead at once (its process gone from this host,
        # as after a restart) has its leases taken back now, so that the first schedule pass
        # sees its unsent occurrences pending and coalesces them with the rest it missed,
        # instead of making the latest while they are still leased and sent after it.
        await self.maintenance.reap(everything=True)

    async def stop(self) -> None:
        """Stops claiming, gives back unsent rows, finishes sends in progress, deregisters."""
        if self._stopping:
            return
        self._stopping = True
        log.info("dispatcher %s stopping", self.id)
        self.maintenance.stop()
        await self.listener.stop()
        self._wake.set()
        async with self._progress:
            self._progress.notify_all()
        if self._drain_task is not None:
            await self._drain_task
        # Rows still waiting for their time or their host were never sent: give them back.
        waiting = self.pipeline.waiting()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        released = await self.recorder.release(list(waiting.values()))
        # Sends in progress get the grace period; the rest keep their lease (reaped at once).
        if self.pipeline.sending:
            _, late = await asyncio.wait(
                set(self.pipeline.sending), timeout=self.settings.shutdown_grace_seconds
            )
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "%d sends outlived the grace period; their leases are reaped", len(late)
                )
                await asyncio.gather(*late, return_exceptions=True)
        await self.recorder.stop()
        await self.stats.final_report()
        await self.sender.close()
        await self.db.dispatchers.deregister(dispatcher_id=self.id)
        log.info(
            "dispatcher %s stopped: %d sent, %d failed, %d released unsent",
            self.id, self.sent_total, self.failed_total, released,
        )  # fmt: skip

    # -- ownership ----------------------------------------------------------------------

    async def _register(self) -> None:
        """Registers (or registers again) in the registry: alive from the statement's start."""
        started = time.monotonic()
        await self.db.dispatchers.register(
            dispatcher_id=self.id, host=self.settings.hostname, pid=os.getpid(),
            pidns=self.pidns,
        )  # fmt: skip
        self.ownership.confirmed(started)

    async def _renew(self) -> None:
        """The heartbeat: proves this dispatcher alive and renews the leases it has held for
        more than RENEW_SHARE of a lease (``lease_renew``). Rows whose lease was taken over are
        dropped unsent; when a peer declared this dispatcher dead, everything it holds is."""
        self.pipeline.forget_revocations(time.monotonic() - self.settings.lease_seconds)
        self.pipeline.shed()  # no more rows per slow host than it sends within half a lease
        started = time.monotonic()
        # Only the leases older than a share of the lease are renewed: every row held at
        # every heartbeat would write some 2,500 rows every 2 s at 1,000 sends/s.
        held, tasks = self.pipeline.leases_to_renew(
            started - RENEW_SHARE * self.settings.lease_seconds
        )
        sweep = started >= self._next_sweep
        renewal = await self.db.leases.renew(
            held, owner=self.id, lease_seconds=self.settings.lease_seconds,
            counters=(self.in_flight, self.sent_total, self.failed_total), sweep=sweep,
        )  # fmt: skip
        if sweep:
            # a row leased and not held goes back within 0.5 + SCAN_SHARE of a lease of its
            # claim, still inside the lease
            self._next_sweep = started + SCAN_SHARE * self.settings.lease_seconds
        if not renewal.alive:
            await self._declared_dead()
            return
        if len(renewal.owned) < len(held):
            owned = set(renewal.owned)
            dropped = self.pipeline.drop({row_id for row_id, _, _ in held if row_id not in owned})
            if dropped:
                log.warning("dropped %d held rows unsent: their leases were taken over", dropped)
        self.pipeline.renewed(tasks, started)
        if renewal.given_back:
            log.warning(
                "gave back %d rows leased to this dispatcher that it did not hold (a claim whose "
                "answer was lost); they go out now", renewal.given_back,
            )  # fmt: skip
        self.ownership.confirmed(started)

    async def _declared_dead(self) -> None:
        """A peer declared this dispatcher dead (it saw the heartbeat unchanged for
        dead_after_seconds: this process or its host was paused) and took its leases over:
        nothing held may be sent. Drops it all and registers again."""
        self.ownership.lost()
        dropped = self.pipeline.drop({row.id for row in self.pipeline.claimed.values()})
        log.error(
            "dispatcher %s was declared dead by a peer (its heartbeat went unseen for %.0f s: "
            "this process was paused or starved) and its leases were taken over; dropped %d "
            "rows it held unsent, registering again",
            self.id, self.settings.dead_after_seconds, dropped,
        )  # fmt: skip
        await self._register()
        self._wake.set()

    async def _refresh(self) -> None:
        """What other processes may change at run time: host circuits, the caps of tenants
        and hosts, the tenants' signing secrets (every tick)."""
        await self.planner.refresh_circuits()
        await self.planner.refresh_scopes()
        self.sender.set_tenant_secrets(await self.db.tenants.secrets())

    def _database_back(self) -> None:
        """After an outage: take back what a lost claim answer leased to us, then claim,
        record and heartbeat now, not at the next interval."""
        if self._stopping:
            return
        self._take_back_pending = True
        self._wake.set()
        self.recorder.wake()
        self._spawn(self.maintenance.resume())

    # -- claims -------------------------------------------------------------------------

    def _on_tick(self) -> None:
        self.schedules.due()
        self.windows.due()
        self.claimer.forget_resume()
        self._wake.set()
        self.planner.note_waits(self.recorder.note)

    async def _drain_loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            started = datetime.now(UTC)
            try:
                if self._take_back_pending:
                    await self._take_back()
                await self.schedules.run()
                await self.windows.run()
                await self.drain()
                self.last_pass = started
                if self._waited():
                    await self._notify()
            except DatabaseUnavailable as exc:
                # The outage is logged once by the pool; claims resume when it ends.
                log.debug("claim pass failed, trying again at the next tick: %s", exc)
            except Exception:
                log.exception("claim pass failed unexpectedly; trying again at the next tick")
            if self.claimer.capped and not self._stopping:
                self.stats.cap_waits += 1
                await asyncio.sleep(CAP_POLL_SECONDS)
                self._wake.set()

    async def _take_back(self) -> None:
        """Gives back the rows leased to this dispatcher that it does not hold. A claim whose
        commit went through while the connection died leased rows whose answer never came:
        without this they would wait for their lease to run out (30 s by default). Run in
        the claim loop, between claims, so no claim's answer is on its way meanwhile."""
        held = [row_id for row_id, _, _ in self.pipeline.held_leases()]
        taken = await self.db.leases.take_back(owner=self.id, known=held)
        self._take_back_pending = False
        if taken:
            log.warning(
                "took back %d rows leased to this dispatcher by a claim whose answer was lost "
                "in the database outage; they were never sent and go out now", taken,
            )  # fmt: skip

    async def drain(self, *, now: datetime | None = None) -> int:
        """One claim pass (by ``now``, default the database clock); returns rows leased."""
        return await self.claimer.drain(now=now)

    def _room(self) -> int:
        """How many more rows may be claimed: a buffer of two batches past the send limit."""
        limit = self.settings.concurrency + 2 * self.settings.batch_size
        return max(0, limit - len(self.pipeline.claimed))

    async def _wait_for_room(self) -> None:
        """Returns at once while there is room; once the buffer is full, waits until a whole
        batch fits again. Topping the buffer up as each send ends would make a claim per
        handful of rows (measured: 41 rows a claim draining a backlog), and a claim costs
        both processes about the same whatever its size; the batch still queued behind the
        send limit keeps every slot busy meanwhile."""
        if self._room() > 0:
            return
        refill = self.settings.batch_size
        await self._wait_progress(lambda: self._room() >= refill or self._stopping)

    def _hand_over(self, claim: Claim, per_minute: int, stream: CappedStream | None) -> None:
        self.pipeline.schedule(claim, per_minute, stream)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- signals for callers and tests --------------------------------------------------

    def _on_recorded(self, count: int) -> None:
        self.recorded_total += count
        self._signal()

    def _signal(self) -> None:
        """Something a waiter may wait for changed (``wait_until``)."""
        if self._progress_waiters:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    def _waited(self) -> bool:
        return self._progress_waiters > 0

    async def wait_recorded(self, count: int, timeout: float) -> None:
        """Waits until at least ``count`` outcomes were recorded in the database."""
        await self._wait_for(lambda: self.recorded_total >= count, timeout)

    async def wait_pass_after(self, instant: datetime, timeout: float) -> None:
        """Waits until a whole pass (the schedule pass, the window plan and the claims) began
        after ``instant`` (UTC) and ended: every occurrence due by then was made, and every
        row due by then plus the claim window was claimed or found held back."""
        await self._wait_for(
            lambda: self.last_pass is not None and self.last_pass > instant, timeout
        )

    async def wait_idle(self, timeout: float) -> None:
        """Waits until nothing claimed is waiting, being sent or unrecorded."""
        await self._wait_for(
            lambda: not self.pipeline.claimed and not self.recorder.unwritten, timeout
        )

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Waits until ``predicate`` holds, looked at again whenever an outcome was recorded,
        a pass ended, waiting notes were written or a circuit change was stored (for example
        ``lambda: d.planner.circuits_opened >= 1``)."""
        await self._wait_for(predicate, timeout)

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
        return len(self.pipeline.claimed)


async def run_until_signalled(dispatcher: Dispatcher, stop: asyncio.Event) -> None:
    """Starts the dispatcher, waits for ``stop``, then stops it cleanly."""
    await dispatcher.start()
    try:
        await stop.wait()
    finally:
        await dispatcher.stop()
