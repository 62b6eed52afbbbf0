"""SLA windows: windowed timers spread at the lowest steady rate that meets every deadline,
shared by the fleet, while exact timers beside them keep their timing."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx

from core.ids import due_ms_of
from core.settings import Settings
from db.database import Database
from db.models import DeliveryOptions
from dispatcher.service import Dispatcher
from tests.support.sink import Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


async def test_a_windowed_herd_is_spread_evenly_to_its_deadline_beside_exact_timers(
    db: Database, sink: Sink, other_sink: Sink, start_dispatcher: StartDispatcher,
    settings: Settings,
) -> None:  # fmt: skip
    # two dispatchers share the plan: the stream is one, not one per dispatcher
    await start_dispatcher()
    await start_dispatcher()
    windowed = await db.creates.insert(
        [0] * 1200, [f"{sink.url}/w"] * 1200, shards=settings.shards,
        options=[DeliveryOptions(window_ms=30_000)] * 1200,
    )  # fmt: skip
    # exact timers beside them, one every 250 ms over the same 30 s, made as POST /timer
    # makes them: those due within the claim window wake the dispatchers at their commit
    await db.creates.insert(
        [250 * i for i in range(1, 120)], [f"{other_sink.url}/e"] * 119, shards=settings.shards,
        wake_within_ms=settings.wake_within_ms,
    )  # fmt: skip
    created_at = windowed[0].due_at.timestamp()
    received = await sink.wait_for(1200, timeout=45)
    await other_sink.wait_for(119, timeout=10)
    ids = [json.loads(r.body)["id"] for r in received]
    assert len(set(ids)) == 1200  # each once
    for r in received:
        due = due_ms_of(uuid.UUID(json.loads(r.body)["id"])) / 1000
        assert due <= r.at <= due + 30.0, r.at - due  # never early, never past the deadline
    per_second = Counter(int(r.at - created_at) for r in received)
    # after the first second, every second within 10% of 1,200 / 30 s = 40/s (the stream
    # ends half a second before the deadline, its guard: the last second is a half one)
    steady = [per_second.get(s, 0) for s in range(1, 29)]
    assert all(36 <= c <= 44 for c in steady), str(sorted(per_second.items()))
    late_ms = sorted(
        (r.at * 1000 - due_ms_of(uuid.UUID(json.loads(r.body)["id"]))) for r in other_sink.received
    )
    assert late_ms[0] >= 0 and late_ms[-1] <= 50, late_ms


async def test_windows_are_validated_and_shown(client: httpx.AsyncClient) -> None:
    made = await client.post(
        "/timer", json={"url": "https://example.com/w", "seconds": 10, "window": "PT1H"}
    )
    assert made.status_code == 200, made.text
    shown = (await client.get(f"/timer/{made.json()['id']}")).json()
    from datetime import datetime

    due, deadline = (datetime.fromisoformat(shown[k]) for k in ("due_at", "deadline_at"))
    assert (deadline - due).total_seconds() == 3600
    for bad in (0, "P8D", "PT0S", "soon", True, 604_801):
        refused = await client.post("/timer", json={"url": "https://example.com/w", "window": bad})
        assert refused.status_code == 422, (bad, refused.text)
        assert [e["field"] for e in refused.json()["errors"]] == ["window"]


async def test_the_backlog_shows_the_released_windowed_work_and_its_planned_rate(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    # nothing plans them here (no dispatcher): 600 due now within 60 s, 100 within 10 s
    await db.creates.insert([0] * 600, ["https://example.com/a"] * 600, shards=settings.shards,
                           options=[DeliveryOptions(window_ms=60_000)] * 600)  # fmt: skip
    await db.creates.insert([0] * 100, ["https://example.com/b"] * 100, shards=settings.shards,
                           options=[DeliveryOptions(window_ms=10_000)] * 100)  # fmt: skip
    shown = (await client.get("/backlog", params={"window": "2m"})).json()
    windowed = shown["windowed"]
    assert windowed["released"] == 700
    # the rule: 700 by the later deadline (about 59.5 s away) beats 100 by the earlier (9.5 s)
    assert 11.5 <= windowed["rate_now"] <= 12.5, windowed
    steps = windowed["planned"]
    assert len(steps) == 1 and steps[0]["per_second"] == windowed["rate_now"]
    assert shown["overdue"] == 0  # a windowed timer within its window is not overdue
    refused = await client.get("/backlog", params={"window": "soon"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "window"


async def test_under_a_binding_cap_exact_timers_take_the_tokens_before_windowed_ones(
    db: Database, sink: Sink, start_dispatcher: StartDispatcher, settings: Settings
) -> None:
    await db.caps.set(scope="global", per_minute=240)  # 4/s
    # windowed work that alone fits the cap (40 in 60 s: 0.7/s) ...
    await db.creates.insert([0] * 40, [f"{sink.url}/w"] * 40, shards=settings.shards,
                           options=[DeliveryOptions(window_ms=60_000)] * 40)  # fmt: skip
    await start_dispatcher()
    await sink.wait_for(2, timeout=10)
    # ... then a herd of exact timers that makes the cap bind for 5 s
    exact = await db.creates.insert([300] * 20, [f"{sink.url}/e"] * 20, shards=settings.shards)
    due = exact[0].due_at.timestamp()
    await sink.wait_until(lambda: sum(r.path == "/e" for r in sink.received) == 20, timeout=15)
    last = max(r.at for r in sink.received if r.path == "/e")
    between = [r.path for r in sink.received if due <= r.at <= last]
    # while the cap binds, the windowed timers wait (at most the one or two a dispatcher had
    # claimed before the herd was due go in between)
    assert between.count("/w") <= 2, between
    # and then they go on (their deadlines are the herd test's matter, above)
    await sink.wait_until(lambda: sink.received[-1].path == "/w", timeout=10)
