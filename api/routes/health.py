"""``/healthz`` (the process is alive) and ``/readyz`` (it can serve: the database answers and
its schema is the one this code expects)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import DatabaseDep
from api.problems import problem
from db.connection import DatabaseUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, object]:
    """200 as long as the process serves HTTP: no database round trip, so it answers at once
    even while the database is away (liveness; use /readyz for readiness)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "The database does not answer, or its schema is not current."}},
)
async def readyz(db: DatabaseDep) -> JSONResponse:
    """200 when the database answers within TIMERHOOK_DB_TIMEOUT_SECONDS and its schema is
    current; 503 (problem, with Retry-After) when not. One round trip, no scan."""
    try:
        reason = await db.not_ready()
    except DatabaseUnavailable as exc:
        reason = f"the database does not answer ({exc.public})"
    if reason is not None:
        return problem(503, f"not ready: {reason}", headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready"})
