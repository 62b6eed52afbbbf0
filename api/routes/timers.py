"""``/timer``: the published contract (DESIGN section 6), kept exactly."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from api.auth import Principal
from api.creating import CREATE_OPENAPI, endpoint
from api.deps import DatabaseDep, PrincipalDep, SettingsDep
from api.schemas import SeriesDetail, TimerDetail, TimerPublic
from api.views import detail_of, series_detail
from core.caps import cap_turn, scopes_of
from core.ids import bucket_of, parse_series_id, parse_timer_id
from core.settings import Settings
from core.targets import host_of
from db.database import Database
from db.models import RevocationState, Timer
from db.revocations import REVOKE_WAIT_SECONDS

log = logging.getLogger(__name__)

router = APIRouter(prefix="/timer", tags=["timers"])


_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No timer has this id (or the id is malformed)."}
}


_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field was refused; the problem names it and says why."}
}


@router.post("", response_model=TimerPublic, responses=_REFUSED, openapi_extra=CREATE_OPENAPI)
async def create_timer(request: Request) -> Response:
    """Creates a timer that POSTs ``{"id": ...}`` (plus ``"payload"`` if given) to ``url`` once
    the delay has passed."""
    return await endpoint(request)


class _CreateRoute(Route):
    """The route of ``create_endpoint``: it matches POST only, so another method on /timer
    goes on to the routers (GET lists; others get their 405 with every allowed method)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get("method") != "POST":
            return Match.NONE, {}
        return super().matches(scope)


CREATE_ROUTE = _CreateRoute("/timer", endpoint, methods=["POST"], include_in_schema=False)


@router.get("/{timer_id}", response_model=TimerDetail | SeriesDetail, responses=_NOT_FOUND)
async def get_timer(
    timer_id: str, db: DatabaseDep, principal: PrincipalDep
) -> TimerDetail | SeriesDetail:
    """Seconds left until the timer is due (rounded up; 0 once it has expired), and its state;
    for a recurring timer, until its next occurrence, and the series."""
    series_id = parse_series_id(timer_id)
    if series_id is not None:
        return await _series(db, series_id, principal, timer_id)
    parsed = parse_timer_id(timer_id)
    timer = await db.timers.get(parsed, tenant=principal.scope) if parsed else None
    if timer is None:
        raise HTTPException(404, f"no timer with id {timer_id!r}")
    deps = await db.dependencies.of(timer.id) if timer.has_deps else None
    return detail_of(timer, await _waiting_on(db, timer), deps)


async def _waiting_on(db: Database, timer: Timer) -> str | None:
    """Why a due timer is not out yet: what the planner noted, or else a cap that applies to
    it and binds (core.caps.cap_turn, from what the planner's takes found)."""
    due = timer.state == "pending" and timer.run_at <= timer.read_at
    if timer.waiting_on is not None or not due:
        return timer.waiting_on
    caps = {c.scope: c for c in await db.caps.list()}
    return cap_turn(scopes_of(timer.tenant, host_of(timer.url)), caps, timer.read_at)


async def _series(
    db: Database, series_id: uuid.UUID, principal: Principal, text: str
) -> SeriesDetail:
    found = await db.schedules.get(series_id, tenant=principal.scope)
    if found is None:
        raise HTTPException(404, f"no timer with id {text!r}")
    return series_detail(found)


def _unsettled(states: list[RevocationState], what: str) -> None:
    """A 409 when a revoked row's owner did not answer in time: it may still be sent, so
    this request must not answer 2xx."""
    late = [s.id for s in states if not s.settled]
    if late:
        raise HTTPException(
            409,
            f"{what}: timer {late[0]} is being sent by a dispatcher that did not confirm "
            f"within {REVOKE_WAIT_SECONDS:g} s that it dropped it unsent, so it may still go "
            "out",
        )


_CANCEL_CONFLICT = {
    "inflight": "is being sent right now and can no longer be cancelled",
    "delivered": "was already delivered",
    "failed": "already failed",
    "dead": "is dead (out of attempts); it will not be sent again unless requeued",
}


