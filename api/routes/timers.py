"""``/timer``: the published contract (DESIGN section 6), kept exactly."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Response

from api.deps import BatcherDep, DatabaseDep, SettingsDep
from api.problems import FieldError
from api.schemas import LastResult, TimerCreate, TimerDetail, TimerPublic
from db.database import Database
from db.ids import parse_timer_id
from db.models import IdempotentCreate
from db.settings import Settings

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
    body: TimerCreate,
    batcher: BatcherDep,
    db: DatabaseDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Retrying a request with the same key and body returns the same timer "
            "(for TIMERHOOK_IDEMPOTENCY_HOURS, 48 by default); the same key with another body "
            "is refused (422).",
        ),
    ] = None,
) -> TimerPublic:
    """Creates a timer that POSTs ``{"id": ...}`` to ``url`` once the delay has passed."""
    horizon = settings.horizon_days * 86_400
    if body.delay_seconds > horizon:
        raise FieldError(
            "hours, minutes, seconds",
            f"add up to {body.delay_seconds} s; the longest accepted delay is {horizon} s "
            f"({settings.horizon_days} days)",
        )
    if idempotency_key is None:
        timer = await batcher.create(body.delay_seconds * 1000, body.url)
        response.headers["Location"] = f"/timer/{timer.id}"
        return TimerPublic(id=timer.id, time_left=timer.time_left)
    keyed = await _create_keyed(db, settings, idempotency_key, body)
    if keyed.conflict:
        raise FieldError(
            "Idempotency-Key",
            "was already used with a different request body; use a new key for a new timer",
        )
    found = await db.timers.get(keyed.timer_id)
    if found is None:  # created in this very call, or within the window: it must exist
        raise HTTPException(503, "the timer of this Idempotency-Key is not readable yet")
    if keyed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/timer/{found.id}"
    return TimerPublic(id=found.id, time_left=found.time_left)


async def _create_keyed(
    db: Database, settings: Settings, key: str, body: TimerCreate
) -> IdempotentCreate:
    """The keyed create; the fingerprint is a hash of the validated body with its defaults."""
    return await db.timers.insert_idempotent(
        key=key,
        fingerprint=hashlib.sha256(body.model_dump_json().encode()).hexdigest(),
        delay_ms=body.delay_seconds * 1000,
        url=body.url,
        shards=settings.shards,
    )


@router.get("/{timer_id}", response_model=TimerDetail, responses=_NOT_FOUND)
async def get_timer(timer_id: str, db: DatabaseDep) -> TimerDetail:
    """Seconds left until the timer is due (rounded up; 0 once it has expired), and its state."""
    parsed = parse_timer_id(timer_id)
    timer = await db.timers.get(parsed) if parsed else None
    if timer is None:
        raise HTTPException(404, f"no timer with id {timer_id!r}")
    last = None
    if timer.fired_at is not None:
        last = LastResult(at=timer.fired_at, status_code=timer.last_status, error=timer.last_error)
    return TimerDetail(
        id=timer.id, time_left=timer.time_left, status=timer.state, due_at=timer.due_at,
        attempts=timer.attempts, last_result=last,
    )  # fmt: skip


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
