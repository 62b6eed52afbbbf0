"""Recurring timers: series (the schedules table) and the pass that makes their occurrences.

A series holds the request it sends and when (core/recurrence.py). Each occurrence becomes a
row of timers, claimed, sent, retried and recorded like any timer, shortly before its time:
the schedule pass (``advance``, run by every dispatcher before its claims) takes the series
whose next time is near under row locks other passes skip, makes their occurrence rows and
moves each series on in the same transaction. A crash before the commit leaves both as they
were; after it, both are written: no occurrence is skipped or made twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import class_row

from core.ids import EPOCH, new_series_id
from core.recurrence import Misfire, Schedule, ScheduleError, plan_emission
from core.targets import host_of
from core.timing import time_left
from db.connection import TRANSIENT, DatabaseUnavailable, PoolOwner
from db.creating import begin_create, record_create
from db.models import DeliveryOptions
from db.query_loader import query

log = logging.getLogger(__name__)

# Series one pass takes at most (the rest go in the next pass, a tick later).
SERIES_PER_PASS = 500


class SeriesRefused(Exception):
    """A create's schedule has no occurrence (a cron that never matches, an until before the
    first time); nothing was written."""

    def __init__(self, error: ScheduleError) -> None:
        super().__init__(error.reason)
        self.error = error


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """When a new series fires: from ``at_ms`` (absolute) or the database clock plus
    ``delay_ms``, every ``every_ms`` or at the matches of ``cron`` in ``timezone``."""

    delay_ms: int = 0
    at_ms: int | None = None
    every_ms: int | None = None
    cron: str | None = None
    timezone: str = "UTC"
    until: datetime | None = None
    count: int | None = None
    misfire: Misfire = "coalesce"


@dataclass(frozen=True, slots=True)
class CreatedSeries:
    """A series just made (or, for a replayed Idempotency-Key, the earlier one)."""

    id: uuid.UUID
    time_left: int
    replayed: bool = False
    conflict: bool = False


@dataclass(frozen=True, slots=True)
class Series:
    """One series as GET /timer/{id} reads it."""

    id: uuid.UUID
    tenant: str
    url: str
    state: str
    every_ms: int | None
    cron: str | None
    time_zone: str
    first_at: datetime
    until_at: datetime | None
    max_count: int | None
    misfire: Misfire
    window_ms: int | None
    next_n: int
    next_at: datetime | None
    occurrences: int
    created_at: datetime
    paused_at: datetime | None
    ended_at: datetime | None
    payload: Any
    headers: dict[str, str] | None
    timeout_ms: int | None
    max_attempts: int
    delivery: str
    priority: int
    resources: list[str] | None
    request_id: str | None
    last_at: datetime | None  # the latest occurrence already due (not skipped)
    upcoming_at: datetime | None  # the earliest occurrence made and still to be sent
    db_now: datetime

    @property
    def next_occurrence_at(self) -> datetime | None:
        """When the next occurrence is due (None while paused and once ended)."""
        if self.state != "active":
            return None
        if self.upcoming_at is not None:
            return self.upcoming_at
        return self.next_at

    @property
    def time_left(self) -> int:
        """Whole seconds to the next occurrence, rounded up; 0 once ended (and while
        paused)."""
        upcoming = self.next_occurrence_at
        return 0 if upcoming is None else time_left(upcoming, self.db_now)


@dataclass(frozen=True, slots=True)
class _Due:
    """A series as the schedule pass, a pause and a resume read it (under a row lock)."""

    id: uuid.UUID
    state: str
    every_ms: int | None
    cron: str | None
    time_zone: str
    first_at: datetime
    until_at: datetime | None
    max_count: int | None
    misfire: Misfire
    next_n: int
    next_at: datetime | None
    db_now: datetime

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            first_at=self.first_at, every_ms=self.every_ms, cron=self.cron,
            timezone=self.time_zone, until=self.until_at, count=self.max_count,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SeriesCancel:
    """What a DELETE of a series found: its state before, whether this call ended it."""

    found: str
    cancelled: bool
    stopped: int  # pending occurrences cancelled with it


def first_time(spec: SeriesSpec, start: datetime) -> datetime:
    """Occurrence 1's time: the start itself for ``every``, the first cron match at or after
    it; ScheduleError when there is none (or it is past ``until``)."""
    if spec.every_ms is not None:
        first: datetime | None = start
    else:
        probe = Schedule(first_at=start, cron=spec.cron, timezone=spec.timezone)
        first = probe.after(start - timedelta(microseconds=1))
        if first is None:
            raise ScheduleError(f"{spec.cron!r} never matches after {start.isoformat()}")
    assert first is not None
    if spec.until is not None and first > spec.until:
        raise ScheduleError(
            f"is before the first occurrence ({first.isoformat()}): the series would never fire",
            "until",
        )
    return first


def _ms(at: datetime) -> int:
    return round((at - EPOCH).total_seconds() * 1000)


class ScheduleStore(PoolOwner):
    """Every query on series and on the occurrence rows they make."""

    async def create(
        self,
        spec: SeriesSpec,
        *,
        url: str,
        options: DeliveryOptions,
        key: str | None = None,
        fingerprint: str = "",
        quota: bool = False,
        shards: int = 16,
        wake_ms: int | None = None,
        now: datetime | None = None,
    ) -> CreatedSeries:
        """Makes a series (its first occurrence is made by a dispatcher's pass shortly before
        its time). ``key``, ``fingerprint`` and ``quota`` as CreateStore.insert_idempotent:
        a replay answers the earlier series; a refusal writes nothing. SeriesRefused when the
        schedule never fires. ``wake_ms``: the dispatchers' claim window; a first occurrence
        due within it is made in this transaction (their next pass may come too late) and
        wakes them. Not retried on a lost connection."""

        async def once() -> CreatedSeries:
            async with self.connection() as conn, conn.transaction():
                earlier = await begin_create(conn, key=key, tenant=options.tenant, quota=quota)
                if earlier is not None:
                    found = await self.get(earlier[1], conn=conn)
                    return CreatedSeries(
                        earlier[1], found.time_left if found else 0, replayed=True,
                        conflict=earlier[0] != fingerprint,
                    )  # fmt: skip
                cur = await conn.execute(query("clock_ms"), {"now": now})
                row = await cur.fetchone()
                assert row is not None
                now_ms = int(row[0])
                start_ms = spec.at_ms if spec.at_ms is not None else now_ms + spec.delay_ms
                try:
                    first = first_time(spec, EPOCH + timedelta(milliseconds=start_ms))
                except ScheduleError as exc:
                    raise SeriesRefused(exc) from None
                series_id = new_series_id(_ms(first))
                await conn.execute(
                    query("schedule_insert"),
                    {
                        "id": series_id, "tenant": options.tenant, "url": url,
                        "host": host_of(url), "payload": options.payload,
                        "headers": options.headers, "timeout_ms": options.timeout_ms,
                        "max_attempts": options.max_attempts, "delivery": options.delivery,
                        "priority": options.priority,
                        "resources": " ".join(options.resources) if options.resources else None,
                        "request_id": options.request_id, "every_ms": spec.every_ms,
                        "cron": spec.cron, "time_zone": spec.timezone, "first_at": first,
                        "until_at": spec.until, "max_count": spec.count,
                        "misfire": spec.misfire, "window_ms": options.window_ms,
                    },
                )  # fmt: skip
                if key is not None:
                    await record_create(conn, key, fingerprint, series_id)
                if wake_ms is not None:  # due within the claim window: made now
                    await self._make(
                        conn, series_id, lookahead_seconds=wake_ms / 1000, shards=shards,
                        wake_ms=wake_ms, now=now,
                    )  # fmt: skip
            return CreatedSeries(
                series_id, time_left(first, EPOCH + timedelta(milliseconds=now_ms))
            )

        try:
            return await once()
        except DatabaseUnavailable:
            raise
        except TRANSIENT as exc:
            raise DatabaseUnavailable(f"schedule_insert: {exc}", "the insert failed") from exc

    async def get(
        self, series_id: uuid.UUID, *, tenant: str | None = None, conn: Any = None,
        now: datetime | None = None,
    ) -> Series | None:  # fmt: skip
        """One series (a tenant's key: its own only), or None."""
        params = {"id": series_id, "tenant": tenant, "now": now}
        if conn is not None:
            cur = conn.cursor(row_factory=class_row(Series))
            await cur.execute(query("schedule_get"), params)
            found: Series | None = await cur.fetchone()
            return found
        return await self.fetch_one("schedule_get", Series, params)

    async def listing(
        self, *, tenant: str | None, after: uuid.UUID | None, limit: int
    ) -> list[Series]:
        """Series in id order after ``after`` (a tenant's only, or every tenant's)."""
        return await self.fetch_all(
            "schedule_list", Series, {"tenant": tenant, "after": after, "limit": limit, "now": None}
        )

    async def cancel(
        self, series_id: uuid.UUID, *, tenant: str | None = None
    ) -> SeriesCancel | None:
        """Ends a series and cancels its pending occurrences; None if there is no such series
        (for this tenant). Idempotent.

        The series' row lock is taken by a statement of its own first: a schedule pass that
        holds it may be making an occurrence, and a statement that waited for the lock would
        still read the occurrences as they were before the pass committed, leaving the new
        one pending (sent after the 204)."""
        params = {"id": series_id, "tenant": tenant, "now": None}

        async def op() -> SeriesCancel | None:
            async with self.connection() as conn, conn.transaction():
                locked = await conn.execute(query("schedule_lock"), params)
                if await locked.fetchone() is None:
                    return None
                cur = conn.cursor(row_factory=class_row(SeriesCancel))
                await cur.execute(query("schedule_cancel"), params)
                return await cur.fetchone()

        return await self.retrying(op, what="schedule_cancel")

    async def revoke(
        self, series_id: uuid.UUID, *, reason: str | None
    ) -> list[tuple[uuid.UUID, datetime, int]]:
        """Revokes the claims of the series' occurrences in flight (``series_revoke``);
        returns their leases (id, bucket, token) to wait on."""
        rows = await self.rows("series_revoke", {"id": series_id, "reason": reason})
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def pause(self, series_id: uuid.UUID, *, tenant: str | None = None) -> str | None:
        """Pauses an active series (its unsent occurrences are skipped); returns the state it
        is in now, or None if there is no such series. Pausing a paused one changes nothing."""
        return await self._set_state(series_id, tenant, resume=False)

    async def resume(
        self, series_id: uuid.UUID, *, tenant: str | None = None, shards: int = 16,
        wake_ms: int | None = None,
    ) -> str | None:  # fmt: skip
        """Resumes a paused series on its grid: the first time after now, with its own number
        (the times that fell in the pause are skipped); ended if none is left. Returns the
        state it is in now, or None if there is no such series."""
        return await self._set_state(series_id, tenant, resume=True, shards=shards, wake_ms=wake_ms)

    async def _set_state(
        self, series_id: uuid.UUID, tenant: str | None, *, resume: bool, shards: int = 16,
        wake_ms: int | None = None,
    ) -> str | None:  # fmt: skip
        async def op() -> str | None:
            async with self.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=class_row(_Due))
                await cur.execute(
                    query("schedule_lock"), {"id": series_id, "tenant": tenant, "now": None}
                )
                found = await cur.fetchone()
                if found is None:
                    return None
                change: dict[str, Any] = {
                    "id": series_id,
                    "now": None,
                    "next_n": None,
                    "next_at": None,
                }
                if not resume:
                    if found.state != "active":
                        return found.state
                    change["state"] = "paused"
                else:
                    if found.state != "paused":
                        return found.state
                    assert found.next_at is not None  # kept through the pause
                    following = found.schedule.resume_after(
                        found.next_n, found.next_at, found.db_now
                    )
                    if following is None:
                        change["state"] = "ended"
                    else:
                        change.update(state="active", next_n=following[0], next_at=following[1])
                await conn.execute(query("schedule_set_state"), change)
                if change["state"] == "active" and wake_ms is not None:
                    await self._make(
                        conn, series_id, lookahead_seconds=wake_ms / 1000, shards=shards,
                        wake_ms=wake_ms, now=None,
                    )  # fmt: skip
                return str(change["state"])

        return await self.retrying(op, what="schedule_set_state")

    async def advance(
        self, *, lookahead_seconds: float, shards: int, wake_ms: int | None = None,
        now: datetime | None = None,
    ) -> int:  # fmt: skip
        """The schedule pass: makes the occurrences due by now + lookahead of every series
        it can lock (core/recurrence.py ``plan_emission`` decides which, misfires included) and
        moves the series on, SERIES_PER_PASS series a transaction, until none is due.
        Returns the occurrence rows made."""
        made = 0
        while True:
            async with self.connection() as conn, conn.transaction():
                await conn.execute(query("schedule_pass_lock"))
                taken, rows = await self._make(
                    conn, None, lookahead_seconds=lookahead_seconds, shards=shards,
                    wake_ms=wake_ms, now=now,
                )  # fmt: skip
            made += rows
            if taken < SERIES_PER_PASS:
                return made

    async def _make(
        self, conn: Any, series_id: uuid.UUID | None, *, lookahead_seconds: float,
        shards: int, wake_ms: int | None, now: datetime | None,
    ) -> tuple[int, int]:  # fmt: skip
        """The pass inside the caller's transaction, over up to SERIES_PER_PASS due series it
        can lock or (``series_id``) one: a series just made or resumed, whose first
        occurrence may be due before the dispatchers' next pass. Returns the series taken and
        the occurrence rows made."""
        cur = conn.cursor(row_factory=class_row(_Due))
        await cur.execute(
            query("schedule_due"),
            {"now": now, "lookahead": lookahead_seconds, "limit": SERIES_PER_PASS,
             "id": series_id},
        )  # fmt: skip
        due: list[_Due] = await cur.fetchall()
        if not due:
            return 0, 0
        db_now = due[0].db_now
        found = await conn.execute(
            query("occurrence_unsent"), {"ids": [d.id for d in due], "now": now}
        )
        unsent: dict[uuid.UUID, list[tuple[int, datetime]]] = {}
        for row_id, n, at in await found.fetchall():
            unsent.setdefault(row_id, []).append((n, at))
        made: list[tuple[uuid.UUID, int, int]] = []
        skipped: list[tuple[uuid.UUID, int, int]] = []
        moved: list[tuple[uuid.UUID, int, datetime | None, int]] = []
        for series in due:
            assert series.next_at is not None  # active
            try:
                emission = plan_emission(
                    series.schedule, next_n=series.next_n, next_at=series.next_at,
                    unsent=unsent.get(series.id, []), misfire=series.misfire, now=db_now,
                    lookahead=timedelta(seconds=lookahead_seconds),
                )  # fmt: skip
            except ScheduleError as exc:  # a time zone this machine no longer knows
                log.error("series %s cannot be scheduled here: %s", series.id, exc)
                continue
            made += [(series.id, n, _ms(at)) for n, at in emission.create]
            into = emission.create[-1][0] if emission.create else 0
            skipped += [(series.id, n, into) for n in emission.skip]
            moved.append(
                (series.id, emission.next_n, emission.next_at,
                 len(emission.create) - len(emission.skip))
            )  # fmt: skip
        if skipped:
            await conn.execute(
                query("occurrence_skip"),
                {"series_id": [s[0] for s in skipped], "occurrence": [s[1] for s in skipped],
                 "into_n": [s[2] for s in skipped], "now": now},
            )  # fmt: skip
        if made:
            await conn.execute(
                query("occurrence_insert"),
                {"series_id": [m[0] for m in made], "occurrence": [m[1] for m in made],
                 "due_ms": [m[2] for m in made], "shards": shards, "now": now,
                 "wake_ms": wake_ms},
            )  # fmt: skip
        if moved:
            await conn.execute(
                query("schedule_advance"),
                {"id": [m[0] for m in moved], "next_n": [m[1] for m in moved],
                 "next_at": [m[2] for m in moved], "made": [m[3] for m in moved], "now": now},
            )  # fmt: skip
        return len(due), len(made)
