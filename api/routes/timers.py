"""``/timer``: the published contract (DESIGN section 6), kept exactly."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.routing import Match, Route
from starlette.types import Scope

from api.auth import Access, Principal
from api.batcher import CreateBatcher
from api.deps import DatabaseDep, PrincipalDep, SettingsDep
from api.observe import ProcessMetrics
from api.problems import FieldError
from api.schemas import (
    PRIORITY_DEFAULT,
    Dependency,
    LastResult,
    ScheduleOut,
    SeriesDetail,
    TimerCreate,
    TimerDetail,
    TimerPublic,
)
from db.access import DEFAULT_TENANT
from db.caps import GLOBAL, HOST, TENANT
from db.database import Database
from db.ids import bucket_of, parse_series_id, parse_timer_id
from db.logs import request_id_var, timer_context
from db.models import (
    DeliveryOptions,
    IdempotentCreate,
    QuotaRefusal,
    RevocationState,
    Tenant,
    Timer,
)
from db.recurrence import ScheduleError, cron_trigger
from db.schedules import Series, SeriesRefused, SeriesSpec
from db.settings import Settings
from db.states import TimerState
from db.targets import host_of, literal_refused
from db.timers import REVOKE_WAIT_SECONDS, DependencyRefused, QuotaExceeded

log = logging.getLogger(__name__)

router = APIRouter(prefix="/timer", tags=["timers"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No timer has this id (or the id is malformed)."}
}
_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field was refused; the problem names it and says why."}
}


# Bodies up to this size are parsed on the event loop; larger ones (up to the body limit) in a
# worker thread, so that no request holds the loop for long (docs/operations.md, "Failure
# modes"): parsing is about 0.3 microseconds per byte at worst.
INLINE_BODY_BYTES = 16_384
IDEMPOTENCY_KEY_MAX = 255


@dataclass(frozen=True, slots=True)
class ParsedCreate:
    """A validated create body and its payload as compact JSON (as stored and sent)."""

    body: TimerCreate
    payload_json: str | None


def json_body(raw: bytes) -> Any:
    """A request body parsed as JSON; RequestValidationError when it is not JSON."""
    if not raw.strip():
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
              "ctx": {"error": exc.msg}}]
        ) from None  # fmt: skip
    except RecursionError:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body",), "msg": "is nested too deeply to parse"}]
        ) from None
    except UnicodeDecodeError:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error",
              "ctx": {"error": "the body is not UTF-8"}}]
        ) from None  # fmt: skip


def validate_create(data: object, loc: tuple[str, ...] = ("body",)) -> ParsedCreate:
    """One timer object validated; RequestValidationError (fields under ``loc``) when refused."""
    context: dict[str, Any] = {}
    try:
        body = TimerCreate.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": (*loc, *e["loc"])} for e in errors]) from None
    return ParsedCreate(body, context.get("payload_json"))


def parse_create(raw: bytes) -> ParsedCreate:
    """A POST /timer body, parsed and validated; RequestValidationError when refused."""
    return validate_create(json_body(raw))


async def _create_body(request: Request) -> ParsedCreate:
    """The body of POST /timer: parsed on the event loop when small, in a worker thread when
    large, so that one request never holds the loop for long."""
    raw = await request.body()
    if len(raw) <= INLINE_BODY_BYTES:
        return parse_create(raw)
    return await asyncio.to_thread(parse_create, raw)


CreateBody = Annotated[ParsedCreate, Depends(_create_body)]

# The body is parsed by _create_body, so FastAPI does not see it: the route documents it.
CREATE_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TimerCreate"}}},
    }
}


@dataclass(frozen=True, slots=True)
class _CreateRequest:
    """What POST /timer needs, gathered by one dependency: FastAPI's resolution costs a few
    microseconds per dependency, and a create is the hottest request there is."""

    parsed: ParsedCreate
    principal: Principal
    db: Database
    settings: Settings
    batcher: CreateBatcher
    metrics: ProcessMetrics
    access: Access


async def _create_request(request: Request) -> _CreateRequest:
    parsed = await _create_body(request)  # the body first: a refused body is a 422
    state = request.app.state
    access: Access = state.access
    principal = await access.principal(request)
    return _CreateRequest(
        parsed, principal, state.db, state.settings, state.batcher, state.metrics, access
    )


@router.post("", response_model=TimerPublic, responses=_REFUSED, openapi_extra=CREATE_BODY_OPENAPI)
async def create_timer(
    create: Annotated[_CreateRequest, Depends(_create_request)],
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=IDEMPOTENCY_KEY_MAX,
            description="Retrying a request with the same key and body returns the same timer "
            "(for TIMERHOOK_IDEMPOTENCY_HOURS, 48 by default); the same key with another body "
            "is refused (422).",
        ),
    ] = None,
) -> TimerPublic | Response:
    """Creates a timer that POSTs ``{"id": ...}`` (plus ``"payload"`` if given) to ``url`` once
    the delay has passed."""
    parsed, principal, db, settings = create.parsed, create.principal, create.db, create.settings
    batcher, metrics, access = create.batcher, create.metrics, create.access
    body = parsed.body
    check_when(body, settings)
    options = delivery_options(
        parsed, settings, request_id=request_id_var.get(), tenant=principal.tenant
    )
    quota = await access.tenant(principal.tenant)
    quota_checked = False
    if quota is not None:
        check_payload_quota(quota, options)
        quota_checked = quota.max_pending is not None or quota.creates_per_minute is not None
    if body.recurring:
        return await _create_series(
            db, settings, body, options, key=tenant_key(principal, idempotency_key),
            quota=quota_checked, metrics=metrics, response=response,
        )  # fmt: skip
    if idempotency_key is None and not quota_checked and not body.after:
        timer = await batcher.create(delay_ms_of(body), body.url, options)
        metrics.created_once.inc()
        if log.isEnabledFor(logging.DEBUG):
            _log_created(timer.id, timer.time_left, options, body.url)
        # The answer is written here: FastAPI would validate and serialise the model again
        # (response_model), which cost more than the rest of a create's answer.
        return Response(
            f'{{"id":"{timer.id}","time_left":{timer.time_left}}}',
            media_type="application/json", headers={"Location": f"/timer/{timer.id}"},
        )  # fmt: skip
    try:
        keyed = await _create_keyed(
            db, settings, tenant_key(principal, idempotency_key), body, options,
            quota=quota_checked,
        )  # fmt: skip
    except DependencyRefused as exc:
        raise FieldError("after", str(exc)) from None
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
    else:
        metrics.created_once.inc()
        if log.isEnabledFor(logging.DEBUG):
            _log_created(found.id, found.time_left, options, body.url)
    response.headers["Location"] = f"/timer/{found.id}"
    return TimerPublic(id=found.id, time_left=found.time_left)


async def create_endpoint(request: Request) -> Response:
    """POST /timer as the app serves it: a plain Starlette route, placed before the routers,
    that gathers what ``create_timer`` takes and calls it. FastAPI's routing through every
    route, its dependency resolution and its response model cost more per create than the
    create itself (docs/benchmarks.md); the APIRoute above stays as the documented operation
    (OpenAPI) and the one implementation. Errors go through the app's exception handlers
    as from any route."""
    create = await _create_request(request)
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        short = not key
        raise RequestValidationError([{
            "type": "string_too_short" if short else "string_too_long",
            "loc": ("header", "idempotency-key"),
            "msg": "String should have at least 1 character" if short
            else f"String should have at most {IDEMPOTENCY_KEY_MAX} characters",
            "input": key,
        }])  # fmt: skip
    response = Response()
    answer = await create_timer(create, response, key)
    if isinstance(answer, Response):
        return answer
    headers = {k: v for k, v in response.headers.items() if k in _CREATE_HEADERS}
    return Response(answer.model_dump_json(), media_type="application/json", headers=headers)


_CREATE_HEADERS = frozenset({"location", "idempotent-replayed"})


class _CreateRoute(Route):
    """The route of ``create_endpoint``: it matches POST only, so another method on /timer
    goes on to the routers (GET lists; others get their 405 with every allowed method)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get("method") != "POST":
            return Match.NONE, {}
        return super().matches(scope)


