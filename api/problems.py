"""RFC 9457 problem details for every error the API returns, validation errors included."""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from api.batcher import Overloaded
from db.connection import DatabaseUnavailable
from db.creating import QuotaExceeded

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class FieldError(Exception):
    """A request was well-formed but a field's value is refused; answered with 422."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def problem(
    status: int,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response; ``errors`` lists {field, reason} for validation failures."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_of(loc: tuple[int | str, ...]) -> str:
    """("body", "hours") -> "hours"; ("path", "timer_id") -> "timer_id"; a JSON error -> "body"."""
    parts = [str(p) for p in loc[1:] if not isinstance(p, int)] if len(loc) > 1 else []
    return ".".join(parts) or str(loc[0]) if loc else "body"


def _reason(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    if kind == "missing" and tuple(error.get("loc", ())) == ("body",):
        return "a JSON object body is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "int_type":
        return "must be a whole number (no strings, floats, booleans or nulls)"
    message = str(error.get("msg", "is invalid"))
    return message.removeprefix("Value error, ")


# What sets the body limit of every route but the batch's (api/limits.py).
BODY_SETTING = "TIMERHOOK_MAX_BODY_BYTES; by default TIMERHOOK_MAX_PAYLOAD_BYTES plus 32 KiB"


def too_large(limit: int, setting: str) -> JSONResponse:
    """The 413, as problem+json naming the limit and the setting."""
    return problem(
        413,
        f"the request body is larger than {limit} bytes ({setting})",
        errors=[{"field": "body", "reason": f"is larger than {limit} bytes"}],
        headers={"Connection": "close"},
    )


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as a list of {field, reason}, in the order they were found."""
    return [{"field": _field_of(tuple(e["loc"])), "reason": _reason(e)} for e in exc.errors()]


class FieldProblem(BaseModel):
    """One refused field."""

    field: str
    reason: str


class Problem(BaseModel):
    """An RFC 9457 problem: every error the API returns."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = Field(
        default=None, description="For refused input: each field and why."
    )


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_ANY_OPERATION = {
    413: "The request body is larger than TIMERHOOK_MAX_BODY_BYTES.",
    422: "A field was refused (or the body is not JSON); the problem names it and says why.",
    503: "The database is unavailable, or too many creates are waiting: retry after the "
    "Retry-After seconds.",
}
_NO_INPUT = {"/healthz"}
# Never behind an API key.
_OPEN = {"/healthz", "/readyz"}
# Admin keys only, once keys are in use.
_ADMIN = {("post", "/timer/requeue"), ("get", "/metrics"), ("get", "/dispatchers"),
          ("get", "/dashboard/state")}  # fmt: skip


def openapi_components() -> dict[str, Any]:
    """Problem and FieldProblem as OpenAPI component schemas."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    found: dict[str, Any] = schema.pop("$defs", {})
    found["Problem"] = schema
    return found


def document_errors(operation: dict[str, Any], *, method: str, path: str) -> None:
    """Every error response of an operation documented as problem+json, and the ones any
    operation may answer added."""
    responses = operation.setdefault("responses", {})
    if path not in _NO_INPUT:
        for status, description in _ANY_OPERATION.items():
            responses.setdefault(str(status), {"description": description})
    if path not in _OPEN:
        responses.setdefault(
            "401",
            {"description": "An API key is required and was not sent, or is unknown or revoked "
             "(see TIMERHOOK_AUTH)."},
        )  # fmt: skip
    if (method, path) in _ADMIN:
        responses.setdefault("403", {"description": "A tenant key on an admin route."})
    if (method, path) == ("post", "/timer"):
        responses.setdefault(
            "429",
            {"description": "A tenant quota (max_pending, creates_per_minute) refused the "
             "create; retry after the Retry-After seconds. Nothing was written."},
        )  # fmt: skip
    if (method, path) == ("get", "/timer"):
        responses.setdefault("403", {"description": "A tenant key listing another tenant."})
    for status, response in responses.items():
        if status.startswith(("4", "5")):
            response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
            if status in ("503", "429"):
                response["headers"] = {
                    "Retry-After": {
                        "description": "Seconds to wait before retrying.",
                        "schema": {"type": "string"},
                    }
                }


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


