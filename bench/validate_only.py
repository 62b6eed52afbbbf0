"""The ceiling for creates: a FastAPI endpoint that only validates the create body.

``POST /timer`` here takes the same JSON as timerhook's and validates it with the same
model (``api.schemas.TimerCreate``, FastAPI's own body handling), then answers the same shape
without touching a database. Served by uvicorn as ``timerhook api`` is (uvloop, httptools,
no access log), so the gap between the two under the same load is what timerhook's create
path costs beyond parsing and answering. Run: ``python -m bench.validate_only PORT``.
"""

from __future__ import annotations

import sys
import uuid

import uvicorn
from fastapi import FastAPI

from api.app import NO_OTEL
from api.schemas import TimerCreate, TimerPublic

app = FastAPI(**NO_OTEL)  # as timerhook's app is made


@app.post("/timer")
async def create(body: TimerCreate) -> TimerPublic:
    return TimerPublic(id=uuid.uuid4(), time_left=body.delay_seconds)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
