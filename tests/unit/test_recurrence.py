"""Recurring schedules: cron next times (crontab(5) meaning, daylight-saving changes through
APScheduler), every periods, and which occurrences a pass makes, coalesces or skips."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from core.recurrence import Schedule, ScheduleError, cron_trigger, first_cron_time, plan_emission

LOOKAHEAD = timedelta(seconds=2.5)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def times(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    found, at = [], start - timedelta(microseconds=1)
    for _ in range(count):
        nxt = schedule.after(at)
        assert nxt is not None
        found.append(nxt)
        at = nxt
    return found


def test_a_new_york_morning_cron_keeps_local_nine_across_both_changes() -> None:
    cron = Schedule(first_at=utc(2026, 3, 6), cron="0 9 * * *", timezone="America/New_York")
    # EST is UTC-5 until 2026-03-08 02:00, EDT (UTC-4) after it
    assert times(cron, utc(2026, 3, 6), 3) == [utc(2026, 3, 6, 14), utc(2026, 3, 7, 14),
                                               utc(2026, 3, 8, 13)]  # fmt: skip
    # and back to EST on 2026-11-01
    assert times(cron, utc(2026, 10, 31), 2) == [utc(2026, 10, 31, 13), utc(2026, 11, 1, 14)]


def test_a_berlin_cron_across_both_changes_and_the_skipped_hour() -> None:
    cron = Schedule(first_at=utc(2026, 3, 28), cron="30 8 * * *", timezone="Europe/Berlin")
    # CET (UTC+1) until 2026-03-29 02:00, CEST (UTC+2) after; back on 2026-10-25
    assert times(cron, utc(2026, 3, 28), 2) == [utc(2026, 3, 28, 7, 30), utc(2026, 3, 29, 6, 30)]
    assert times(cron, utc(2026, 10, 24), 2) == [utc(2026, 10, 24, 6, 30),
                                                 utc(2026, 10, 25, 7, 30)]  # fmt: skip
    # 02:30 does not exist on 2026-03-29 in Berlin: APScheduler fires once that day, after
    # the change, and never twice
    night = Schedule(first_at=utc(2026, 3, 28), cron="30 2 * * *", timezone="Europe/Berlin")
    found = times(night, utc(2026, 3, 28), 3)
    assert found[0] == utc(2026, 3, 28, 1, 30)
    assert found[1].date() == datetime(2026, 3, 29).date() and found[1] > utc(2026, 3, 29, 1)
    assert found[2] == utc(2026, 3, 30, 0, 30)


def test_day_of_week_zero_and_seven_are_sunday_and_ranges_wrap_to_sunday() -> None:
    # 2026-12-06 is a Sunday
    for expression in ("0 12 * * 0", "0 12 * * 7", "0 12 * * sun"):
        cron = Schedule(first_at=utc(2026, 12, 1), cron=expression)
        assert cron.after(utc(2026, 12, 1)) == utc(2026, 12, 6, 12), expression
    weekdays = Schedule(first_at=utc(2026, 12, 5), cron="0 9 * * 1-5")
    assert times(weekdays, utc(2026, 12, 5), 2) == [utc(2026, 12, 7, 9), utc(2026, 12, 8, 9)]
    weekend = Schedule(first_at=utc(2026, 12, 1), cron="0 9 * * 6-7")
    assert times(weekend, utc(2026, 12, 1), 2) == [utc(2026, 12, 5, 9), utc(2026, 12, 6, 9)]


def test_day_of_month_and_day_of_week_together_match_either() -> None:
    # crontab(5): the 1st of the month or any Monday, not only Mondays that are the 1st
    cron = Schedule(first_at=utc(2026, 12, 1), cron="0 0 1 * 1")
    assert times(cron, utc(2026, 12, 1), 3) == [utc(2026, 12, 1), utc(2026, 12, 7),
                                                utc(2026, 12, 14)]  # fmt: skip


@pytest.mark.parametrize(
    ("expression", "zone", "field"),
    [("0 9 * *", "UTC", "cron"), ("61 * * * *", "UTC", "cron"), ("0 9 * * 8", "UTC", "cron"),
     ("0 9 * * fri-mon", "UTC", "cron"), ("0 9 * * *", "Mars/Olympus", "timezone")],
)  # fmt: skip
def test_unusable_crons_and_zones_are_refused_naming_the_field(
    expression: str, zone: str, field: str
) -> None:
    with pytest.raises(ScheduleError) as refused:
        cron_trigger(expression, zone)
    assert refused.value.field == field


def test_every_counts_on_its_grid_with_until_and_count() -> None:
    start = utc(2026, 12, 6, 12)
    every = Schedule(first_at=start, every_ms=1000, until=start + timedelta(seconds=20))
    walked = list(every.walk(1, start))
    assert [n for n, _ in walked] == list(range(1, 22))  # the one exactly at until is sent
    assert walked[-1][1] == start + timedelta(seconds=20)
    counted = Schedule(first_at=start, every_ms=60_000, count=3)
    assert [t for _, t in counted.walk(1, start)] == [start + timedelta(minutes=m)
                                                      for m in range(3)]  # fmt: skip


def test_a_pass_makes_one_occurrence_ahead_at_a_time() -> None:
    start = utc(2026, 12, 6, 12)
    every = Schedule(first_at=start, every_ms=1000)
    now = start - timedelta(seconds=1)
    made = plan_emission(every, next_n=1, next_at=start, unsent=[], misfire="coalesce",
                         now=now, lookahead=LOOKAHEAD)  # fmt: skip
    assert made.create == [(1, start)] and made.skip == []
    assert (made.next_n, made.next_at) == (2, start + timedelta(seconds=1))
    # occurrence 1 not claimed yet: nothing more is made
    again = plan_emission(every, next_n=2, next_at=start + timedelta(seconds=1),
                          unsent=[(1, start)], misfire="coalesce", now=now,
                          lookahead=LOOKAHEAD)  # fmt: skip
    assert again.create == [] and again.skip == [] and again.next_n == 2


def test_after_downtime_the_missed_occurrences_coalesce_into_the_latest() -> None:
    start = utc(2026, 12, 6, 12)
    every = Schedule(first_at=start, every_ms=1000)
    # occurrence 3 was made (unsent), 4 was next; the service came back 5.5 s after 3's time
    now = start + timedelta(seconds=7.5)
    made = plan_emission(every, next_n=4, next_at=start + timedelta(seconds=3),
                         unsent=[(3, start + timedelta(seconds=2))], misfire="coalesce",
                         now=now, lookahead=LOOKAHEAD)  # fmt: skip
    # 8 at once (coalesced), and 9 ahead as usual
    assert made.create == [(8, start + timedelta(seconds=7)), (9, start + timedelta(seconds=8))]
    assert made.skip == [3]
    assert (made.next_n, made.next_at) == (10, start + timedelta(seconds=9))
    # with misfire all, every one of them is made, and the one ahead too
    each = plan_emission(every, next_n=4, next_at=start + timedelta(seconds=3),
                         unsent=[(3, start + timedelta(seconds=2))], misfire="all",
                         now=now, lookahead=LOOKAHEAD)  # fmt: skip
    assert [n for n, _ in each.create] == list(range(4, 12))  # up to now + 2.5 s
    assert each.skip == [] and each.next_n == 12


def test_rows_taken_back_from_a_dead_dispatcher_are_skipped_once_a_later_one_is_due() -> None:
    start = utc(2026, 12, 6, 12)
    every = Schedule(first_at=start, every_ms=1000)
    # 5 and 6 were leased by a dispatcher that died; 8 was made since (the coalesced send)
    now = start + timedelta(seconds=7.2)
    made = plan_emission(every, next_n=9, next_at=start + timedelta(seconds=8),
                         unsent=[(5, start + timedelta(seconds=4)),
                                 (6, start + timedelta(seconds=5))],
                         misfire="coalesce", now=now, lookahead=LOOKAHEAD)  # fmt: skip
    assert made.skip == [5, 6]
    assert made.create == [(9, start + timedelta(seconds=8))]
    # a row just late (no later occurrence due yet) is not skipped, and blocks the next one
    late = plan_emission(every, next_n=9, next_at=start + timedelta(seconds=8),
                         unsent=[(8, start + timedelta(seconds=7))], misfire="coalesce",
                         now=now, lookahead=LOOKAHEAD)  # fmt: skip
    assert late.skip == [] and late.create == []


def test_a_series_ends_after_its_last_occurrence() -> None:
    start = utc(2026, 12, 6, 12)
    every = Schedule(first_at=start, every_ms=1000, count=2)
    made = plan_emission(every, next_n=2, next_at=start + timedelta(seconds=1), unsent=[],
                         misfire="coalesce", now=start + timedelta(seconds=0.5),
                         lookahead=LOOKAHEAD)  # fmt: skip
    assert made.create == [(2, start + timedelta(seconds=1))] and made.next_at is None


def test_resume_goes_on_on_the_grid_after_the_pause() -> None:
    start = utc(2026, 12, 6, 12)
    every = Schedule(first_at=start, every_ms=10_000)
    assert every.resume_after(3, start + timedelta(seconds=20), start + timedelta(seconds=55)) == (
        7,
        start + timedelta(seconds=60),
    )
    cron = Schedule(first_at=utc(2026, 12, 1, 9), cron="0 9 * * *")
    assert cron.resume_after(1, utc(2026, 12, 1, 9), utc(2026, 12, 4, 10)) == (
        5,
        utc(2026, 12, 5, 9),
    )


def test_a_cron_that_never_matches_within_the_horizon_is_found_out_in_microseconds() -> None:
    # The default horizon, 365 days. Unbounded, APScheduler walks 31 February to the year
    # 9999 (0.12 to 0.33 s on the API's event loop); bounded by the horizon it stops there.
    start = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    end = start + timedelta(days=365)
    for never in ("0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"):
        began = time.perf_counter()
        assert first_cron_time(never, "UTC", start, end) is None
        assert time.perf_counter() - began < 0.01, never
    # 29 February: the next one (2028) is past this horizon, within a longer one.
    assert first_cron_time("0 0 29 2 *", "UTC", start, end) is None
    assert first_cron_time("0 0 29 2 *", "UTC", start, start + timedelta(days=800)) == datetime(
        2028, 2, 29, tzinfo=UTC
    )
    # A usual cron: its first match at or after the start, in its time zone.
    assert first_cron_time("0 9 * * 1-5", "America/New_York", start, end) == datetime(
        2026, 12, 8, 14, 0, tzinfo=UTC
    )
    assert first_cron_time("0 1 * * *", "UTC", start, end) == start  # at the start itself
