"""The contract's ``time_left``, defined once: every answer that carries it (POST /timer, the
batch, GET /timer/{id}, a series, a replayed create) counts it with this function, from the
due time and the database clock's reading of now."""

from __future__ import annotations

from datetime import datetime, timedelta

_MICROSECOND = timedelta(microseconds=1)


def time_left(due_at: datetime, now: datetime) -> int:
    """Whole seconds from ``now`` until ``due_at``, rounded up; 0 once due."""
    micros = (due_at - now) // _MICROSECOND
    return max(0, -(-micros // 1_000_000))
