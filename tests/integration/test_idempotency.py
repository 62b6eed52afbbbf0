"""Idempotency-Key on POST /timer: retries return the same timer, also when concurrent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx

from db.database import Database

URL = "https://someserver.com"


async def test_a_retried_request_returns_the_same_timer(
    client: httpx.AsyncClient, db: Database
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/timer", json={"minutes": 5, "url": URL}, headers=headers)
    again = await client.post(
        "/timer", json={"url": URL, "minutes": 5, "hours": 0}, headers=headers
    )  # the same request, written differently
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["time_left"] == 300
    assert 299 <= again.json()["time_left"] <= 300
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert await db.timers.counts() == {"pending": 1}


async def test_the_same_key_with_another_body_is_refused(
    client: httpx.AsyncClient, db: Database
) -> None:
    headers = {"Idempotency-Key": "order-43"}
    await client.post("/timer", json={"minutes": 5, "url": URL}, headers=headers)
    other = await client.post("/timer", json={"minutes": 6, "url": URL}, headers=headers)
    assert other.status_code == 422
    assert other.json()["errors"] == [
        {
            "field": "Idempotency-Key",
            "reason": "was already used with a different request body; "
            "use a new key for a new timer",
        }
    ]
    assert await db.timers.counts() == {"pending": 1}


async def test_concurrent_retries_create_one_timer(client: httpx.AsyncClient, db: Database) -> None:
    headers = {"Idempotency-Key": "burst-1"}
    responses = await asyncio.gather(
        *(client.post("/timer", json={"seconds": 90, "url": URL}, headers=headers)
          for _ in range(25))
    )  # fmt: skip
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(1 for r in responses if "idempotent-replayed" not in r.headers) == 1
    assert await db.timers.counts() == {"pending": 1}


async def test_different_keys_make_different_timers(
    client: httpx.AsyncClient, db: Database
) -> None:
    for key in ("a", "b"):
        await client.post(
            "/timer", json={"seconds": 9, "url": URL}, headers={"Idempotency-Key": key}
        )
    assert await db.timers.counts() == {"pending": 2}


async def test_an_overlong_key_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/timer", json={"seconds": 9, "url": URL}, headers={"Idempotency-Key": "k" * 256}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "idempotency-key"


async def test_keys_are_remembered_for_the_window_then_purged(
    client: httpx.AsyncClient, db: Database
) -> None:
    await client.post("/timer", json={"seconds": 9, "url": URL}, headers={"Idempotency-Key": "k"})
    day_later = datetime.now(UTC) + timedelta(hours=24)
    assert await db.creates.purge_idempotency(hours=48, now=day_later) == 0  # kept 24 h on
    assert await db.creates.purge_idempotency(hours=48, now=day_later + timedelta(hours=25)) == 1
