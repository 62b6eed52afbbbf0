"""Maintenance: the tick, heartbeat, lease reaping, circuits, partitions and retention, each an
APScheduler job of the dispatcher's scheduler. A failing job logs and runs again next time.

While the database is away (the pool's Outage, which logs it once) the database jobs do not
run at all: each would only wait out the database timeout. When the database is back, the
heartbeat and the reap run at once (``resume``), not at their next interval."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from core.settings import Settings
from db.connection import DatabaseUnavailable
from db.database import Database
from db.leases import REAP_LIMIT
from dispatcher.ownership import PeerWatch
from dispatcher.planner import Planner
from dispatcher.stats import SendStats

log = logging.getLogger(__name__)


class _SkipCounter(logging.Filter):
    """APScheduler warns at every run of a job it skips because the last run is still going
    (waiting out its database deadline while the database is frozen, say): once a tick. They
    are counted by job instead, and the heartbeat says how many once (``report_skips``)."""

    skipped: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        if "maximum number of running instances reached" in message:
            job = re.search(r'job "([^"(]+)', message)
            _SkipCounter.skipped[job.group(1).strip() if job else "?"] += 1
            return False
        return True


logging.getLogger("apscheduler.scheduler").addFilter(_SkipCounter())


def report_skips() -> None:
    """Says once how many job runs were skipped since the last report, if any, and of which
    jobs."""
    skipped = _SkipCounter.skipped
    if skipped:
        log.warning(
            "%d maintenance job runs were skipped (%s): the run before each was still going "
            "(waiting for the database)", sum(skipped.values()),
            ", ".join(f"{job} {n}" for job, n in sorted(skipped.items())),
        )  # fmt: skip
        skipped.clear()


# Hours of per-second send statistics kept (the dashboard shows the last 15 minutes).
STATS_KEEP_HOURS = 24
# The scans of every partition's rows in flight, the reap's with nothing seen to take and the
# heartbeat's look for rows leased and not held (Dispatcher._renew), run once every this share
# of a lease: too dear for every heartbeat, and what they find waits at most this long more.
SCAN_SHARE = 1 / 3


class Maintenance:
    """The dispatcher's scheduled jobs; ``tick`` wakes the claimer every second."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        planner: Planner,
        *,
        owner: str,
        tick: Callable[[], None],
        renew: Callable[[], Awaitable[None]],
        watch: PeerWatch,
        stats: SendStats,
        refresh: Callable[[], Awaitable[None]] | None = None,
        peers: Callable[[list[str]], None] = lambda ids: None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.planner = planner
        self.owner = owner
        self._tick = tick
        self._renew = renew  # the heartbeat, with the renewal of the leases held
        self._watch = watch
        self._dead: list[tuple[str, datetime]] = []  # peers seen dead, for the next reap
        # Whether the last registry read saw a dispatcher stop a moment ago (it may have left
        # rows in flight), and when the reap next runs its statement whatever it saw.
        self._stopped_lately = False
        self._next_full_reap = float("-inf")
        self._stats = stats
        self._refresh = refresh or planner.refresh_circuits
        self._peers = peers  # told the live dispatchers' ids at each heartbeat
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        """Starts the jobs: the tick on whole seconds, the rest on their intervals."""
        s = self.settings
        scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        first_tick = now.replace(microsecond=0) + timedelta(seconds=1)
        scheduler.add_job(
            self._on_tick,
            IntervalTrigger(seconds=s.tick_seconds, start_date=first_tick, timezone=UTC),
            id="tick", max_instances=1, coalesce=True, misfire_grace_time=None,
        )  # fmt: skip
        scheduler.add_job(
            self.heartbeat, IntervalTrigger(seconds=s.heartbeat_seconds, timezone=UTC),
            id="heartbeat", max_instances=1, coalesce=True,
        )  # fmt: skip
        # half an interval out of step with the heartbeat (the start-up reap ran before the
        # first pass, Dispatcher._prepare): the two never hold a connection at once, so with
        # the claims, the recorder and the circuit refresh the dispatcher needs no more than
        # the connections it keeps warm (WARM_CONNECTIONS)
        reap_phase = now + timedelta(seconds=s.heartbeat_seconds / 2)
        scheduler.add_job(
            self.reap,
            IntervalTrigger(seconds=s.heartbeat_seconds, start_date=reap_phase, timezone=UTC),
            id="reap", max_instances=1, coalesce=True,
        )  # fmt: skip
        scheduler.add_job(
            self.circuits, IntervalTrigger(seconds=s.tick_seconds, timezone=UTC),
            # A refresh may wait out the database timeout (1 s) when the database just went
            # away: a second may start meanwhile rather than be reported skipped.
            id="circuits", max_instances=2, coalesce=True,
        )  # fmt: skip
        scheduler.add_job(
            self.partitions, CronTrigger(minute=7, timezone=UTC),
            id="partitions", max_instances=1, coalesce=True,
        )  # fmt: skip
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        """Stops the jobs (one running finishes on its own)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)

    async def _on_tick(self) -> None:
        self._tick()

    async def resume(self) -> None:
        """The database is back: heartbeat and reap now."""
        await self.heartbeat()
        await self.reap(everything=True)

    async def heartbeat(self) -> None:
        """Proves this dispatcher alive and renews its leases (the service's ``renew``),
        watches its peers' heartbeats, and reports what it sent (db/stats.py)."""
        if not await self._guarded("heartbeat", self._renew):
            self._watch.reset()  # not heartbeating normally: no peer is judged meanwhile
            return
        report_skips()
        await self._guarded("fleet read", self.learn_peers)
        await self._guarded("send statistics report", self._stats.report)
        # a fallback only: dependents are resolved when their dependency's outcome is recorded
        await self._guarded("dependency sweep", self.db.dependencies.resolve_stuck)

    async def learn_peers(self) -> None:
        """Reads the registry: which dispatchers are alive, for the split of the key claims,
        and which peers this process has now seen silent for dead_after_seconds."""
        seen = await self.db.dispatchers.peers(dead_after_seconds=self.settings.dead_after_seconds)
        beats = [b for b in seen if not b.stopped]
        self._stopped_lately = len(beats) < len(seen)
        self._dead = self._watch.observe(beats, time.monotonic())
        self._peers([b.id for b in beats if b.fresh])

    async def rehearse(self) -> None:
        """Runs the reap's statement reaping nothing (in a ``db.warmth.rehearsal`` at start):
        it reads every partition, so planning it on a connection costs 100 to 250 ms at the
        365-day horizon, which each connection would otherwise pay at its first reap."""
        await self.db.leases.reap(limit=0)
        # the heartbeat, before this dispatcher is registered: it renews nothing
        await self.db.leases.renew([], owner=self.owner, lease_seconds=self.settings.lease_seconds)

    async def reap(self, *, everything: bool = False) -> None:
        """Declares the peers seen silent dead, and takes back the leases (and resource
        holds) of dead and stopped dispatchers.

        Its statement reads every row in flight (every partition's), which cost a fifth of
        PostgreSQL's CPU with two dispatchers firing at full speed; so it runs only when there
        can be something to take: a peer seen dead, a dispatcher that stopped a moment ago
        (seen by the heartbeat's registry read), at start and after an outage, and otherwise
        every SCAN_SHARE of a lease (owners not registered at all, once their lease ran
        out; a hint missed)."""
        now = time.monotonic()
        if not (everything or self._dead or self._stopped_lately or now >= self._next_full_reap):
            return
        self._next_full_reap = now + SCAN_SHARE * self.settings.lease_seconds
        self._stopped_lately = False

        async def reap() -> None:
            dead, self._dead = self._dead, []
            while True:
                reaped = await self.db.leases.reap(dead=dead)
                if dead:
                    log.warning(
                        "dispatchers %s were silent for %.0f s (heartbeats seen unchanged): "
                        "declared dead, unless one heartbeated just now",
                        [d for d, _ in dead], self.settings.dead_after_seconds,
                    )  # fmt: skip
                    dead = []  # declared (or alive after all); what is left is theirs now
                if reaped:
                    owners = sorted({r.lease_owner for r in reaped})
                    log.warning("took back %d in-flight timers from %s", len(reaped), owners)
                    self._tick()
                if len(reaped) < REAP_LIMIT:
                    break

        if not await self._guarded("lease reap", reap):
            self._next_full_reap = float("-inf")  # again at the next run

    async def circuits(self) -> None:
        """Learns the host circuits other dispatchers opened, the caps of tenants and hosts,
        and the tenants' signing secrets."""
        await self._guarded("circuit and cap refresh", self._refresh)

    async def partitions(self) -> None:
        """Partitions ahead for the horizon, expired ones dropped; old idempotency keys, stats,
        dependencies and revocations purged."""

        async def maintain() -> None:
            await self.db.partitions.ensure(horizon_days=self.settings.horizon_days)
            await self.db.partitions.drop_expired(retention_days=self.settings.retention_days)
            await self.db.creates.purge_idempotency(hours=self.settings.idempotency_hours)
            await self.db.stats.purge(keep_hours=STATS_KEEP_HOURS)
            await self.db.dependencies.purge(retention_days=self.settings.retention_days)
            await self.db.revocations.purge()

        await self._guarded("partition maintenance", maintain)

    async def _guarded(self, what: str, op: Callable[[], Awaitable[object]]) -> bool:
        """Runs a job's operation; True if it ran through."""
        if self.db.outage.down:
            return False  # logged once by the outage; resume() runs what matters when it ends
        try:
            await op()
            return True
        except DatabaseUnavailable as exc:
            log.debug("%s failed, will run again: %s", what, exc)  # the outage logs it
        except asyncio.CancelledError:
            # The scheduler cancels a job still running when the dispatcher stops: that is
            # the stop, not a failure of the job (the lease reap and heartbeat are safe to cut).
            log.debug("%s cut short by the dispatcher stopping", what)
        except Exception:
            log.exception("%s failed unexpectedly, will run again", what)
        return False
