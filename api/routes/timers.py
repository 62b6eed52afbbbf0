"""``/timer``: the published contract (DESIGN section 6), kept exactly."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from api.deps import BatcherDep, DatabaseDep, SettingsDep
from api.problems import FieldError
from api.schemas import TimerCreate, TimerPublic
from db.ids import parse_timer_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/timer", tags=["timers"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No timer has this id (or the id is malformed)."}
}
_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field was refused; the problem names it and says why."}
}


@router.post("", response_model=TimerPublic, responses=_REFUSED)
async def create_timer(
    body: TimerCreate, batcher: BatcherDep, settings: SettingsDep, response: Response
) -> TimerPublic:
    """Creates a timer that POSTs ``{"id": ...}`` to ``url`` once the delay has passed."""
    horizon = settings.horizon_days * 86_400
    if body.delay_seconds > horizon:
        raise FieldError(
            "hours, minutes, seconds",
            f"add up to {body.delay_seconds} s; the longest accepted delay is {horizon} s "
            f"({settings.horizon_days} days)",
        )
    timer = await batcher.create(body.delay_seconds * 1000, body.url)
    response.headers["Location"] = f"/timer/{timer.id}"
    return TimerPublic(id=timer.id, time_left=timer.time_left)


@router.get("/{timer_id}", response_model=TimerPublic, responses=_NOT_FOUND)
async def get_timer(timer_id: str, db: DatabaseDep) -> TimerPublic:
    """Seconds left until the timer is due, rounded up; 0 once it has expired."""
    parsed = parse_timer_id(timer_id)
    timer = await db.timers.get(parsed) if parsed else None
    if timer is None:
        raise HTTPException(404, f"no timer with id {timer_id!r}")
    return TimerPublic(id=timer.id, time_left=timer.time_left)


_CANCEL_CONFLICT = {
    "inflight": "is being sent right now and can no longer be cancelled",
    "delivered": "was already delivered",
    "failed": "already failed",
}


@router.delete(
    "/{timer_id}",
    status_code=204,
    responses={
        **_NOT_FOUND,
        409: {"description": "The timer is being sent, or was delivered or failed already."},
    },
)
async def cancel_timer(timer_id: str, db: DatabaseDep) -> Response:
    """Cancels a pending timer: it will never fire. Idempotent: cancelling again answers 204."""
    parsed = parse_timer_id(timer_id)
    result = await db.timers.cancel(parsed) if parsed else None
    if result is None:
        raise HTTPException(404, f"no timer with id {timer_id!r}")
    if result.found in _CANCEL_CONFLICT:
        raise HTTPException(409, f"timer {timer_id} {_CANCEL_CONFLICT[result.found]}")
    if result.cancelled:
        log.info("timer %s cancelled", timer_id)
    return Response(status_code=204)
