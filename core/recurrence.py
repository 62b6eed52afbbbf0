"""Recurring schedules as pure functions: ``every`` (a fixed period) and ``cron`` (five-field
crontab in an IANA time zone), the times of their occurrences, and which of them a pass
emits. No SQL and no clock of its own: "now" is always given (the database clock).

Cron follows crontab(5), computed by APScheduler's CronTrigger (daylight-saving changes
included, not handled here). Two differences from APScheduler's own ``from_crontab`` are
translated: in crontab(5) day of week 0 and 7 are Sunday (APScheduler counts 0 as Monday), and
when both day of month and day of week are restricted (neither starts with ``*``) a day
matching either one matches (APScheduler requires both), which is an OrTrigger of the two.

Occurrence n is the schedule's n-th time, counted from 1 at the first; skipped, coalesced and
paused-over occurrences keep their numbers, so a number always names the same instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

Misfire = Literal["coalesce", "all"]

# Missed occurrences one pass emits at most for misfire "all" (the rest in the next passes).
MAX_EMIT_PER_PASS = 1000
# Times walked at most to find the latest missed cron time (a minute cron down 69 days).
MAX_WALK = 100_000

_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
# crontab day (0..7, 0 and 7 Sunday) -> APScheduler day (0 Monday .. 6 Sunday)
_APS_DAY = {d: (d + 6) % 7 for d in range(8)}
_DOW_ITEM = re.compile(r"(\*|[0-7]|[a-z]{3})(?:-([0-7]|[a-z]{3}))?(?:/(\d{1,2}))?")


class ScheduleError(ValueError):
    """A schedule that cannot be used: ``field`` names the create's field, the message why."""

    def __init__(self, reason: str, field: str = "cron") -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _day(text: str) -> int:
    if text.isdigit():
        return int(text)
    if text in _DAYS:
        return _DAYS[text]
    raise ScheduleError(f"{text!r} is not a day of week (0-7 or sun-sat)")


def _day_of_week(field: str) -> str:
    """A crontab(5) day-of-week field as APScheduler's: explicit day numbers."""
    days: set[int] = set()
    for item in field.lower().split(","):
        match = _DOW_ITEM.fullmatch(item)
        if match is None:
            raise ScheduleError(f"day of week {field!r}: {item!r} is not a day, range or step")
        first, last, step = match.groups()
        if first == "*":
            if last is not None:
                raise ScheduleError(f"day of week {field!r}: '*' cannot start a range")
            low, high = 0, 6
        else:
            low = _day(first)
            high = _day(last) if last is not None else (7 if step else low)
        if high < low:
            raise ScheduleError(f"day of week {field!r}: the range {item!r} runs backwards")
        stride = int(step) if step else 1
        if stride < 1:
            raise ScheduleError(f"day of week {field!r}: a step must be at least 1")
        days.update(d % 7 for d in range(low, high + 1, stride))
    return ",".join(str(d) for d in sorted({_APS_DAY[d] for d in days}))


def cron_trigger(expression: str, timezone: str, *, end: datetime | None = None) -> BaseTrigger:
    """The trigger of a five-field crontab(5) expression in an IANA time zone, matching
    nothing after ``end`` if given; ScheduleError when either cannot be used."""
    zone = time_zone(timezone)
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"must have five fields (minute hour day-of-month month day-of-week), not {len(fields)}"
        )
    minute, hour, dom, month, dow = fields
    try:
        aps_dow = "*" if dow == "*" else _day_of_week(dow)
        # crontab(5): a field restricts the day unless it starts with '*'
        if not dom.startswith("*") and not dow.startswith("*"):
            return OrTrigger([
                CronTrigger(minute=minute, hour=hour, day=dom, month=month, timezone=zone,
                            end_date=end),
                CronTrigger(minute=minute, hour=hour, month=month, day_of_week=aps_dow,
                            timezone=zone, end_date=end),
            ])  # fmt: skip
        return CronTrigger(
            minute=minute, hour=hour, day=dom, month=month, day_of_week=aps_dow, timezone=zone,
            end_date=end,
        )  # fmt: skip
    except ScheduleError:
        raise
    except ValueError as exc:
        raise ScheduleError(f"{expression!r}: {exc}") from None


def first_cron_time(
    expression: str, timezone: str, start: datetime, end: datetime
) -> datetime | None:
    """A cron's first match at or after ``start`` and not after ``end`` (UTC), or None. The
    search stops at ``end``: a cron that never matches (31 February) or matches only past it
    costs microseconds, not APScheduler's walk to the year 9999 (0.1 to 0.3 s)."""
    found = cron_trigger(expression, timezone, end=end).get_next_fire_time(None, start)
    return found.astimezone(UTC) if found is not None else None


