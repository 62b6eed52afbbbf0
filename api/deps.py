"""Shared dependencies as Annotated aliases.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
a hand-off per dependency per request that cost more than the rest of a create.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from api.auth import Access, Principal
from api.batcher import CreateBatcher
from api.observe import Observer, ProcessMetrics
from core.settings import Settings
from db.database import Database


async def _database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _batcher(request: Request) -> CreateBatcher:
    batcher: CreateBatcher = request.app.state.batcher
    return batcher


async def _metrics(request: Request) -> ProcessMetrics:
    metrics: ProcessMetrics = request.app.state.metrics
    return metrics


async def _observer(request: Request) -> Observer:
    observer: Observer = request.app.state.observer
    return observer


async def _access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


async def _principal(request: Request) -> Principal:
    access: Access = request.app.state.access
    return await access.principal(request)


async def _admin(request: Request) -> Principal:
    access: Access = request.app.state.access
    principal = await access.principal(request)
    if not principal.admin:
        raise HTTPException(403, "this route needs an admin key; a tenant key may not use it")
    return principal


@dataclass(frozen=True, slots=True)
class AppParts:
    """What POST /timer needs of the app, gathered at once: FastAPI's resolution costs a few
    microseconds per dependency, and a create is the hottest request there is."""

    db: Database
    settings: Settings
    batcher: CreateBatcher
    metrics: ProcessMetrics
    access: Access


async def app_parts(request: Request) -> AppParts:
    """The app's parts a create uses, read from ``app.state`` here, as every dependency is."""
    state = request.app.state
    return AppParts(state.db, state.settings, state.batcher, state.metrics, state.access)


DatabaseDep = Annotated[Database, Depends(_database)]
BatcherDep = Annotated[CreateBatcher, Depends(_batcher)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[ProcessMetrics, Depends(_metrics)]
# The cached reads of the whole deployment that /metrics, /dispatchers and the dashboard share.
ObserverDep = Annotated[Observer, Depends(_observer)]
AccessDep = Annotated[Access, Depends(_access)]
# The caller (401 when a key is required and missing or invalid).
PrincipalDep = Annotated[Principal, Depends(_principal)]
# The caller, who must hold an admin key when keys are in use (403 otherwise).
AdminDep = Annotated[Principal, Depends(_admin)]
