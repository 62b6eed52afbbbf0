"""Shared dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.batcher import CreateBatcher
from db.database import Database
from db.settings import Settings


def _database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _batcher(request: Request) -> CreateBatcher:
    batcher: CreateBatcher = request.app.state.batcher
    return batcher


DatabaseDep = Annotated[Database, Depends(_database)]
BatcherDep = Annotated[CreateBatcher, Depends(_batcher)]
SettingsDep = Annotated[Settings, Depends(_settings)]
