"""What a failed send turns into: a retry after a backoff, a dead letter, or a plain failure.

Retried: network errors, timeouts, 408, 429 and 5xx. Each retry waits a delay drawn with
*full jitter*, uniformly from [0, ceiling], where the ceiling grows fourfold per attempt from
``base`` up to ``cap``: with the defaults (60 s, 24 h) the eight attempts of a round span 23 h
on average and at most 47 h. A ``Retry-After`` answer (seconds or an HTTP date) is honoured
instead: the retry waits exactly that long (at most ``cap``). Once a round's ``max_attempts``
are used the timer is dead. Any other 4xx (and a refused target) fails at once.

``at_most_once`` timers retry only failures where the request surely was not processed:
the connection never opened, or the target answered 408, 429 or 503. A timeout, a broken
connection or another 5xx may have been acted on, so the timer ends failed instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from core.states import TimerState
from db.models import Delivery

# How much faster than the previous one each backoff ceiling grows.
GROWTH = 4
_RETRIED_STATUS = frozenset({408, 429})
_NOT_PROCESSED_STATUS = frozenset({408, 429, 503})


@dataclass(frozen=True, slots=True)
class Failure:
    """How a send failed, as far as retrying cares."""

    status: int | None  # the HTTP status; None when no answer came
    connected: bool  # False: the request never reached the target (connect failed)
    refused: bool = False  # the outbound guard refused the target: retrying cannot help
    retry_after: float | None = None  # seconds the target asked us to wait


@dataclass(frozen=True, slots=True)
class Decision:
    """The state to record and, for a retry (pending), the delay before it."""

    state: TimerState
    delay: float | None = None


def retryable(failure: Failure, delivery: Delivery) -> bool:
    """Whether this failure is worth another attempt under this delivery policy."""
    if failure.refused:
        return False
    if failure.status is not None and not (
        failure.status in _RETRIED_STATUS or failure.status >= 500
    ):
        return False  # another 4xx (or a 3xx, which is not followed): the request is wrong
    if delivery == "at_least_once":
        return True
    return not failure.connected or failure.status in _NOT_PROCESSED_STATUS


def ceiling(attempt: int, *, base: float, cap: float) -> float:
    """The longest backoff after the ``attempt``-th attempt of a round (1-based)."""
    exponent = min(attempt - 1, 64)  # beyond this the cap rules anyway
    return float(min(cap, base * GROWTH**exponent))


def backoff(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:  # fmt: skip
    """Seconds until the next attempt: Retry-After if given, else full jitter."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return (rng or random).uniform(0.0, ceiling(attempt, base=base, cap=cap))


def decide(
    failure: Failure, *, delivery: Delivery, attempt: int, attempts_left: int,
    base: float, cap: float, rng: random.Random | None = None,
) -> Decision:  # fmt: skip
    """What a failure of the ``attempt``-th attempt of a round turns the timer into."""
    if not retryable(failure, delivery):
        return Decision("failed")
    if attempts_left <= 0:
        return Decision("dead")
    delay = backoff(attempt, base=base, cap=cap, retry_after=failure.retry_after, rng=rng)
    return Decision("pending", delay)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """A Retry-After header as seconds from now: delta-seconds (ASCII digits only) or an HTTP
    date; None if absent or malformed (then the normal backoff applies). Never raises: a
    header is the receiver's text, and ``str.isdigit`` alone accepts '²' or '٣', which
    ``float`` refuses."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # a longer number than 12 digits (31,000 years) is capped by the retry's ceiling anyway
        return float(text) if len(text) <= 12 else 1e12
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
