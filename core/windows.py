"""SLA window math: the lowest steady rate that meets every deadline, as pure functions.

Of the windowed work released (due by now), the rate needed now is the Yao-Demers-Shenker rule
(the "optimal available" online algorithm): the maximum, over the upcoming deadlines d, of the
work due by d divided by the time left until d; sent earliest deadline first. ``yds_rate`` is
that rule, ``yds_curve`` the whole planned rate ahead (the same rule applied again after each
critical deadline). The window planner (db/windows.py, dispatcher/windows.py) and the backlog's
views (the API, the CLI) use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

# A deadline this close or past counts as this far away (no division by zero, no negative).
MIN_LEFT_SECONDS = 0.001


def yds_rate(now: datetime, work: Sequence[tuple[datetime, int]]) -> float:
    """Sends per second needed now: max over deadlines d of (work with deadline <= d) / (d -
    now). ``work``: (deadline, count), sorted by deadline."""
    rate, total = 0.0, 0
    for deadline, count in work:
        total += count
        left = max((deadline - now).total_seconds(), MIN_LEFT_SECONDS)
        rate = max(rate, total / left)
    return rate


def yds_curve(now: datetime, work: Sequence[tuple[datetime, int]]) -> list[tuple[datetime, float]]:
    """The planned rate ahead for the released work, as steps (until, rate): the critical
    interval from now to the deadline that sets the rate, then the same rule on what is left
    from there, and so on. The rates never rise."""
    steps: list[tuple[datetime, float]] = []
    start, rest = now, list(work)
    while rest:
        best, best_i, total = -1.0, 0, 0
        for i, (deadline, count) in enumerate(rest):
            total += count
            rate = total / max((deadline - start).total_seconds(), MIN_LEFT_SECONDS)
            if rate >= best:
                best, best_i = rate, i
        until = max(rest[best_i][0], start)
        steps.append((until, best))
        start, rest = until, rest[best_i + 1 :]
    return steps
