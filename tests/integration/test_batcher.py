"""Group commit: concurrent creates share INSERTs; each still gets its own timer."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from api.batcher import CreateBatcher
from core.ids import due_ms_of
from db.database import Database


async def test_concurrent_creates_share_inserts_and_each_gets_its_own_timer(db: Database) -> None:
    batcher = CreateBatcher(db, shards=16, max_batch=100)
    await batcher.start()
    inserts = 0
    original = db.creates.insert

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal inserts
        inserts += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    db.creates.insert = counting  # type: ignore[method-assign]
    try:
        created = await asyncio.gather(
            *(batcher.create(1000 * (i + 1), f"https://x.org/{i}") for i in range(300))
        )
    finally:
        db.creates.insert = original  # type: ignore[method-assign]
        await batcher.stop()
    assert len({c.id for c in created}) == 300
    assert [c.time_left for c in created] == [i + 1 for i in range(300)]
    assert inserts < 300 / 5, inserts  # real grouping happened
    async with db.pool.connection() as conn:
        cur = await conn.execute("select id, url from timers")
        urls = {row[0]: row[1] for row in await cur.fetchall()}
    for i, c in enumerate(created):
        assert urls[c.id] == f"https://x.org/{i}"  # each request got its own row back


async def test_a_failed_batch_fails_its_requests_and_writes_nothing(db: Database) -> None:
    batcher = CreateBatcher(db, shards=16, max_batch=100)
    await batcher.start()
    try:
        # A delay far past every partition and past what the partition job will make.
        results = await asyncio.gather(
            batcher.create(1000, "https://x.org/ok"),
            batcher.create(86_400_000 * 400, "https://x.org/too-far"),
            return_exceptions=True,
        )
    finally:
        await batcher.stop()
    assert all(isinstance(r, Exception) for r in results) or all(
        not isinstance(r, Exception) for r in results
    )
    counts = await db.timers.counts()
    assert counts in ({}, {"pending": 2}), counts


async def test_creates_over_http_under_concurrency_all_land(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(client.post("/timer", json={"seconds": 5 + i % 7, "url": "https://x.org"})
          for i in range(200))
    )  # fmt: skip
    assert {r.status_code for r in responses} == {200}
    ids = [uuid.UUID(r.json()["id"]) for r in responses]
    assert len(set(ids)) == 200
    for i, (r, timer_id) in enumerate(zip(responses, ids, strict=True)):
        assert r.json()["time_left"] == 5 + i % 7
        assert due_ms_of(timer_id) > 0


@pytest.mark.parametrize("max_batch", [1])
async def test_batching_can_be_turned_off(db: Database, max_batch: int) -> None:
    batcher = CreateBatcher(db, shards=16, max_batch=max_batch)
    await batcher.start()
    try:
        created = await asyncio.gather(*(batcher.create(1000, "https://x.org") for _ in range(5)))
    finally:
        await batcher.stop()
    assert len({c.id for c in created}) == 5
