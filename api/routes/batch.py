"""``POST /timer/batch``: up to 1,000 timers in one request, all or none.

Each timer is what POST /timer takes and is refused for the same reasons, named by its index
(``timers[3].url``). Parsing and every check run in a worker thread (a thousand timers take
milliseconds of CPU), then one transaction writes them with COPY (db/bulk.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import Principal
from api.creating import (
    check_payload_quota,
    delay_ms_of,
    delivery_options,
    fingerprint,
    json_body,
    tenant_key,
    validate_create,
)
from api.deps import AccessDep, DatabaseDep, MetricsDep, PrincipalDep, SettingsDep
from api.problems import FieldError
from api.schemas import BATCH_MAX, TimerBatchCreated
from core.logs import request_id_var
from core.settings import Settings
from db.creating import QuotaExceeded
from db.models import DeliveryOptions, Tenant

log = logging.getLogger(__name__)

router = APIRouter(prefix="/timer", tags=["timers"])


class _Envelope(BaseModel):
    """The batch's outer shape; each timer is validated on its own, by its index."""

    model_config = ConfigDict(extra="forbid")

    timers: list[Any] = Field(min_length=1, max_length=BATCH_MAX)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch that passed every check: what the store writes, in request order."""

    delays_ms: list[int]
    urls: list[str]
    options: list[DeliveryOptions]
    fingerprint: str


def prepare_batch(
    raw: bytes, settings: Settings, principal: Principal, quota: Tenant | None,
    request_id: str | None, *, keyed: bool = True,
) -> PreparedBatch:  # fmt: skip
    """Parses and checks a whole batch; RequestValidationError naming every refused field
    (``timers[i].field``), or QuotaExceeded for a payload over the tenant's quota.
    ``keyed``: the request has an Idempotency-Key, so the batch's fingerprint is computed
    (a third of the work per timer; without a key it is never read)."""
    try:
        envelope = _Envelope.model_validate(json_body(raw))
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    refused: list[Any] = []
    prepared = PreparedBatch([], [], [], "")
    digest = hashlib.sha256(b"batch")
    for index, item in enumerate(envelope.timers):
        at = f"timers[{index}]"
        try:
            parsed = validate_create(item, settings, loc=("body", at))
            if parsed.body.after:
                raise FieldError("after", "a timer with dependencies is created with POST /timer")
            if parsed.body.recurring:
                raise FieldError(
                    "every" if parsed.body.every is not None else "cron",
                    "a recurring timer is created with POST /timer, one at a time",
                )
            options = delivery_options(
                parsed, settings, request_id=request_id, tenant=principal.tenant
            )
        except RequestValidationError as exc:
            refused.extend(exc.errors())
            continue
        except FieldError as exc:
            refused.append({"type": "value_error", "loc": ("body", at, exc.field),
                            "msg": exc.reason})  # fmt: skip
            continue
        if quota is not None:
            try:
                check_payload_quota(quota, options)
            except QuotaExceeded as exc:
                reason = f"{at}: {exc.refusal.reason}"
                raise QuotaExceeded(replace(exc.refusal, reason=reason)) from None
        prepared.delays_ms.append(delay_ms_of(parsed.body))
        prepared.urls.append(parsed.body.url)
        prepared.options.append(options)
        if keyed:
            digest.update(fingerprint(parsed.body).encode())
    if refused:
        raise RequestValidationError(refused)
    return replace(prepared, fingerprint=digest.hexdigest())


# The body is parsed by prepare_batch, so FastAPI does not see it: the route documents it.
BATCH_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TimerBatch"}}},
    }
}


@router.post(
    "/batch",
    response_model=TimerBatchCreated,
    responses={
        413: {
            "description": "The body is over TIMERHOOK_MAX_BATCH_BODY_BYTES, or a payload "
            "over the tenant's max-payload-bytes quota."
        },
        422: {
            "description": "A timer was refused (its index and field are named), or the "
            "batch is empty or over 1,000 timers; nothing was created."
        },
    },
    openapi_extra=BATCH_BODY_OPENAPI,
)
async def create_batch(
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    principal: PrincipalDep,
    access: AccessDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="As on POST /timer: retrying with the same key and body returns the "
            "same timers; the same key with another body is refused (422).",
        ),
    ] = None,
) -> Response:
    """Creates up to 1,000 timers, each as POST /timer would, all or none; answers their ids
    and time_left in the order given."""
    raw = await request.body()
    quota = await access.tenant(principal.tenant)
    batch = await asyncio.to_thread(
        prepare_batch, raw, settings, principal, quota, request_id_var.get(),
        keyed=idempotency_key is not None,
    )  # fmt: skip
    checked = quota is not None and (
        quota.max_pending is not None or quota.creates_per_minute is not None
    )
    result = await db.creates.insert_batch(
        batch.delays_ms, batch.urls, batch.options, shards=settings.shards,
        key=tenant_key(principal, idempotency_key), fingerprint=batch.fingerprint,
        quota=checked, wake_within_ms=settings.wake_within_ms,
    )  # fmt: skip
    if result.conflict:
        raise FieldError(
            "Idempotency-Key",
            "was already used with a different request body; use a new key for a new batch",
        )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    if not result.replayed:
        metrics.created_once.inc(len(result.timers))
        log.debug("batch of %d timers created", len(result.timers))
    if not result.timers:  # a replay finds what was written; nothing is never written
        raise HTTPException(503, "the timers of this Idempotency-Key are not readable yet")
    body = {"timers": [{"id": str(t.id), "time_left": t.time_left} for t in result.timers]}
    return Response(json.dumps(body), media_type="application/json", headers=headers)