@router.delete(
    "/{timer_id}",
    status_code=204,
    responses={
        **_NOT_FOUND,
        409: {"description": "The timer is being sent, or was delivered or failed already."},
    },
)
async def cancel_timer(timer_id: str, db: DatabaseDep, principal: PrincipalDep) -> Response:
    """Cancels a pending timer: it will never fire. Idempotent: cancelling again answers 204.
    A recurring timer's series ends: no occurrence is sent any more (one being sent right now
    finishes)."""
    series_id = parse_series_id(timer_id)
    if series_id is not None:
        ended = await db.schedules.cancel(series_id, tenant=principal.scope)
        if ended is None:
            raise HTTPException(404, f"no timer with id {timer_id!r}")
        if ended.cancelled:
            log.info("recurring timer %s cancelled", timer_id, extra={"timer_id": timer_id})
        # Occurrences claimed ahead of their instant are dropped by their dispatchers; one
        # whose request went out already is done (never retried): after the 204, none goes.
        revoked = await db.schedules.revoke(series_id, reason=None)
        _unsettled(await db.revocations.settle(revoked), f"recurring timer {timer_id} is cancelled")
        return Response(status_code=204)
    parsed = parse_timer_id(timer_id)
    result = await db.revocations.cancel(parsed, tenant=principal.scope) if parsed else None
    if result is None:
        raise HTTPException(404, f"no timer with id {timer_id!r}")
    if result.revoke_token is not None and parsed is not None:
        # Claimed ahead of its instant: cancelled if its dispatcher drops it unsent.
        [state] = await db.revocations.settle([(parsed, bucket_of(parsed), result.revoke_token)])
        if state.settled and not state.sent:
            log.info("timer %s cancelled before it was sent", timer_id,
                     extra={"timer_id": str(parsed)})  # fmt: skip
            return Response(status_code=204)
        _unsettled([state], f"timer {timer_id} was not cancelled")
    if result.found in _CANCEL_CONFLICT:
        raise HTTPException(409, f"timer {timer_id} {_CANCEL_CONFLICT[result.found]}")
    if result.cancelled:
        log.info("timer %s cancelled", timer_id, extra={"timer_id": str(parsed)})
    return Response(status_code=204)


_SERIES_ONLY: dict[int | str, dict[str, Any]] = {
    404: {"description": "No timer has this id."},
    409: {
        "description": "The series has ended or was cancelled, or the id is a one-shot "
        "timer's (only recurring timers pause and resume)."
    },
}


@router.post("/{timer_id}/pause", response_model=SeriesDetail, responses=_SERIES_ONLY)
async def pause_series(timer_id: str, db: DatabaseDep, principal: PrincipalDep) -> SeriesDetail:
    """Pauses a recurring timer: no occurrence is sent until it is resumed, and the ones whose
    times fall in the pause are skipped (not sent later). Pausing a paused one changes
    nothing."""
    return await _pause_or_resume(db, principal, timer_id, resume=False)


@router.post("/{timer_id}/resume", response_model=SeriesDetail, responses=_SERIES_ONLY)
async def resume_series(
    timer_id: str, db: DatabaseDep, principal: PrincipalDep, settings: SettingsDep
) -> SeriesDetail:
    """Resumes a paused recurring timer on its grid: the next occurrence is the schedule's
    first time after now, with its own number. Resuming an active one changes nothing."""
    return await _pause_or_resume(db, principal, timer_id, resume=True, settings=settings)


async def _pause_or_resume(
    db: Database, principal: Principal, timer_id: str, *, resume: bool,
    settings: Settings | None = None,
) -> SeriesDetail:  # fmt: skip
    series_id = parse_series_id(timer_id)
    if series_id is None:
        once = parse_timer_id(timer_id)
        if once is not None and await db.timers.get(once, tenant=principal.scope) is not None:
            raise HTTPException(409, f"timer {timer_id} is a one-shot timer, not a recurring one")
    state = None
    if series_id is not None and settings is not None:
        state = await db.schedules.resume(
            series_id, tenant=principal.scope, shards=settings.shards,
            wake_ms=settings.wake_within_ms,
        )  # fmt: skip
    elif series_id is not None:
        state = await db.schedules.pause(series_id, tenant=principal.scope)
    if series_id is None or state is None:
        raise HTTPException(404, f"no recurring timer with id {timer_id!r}")
    if state in ("ended", "cancelled"):
        raise HTTPException(409, f"recurring timer {timer_id} has {state}")
    if state == "paused":
        # as a DELETE does: after the answer, no occurrence goes out
        revoked = await db.schedules.revoke(series_id, reason="skipped: the series was paused")
        _unsettled(await db.revocations.settle(revoked), f"recurring timer {timer_id} is paused")
    log.info("recurring timer %s %s", timer_id, "resumed" if resume else "paused",
             extra={"timer_id": timer_id})  # fmt: skip
    return await _series(db, series_id, principal, timer_id)
