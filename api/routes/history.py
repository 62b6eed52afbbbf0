"""Listing timers, their attempts, and requeueing dead letters (beside the contract's /timer)."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from api.deps import AdminDep, DatabaseDep, PrincipalDep
from api.problems import FieldError
from api.schemas import (
    AttemptList,
    AttemptPublic,
    LastResult,
    RequeueDone,
    RequeueRequest,
    SeriesSummary,
    TimerList,
    TimerSummary,
)
from api.views import schedule_of
from core.ids import parse_series_id, parse_timer_id
from core.states import TIMER_STATES, TimerState, parse_states
from db.access import valid_tenant
from db.database import Database
from db.models import RequeueFilter
from db.models import TimerSummary as StoredSummary
from db.schedules import Series

log = logging.getLogger(__name__)

router = APIRouter(prefix="/timer", tags=["history"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No timer has this id (or the id is malformed)."}
}
MAX_PAGE = 1000


def _states(values: list[str] | None) -> list[TimerState]:
    """?status=dead,failed or ?status=dead&status=failed; none given: every state."""
    try:
        return parse_states(values) if values else list(TIMER_STATES)
    except ValueError as exc:
        raise FieldError("status", str(exc)) from None


def _series_summary(row: Series) -> SeriesSummary:
    return SeriesSummary(
        id=row.id, status=row.state,  # type: ignore[arg-type]
        url=row.url, schedule=schedule_of(row), occurrences_sent=row.occurrences,
        next_occurrence_at=row.next_occurrence_at, priority=row.priority, tenant=row.tenant,
    )  # fmt: skip


def _summary(row: StoredSummary) -> TimerSummary:
    last = None
    if row.fired_at is not None:
        last = LastResult(at=row.fired_at, status_code=row.last_status, error=row.last_error)
    return TimerSummary(
        id=row.id, status=row.state, due_at=row.due_at, url=row.url, attempts=row.attempts,
        max_attempts=row.max_attempts, finished_at=row.finished_at, last_result=last,
        priority=row.priority, resources=row.resources, tenant=row.tenant,
        series_id=row.series_id, occurrence=row.occurrence,
    )  # fmt: skip


@router.get("", response_model=TimerList)
async def list_timers(
    db: DatabaseDep,
    principal: PrincipalDep,
    status: Annotated[
        list[str] | None,
        Query(description="States to list, comma separated or repeated; default all. "
              "Dead letters: status=dead,failed."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page.")
    ] = None,
    tenant: Annotated[
        str | None,
        Query(description="Only this tenant's timers (admin keys; a tenant key always lists "
              "only its own)."),
    ] = None,
    kind: Annotated[
        Literal["once", "recurring"] | None,
        Query(description="once: one-shot timers only; recurring: the recurring timers "
              "(series) themselves; default: every timer row, one-shots and the occurrences "
              "of series."),
    ] = None,
) -> TimerList:  # fmt: skip
    """Timers in due order (id order), filtered by state, a page at a time (keyset pagination:
    pages stay correct and cheap however deep they go)."""
    if tenant is not None and not valid_tenant(tenant):
        raise FieldError("tenant", "is not a tenant name (1 to 64 of letters, digits, . _ -)")
    if tenant is not None and not principal.admin and tenant != principal.tenant:
        raise HTTPException(403, "a tenant key lists only its own tenant's timers")
    scope = principal.scope or tenant
    if kind == "recurring":
        return await _list_series(db, status, limit, cursor, scope)
    states = _states(status)
    after = None
    if cursor is not None:
        after = parse_timer_id(cursor)
        if after is None:
            raise FieldError("cursor", "is not a next_cursor this API returned")
    rows = await db.timers.listing(
        states=states, limit=limit, after=after, tenant=scope, once_only=kind == "once"
    )
    next_cursor = str(rows[-1].id) if len(rows) == limit else None
    return TimerList(items=[_summary(r) for r in rows], next_cursor=next_cursor)


async def _list_series(
    db: Database, status: list[str] | None, limit: int, cursor: str | None, tenant: str | None
) -> TimerList:
    if status:
        raise FieldError("status", "filters timers by their state; ?kind=recurring lists series")
    after = None
    if cursor is not None:
        after = parse_series_id(cursor)
        if after is None:
            raise FieldError("cursor", "is not a next_cursor this API returned")
    rows = await db.schedules.listing(tenant=tenant, after=after, limit=limit)
    items: list[TimerSummary | SeriesSummary] = [_series_summary(r) for r in rows]
    next_cursor = str(rows[-1].id) if len(rows) == limit else None
    return TimerList(items=items, next_cursor=next_cursor)


@router.get("/{timer_id}/attempts", response_model=AttemptList, responses=_NOT_FOUND)
async def list_attempts(timer_id: str, db: DatabaseDep, principal: PrincipalDep) -> AttemptList:
    """Every attempt to send the timer, oldest first."""
    parsed = parse_timer_id(timer_id)
    timer = await db.timers.get(parsed, tenant=principal.scope) if parsed else None
    if parsed is None or timer is None:
        raise HTTPException(404, f"no timer with id {timer_id!r}")
    attempts = await db.timers.attempts(parsed)
    return AttemptList(
        id=parsed,
        attempts=[
            AttemptPublic(
                attempt=a.attempt,
                at=a.at,
                status_code=a.status,
                latency_ms=a.latency_ms,
                error=a.error,
                dispatcher=a.dispatcher,
            )
            for a in attempts
        ],
    )


@router.post(
    "/{timer_id}/requeue",
    response_model=RequeueDone,
    responses={**_NOT_FOUND, 409: {"description": "The timer is not dead or failed."}},
)
async def requeue_timer(timer_id: str, db: DatabaseDep, principal: PrincipalDep) -> RequeueDone:
    """Puts one dead or failed timer back: due now, with a fresh round of max_attempts."""
    parsed = parse_timer_id(timer_id)
    result = await db.requeues.requeue(parsed, tenant=principal.scope) if parsed else None
    if result is None:
        raise HTTPException(404, f"no timer with id {timer_id!r}")
    if not result.requeued:
        raise HTTPException(
            409, f"timer {timer_id} is {result.found}; only dead or failed timers are requeued"
        )
    log.info("timer %s requeued", timer_id, extra={"timer_id": str(parsed)})
    return RequeueDone(requeued=1)


@router.post("/requeue", response_model=RequeueDone)
async def requeue_timers(body: RequeueRequest, db: DatabaseDep, _admin: AdminDep) -> RequeueDone:
    """Puts back every dead letter that matches the filter ({} takes them all); admin keys
    only."""
    which = RequeueFilter(
        states=tuple(body.status),
        url_prefix=body.url_prefix,
        finished_after=body.finished_after,
        finished_before=body.finished_before,
    )
    count = await db.requeues.requeue_matching(which, limit=body.limit)
    return RequeueDone(requeued=count)
