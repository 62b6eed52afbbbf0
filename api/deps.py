"""Shared dependencies as Annotated aliases.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
a hand-off per dependency per request that cost more than the rest of a create.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.batcher import CreateBatcher
from api.observe import ProcessMetrics
from db.database import Database
from db.settings import Settings


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


DatabaseDep = Annotated[Database, Depends(_database)]
BatcherDep = Annotated[CreateBatcher, Depends(_batcher)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[ProcessMetrics, Depends(_metrics)]
