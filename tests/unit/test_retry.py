"""The retry policy: what is retried, backoff bounds, Retry-After, dead after max attempts."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from core.settings import Settings
from dispatcher.retry import Failure, backoff, ceiling, decide, parse_retry_after, retryable

ANSWERED = True


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    assert retryable(Failure(status, ANSWERED), "at_least_once")


@pytest.mark.parametrize("status", [301, 307, 400, 401, 403, 404, 409, 410, 422])
def test_other_answers_fail_at_once(status: int) -> None:
    assert not retryable(Failure(status, ANSWERED), "at_least_once")
    decision = decide(
        Failure(status, ANSWERED), delivery="at_least_once", attempt=1, attempts_left=7,
        base=60, cap=86_400,
    )  # fmt: skip
    assert decision.state == "failed" and decision.delay is None


def test_network_errors_and_timeouts_are_retried_but_refused_targets_are_not() -> None:
    assert retryable(Failure(None, connected=False), "at_least_once")  # connect failed
    assert retryable(Failure(None, connected=True), "at_least_once")  # timeout, reset
    assert not retryable(Failure(None, connected=False, refused=True), "at_least_once")


def test_at_most_once_retries_only_what_surely_was_not_processed() -> None:
    assert retryable(Failure(None, connected=False), "at_most_once")
    for status in (408, 429, 503):
        assert retryable(Failure(status, ANSWERED), "at_most_once")
    assert not retryable(Failure(None, connected=True), "at_most_once")  # timeout: maybe done
    for status in (500, 502, 504):
        assert not retryable(Failure(status, ANSWERED), "at_most_once")


def test_ceilings_grow_fourfold_up_to_the_cap() -> None:
    assert [ceiling(n, base=60, cap=86_400) for n in range(1, 9)] == [
        60, 240, 960, 3840, 15_360, 61_440, 86_400, 86_400,
    ]  # fmt: skip
    assert ceiling(500, base=60, cap=86_400) == 86_400  # no overflow far out


def test_full_jitter_stays_within_zero_and_the_ceiling_and_spreads() -> None:
    rng = random.Random(7)
    for attempt in range(1, 8):
        top = ceiling(attempt, base=1.0, cap=1000.0)
        draws = [backoff(attempt, base=1.0, cap=1000.0, rng=rng) for _ in range(2000)]
        assert all(0.0 <= d <= top for d in draws)
        # full jitter: the draws cover the range, not a band near the ceiling
        assert min(draws) < top * 0.05 and max(draws) > top * 0.95
        assert abs(sum(draws) / len(draws) - top / 2) < top * 0.05


def test_the_default_round_spans_about_a_day() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    ceilings = [ceiling(n, base=s.retry_base_seconds, cap=s.retry_max_seconds) for n in range(1, 8)]
    # seven waits between eight attempts: on average half of each ceiling
    assert s.max_attempts == 8
    assert 20 * 3600 <= sum(ceilings) / 2 <= 28 * 3600
    assert sum(ceilings) <= 48 * 3600


def test_retry_after_is_honoured_instead_of_the_jitter_and_capped() -> None:
    failure = Failure(429, ANSWERED, retry_after=120.0)
    decision = decide(failure, delivery="at_least_once", attempt=1, attempts_left=3,
                      base=0.5, cap=3600)  # fmt: skip
    assert decision == decide(failure, delivery="at_least_once", attempt=5, attempts_left=3,
                              base=0.5, cap=3600)  # fmt: skip
    assert (decision.state, decision.delay) == ("pending", 120.0)
    assert backoff(1, base=1, cap=60, retry_after=10_000) == 60


def test_dead_once_the_round_is_used_up() -> None:
    failure = Failure(503, ANSWERED)
    assert decide(failure, delivery="at_least_once", attempt=8, attempts_left=0,
                  base=60, cap=86_400).state == "dead"  # fmt: skip
    assert decide(failure, delivery="at_least_once", attempt=7, attempts_left=1,
                  base=60, cap=86_400).state == "pending"  # fmt: skip


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("30", now=now) == 30.0
    assert parse_retry_after(" 0 ", now=now) == 0.0
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)  # Mon, 23 Nov 2026 ...
    assert parse_retry_after(later, now=now) == 90.0
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0  # a date in the past: no wait
    for junk in (None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2026"):
        assert parse_retry_after(junk, now=now) is None


def test_retry_after_takes_only_ascii_digits_and_never_raises() -> None:
    """'²' and '٣' are digits to str.isdigit() but not to float(): such a header once raised
    inside the send task, so no outcome was recorded and the timer was sent for ever."""
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    for junk in ("²", "٣", "1²", "\u0661\u0662", "9" * 5000, "Mon, 23 Nov 99999 12:00:00 GMT"):
        got = parse_retry_after(junk, now=now)
        assert got is None or got == 1e12, junk
    assert parse_retry_after("9" * 40, now=now) == 1e12  # capped by the retry ceiling later