CREATE_ROUTE = _CreateRoute("/timer", create_endpoint, methods=["POST"], include_in_schema=False)


def _log_created(timer_id: object, time_left: int, options: DeliveryOptions, url: str) -> None:
    log.debug(
        "timer created, due in %d s", time_left,
        extra=timer_context(timer_id, request_id=options.request_id, url=url),
    )  # fmt: skip


def tenant_key(principal: Principal, key: str | None) -> str | None:
    """An Idempotency-Key as stored: each tenant's keys are its own (a newline cannot be in a
    header, so no tenant's key can collide with another's)."""
    if key is None or principal.tenant == DEFAULT_TENANT:
        return key
    return f"{principal.tenant}\n{key}"


def check_payload_quota(tenant: Tenant, options: DeliveryOptions) -> None:
    """413 when the payload is over the tenant's max-payload-bytes quota."""
    if tenant.max_payload_bytes is None or options.payload is None:
        return
    size = len(options.payload.encode())
    if size > tenant.max_payload_bytes:
        raise QuotaExceeded(
            QuotaRefusal(
                "max_payload_bytes",
                f"the payload is {size} bytes as compact JSON; tenant {tenant.name}'s "
                f"max-payload-bytes quota allows {tenant.max_payload_bytes}",
                0,
            )
        )


