"""The FastAPI application factory."""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api import problems
from api.auth import Access
from api.batcher import CreateBatcher
from api.limits import BodyLimit
from api.observe import Observer, ProcessMetrics
from api.request_ids import RequestIds
from api.routes import backlog, batch, dashboard, health, history, metrics, timers
from api.schemas import TimerBatch, TimerCreate
from core import logs
from core.settings import Settings, get_settings
from db.connection import DatabaseUnavailable
from db.database import Database

log = logging.getLogger(__name__)

# A companion started and stopped with the app (the dispatcher, in ``timerhook serve``).
Companion = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]


# FastAPI's built-in OpenTelemetry middleware looks up the OpenTelemetry providers (and the
# environment) on every request even when nothing is configured: a few percent of a create.
# timerhook's telemetry is Prometheus and JSON logs, so it is off (for FastAPI versions that
# have it).
NO_OTEL: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings, database_url: str, *, companions: Sequence[Companion] = ()
) -> FastAPI:
    """The app, connected to ``database_url``; companions start after the pool opens and stop
    before it closes (inside uvicorn's graceful shutdown, so SIGTERM reaches them first)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(
            database_url, max_size=settings.pool_size, name="api",
            timeout=settings.db_timeout_seconds,
            statement_timeout=settings.statement_timeout_seconds,
        )  # fmt: skip
        await db.open()
        app.state.db = db
        app.state.settings = settings
        app.state.access = Access(db, mode=settings.auth, host=settings.host)
        try:
            await app.state.access.announce()
        except DatabaseUnavailable as exc:  # an API started during an outage serves its 503s
            log.warning("could not say how callers are admitted: the database is away (%s)", exc)
        app.state.observer = Observer(db, dead_after_seconds=settings.dead_after_seconds)
        batcher = CreateBatcher(
            db, shards=settings.shards, max_batch=settings.create_batch_max,
            wake_within_ms=settings.wake_within_ms,
            max_queue=settings.create_queue_max, timeout=settings.db_timeout_seconds,
        )  # fmt: skip
        await batcher.start()
        app.state.batcher = batcher
        started: list[Companion] = []
        try:
            for companion in companions:
                await companion[0]()
                started.append(companion)
            # What exists now lives as long as the process: out of the garbage collector's
            # sight, so that a request that makes many objects (a large JSON body) does not
            # set off a full collection over the whole heap (100 ms and more on this machine).
            gc.collect()
            gc.freeze()
            yield
        finally:
            for companion in reversed(started):
                await companion[1]()
            await batcher.stop()
            await db.close()

    app = FastAPI(
        title="timerhook",
        version="0.1.0",
        summary="Webhook timers: call this URL in 4 hours, once, on time.",
        lifespan=lifespan,
        **NO_OTEL,
    )
    app.state.metrics = ProcessMetrics()
    app.add_middleware(
        BodyLimit,
        limit=settings.body_limit,
        paths={"/timer/batch": (settings.max_batch_body_bytes, "TIMERHOOK_MAX_BATCH_BODY_BYTES")},
    )
    app.add_middleware(RequestIds)  # outermost: every answer carries the id, a 413 too
    problems.install(app, body_limit=settings.body_limit)
    # First, so that it matches before the routers (see create_endpoint).
    app.router.routes.append(timers.CREATE_ROUTE)
    app.include_router(batch.router)
    app.include_router(timers.router)
    app.include_router(history.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.include_router(backlog.router)
    _document(app)
    return app


def app_from_environment() -> FastAPI:
    """The app of one worker of ``timerhook api --workers N``: its settings and database URL
    from the environment (the parent prepared the database and set the URL)."""
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)
    if not settings.database_url:
        raise RuntimeError("TIMERHOOK_DATABASE_URL must be set for an API worker")
    return create_app(settings, settings.database_url)


def _document(app: FastAPI) -> None:
    """The OpenAPI schema as the API behaves: the bodies of POST /timer and POST /timer/batch
    (parsed by the routes themselves), and every error as the problem+json it is, with the
    statuses any operation may answer (422 refused input, 413 body too large, 503 database
    away or overload)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (TimerCreate, TimerBatch):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            components.update(problems.openapi_components())
            for path, operations in schema["paths"].items():
                for method, operation in operations.items():
                    problems.document_errors(operation, method=method, path=path)
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
