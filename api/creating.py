"""Creating timers: POST /timer and POST /timer/batch share everything here, from the body's
parsing and the checks against the settings to the keyed create. One path: ``endpoint`` is
POST /timer whichever route serves it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.auth import Principal
from api.deps import AppParts, app_parts
from api.problems import FieldError
from api.schemas import PRIORITY_DEFAULT, TimerCreate, TimerPublic
from core.logs import request_id_var, timer_context
from core.settings import Settings
from db.access import DEFAULT_TENANT
from db.creating import QuotaExceeded
from db.database import Database
from db.dependencies import DependencyRefused
from db.models import DeliveryOptions, IdempotentCreate, QuotaRefusal, Tenant
from db.schedules import SeriesRefused, SeriesSpec

log = logging.getLogger(__name__)


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


def validate_create(
    data: object, settings: Settings, loc: tuple[str, ...] = ("body",)
) -> ParsedCreate:
    """One timer object validated, against the settings too; RequestValidationError (fields
    under ``loc``) when refused, FieldError when a check against the settings refuses it."""
    context: dict[str, Any] = {"settings": settings}
    try:
        body = TimerCreate.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": (*loc, *e["loc"])} for e in errors]) from None
    return ParsedCreate(body, context.get("payload_json"))


def parse_create(raw: bytes, settings: Settings) -> ParsedCreate:
    """A POST /timer body, parsed and validated; RequestValidationError or FieldError when
    refused."""
    return validate_create(json_body(raw), settings)


async def _create_body(request: Request, settings: Settings) -> ParsedCreate:
    """The body of POST /timer: parsed on the event loop when small, in a worker thread when
    large, so that one request never holds the loop for long."""
    raw = await request.body()
    if len(raw) <= INLINE_BODY_BYTES:
        return parse_create(raw, settings)
    return await asyncio.to_thread(parse_create, raw, settings)


async def create(
    parsed: ParsedCreate, principal: Principal, parts: AppParts, idempotency_key: str | None
) -> Response:
    """Creates the timer (or the series) of a validated body for ``principal``, with the
    request's Idempotency-Key; the answer of POST /timer."""
    db, settings, batcher, metrics = parts.db, parts.settings, parts.batcher, parts.metrics
    access = parts.access
    body = parsed.body
    options = delivery_options(
        parsed, settings, request_id=request_id_var.get(), tenant=principal.tenant
    )
    quota = await access.tenant(principal.tenant)
    quota_checked = False
    if quota is not None:
        check_payload_quota(quota, options)
        quota_checked = quota.max_pending is not None or quota.creates_per_minute is not None
    headers: dict[str, str] = {}
    if body.recurring:
        created = await _create_series(
            db, settings, body, options, key=tenant_key(principal, idempotency_key),
            quota=quota_checked, metrics=metrics, headers=headers,
        )  # fmt: skip
        return _answer(created, headers)
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
        headers["Idempotent-Replayed"] = "true"
    else:
        metrics.created_once.inc()
        if log.isEnabledFor(logging.DEBUG):
            _log_created(found.id, found.time_left, options, body.url)
    headers["Location"] = f"/timer/{found.id}"
    return _answer(TimerPublic(id=found.id, time_left=found.time_left), headers)


def _answer(created: TimerPublic, headers: dict[str, str]) -> Response:
    return Response(created.model_dump_json(), media_type="application/json", headers=headers)


async def endpoint(request: Request) -> Response:
    """POST /timer: the one implementation, served by a plain Starlette route placed before
    the routers (``CREATE_ROUTE`` in api/routes/timers.py; FastAPI's routing through every
    route, its dependency resolution and its response model cost more per create than the
    create itself, docs/benchmarks.md) and documented by the APIRoute there, which calls it
    too. Errors go through the app's exception handlers as from any route."""
    parts = await app_parts(request)
    # The caller first: without a valid key, a 401 before a byte of the body is parsed.
    principal = await parts.access.principal(request)
    parsed = await _create_body(request, parts.settings)
    key = idempotency_key(request)
    return await create(parsed, principal, parts, key)


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key header, 1 to IDEMPOTENCY_KEY_MAX characters (a 422
    naming the header otherwise); None without one."""
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
    return key


# The body and the Idempotency-Key header are read by ``endpoint``, so FastAPI does not see
# them: the documented route declares them.
CREATE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TimerCreate"}}},
    },
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Retrying a request with the same key and body returns the same timer "
            "(for TIMERHOOK_IDEMPOTENCY_HOURS, 48 by default); the same key with another body is "
            "refused (422).",
            "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
        }
    ],
}


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
    quota: bool, metrics: Any, headers: dict[str, str],
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
        headers["Idempotent-Replayed"] = "true"
    else:
        metrics.created_recurring.inc()
        log.debug(
            "recurring timer created, first occurrence in %d s", created.time_left,
            extra=timer_context(created.id, request_id=options.request_id, url=body.url),
        )  # fmt: skip
    headers["Location"] = f"/timer/{created.id}"
    return TimerPublic(id=created.id, time_left=created.time_left)


def delivery_options(
    parsed: ParsedCreate,
    settings: Settings,
    *,
    request_id: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> DeliveryOptions:
    """The stored request shape and policy of a create (checked against the settings when it
    was validated, ``TimerCreate.within``); ``request_id``: the create's, stored with the
    timer; ``tenant``: whose it is."""
    body = parsed.body
    timeout_ms = None
    if body.timeout_seconds is not None:
        timeout_ms = max(1, round(body.timeout_seconds * 1000))
    return DeliveryOptions(
        payload=parsed.payload_json,
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
    return await db.creates.insert_idempotent(
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