def time_zone(name: str) -> ZoneInfo:
    """An IANA time zone by name; ScheduleError when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{name[:80]!r} is not an IANA time zone name", "timezone") from None


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a series' occurrences fall: every ``every_ms`` from ``first_at``, or the matches
    of ``cron`` in ``timezone``; none after ``until`` nor past the ``count``-th."""

    first_at: datetime  # occurrence 1
    every_ms: int | None = None
    cron: str | None = None
    timezone: str = "UTC"
    until: datetime | None = None
    count: int | None = None

    def _trigger(self) -> BaseTrigger:
        assert self.cron is not None
        return _cached_trigger(self.cron, self.timezone)

    def after(self, at: datetime) -> datetime | None:
        """The schedule's first time strictly after ``at`` (ignoring until and count)."""
        if self.every_ms is not None:
            if at < self.first_at:
                return self.first_at
            period = timedelta(milliseconds=self.every_ms)
            steps = (at - self.first_at) // period + 1
            return self.first_at + steps * period
        found = self._trigger().get_next_fire_time(None, at + timedelta(microseconds=1))
        return found.astimezone(UTC) if found is not None else None

    def time_of_next(self, n: int, at: datetime) -> datetime | None:
        """Occurrence n + 1's time, occurrence n being at ``at``; None once the series is
        over (past ``count`` or ``until``, or a cron that never matches again)."""
        if self.count is not None and n + 1 > self.count:
            return None
        if self.every_ms is not None:
            found: datetime | None = self.first_at + timedelta(milliseconds=self.every_ms * n)
        else:
            found = self.after(at)
        if found is None or (self.until is not None and found > self.until):
            return None
        return found

    def walk(self, n: int, at: datetime) -> Iterator[tuple[int, datetime]]:
        """Occurrences n, n + 1, ... with their times, from occurrence n at ``at``, until the
        series is over."""
        current: datetime | None = at
        while current is not None:
            yield n, current
            current = self.time_of_next(n, current)
            n += 1

    def latest_by(self, n: int, at: datetime, now: datetime) -> tuple[int, datetime]:
        """Of the occurrences from n (at ``at``, which is at or before ``now``), the latest at
        or before ``now``: straight from the period for ``every``, walked for cron."""
        if self.every_ms is not None:
            period = timedelta(milliseconds=self.every_ms)
            last = (now - self.first_at) // period + 1
            if self.count is not None:
                last = min(last, self.count)
            if self.until is not None:
                last = min(last, (self.until - self.first_at) // period + 1)
            last = max(last, n)
            return last, self.first_at + (last - 1) * period
        best = (n, at)
        for steps, (k, t) in enumerate(self.walk(n, at)):
            if t > now or steps > MAX_WALK:
                break
            best = (k, t)
        return best

    def resume_after(self, n: int, at: datetime, now: datetime) -> tuple[int, datetime] | None:
        """The first occurrence strictly after ``now``, counting on from occurrence n at
        ``at`` (a pause skips what fell in it); None when the series is over by then."""
        if at > now:
            return n, at
        last, last_at = self.latest_by(n, at, now)
        following = self.time_of_next(last, last_at)
        return (last + 1, following) if following is not None else None


_TRIGGERS: dict[tuple[str, str], BaseTrigger] = {}


def _cached_trigger(expression: str, timezone: str) -> BaseTrigger:
    key = (expression, timezone)
    found = _TRIGGERS.get(key)
    if found is None:
        if len(_TRIGGERS) > 10_000:
            _TRIGGERS.clear()
        found = _TRIGGERS[key] = cron_trigger(expression, timezone)
    return found


@dataclass(frozen=True, slots=True)
class Emission:
    """What one pass does for one series: occurrences to create (number, time), unsent
    occurrence rows to skip as coalesced into a later one, and where the series stands after
    (the next number and its time; None: the series is over once these are out)."""

    create: list[tuple[int, datetime]]
    skip: list[int]  # occurrence numbers of unsent rows coalesced away
    next_n: int
    next_at: datetime | None


def plan_emission(
    schedule: Schedule,
    *,
    next_n: int,
    next_at: datetime,
    unsent: list[tuple[int, datetime]],
    misfire: Misfire,
    now: datetime,
    lookahead: timedelta,
) -> Emission:
    """Which occurrences of a series to create now, and which unsent ones to skip.

    ``next_n``/``next_at``: the first occurrence not made yet. ``unsent``: occurrence rows
    made already whose send was never recorded (number, due time): waiting for their time,
    held back, or taken back from a dispatcher that died. Occurrences are made ahead, up to
    now + ``lookahead``, so that the claim finds them in time.

    ``misfire`` "all": every occurrence is made and sent, missed or not. "coalesce" (the
    default): of the occurrences whose time has passed unsent (downtime, a backlog), only the
    latest goes, under its own number; an unsent one is skipped as soon as a later occurrence
    is due. An occurrence ahead is made only when none is waiting unsent, so in normal
    operation a series has one unsent occurrence at a time and an outage coalesces it.
    """
    horizon = now + lookahead
    create: list[tuple[int, datetime]] = []
    n, at = next_n, next_at
    if misfire == "all":
        for k, t in schedule.walk(n, at):
            if t > horizon or len(create) >= MAX_EMIT_PER_PASS:
                return Emission(create, [], k, t)
            create.append((k, t))
        return Emission(create, [], n + len(create), None)
    overdue = sorted((k, t) for k, t in unsent if t <= now)
    skip: list[int] = []
    if at <= now:
        # Occurrences missed unsent: only the latest of them goes; every overdue row waits no
        # more, since a later occurrence is due.
        last, last_at = schedule.latest_by(n, at, now)
        create.append((last, last_at))
        skip = [k for k, _ in overdue]
        following = schedule.time_of_next(last, last_at)
        if following is None:
            return Emission(create, skip, last + 1, None)
        n, at = last + 1, following
        # the coalesced one goes at once, so the one after it is made ahead as usual
        unsent = []
    elif overdue:
        # The latest overdue row goes, unless an occurrence after it (made already) is due too.
        latest, latest_at = overdue[-1]
        after = schedule.time_of_next(latest, latest_at)
        superseded = after is not None and after <= now
        skip = [k for k, _ in (overdue if superseded else overdue[:-1])]
    waiting = any(k not in skip for k, _ in unsent)
    if not waiting and at <= horizon:
        create.append((n, at))
        following = schedule.time_of_next(n, at)
        return Emission(create, skip, n + 1, following)
    return Emission(create, skip, n, at)
