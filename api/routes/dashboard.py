"""``/dashboard``: a live page served by the API itself (no build step, no CDN: its script
and style are files of this package), and ``/dashboard/state``, the one JSON document it
polls every second. Everything it shows comes from the cached reads of api/observe.py, so any
number of open pages cost the database one read per figure per second."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from api.deps import AdminDep, ObserverDep
from api.observe import Point
from api.views import DispatcherPublic, dispatcher_public
from core.targets import netloc_of
from db.models import BacklogStep, TimerSummary

router = APIRouter(tags=["dashboard"])

# The page's files: name -> media type (nothing else is served from the package).
_FILES = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page loads only its own files and talks only to this API.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def _file(name: str) -> bytes:
    return resources.files("api").joinpath("dashboard", name).read_bytes()


def _serve(name: str) -> Response:
    return Response(
        _file(name),
        media_type=_FILES[name],
        headers={"Content-Security-Policy": _POLICY, "Cache-Control": "no-cache"},
    )


@router.get("/dashboard", include_in_schema=False)
async def page() -> Response:
    """The dashboard page."""
    return _serve("dashboard.html")


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    """The page's script and style."""
    if name not in _FILES or name.endswith(".html"):
        raise HTTPException(404, f"no dashboard file {name!r}")
    return _serve(name)


class Step(BaseModel):
    """Pending timers due in one step of a backlog histogram."""

    at: datetime
    pending: int


class Backlog(BaseModel):
    """The backlog ahead: the next minute by second, the next hour by minute, the next day by
    hour (steps without a pending timer are left out)."""

    minute: list[Step]
    hour: list[Step]
    day: list[Step]


class HistoryPoint(BaseModel):
    """Five seconds of sending, every dispatcher together."""

    at: datetime
    sent_per_second: float
    failed_per_second: float
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None


class CapState(BaseModel):
    """A cap and its bucket now."""

    scope: str
    per_minute: int
    tokens: float


class DeadLetter(BaseModel):
    """A dead timer (retries used up), requeued by POST /timer/{id}/requeue."""

    id: str
    target: str = Field(
        description="The URL's host and port (never its credentials, path or query)."
    )
    attempts: int
    finished_at: datetime | None
    last_error: str | None


class DashboardState(BaseModel):
    """Everything the dashboard shows, read at ``now``."""

    now: datetime
    pending: int
    overdue: int
    oldest_overdue_age_seconds: float | None
    in_flight: int
    dead_letters: int
    delivered_total: int
    backlog: Backlog
    history: list[HistoryPoint] = Field(description="The last 15 minutes by 5 seconds.")
    dispatchers: list[DispatcherPublic]
    caps: list[CapState]
    dead: list[DeadLetter] = Field(description="The first 20 dead letters, in due order.")


def _steps(rows: list[BacklogStep]) -> list[Step]:
    return [Step(at=r.at, pending=r.pending) for r in rows]


def _point(p: Point) -> HistoryPoint:
    return HistoryPoint(
        at=p.at, sent_per_second=p.sent_per_second, failed_per_second=p.failed_per_second,
        lateness_p50_ms=p.lateness_p50_ms, lateness_p99_ms=p.lateness_p99_ms,
    )  # fmt: skip


def _dead_letter(t: TimerSummary) -> DeadLetter:
    return DeadLetter(
        id=str(t.id), target=netloc_of(t.url).rsplit("@", 1)[-1], attempts=t.attempts,
        finished_at=t.finished_at, last_error=t.last_error,
    )  # fmt: skip


@router.get("/dashboard/state", response_model=DashboardState)
async def state(o: ObserverDep, _admin: AdminDep) -> DashboardState:
    """What the dashboard shows, as one document (cached reads: 0.5 s, or longer for a read
    that is slow, so that polling keeps the database busy at most a tenth of the time)."""
    counts, totals = await o.counts.get(), await o.totals.get()
    now = datetime.now(UTC)
    return DashboardState(
        now=now, pending=counts.pending, overdue=counts.overdue.overdue,
        oldest_overdue_age_seconds=counts.overdue.oldest_age_seconds,
        in_flight=counts.overdue.in_flight, dead_letters=counts.dead,
        delivered_total=totals.counts["delivered"],
        backlog=Backlog(
            minute=_steps(await o.backlog_minute.get()),
            hour=_steps(await o.backlog_hour.get()),
            day=_steps(await o.backlog_day.get()),
        ),
        history=[_point(p) for p in await o.recent.get()],
        dispatchers=[dispatcher_public(d, now) for d in await o.dispatchers.get()],
        caps=[CapState(scope=c.scope, per_minute=c.per_minute, tokens=c.tokens)
              for c in await o.caps.get()],
        dead=[_dead_letter(t) for t in await o.dead_letters.get()],
    )  # fmt: skip