def check_when(body: TimerCreate, settings: Settings, *, now: datetime | None = None) -> None:
    """Refuses what no schedule can mean: both an absolute time and a delay, a time in the
    past or past the horizon (the longest accepted delay), recurring fields on a one-shot
    timer, both every and cron, a cron or time zone that cannot be read. The API's clock
    only judges the input here; due times come from the database clock."""
    horizon = settings.horizon_days * 86_400
    delays = [name for name in ("hours", "minutes", "seconds") if name in body.model_fields_set]
    if body.at is not None:
        if delays:
            raise FieldError(
                ", ".join(["at", *delays]),
                "give either an absolute time (at) or a delay (hours, minutes, seconds), not both",
            )
        now = now or datetime.now(UTC)
        if body.at < now:
            raise FieldError(
                "at", f"is in the past ({body.at.isoformat()}; it is {now.isoformat()} now)"
            )
        if (body.at - now).total_seconds() > horizon:
            raise FieldError(
                "at",
                f"is more than {horizon} s ahead; the longest accepted delay is "
                f"{settings.horizon_days} days",
            )
    elif body.delay_seconds > horizon:
        raise FieldError(
            "hours, minutes, seconds",
            f"add up to {body.delay_seconds} s; the longest accepted delay is {horizon} s "
            f"({settings.horizon_days} days)",
        )
    if body.every is not None and body.cron is not None:
        raise FieldError("every, cron", "give one of them: a period (every) or a cron, not both")
    if body.after and body.recurring:
        raise FieldError("after", "a recurring timer cannot wait for other timers")
    if not body.recurring:
        for name in ("timezone", "until", "count", "misfire"):
            if getattr(body, name) is not None:
                raise FieldError(name, "applies only to a recurring timer (every or cron)")
        return
    if body.timezone is not None and body.cron is None:
        raise FieldError("timezone", "applies only to cron (an every series has no time zone)")
    if body.cron is not None:
        try:
            cron_trigger(body.cron, body.timezone or "UTC")
        except ScheduleError as exc:
            raise FieldError(exc.field, exc.reason) from None
    if body.until is not None and body.until < (now or datetime.now(UTC)):
        raise FieldError("until", f"is in the past ({body.until.isoformat()})")


def delay_ms_of(body: TimerCreate) -> int:
    """The delay of a create in milliseconds; for an absolute ``at``, as this process's clock
    sees it (only to size what is made ahead: the due time is ``at`` itself)."""
    if body.at is None:
        return body.delay_seconds * 1000
    return max(0, math.ceil((body.at - datetime.now(UTC)).total_seconds() * 1000))


def at_ms_of(body: TimerCreate) -> int | None:
    """An absolute ``at`` in Unix milliseconds, rounded up (never early); None for a delay."""
    return None if body.at is None else math.ceil(body.at.timestamp() * 1000)


async def _create_series(
    db: Database, settings: Settings, body: TimerCreate, options: DeliveryOptions, *,
    key: str | None,
    quota: bool, metrics: Any, response: Response,
) -> TimerPublic:  # fmt: skip
    """POST /timer with every or cron: a series; its id and the seconds to its first
    occurrence."""
    spec = SeriesSpec(
        delay_ms=body.delay_seconds * 1000, at_ms=at_ms_of(body), every_ms=body.every_ms,
        cron=body.cron, timezone=body.timezone or "UTC", until=body.until, count=body.count,
        misfire=body.misfire or "coalesce",
    )  # fmt: skip
    try:
        created = await db.schedules.create(
            spec, url=body.url, options=replace(options, at_ms=None), key=key,
            fingerprint=fingerprint(body), quota=quota, shards=settings.shards,
            wake_ms=settings.wake_within_ms,
        )  # fmt: skip
    except SeriesRefused as exc:
        raise FieldError(exc.error.field, exc.error.reason) from None
    if created.conflict:
        raise FieldError(
            "Idempotency-Key",
            "was already used with a different request body; use a new key for a new timer",
        )
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        metrics.created_recurring.inc()
        log.debug(
            "recurring timer created, first occurrence in %d s", created.time_left,
            extra=timer_context(created.id, request_id=options.request_id, url=body.url),
        )  # fmt: skip
    response.headers["Location"] = f"/timer/{created.id}"
    return TimerPublic(id=created.id, time_left=created.time_left)


