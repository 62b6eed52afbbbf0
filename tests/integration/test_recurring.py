"""Recurring timers (every, cron) and absolute times (at): each occurrence once, on its grid,
with its own number, key and retries; pause, resume, cancel; the API's refusals."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from core.settings import Settings
from db.database import Database
from dispatcher.service import Dispatcher
from tests.support.sink import Received, Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]
SECRET = "whsec_" + "c2VyaWVzLXNlY3JldC1mb3ItdGVzdHMtb25seQ=="
PROBLEM = "application/problem+json"
SOON = (datetime.now(UTC) + timedelta(seconds=100)).isoformat()  # before a first time 120 s on


def _at(seconds: float) -> datetime:
    """A whole-millisecond instant ``seconds`` from now (UTC)."""
    now = datetime.now(UTC) + timedelta(seconds=seconds)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _occurrence(r: Received) -> int:
    return int(json.loads(r.body)["occurrence"])


@pytest.fixture
async def signed_api(
    make_settings: Callable[..., Settings], database_url: str
) -> Any:  # an httpx client on the app, with the settings the dispatcher shares
    from api.app import create_app

    settings = make_settings(signing_secret=SECRET)
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, settings


async def test_an_every_second_series_sends_each_occurrence_once_on_its_grid(
    signed_api: Any, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    client, settings = signed_api
    dispatcher = await start_dispatcher(settings)
    first = _at(2.0)
    until = first + timedelta(seconds=20)
    created = await client.post("/timer", json={
        "url": f"{sink.url}/tick", "every": 1, "at": first.isoformat(), "until": until.isoformat(),
    })  # fmt: skip
    assert created.status_code == 200, created.text
    series_id = created.json()["id"]
    assert uuid.UUID(series_id).version == 8
    assert created.json()["time_left"] in (1, 2)
    received = await sink.wait_for(21, timeout=30)
    # nothing after until: a whole pass after it and its claim window made and sent nothing
    await dispatcher.wait_pass_after(until + _window(settings), timeout=10)
    await dispatcher.wait_idle(timeout=5)
    assert len(sink.received) == 21
    numbers = [_occurrence(r) for r in received]
    assert sorted(numbers) == list(range(1, 22))  # each occurrence once
    late_ms = []
    for r in received:
        n = _occurrence(r)
        due = first + timedelta(seconds=n - 1)  # occurrence n at its own time: no drift
        late_ms.append((r.at - due.timestamp()) * 1000)
        body = json.loads(r.body)
        assert body == {"id": series_id, "occurrence": n}
    assert min(late_ms) >= 0, late_ms  # never early
    assert max(late_ms) <= 50, late_ms
    keys = [r.headers["Idempotency-Key"] for r in received]
    assert len(set(keys)) == 21 and series_id not in keys  # one key per occurrence
    for r in received:
        headers = {k: v for k, v in r.headers.items() if k.lower().startswith("webhook-")}
        Webhook(SECRET).verify(r.body, headers)
        assert headers["webhook-id"] == r.headers["Idempotency-Key"]
    shown = (await client.get(f"/timer/{series_id}")).json()
    assert shown["status"] == "ended" and shown["time_left"] == 0
    assert shown["occurrences_sent"] == 21 and shown["kind"] == "recurring"
    assert datetime.fromisoformat(shown["last_occurrence_at"]) == until
    assert shown["schedule"]["every_seconds"] == 1 and shown["next_occurrence_at"] is None


async def test_a_dead_occurrence_does_not_end_the_series_and_retries_keep_its_key(
    client: httpx.AsyncClient, sink: Sink, start_dispatcher: StartDispatcher,
    make_settings: Callable[..., Settings],
) -> None:  # fmt: skip
    sink.status_for = lambda r: 500 if _occurrence(r) == 1 else 200
    await start_dispatcher(make_settings(retry_base_seconds=0.3))
    created = await client.post(
        "/timer", json={"url": f"{sink.url}/s", "every": "PT1S", "count": 3, "max_attempts": 2}
    )
    series_id = created.json()["id"]
    await sink.wait_until(
        lambda: Counter(_occurrence(r) for r in sink.received) == {1: 2, 2: 1, 3: 1}, timeout=15
    )
    first = [r for r in sink.received if _occurrence(r) == 1]
    assert first[0].headers["Idempotency-Key"] == first[1].headers["Idempotency-Key"]
    assert [r.headers["Timerhook-Attempt"] for r in first] == ["1", "2"]
    # the dead occurrence is a dead letter of its own, listed with its series and number
    dead = (await client.get("/timer", params={"status": "dead"})).json()["items"]
    assert [(d["series_id"], d["occurrence"]) for d in dead] == [(series_id, 1)]
    occurrence = (await client.get(f"/timer/{dead[0]['id']}")).json()
    assert occurrence["series_id"] == series_id and occurrence["attempts"] == 2
    shown = (await client.get(f"/timer/{series_id}")).json()
    assert shown["status"] == "ended" and shown["occurrences_sent"] == 3


async def test_pause_skips_what_falls_in_it_and_resume_goes_on_on_the_grid(
    client: httpx.AsyncClient, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    dispatcher = await start_dispatcher()
    window = _window(dispatcher.settings)
    first = _at(1.5)
    created = await client.post(
        "/timer", json={"url": f"{sink.url}/p", "every": 1, "at": first.isoformat()}
    )
    series_id = created.json()["id"]
    await sink.wait_for(2, timeout=10)
    paused = await client.post(f"/timer/{series_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert paused.json()["time_left"] == 0 and paused.json()["next_occurrence_at"] is None
    paused_at = datetime.now(UTC).timestamp()
    # the passes of the next 4 s: what they would have made and claimed was skipped
    await dispatcher.wait_pass_after(datetime.now(UTC) + timedelta(seconds=4) - window, 10)
    await dispatcher.wait_idle(timeout=5)
    # an occurrence already handed to a dispatcher (claimed ahead) may still go; no later one
    during = [_occurrence(r) for r in sink.received if r.at > paused_at]
    assert all(first.timestamp() + n - 1 < paused_at + 3.0 for n in during), during
    count = len(sink.received)
    await dispatcher.wait_pass_after(datetime.now(UTC) + timedelta(seconds=1.2), timeout=10)
    await dispatcher.wait_idle(timeout=5)
    assert len(sink.received) == count  # nothing more while paused
    resumed = await client.post(f"/timer/{series_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"
    resumed_at = datetime.now(UTC).timestamp()
    await sink.wait_for(count + 2, timeout=10)
    after = [r for r in sink.received[count:]]
    for r in after:
        n = _occurrence(r)
        due = first.timestamp() + n - 1
        assert due > resumed_at  # the times in the pause were skipped, not sent late
        assert 0 <= r.at - due <= 0.05, (n, r.at - due)
    assert _occurrence(after[1]) == _occurrence(after[0]) + 1
    # DELETE ends the series for good
    assert (await client.delete(f"/timer/{series_id}")).status_code == 204
    assert (await client.delete(f"/timer/{series_id}")).status_code == 204  # idempotent
    ended = (await client.get(f"/timer/{series_id}")).json()
    assert ended["status"] == "cancelled" and ended["time_left"] == 0
    assert (await client.post(f"/timer/{series_id}/resume")).status_code == 409
    count = len(sink.received)
    await dispatcher.wait_pass_after(datetime.now(UTC) + timedelta(seconds=3.0) - window, 10)
    await dispatcher.wait_idle(timeout=5)
    assert len(sink.received) <= count + 1  # at most one claimed before the delete


async def test_a_cron_series_and_an_at_timer_and_listing_by_kind(
    client: httpx.AsyncClient,
) -> None:
    cron = await client.post("/timer", json={
        "url": "https://example.com/c", "cron": "0 9 * * 1-5", "timezone": "America/New_York",
    })  # fmt: skip
    assert cron.status_code == 200, cron.text
    shown = (await client.get(f"/timer/{cron.json()['id']}")).json()
    upcoming = datetime.fromisoformat(shown["next_occurrence_at"])
    local = upcoming.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (9, 0) and local.isoweekday() <= 5
    assert shown["schedule"]["cron"] == "0 9 * * 1-5" and shown["next_occurrence"] == 1
    assert (
        0 < shown["time_left"] == cron.json()["time_left"]
        or abs(shown["time_left"] - cron.json()["time_left"]) <= 1
    )
    at = _at(3600)
    once = await client.post("/timer", json={"url": "https://example.com/o", "at": at.isoformat()})
    assert once.status_code == 200, once.text
    assert 3598 <= once.json()["time_left"] <= 3600
    detail = (await client.get(f"/timer/{once.json()['id']}")).json()
    assert datetime.fromisoformat(detail["due_at"]) == at and detail["kind"] == "once"
    recurring = (await client.get("/timer", params={"kind": "recurring"})).json()["items"]
    assert [i["id"] for i in recurring] == [cron.json()["id"]]
    assert recurring[0]["kind"] == "recurring" and recurring[0]["status"] == "active"
    ones = (await client.get("/timer", params={"kind": "once"})).json()["items"]
    assert [i["id"] for i in ones] == [once.json()["id"]]
    # a one-shot timer cannot pause (409); an unknown series is a 404 like any unknown id
    assert (await client.post(f"/timer/{once.json()['id']}/pause")).status_code == 409
    assert (await client.post(f"/timer/{uuid.uuid4()}/resume")).status_code == 404
    other = str(uuid.UUID(cron.json()["id"])).replace(cron.json()["id"][-4:], "0000")
    assert (await client.get(f"/timer/{other}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"at": "2030-01-01T00:00:00+00:00", "seconds": 5}, "at, seconds"),
        ({"at": "2020-01-01T00:00:00Z"}, "at"),
        ({"at": "2030-01-01T00:00:00"}, "at"),
        ({"at": "tomorrow"}, "at"),
        ({"at": 1893456000}, "at"),
        ({"every": 1, "cron": "* * * * *"}, "every, cron"),
        ({"every": 0}, "every"),
        ({"every": "P1M"}, "every"),
        ({"every": "PT0.2S"}, "every"),
        ({"every": True}, "every"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 25 * * *"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),
        ({"cron": "0 9 * * *", "timezone": "Europe/Atlantis"}, "timezone"),
        ({"every": 60, "timezone": "UTC"}, "timezone"),
        ({"until": "2030-01-01T00:00:00Z"}, "until"),
        ({"count": 3}, "count"),
        ({"misfire": "all"}, "misfire"),
        ({"every": 60, "misfire": "some"}, "misfire"),
        ({"every": 60, "count": 0}, "count"),
        ({"every": 60, "count": 10**12}, "count"),  # past MAX_COUNT: a 422, never a 500
        ({"cron": "0 0 30 2 *", "timezone": "Europe/Paris"}, "cron"),  # never matches
        ({"every": 60, "until": "2020-01-01T00:00:00Z"}, "until"),
        ({"every": 60, "seconds": 120, "until": SOON}, "until"),
    ],
)
async def test_schedule_fields_are_refused_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/timer", json={"url": "https://example.com/h", **body})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    fields = [e["field"] for e in response.json()["errors"]]
    assert fields == [field], response.json()
    listed = (await client.get("/timer", params={"kind": "recurring"})).json()["items"]
    assert listed == []  # nothing half-written


async def test_a_delete_that_waited_for_a_schedule_pass_cancels_the_occurrence_it_made(
    client: httpx.AsyncClient, db: Database
) -> None:
    """A DELETE of a series waits for a schedule pass that holds the series' row lock, and
    then cancels the occurrence that pass made: none is left pending, to be sent after the
    204 (a single statement that waited for the lock read the occurrences from before)."""
    made = await client.post(
        "/timer", json={"url": "https://example.com/s", "every": 3600, "at": _at(60).isoformat()}
    )
    assert made.status_code == 200, made.text
    series_id = uuid.UUID(made.json()["id"])
    async with db.pool.connection() as conn, conn.transaction():
        # a pass on the series: its row lock, held while the pass makes the occurrence
        await conn.execute("select 1 from schedules where id = %s for update", [series_id])
        deleting = asyncio.create_task(client.delete(f"/timer/{series_id}"))
        async with db.pool.connection() as watch:
            for _ in range(500):  # polled: the DELETE's wait is another session's
                waits = await watch.execute(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                )
                if (await waits.fetchone())[0]:  # type: ignore[index]
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the DELETE did not wait for the series' lock")
        taken, rows = await db.schedules._make(
            conn, series_id, lookahead_seconds=120, shards=1, wake_ms=None, now=None
        )
        assert (taken, rows) == (1, 1)
    response = await deleting
    assert response.status_code == 204, response.text
    async with db.pool.connection() as conn:
        found = await conn.execute(
            "select occurrence, state from timers where series_id = %s", [series_id]
        )
        assert await found.fetchall() == [(1, "cancelled")]


def _window(settings: Settings) -> timedelta:
    """The dispatchers' claim window: a pass claims what falls due within it."""
    return timedelta(seconds=settings.claim_window_seconds)