@lru_cache(maxsize=1)
def _documented(paths: tuple[str, ...]) -> list[tuple[re.Pattern[str], str]]:
    """Each documented path template as a pattern over request paths."""
    return [(re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(p)) + "$"), p) for p in paths]


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path takes. FastAPI keeps an included router's routes inside it
    (not in ``app.routes``), so the operations come from the OpenAPI schema, which lists
    them all; the app's own routes (docs, the create route) are matched directly."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    paths = request.app.openapi().get("paths", {})
    path = request.url.path
    # as OpenAPI matches: a concrete path before the templates (/timer/requeue is not an id)
    found = [path] if path in paths else [t for r, t in _documented(tuple(paths)) if r.match(path)]
    for template in found:
        methods |= {m.upper() for m in paths[template] if m in _HTTP_METHODS}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
    return sorted(methods)


def install(app: FastAPI, *, body_limit: int) -> None:
    """Makes every error of the app a problem+json response, and logs the ones that are ours."""

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        log.info("refused %s %s: %s", request.method, request.url.path, detail)
        return problem(422, detail, errors=errors)

    @app.exception_handler(FieldError)
    async def on_field_error(request: Request, exc: FieldError) -> JSONResponse:
        log.info("refused %s %s: %s", request.method, request.url.path, exc)
        return problem(422, str(exc), errors=[{"field": exc.field, "reason": exc.reason}])

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 400:
            # Only FastAPI answers 400 here: a body json.loads could not take (not UTF-8,
            # nested past the parser's depth). Refused input like any other: a 422 naming it.
            cause = exc.__cause__
            why = (
                "nested too deeply to parse"
                if isinstance(cause, RecursionError)
                else (f"not valid JSON ({type(cause).__name__ if cause else 'parse error'})")
            )
            log.info("refused %s %s: body: %s", request.method, request.url.path, why)
            return problem(422, f"body: {why}", errors=[{"field": "body", "reason": why}])
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; there may be more.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        if exc.status_code == 413:
            limit = getattr(exc, "limit", body_limit)
            setting = getattr(exc, "setting", BODY_SETTING)
            log.info("refused %s %s: body over %d bytes", request.method, request.url.path,
                     limit)  # fmt: skip
            return too_large(limit, setting)
        return problem(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(DatabaseUnavailable)
    async def on_db_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        # The outage itself is logged once, where it was seen (db/connection.py).
        log.debug("%s %s: database unavailable: %s", request.method, request.url.path, exc)
        return problem(
            503, f"the database is unavailable; retry shortly ({exc.public})",
            headers={"Retry-After": "1"},
        )  # fmt: skip

    @app.exception_handler(Overloaded)
    async def on_overload(request: Request, exc: Overloaded) -> JSONResponse:
        # Logged by the batcher once per overload, with how many were refused.
        return problem(
            503, f"too many creates at once; retry shortly ({exc})", headers={"Retry-After": "1"}
        )

    @app.exception_handler(QuotaExceeded)
    async def on_quota(request: Request, exc: QuotaExceeded) -> JSONResponse:
        refusal = exc.refusal
        log.info("refused %s %s: %s quota: %s", request.method, request.url.path,
                 refusal.quota, refusal.reason)  # fmt: skip
        errors = [{"field": refusal.quota, "reason": refusal.reason}]
        if refusal.quota == "max_payload_bytes":
            return problem(413, f"{refusal.quota} quota: {refusal.reason}", errors=errors)
        return problem(
            429, f"{refusal.quota} quota: {refusal.reason}; retry after {refusal.retry_after} s",
            errors=errors, headers={"Retry-After": str(refusal.retry_after)},
        )  # fmt: skip

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return problem(500, "internal error; the server log has the details")
