"""The API's views of stored timers and series (GET /timer/{id}, listings, the history)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from api.schemas import Dependency, LastResult, ScheduleOut, SeriesDetail, TimerDetail
from core.states import TimerState
from db.models import Dispatcher, Timer
from db.schedules import Series


def schedule_of(series: Series) -> ScheduleOut:
    """The schedule of a stored series, as the API shows it."""
    return ScheduleOut(
        every_seconds=series.every_ms / 1000 if series.every_ms is not None else None,
        cron=series.cron, timezone=series.time_zone, first_at=series.first_at,
        until=series.until_at, count=series.max_count, misfire=series.misfire,
        window_seconds=series.window_ms / 1000 if series.window_ms is not None else None,
    )  # fmt: skip


def series_detail(series: Series) -> SeriesDetail:
    """The API's view of a stored series."""
    upcoming = series.next_occurrence_at
    next_n = None
    if upcoming is not None:
        next_n = series.next_n if series.upcoming_at is None else None
    return SeriesDetail(
        id=series.id, time_left=series.time_left, status=series.state,  # type: ignore[arg-type]
        schedule=schedule_of(series), occurrences_sent=series.occurrences,
        last_occurrence_at=series.last_at, next_occurrence_at=upcoming,
        next_occurrence=next_n, url=series.url, max_attempts=series.max_attempts,
        delivery=series.delivery,  # type: ignore[arg-type]
        payload=series.payload, headers=series.headers,
        timeout_seconds=series.timeout_ms / 1000 if series.timeout_ms is not None else None,
        priority=series.priority, resources=series.resources, request_id=series.request_id,
        tenant=series.tenant, created_at=series.created_at, paused_at=series.paused_at,
        ended_at=series.ended_at,
    )  # fmt: skip


def detail_of(
    timer: Timer, waiting_on: str | None = None,
    deps: list[tuple[uuid.UUID, TimerState]] | None = None,
) -> TimerDetail:  # fmt: skip
    """The API's view of a stored timer."""
    last = None
    if timer.fired_at is not None:
        last = LastResult(at=timer.fired_at, status_code=timer.last_status, error=timer.last_error)
    return TimerDetail(
        id=timer.id, time_left=timer.time_left, status=timer.state, due_at=timer.due_at,
        attempts=timer.attempts, last_result=last, url=timer.url,
        next_attempt_at=timer.run_at if timer.state == "pending" else None,
        max_attempts=timer.max_attempts, delivery=timer.delivery, payload=timer.payload,
        headers=timer.headers,
        timeout_seconds=timer.timeout_ms / 1000 if timer.timeout_ms is not None else None,
        priority=timer.priority, resources=timer.resources, waiting_on=waiting_on,
        request_id=timer.request_id, tenant=timer.tenant, series_id=timer.series_id,
        occurrence=timer.occurrence, deadline_at=timer.deadline_at,
        after=[Dependency(id=i, status=state) for i, state in deps] if deps else None,
    )  # fmt: skip


class DispatcherPublic(BaseModel):
    """One dispatcher as the registry knows it."""

    id: str
    host: str
    pid: int
    state: Literal["alive", "dead", "stopped"] = Field(
        description="alive: heartbeating; stopped: shut down cleanly; dead: went silent."
    )
    started_at: datetime
    heartbeat_age_seconds: float
    in_flight: int
    sent_total: int = Field(description="Webhooks it delivered (2xx).")
    failed_total: int = Field(description="Attempts of it that failed.")


def dispatcher_public(d: Dispatcher, now: datetime) -> DispatcherPublic:
    """A registry row as /dispatchers shows it."""
    state: Literal["alive", "dead", "stopped"] = (
        "alive" if d.alive else "stopped" if d.stopped_at is not None else "dead"
    )
    return DispatcherPublic(
        id=d.id, host=d.host, pid=d.pid, state=state, started_at=d.started_at,
        heartbeat_age_seconds=round(max(0.0, (now - d.heartbeat_at).total_seconds()), 1),
        in_flight=d.in_flight, sent_total=d.sent_total, failed_total=d.failed_total,
    )  # fmt: skip
