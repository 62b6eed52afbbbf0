"""The published contract of DESIGN section 6, through the real app on a real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx

from core.ids import bucket_of, due_ms_of, partition_of
from db.database import Database
from tests.conftest import MakeTimer

URL = "https://someserver.com"


async def test_create_answers_id_and_time_left_rounded_up(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/timer", json={"hours": 4, "minutes": 0, "seconds": 1, "url": URL}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "time_left"}
    assert body["time_left"] == 14401
    assert uuid.UUID(body["id"]).version == 7
    assert response.headers["location"] == f"/timer/{body['id']}"


async def test_get_answers_the_same_shape_counting_down(client: httpx.AsyncClient) -> None:
    created = (await client.post("/timer", json={"minutes": 10, "url": URL})).json()
    response = await client.get(f"/timer/{created['id']}")
    assert response.status_code == 200
    body = response.json()
    # The contract's two fields, unchanged, then the optional extensions.
    assert body["id"] == created["id"]
    assert 599 <= body["time_left"] <= 600
    assert list(body)[:2] == ["id", "time_left"]
    assert set(body) == {
        "id", "time_left", "status", "due_at", "attempts", "last_result", "url",
        "next_attempt_at", "max_attempts", "delivery", "payload", "headers", "timeout_seconds",
        "priority", "resources", "waiting_on",  # the planner's fields (issue 8)
        "request_id",  # the create's X-Request-ID (issue 11)
        "tenant",  # whose it is (issue 10)
        "kind", "series_id", "occurrence",  # once, or an occurrence of a series (issue 9)
        "deadline_at", "after",  # an SLA window's end, dependencies (issue 9)
    }  # fmt: skip
    assert (body["status"], body["attempts"], body["last_result"]) == ("pending", 0, None)
    assert (body["max_attempts"], body["delivery"], body["payload"]) == (8, "at_least_once", None)
    assert body["next_attempt_at"] == body["due_at"] and body["url"] == URL
    due = datetime.fromisoformat(body["due_at"])
    assert due_ms_of(uuid.UUID(body["id"])) == int(due.timestamp() * 1000)


async def test_an_expired_timer_says_zero_never_negative(
    client: httpx.AsyncClient, make_timer: MakeTimer
) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    timer = await make_timer(delay_ms=5000, now=past)  # due 55 minutes ago
    body = (await client.get(f"/timer/{timer.id}")).json()
    assert (body["id"], body["time_left"]) == (str(timer.id), 0)


async def test_unknown_and_malformed_ids_are_404_problems(client: httpx.AsyncClient) -> None:
    unknown_v7 = uuid.UUID(int=(1_795_000_000_000 << 80) | (7 << 76) | (2 << 62) | 12345)
    for timer_id in [str(unknown_v7), str(uuid.uuid4()), "nope", "1" * 300, "%00"]:
        response = await client.get(f"/timer/{timer_id}")
        assert response.status_code == 404, timer_id
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 404


async def test_the_timer_lands_in_the_partition_its_id_names(
    client: httpx.AsyncClient, db: Database
) -> None:
    created = (await client.post("/timer", json={"hours": 30, "url": URL})).json()
    timer_id = uuid.UUID(created["id"])
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "select tableoid::regclass::text, bucket, due_at from timers where id = %s",
            (timer_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    partition, bucket, due_at = row
    assert bucket == bucket_of(timer_id)
    assert partition == partition_of(bucket)
    assert int(due_at.timestamp() * 1000) == due_ms_of(timer_id)
    assert due_at <= bucket < due_at + timedelta(seconds=1)


async def test_ids_are_unique_and_unguessable(client: httpx.AsyncClient) -> None:
    ids = [
        uuid.UUID((await client.post("/timer", json={"seconds": 60, "url": URL})).json()["id"])
        for _ in range(20)
    ]
    assert len(set(ids)) == 20
    # Same due second or not, the 74 random bits differ.
    randoms = {i.int & ((1 << 62) - 1) for i in ids}
    assert len(randoms) == 20


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/timer" in spec["paths"]
    assert "/timer/{timer_id}" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200


async def test_health_and_readiness_while_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_readiness_needs_the_current_schema(
    client: httpx.AsyncClient, database_url: str
) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "delete from schema_migrations"
            " where version = (select max(version) from schema_migrations)"
        )
    ready = await client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert "run migrate" in ready.json()["detail"]
    assert (await client.get("/healthz")).status_code == 200  # alive, only not ready


async def test_a_lost_database_is_a_503_problem_never_a_500(
    client: httpx.AsyncClient, pg_admin_url: str, database_url: str
) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from tests.support import postgres

    server = conninfo_to_dict(database_url)
    postgres.drop_database(pg_admin_url, str(server["dbname"]))
    for method, path, body in [
        ("POST", "/timer", {"seconds": 5, "url": URL}),
        ("GET", "/timer/01a208e8-fcba-7d11-90dc-a8ad99086503", None),
        ("GET", "/timer", None),
        ("GET", "/readyz", None),
    ]:
        response = await client.request(method, path, json=body)
        assert response.status_code == 503, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        # What failed, in words: never the driver's text, the server's host, port or database.
        detail = response.json()["detail"]
        assert "database" in detail, detail
        for secret in (server.get("host"), server.get("port"), server["dbname"], "psycopg",
                       "connection to server"):  # fmt: skip
            assert not secret or str(secret) not in detail, (path, detail)
    assert (await client.get("/healthz")).status_code == 200  # the process itself is alive


async def test_a_method_a_path_does_not_take_is_a_405_naming_every_method_it_takes(
    client: httpx.AsyncClient,
) -> None:
    # Routes of included routers live inside them, not in app.routes: Allow was empty.
    for method, path, allowed in (
        ("OPTIONS", "/timer", "GET, HEAD, POST"),
        ("PUT", "/timer", "GET, HEAD, POST"),
        ("PUT", f"/timer/{uuid.uuid4()}", "DELETE, GET, HEAD"),
    ):
        response = await client.request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed, (method, path)
        assert response.headers["content-type"] == "application/problem+json"
