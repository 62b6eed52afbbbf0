"""POST /timer/batch: up to 1,000 timers in one request, all or none, each as POST /timer."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.ids import bucket_of, due_ms_of, parse_timer_id
from core.settings import Settings
from db.database import Database
from db.models import DeliveryOptions
from dispatcher.service import Dispatcher
from tests.support.sink import Sink

URL = "https://example.com/hook"
PROBLEM = "application/problem+json"
StartDispatcher = Callable[..., Awaitable[Dispatcher]]


@pytest.fixture
async def keyed_api(
    db: Database, settings: Settings, database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """The app with keys on: a client and tenant a's Authorization header."""
    _, key = await db.keys.create(tenant="a", admin=False, label=None)
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            yield api, {"Authorization": f"Bearer {key}"}


async def test_a_batch_creates_every_timer_in_order_as_post_timer_would(
    client: httpx.AsyncClient, db: Database
) -> None:
    timers: list[dict[str, Any]] = [
        {"url": URL, "seconds": 30},
        {"url": f"{URL}/2", "hours": 1, "payload": {"order": 7}, "headers": {"X-Trace": "t"}},
        {"url": f"{URL}/3", "minutes": 2, "priority": 9, "resources": ["db", "cache"],
         "max_attempts": 3, "delivery": "at_most_once", "timeout_seconds": 2.5},
        # text that COPY's format must escape (backslash, tab, newline) and a window
        {"url": f"{URL}/4", "seconds": 5, "window": 60,
         "payload": {"t": "tab\tnew\nline\r \\ back \"q\" \\N é 😀", "n": [1.5, None]},
         "headers": {"X-Odd": "a\\b \"c\"\t\\N"}},
    ]  # fmt: skip
    response = await client.post("/timer/batch", json={"timers": timers})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    created = response.json()["timers"]
    assert [c["time_left"] for c in created] == [30, 3600, 120, 5]
    for answer, asked in zip(created, timers, strict=True):
        timer_id = parse_timer_id(answer["id"])
        assert timer_id is not None  # a timerhook id: version 7, its due time inside
        single = await client.post("/timer", json=asked)
        batch_view = (await client.get(f"/timer/{answer['id']}")).json()
        single_view = (await client.get(f"/timer/{single.json()['id']}")).json()
        # Every timer of the batch carries the batch request's id.
        assert batch_view["request_id"] == response.headers["x-request-id"]
        # Stored exactly as the same timer made by POST /timer (ids, times, requests aside).
        for view in (batch_view, single_view):
            if view.get("deadline_at") is not None:  # a window: its deadline follows due_at
                deadline = datetime.fromisoformat(view.pop("deadline_at"))
                assert deadline - datetime.fromisoformat(view["due_at"]) == timedelta(seconds=60)
        for field in ("id", "due_at", "next_attempt_at", "time_left", "request_id"):
            batch_view.pop(field)
            single_view.pop(field)
        assert batch_view == single_view
    assert await db.timers.counts() == {"pending": 8}


async def test_due_times_come_from_the_database_clock_and_ids_name_their_partition(
    client: httpx.AsyncClient, db: Database
) -> None:
    before = await db.timers.clock()
    response = await client.post(
        "/timer/batch", json={"timers": [{"url": URL, "seconds": s} for s in range(0, 50)]}
    )
    after = await db.timers.clock()
    assert response.status_code == 200
    for i, answer in enumerate(response.json()["timers"]):
        timer = await db.timers.get(parse_timer_id(answer["id"]))  # found by its bucket
        assert timer is not None
        due_ms = due_ms_of(timer.id)
        assert timer.due_at.timestamp() * 1000 == pytest.approx(due_ms, abs=0.001)
        assert bucket_of(timer.id).timestamp() >= due_ms / 1000
        asked = before.timestamp() * 1000 + i * 1000
        assert asked <= due_ms <= after.timestamp() * 1000 + i * 1000 + 1


