"""GET /timer: state filters and keyset pagination; the listing reads its index."""

from __future__ import annotations

import httpx

from db.database import Database
from db.query_loader import query
from tests.conftest import MakeTimer


async def _set_states(db: Database, states: dict[str, object]) -> None:
    async with db.pool.connection() as conn:
        for timer_id, state in states.items():
            await conn.execute(
                "update timers set state = %s, attempts = 1, finished_at = now() where id = %s",
                (state, timer_id),
            )


async def _pages(client: httpx.AsyncClient, **params: object) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/timer", params=query)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def test_pages_walk_every_timer_once_in_due_order(
    client: httpx.AsyncClient, make_timer: MakeTimer
) -> None:
    # due times spread over days, so the pages cross partitions
    created = [await make_timer(delay_ms=(i % 5) * 86_400_000 + i * 1000) for i in range(23)]
    pages = await _pages(client, limit=5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    listed = [i for page in pages for i in page]
    expected = sorted(created, key=lambda t: (t.due_at, t.id))
    assert listed == [str(t.id) for t in expected]


async def test_a_state_filter_lists_only_those_states(
    client: httpx.AsyncClient, make_timer: MakeTimer, db: Database
) -> None:
    created = [str((await make_timer(delay_ms=i * 1000)).id) for i in range(12)]
    await _set_states(db, {created[1]: "dead", created[4]: "failed", created[7]: "dead",
                           created[8]: "delivered", created[10]: "dead"})  # fmt: skip
    dead_letters = [i for p in await _pages(client, status="dead,failed", limit=2) for i in p]
    assert dead_letters == [created[1], created[4], created[7], created[10]]
    repeated = await client.get("/timer", params=[("status", "dead"), ("status", "delivered")])
    assert [t["id"] for t in repeated.json()["items"]] == [created[1], created[7], created[8],
                                                           created[10]]  # fmt: skip
    pending = [i for p in await _pages(client, status="pending", limit=100) for i in p]
    assert len(pending) == 7
    item = repeated.json()["items"][0]
    assert (item["status"], item["attempts"], item["max_attempts"]) == ("dead", 1, 8)


async def test_bad_listing_parameters_are_refused_by_name(client: httpx.AsyncClient) -> None:
    for params, field in (
        ({"status": "sleeping"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ):
        response = await client.get("/timer", params=params)
        assert response.status_code == 422, params
        assert response.json()["errors"][0]["field"] == field


async def test_listing_dead_letters_reads_the_state_index(
    db: Database, make_timer: MakeTimer
) -> None:
    await db.creates.insert([1000] * 200, ["https://x.org"] * 200, shards=16)
    dead = await make_timer(delay_ms=5000)
    await _set_states(db, {str(dead.id): "dead"})
    async with db.pool.connection() as conn:
        await conn.execute("analyze timers")
        await conn.execute("set enable_seqscan = off")  # the tables are tiny; ask for the plan
        cur = await conn.execute(
            "explain (format text) " + query("timer_list"),
            {
                "states": ["dead"],
                "limit": 10,
                "after": None,
                "after_bucket": None,
                "tenant": None,
                "once_only": False,
            },
        )
        plan = "\n".join(str(r[0]) for r in await cur.fetchall())
    assert "state_id_idx" in plan, plan
    assert [t.id for t in await db.timers.listing(states=["dead"], limit=10)] == [dead.id]
