"""``/healthz``: the process is up and the database answers."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DatabaseDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(db: DatabaseDep) -> dict[str, object]:
    """200 when the database answers; 503 (problem) when not. Cheap: one round trip, no scan."""
    await db.ping()
    return {"status": "ok"}