async def test_one_refused_timer_refuses_the_batch_and_names_each_index_and_field(
    client: httpx.AsyncClient, db: Database
) -> None:
    timers: list[dict[str, Any]] = [{"url": URL, "seconds": 5} for _ in range(5)]
    timers[2] = {"url": "ftp://example.com", "seconds": 5}
    timers[4] = {"url": URL, "hours": 24 * 400}  # past the horizon
    response = await client.post("/timer/batch", json={"timers": timers})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    fields = [e["field"] for e in response.json()["errors"]]
    assert fields == ["timers[2].url", "timers[4].hours, minutes, seconds"]
    assert "timers[2].url" in response.json()["detail"]
    assert await db.timers.counts() == {}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"timers": []}, "timers", "at least 1"),
        ({"timers": [{"url": URL}] * 1001}, "timers", "at most 1000"),
        ({"timers": [{"url": URL}], "more": 1}, "more", "not a known field"),
        ({}, "timers", "required"),
        ([{"url": URL}], "body", "valid dictionary"),
        ({"timers": [5]}, "timers[0]", "valid dictionary"),
        ({"timers": [{"url": URL, "secs": 1}]}, "timers[0].secs", "not a known field"),
    ],
)
async def test_malformed_batches_are_refused_naming_the_field(
    client: httpx.AsyncClient, db: Database, body: Any, field: str, reason: str
) -> None:
    response = await client.post("/timer/batch", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert errors[0]["field"] == field, errors
    assert reason in errors[0]["reason"], errors
    assert await db.timers.counts() == {}


async def test_bodies_that_are_not_json_are_refused(client: httpx.AsyncClient) -> None:
    for content in (b"", b"{not json"):
        response = await client.post(
            "/timer/batch", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "body"


async def test_an_idempotency_key_replays_the_same_timers_and_refuses_another_body(
    client: httpx.AsyncClient, db: Database
) -> None:
    body = {"timers": [{"url": URL, "minutes": 5}, {"url": URL, "seconds": 7}]}
    key = {"Idempotency-Key": "load-1"}
    first = await client.post("/timer/batch", json=body, headers=key)
    again = await client.post("/timer/batch", json=body, headers=key)
    assert first.status_code == again.status_code == 200
    assert [t["id"] for t in again.json()["timers"]] == [t["id"] for t in first.json()["timers"]]
    assert [t["time_left"] for t in first.json()["timers"]] == [300, 7]
    assert 299 <= again.json()["timers"][0]["time_left"] <= 300
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    other = await client.post("/timer/batch", json={"timers": body["timers"][:1]}, headers=key)
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    # A key a single create used is not a batch's, and the other way round.
    single = await client.post("/timer", json={"url": URL}, headers={"Idempotency-Key": "one"})
    assert single.status_code == 200
    mixed = await client.post("/timer/batch", json=body, headers={"Idempotency-Key": "one"})
    assert mixed.status_code == 422
    assert (await client.post("/timer", json={"url": URL}, headers=key)).status_code == 422
    assert await db.timers.counts() == {"pending": 3}


async def test_quotas_count_every_timer_of_a_batch(
    db: Database, keyed_api: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    api, a = keyed_api
    await db.tenants.set("a", max_pending=5, creates_per_minute=8, max_payload_bytes=100)
    six = {"timers": [{"url": URL, "hours": 1}] * 6}
    over = await api.post("/timer/batch", json=six, headers=a)
    assert over.status_code == 429, over.text
    assert over.json()["errors"][0]["field"] == "max_pending"
    assert int(over.headers["retry-after"]) >= 1
    assert await db.timers.counts() == {}
    five = await api.post("/timer/batch", json={"timers": six["timers"][:5]}, headers=a)
    assert five.status_code == 200
    full = await api.post("/timer/batch", json={"timers": six["timers"][:1]}, headers=a)
    assert full.status_code == 429
    assert await db.timers.counts() == {"pending": 5}
    # Creates per minute: 5 of 8 tokens are spent; a batch of 4 waits, and a batch larger
    # than a minute's worth can never go.
    await db.tenants.set("a", max_pending=0)
    four = await api.post("/timer/batch", json={"timers": six["timers"][:4]}, headers=a)
    assert four.status_code == 429
    assert four.json()["errors"][0]["field"] == "creates_per_minute"
    nine = await api.post("/timer/batch", json={"timers": [{"url": URL}] * 9}, headers=a)
    assert nine.status_code == 429
    assert "send smaller batches" in nine.json()["detail"]
    big = {"timers": [{"url": URL}, {"url": URL, "payload": "y" * 200}]}
    refused = await api.post("/timer/batch", json=big, headers=a)
    assert refused.status_code == 413
    assert refused.json()["errors"][0]["field"] == "max_payload_bytes"
    assert "timers[1]" in refused.json()["detail"]
    assert await db.timers.counts() == {"pending": 5}
    tenants = {t for (t,) in await _tenants(db)}
    assert tenants == {"a"}


async def _tenants(db: Database) -> list[tuple[str]]:
    async with db.pool.connection() as conn:
        cur = await conn.execute("select distinct tenant from timers")
        return await cur.fetchall()


async def test_a_batch_over_its_body_limit_gets_413_naming_the_setting(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    settings = make_settings(max_batch_body_bytes=4096)
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            body = json.dumps({"timers": [{"url": URL, "seconds": 1}] * 200})
            assert len(body) > 4096
            response = await api.post(
                "/timer/batch", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 413
            assert "TIMERHOOK_MAX_BATCH_BODY_BYTES" in response.json()["detail"]
            # POST /timer keeps its own limit (96 KiB by default), larger than this one.
            assert (await api.post("/timer", json={"url": URL})).status_code == 200


async def test_a_batch_due_now_is_sent_at_once_each_timer_once(
    client: httpx.AsyncClient, sink: Sink, db: Database, start_dispatcher: StartDispatcher
) -> None:
    await start_dispatcher()
    timers = [{"url": f"{sink.url}/b", "payload": {"n": n}} for n in range(300)]
    response = await client.post("/timer/batch", json={"timers": timers})
    assert response.status_code == 200
    ids = [t["id"] for t in response.json()["timers"]]
    received = await sink.wait_for(300, timeout=10)
    bodies = [json.loads(r.body) for r in received]
    assert sorted((b["id"], b["payload"]["n"]) for b in bodies) == sorted(
        (i, n) for n, i in enumerate(ids)
    )


async def test_a_missing_partition_is_made_on_the_spot(
    make_settings: Callable[..., Settings], database_url: str, db: Database
) -> None:
    """Maintenance behind (the template has 30 days): the COPY still succeeds, no 500."""
    app = create_app(make_settings(horizon_days=60), database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            timers = [{"url": URL, "seconds": 5}, {"url": URL, "hours": 55 * 24}]
            response = await api.post("/timer/batch", json={"timers": timers})
    assert response.status_code == 200, response.text
    assert await db.timers.counts() == {"pending": 2}


async def test_the_insert_and_the_copy_make_identical_rows_for_every_field_combination(
    db: Database,
) -> None:
    # The two ways of writing a new row (timer_insert's SQL, the batch's COPY in db/bulk.py)
    # over every combination of the fields that shape a row: each pair of rows is the same
    # in every column but the random bits of the id and the instant of the write.
    axes = ["at", "window", "payload", "headers", "timeout", "attempts", "delivery",
            "priority", "resources", "request_id", "tenant", "port"]  # fmt: skip
    combos = list(itertools.product([False, True], repeat=len(axes)))
    now = datetime.now(UTC).replace(microsecond=0)
    now_ms = int(now.timestamp() * 1000)
    delays, urls, options = [], [], []
    for i, combo in enumerate(combos):
        on = dict(zip(axes, combo, strict=True))
        delays.append(1000 + (i % 97) * 13)
        urls.append("https://Api.Example.com:8443/h?x=1" if on["port"] else f"{URL}/{i}")
        options.append(
            DeliveryOptions(
                payload='{"n":1,"s":"tab\\tline\\nquote\\"back\\\\"}' if on["payload"] else None,
                headers='{"X-A":"b"}' if on["headers"] else None,
                timeout_ms=2500 if on["timeout"] else None,
                **({"max_attempts": 3} if on["attempts"] else {}),
                **({"delivery": "at_most_once"} if on["delivery"] else {}),
                **({"priority": 9} if on["priority"] else {}),
                resources=("a", "b:c") if on["resources"] else None,
                request_id="req-1" if on["request_id"] else None,
                tenant="acme" if on["tenant"] else "default",
                at_ms=now_ms + 60_000 + i if on["at"] else None,
                window_ms=30_000 if on["window"] else None,
            )
        )
    by_insert = await db.creates.insert(delays, urls, shards=1, now=now, options=options)
    by_copy = await db.creates.insert_batch(delays, urls, options, shards=1, now=now)
    assert [t.due_at for t in by_insert] == [t.due_at for t in by_copy.timers]
    assert [t.time_left for t in by_insert] == [t.time_left for t in by_copy.timers]
    skip = {"id", "created_at"}
    async with db.timers.connection() as conn:
        cur = await conn.execute("select * from timers where id = any(%s)",
                                 [[t.id for t in (*by_insert, *by_copy.timers)]])  # fmt: skip
        names = [c.name for c in cur.description or ()]
        rows = {r[0]: dict(zip(names, r, strict=True)) for r in await cur.fetchall()}
    assert len(rows) == 2 * len(combos)
    for one, other in zip(by_insert, by_copy.timers, strict=True):
        a, b = rows[one.id], rows[other.id]
        assert {k: v for k, v in a.items() if k not in skip} == {
            k: v for k, v in b.items() if k not in skip
        }
        # the id: the due time in its leading 48 bits, version 7, the RFC 4122 variant
        assert due_ms_of(one.id) == due_ms_of(other.id) == int(a["due_at"].timestamp() * 1000)
        assert one.id.version == other.id.version == 7
        assert one.id.variant == other.id.variant
