"""``/healthz``: the process is up and the database answers."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DatabaseDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(db: DatabaseDep) -> dict[str, object]:
    """200 with timer counts per state when the database answers; 503 (problem) when not."""
    return {"status": "ok", "timers": await db.timers.counts()}
