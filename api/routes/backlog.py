"""``GET /backlog``: what is waiting, for an operator (admin keys): pending timers per step
ahead, the overdue ones, and the windowed work with the send rate planned for it ahead (the
curve the window planner follows, db/windows.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import AdminDep, DatabaseDep, SettingsDep
from api.problems import FieldError
from core.windows import yds_curve, yds_rate
from db.backlog import step_for, window_seconds

router = APIRouter(tags=["backlog"])


class BacklogStepOut(BaseModel):
    """Pending timers whose slot falls in one step."""

    at: datetime
    pending: int


class RateStep(BaseModel):
    """The planned send rate of windowed work until an instant."""

    until: datetime
    per_second: float


class Windowed(BaseModel):
    """Windowed timers released (due) and not planned yet, and the rate planned for them."""

    released: int = Field(description="Windowed timers whose due time has come, unsent.")
    rate_now: float = Field(description="Sends per second the window planner uses now.")
    planned: list[RateStep] = Field(
        description="The planned rate ahead, a step per critical deadline (it never rises)."
    )


class BacklogOut(BaseModel):
    """GET /backlog."""

    window_seconds: int
    step_seconds: int
    steps: list[BacklogStepOut]
    overdue: int
    oldest_overdue_age_seconds: float | None
    in_flight: int
    windowed: Windowed


def parse_window(text: str) -> int:
    """'90s', '10m', '2h', '1d' -> seconds; FieldError otherwise."""
    seconds = window_seconds(text)
    if seconds is None:
        raise FieldError(
            "window", "give a positive number and a unit (90s, 10m, 2h or 1d), at most 366 days"
        )
    return seconds


@router.get("/backlog", response_model=BacklogOut)
async def backlog(
    _: AdminDep,
    db: DatabaseDep,
    settings: SettingsDep,
    window: Annotated[str, Query(description="How far ahead: 90s, 10m, 2h, 1d.")] = "60s",
) -> BacklogOut:
    """Pending timers per step ahead, the overdue ones, and the windowed work with its
    planned send rate (admin keys)."""
    seconds = parse_window(window)
    step = step_for(seconds)
    steps = await db.backlog.histogram(window_seconds=seconds, step_seconds=step)
    overdue = await db.backlog.overdue()
    work = await db.windows.work(lookahead_seconds=settings.wake_within_ms / 1000)
    now = datetime.now(UTC)
    return BacklogOut(
        window_seconds=seconds, step_seconds=step,
        steps=[BacklogStepOut(at=s.at, pending=s.pending) for s in steps],
        overdue=overdue.overdue, oldest_overdue_age_seconds=overdue.oldest_age_seconds,
        in_flight=overdue.in_flight,
        windowed=Windowed(
            released=sum(n for _, n in work), rate_now=yds_rate(now, work),
            planned=[RateStep(until=u, per_second=r) for u, r in yds_curve(now, work)],
        ),
    )  # fmt: skip
