"""The window-spreading rate: Yao-Demers-Shenker on the released work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.windows import yds_curve, yds_rate

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def test_one_deadline_is_its_work_over_the_time_left() -> None:
    assert yds_rate(NOW, [(at(30), 1200)]) == pytest.approx(40.0)


def test_the_tightest_deadline_sets_the_rate() -> None:
    # 100 due in 10 s (10/s) beside 2,400 due in 120 s: 2,500 / 120 = 20.8/s wins
    assert yds_rate(NOW, [(at(10), 100), (at(120), 2400)]) == pytest.approx(2500 / 120)
    # 500 due in 10 s: 50/s wins over 2,900 / 120 = 24.2/s
    assert yds_rate(NOW, [(at(10), 500), (at(120), 2400)]) == pytest.approx(50.0)


def test_nothing_released_needs_no_rate_and_a_passed_deadline_needs_everything_now() -> None:
    assert yds_rate(NOW, []) == 0.0
    assert yds_rate(NOW, [(at(-1), 3)]) >= 3000


def test_the_curve_steps_down_after_each_critical_deadline() -> None:
    steps = yds_curve(NOW, [(at(10), 500), (at(120), 2400)])
    assert [(u, round(r, 3)) for u, r in steps] == [(at(10), 50.0), (at(120), round(2400 / 110, 3))]
    assert yds_curve(NOW, [(at(30), 1200)]) == [(at(30), pytest.approx(40.0))]
    # the rates never rise, and all the work fits
    work = [(at(5), 10), (at(6), 100), (at(60), 30), (at(61), 3000)]
    steps = yds_curve(NOW, work)
    rates = [r for _, r in steps]
    assert rates == sorted(rates, reverse=True)
    start, done = NOW, 0.0
    for until, rate in steps:
        done += rate * (until - start).total_seconds()
        start = until
    assert done == pytest.approx(sum(c for _, c in work))