def delivery_options(
    parsed: ParsedCreate,
    settings: Settings,
    *,
    request_id: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> DeliveryOptions:
    """The stored request shape and policy of a create, checked against the settings' limits;
    ``request_id``: the create's, stored with the timer; ``tenant``: whose it is."""
    body = parsed.body
    if not settings.allow_private_targets:
        refused = literal_refused(body.url, settings.allowed_network_list)
        if refused is not None:
            raise FieldError(
                "url",
                f"{refused}, and private targets are not allowed "
                "(TIMERHOOK_ALLOW_PRIVATE_TARGETS=1 or TIMERHOOK_ALLOWED_NETWORKS allows them)",
            )
    payload = parsed.payload_json
    if payload is not None:
        size = len(payload.encode())
        if size > settings.max_payload_bytes:
            raise FieldError(
                "payload",
                f"is {size} bytes as compact JSON; at most {settings.max_payload_bytes} allowed",
            )
    timeout_ms = None
    if body.timeout_seconds is not None:
        if body.timeout_seconds > settings.max_timeout_seconds:
            raise FieldError(
                "timeout_seconds", f"must be at most {settings.max_timeout_seconds:g} seconds"
            )
        timeout_ms = max(1, round(body.timeout_seconds * 1000))
    return DeliveryOptions(
        payload=payload,
        headers=json.dumps(body.headers) if body.headers else None,
        timeout_ms=timeout_ms,
        max_attempts=body.max_attempts or settings.max_attempts,
        delivery=body.delivery,
        priority=body.priority,
        resources=tuple(body.resources) if body.resources else None,
        request_id=request_id,
        tenant=tenant,
        at_ms=at_ms_of(body),
        window_ms=body.window_ms,
    )


# Fields added after keys were first fingerprinted: left out while at their defaults, so a key
# stored before they existed still matches the same request.
_LATER_FIELDS = {
    "priority": PRIORITY_DEFAULT, "resources": None, "at": None, "every": None, "cron": None,
    "timezone": None, "until": None, "count": None, "misfire": None, "window": None,
    "after": None,
}  # fmt: skip


def fingerprint(body: TimerCreate) -> str:
    """A hash of the validated body with its defaults: equal bodies, equal fingerprints."""
    dump = body.model_dump(mode="json")
    for name, default in _LATER_FIELDS.items():
        if dump.get(name) == default:
            dump.pop(name, None)
    return hashlib.sha256(
        json.dumps(dump, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


async def _create_keyed(
    db: Database,
    settings: Settings,
    key: str | None,
    body: TimerCreate,
    options: DeliveryOptions,
    *,
    quota: bool,
) -> IdempotentCreate:
    """The keyed create (or, ``key`` None, a plain one of a tenant with quotas); the
    fingerprint is a hash of the validated body with its defaults. ``quota``: the tenant's
    quotas are checked in the create's transaction."""
    return await db.timers.insert_idempotent(
        quota=quota,
        wake_within_ms=settings.wake_within_ms,
        key=key,
        fingerprint=fingerprint(body),
        delay_ms=delay_ms_of(body),
        url=body.url,
        shards=settings.shards,
        options=options,
        after=[uuid.UUID(i) for i in body.after or ()],
    )


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
    deps = await db.timers.dependencies(timer.id) if timer.has_deps else None
    return detail_of(timer, await _waiting_on(db, timer), deps)


async def _waiting_on(db: Database, timer: Timer) -> str | None:
    """Why a due timer is not out yet: what the planner noted, or else a binding cap that
    applies to it (the global one, its tenant's or its host's)."""
    due = timer.time_left == 0 and timer.run_at <= datetime.now(UTC)  # a display, not a decision
    if timer.waiting_on is not None or timer.state != "pending" or not due:
        return timer.waiting_on
    applies = {GLOBAL, TENANT + timer.tenant, HOST + host_of(timer.url)}
    for cap in await db.caps.list():
        if cap.scope in applies and cap.per_minute and cap.tokens < 1:
            return f"{cap.scope} cap: {cap.per_minute}/min, no token left now"
    return None


async def _series(
    db: Database, series_id: uuid.UUID, principal: Principal, text: str
) -> SeriesDetail:
    found = await db.schedules.get(series_id, tenant=principal.scope)
    if found is None:
        raise HTTPException(404, f"no timer with id {text!r}")
    return series_detail(found)


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
        _unsettled(await db.timers.settle(revoked), f"recurring timer {timer_id} is cancelled")
        return Response(status_code=204)
    parsed = parse_timer_id(timer_id)
    result = await db.timers.cancel(parsed, tenant=principal.scope) if parsed else None
    if result is None:
        raise HTTPException(404, f"no timer with id {timer_id!r}")
    if result.revoke_token is not None and parsed is not None:
        # Claimed ahead of its instant: cancelled if its dispatcher drops it unsent.
        [state] = await db.timers.settle([(parsed, bucket_of(parsed), result.revoke_token)])
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
        _unsettled(await db.timers.settle(revoked), f"recurring timer {timer_id} is paused")
    log.info("recurring timer %s %s", timer_id, "resumed" if resume else "paused",
             extra={"timer_id": timer_id})  # fmt: skip
    return await _series(db, series_id, principal, timer_id)
