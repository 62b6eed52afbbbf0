"""API keys, tenant isolation, quotas and per-tenant signing, through the real app."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from api.app import create_app
from api.auth import KEY_CACHE_SECONDS, MISS_RELOAD_SECONDS, Access
from core.settings import Settings
from db.database import Database
from dispatcher.service import Dispatcher
from tests.support.sink import Sink

PROBLEM = "application/problem+json"
TENANT_SECRET = "whsec_" + "dGVuYW50LWEtc2VjcmV0LWtleS0zMmJ5dGVzISEhISE="
GLOBAL_SECRET = "whsec_" + "Z2xvYmFsLXNlY3JldC1rZXktMzItYnl0ZXMhISEhISE="


@dataclass
class Keys:
    a: str
    b: str
    admin: str

    def of(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, who)}"}


@pytest.fixture
async def keys(db: Database) -> Keys:
    """Keys of tenants a and b, and an admin key (of tenant ops), made before the app starts."""
    made = [
        (await db.keys.create(tenant=t, admin=admin, label=None))[1]
        for t, admin in (("a", False), ("b", False), ("ops", True))
    ]
    return Keys(*made)


@pytest.fixture
async def api(
    keys: Keys, settings: Settings, database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan run) once keys exist."""
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://timerhook") as c:
            yield c


async def _create(api: httpx.AsyncClient, who: dict[str, str], **body: object) -> str:
    response = await api.post(
        "/timer", json={"url": "https://example.com/h", "hours": 1, **body}, headers=who
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def _make_dead(db: Database, timer_id: str) -> None:
    async with db.pool.connection() as conn:
        await conn.execute(
            "update timers set state = 'dead', finished_at = now() where id = %s",
            (uuid.UUID(timer_id),),
        )


async def test_each_tenant_sees_only_its_own_timers_and_the_admin_sees_all(
    api: httpx.AsyncClient, keys: Keys, db: Database
) -> None:
    a, b, admin = keys.of("a"), keys.of("b"), keys.of("admin")
    mine, theirs = await _create(api, a), await _create(api, b)
    assert (await api.get(f"/timer/{mine}", headers=a)).json()["tenant"] == "a"
    for route in ("/timer/{}", "/timer/{}/attempts"):
        assert (await api.get(route.format(mine), headers=a)).status_code == 200
        other = await api.get(route.format(theirs), headers=a)
        # exactly what an unknown id answers
        unknown = await api.get(route.format(str(uuid.uuid4())), headers=a)
        assert other.status_code == unknown.status_code == 404
        assert other.headers["content-type"] == PROBLEM
        for timer in (mine, theirs):
            assert (await api.get(route.format(timer), headers=admin)).status_code == 200
    # Listings: own only; the admin sees both and filters by tenant.
    listed = {t["id"] for t in (await api.get("/timer", headers=a)).json()["items"]}
    assert listed == {mine}
    everything = {t["id"] for t in (await api.get("/timer", headers=admin)).json()["items"]}
    assert {mine, theirs} <= everything
    only_b = (await api.get("/timer", params={"tenant": "b"}, headers=admin)).json()["items"]
    assert [t["id"] for t in only_b] == [theirs]
    assert (await api.get("/timer", params={"tenant": "b"}, headers=a)).status_code == 403
    # Requeue: own dead letter yes, another tenant's is unknown, the admin may.
    dead_a, dead_b = await _create(api, a), await _create(api, b)
    for timer in (dead_a, dead_b):
        await _make_dead(db, timer)
    assert (await api.post(f"/timer/{dead_b}/requeue", headers=a)).status_code == 404
    assert (await api.post(f"/timer/{dead_a}/requeue", headers=a)).status_code == 200
    assert (await api.post(f"/timer/{dead_b}/requeue", headers=admin)).status_code == 200
    # Cancel: another tenant's is unknown and stays pending; own and (admin) any: 204.
    assert (await api.delete(f"/timer/{theirs}", headers=a)).status_code == 404
    assert (await db.timers.get(uuid.UUID(theirs)) or pytest.fail()).state == "pending"
    assert (await api.delete(f"/timer/{mine}", headers=a)).status_code == 204
    assert (await api.delete(f"/timer/{theirs}", headers=admin)).status_code == 204


async def test_keys_are_required_once_one_exists_and_admin_routes_need_an_admin_key(
    api: httpx.AsyncClient, keys: Keys
) -> None:
    some_id = str(uuid.uuid4())
    timer_routes = [
        ("POST", "/timer", {"url": "https://example.com/h", "seconds": 5}),
        ("GET", f"/timer/{some_id}", None),
        ("GET", f"/timer/{some_id}/attempts", None),
        ("DELETE", f"/timer/{some_id}", None),
        ("POST", f"/timer/{some_id}/requeue", None),
        ("GET", "/timer", None),
    ]
    admin_routes = [
        ("POST", "/timer/requeue", {}),
        ("GET", "/dispatchers", None),
        ("GET", "/metrics", None),
        ("GET", "/dashboard/state", None),
    ]
    bad_keys = [{}, {"Authorization": "Bearer thk_not-a-key"}, {"Authorization": "Basic x"}]
    for method, path, body in timer_routes + admin_routes:
        for headers in bad_keys:
            response = await api.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["content-type"] == PROBLEM
            assert response.headers["www-authenticate"] == "Bearer"
    # The key is checked before the body is parsed: a body no create could take, without a
    # valid key, is a 401, never a 422 that read it.
    for headers in bad_keys:
        for content in (b"{not json", b'{"url": 5}', b"x" * 10_000):
            response = await api.post(
                "/timer", content=content, headers={**headers, "content-type": "application/json"}
            )
            assert response.status_code == 401, (headers, content[:20], response.text)
    for method, path, body in admin_routes:
        refused = await api.request(method, path, json=body, headers=keys.of("a"))
        assert refused.status_code == 403, (path, refused.text)
        assert "admin key" in refused.json()["detail"]
        allowed = await api.request(method, path, json=body, headers=keys.of("admin"))
        assert allowed.status_code == 200, (path, allowed.text)
    # Health checks and the dashboard's page are never behind a key.
    for path in ("/healthz", "/readyz", "/dashboard"):
        assert (await api.get(path)).status_code == 200, path


async def test_a_revoked_key_is_locked_out_within_ten_seconds(
    api: httpx.AsyncClient, db: Database
) -> None:
    key_id, key = await db.keys.create(tenant="a", admin=False, label="ci")
    who = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/timer", headers=who)).status_code == 200
    assert await db.keys.revoke(key_id)
    revoked_at = time.monotonic()
    while (await api.get("/timer", headers=who)).status_code == 200:
        assert time.monotonic() - revoked_at < 10, "the revoked key still works after 10 s"
        await asyncio.sleep(0.1)
    assert (await api.get("/timer", headers=who)).status_code == 401
    [listed] = [k for k in await db.keys.list() if k.id == key_id]
    assert listed.revoked_at is not None and listed.last_used_at is not None


async def test_a_flood_of_bad_keys_costs_no_statement_each_and_evicts_no_good_key(
    keys: Keys, settings: Settings, database_url: str
) -> None:
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        access: Access = app.state.access
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            assert (await api.get("/timer", headers=keys.of("a"))).status_code == 200
            loads, began = access.loads, time.monotonic()
            # 10,000 distinct keys of the right shape, none valid, a thousand at a time
            bad = [f"thk_{secrets.token_urlsafe(32)}" for _ in range(10_000)]
            for i in range(0, len(bad), 1000):
                answers = await asyncio.gather(*(
                    api.get("/timer", headers={"Authorization": f"Bearer {key}"})
                    for key in bad[i : i + 1000]
                ))  # fmt: skip
                assert {r.status_code for r in answers} == {401}
            spent = time.monotonic() - began
            # Each load of the valid keys is one statement. The misses share loads, at most
            # one every MISS_RELOAD_SECONDS, besides the periodic ones: not one per key.
            most = spent / MISS_RELOAD_SECONDS + spent / KEY_CACHE_SECONDS + 2
            assert access.loads - loads <= most, (access.loads - loads, spent)
            assert access.loads - loads < 100
            # The good key was not evicted: still answered from memory (a periodic load at
            # most, if one came due).
            loads = access.loads
            assert (await api.get("/timer", headers=keys.of("a"))).status_code == 200
            assert access.loads - loads <= 1


async def _count(db: Database, tenant: str) -> int:
    async with db.pool.connection() as conn:
        cur = await conn.execute("select count(*) from timers where tenant = %s", (tenant,))
        row = await cur.fetchone()
    return int(row[0]) if row else -1


async def test_the_max_pending_quota_refuses_the_next_create_and_writes_nothing(
    db: Database, keys: Keys, settings: Settings, database_url: str
) -> None:
    await db.tenants.set("a", max_pending=5)
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            a = keys.of("a")
            # 20 creates at once for a quota of 5: exactly 5 are written, one by one.
            answers = await asyncio.gather(
                *(api.post("/timer", json={"url": "https://example.com/h", "hours": 1},
                           headers=a) for _ in range(20))
            )  # fmt: skip
            codes = sorted(r.status_code for r in answers)
            assert codes == [200] * 5 + [429] * 15, codes
            refused = next(r for r in answers if r.status_code == 429)
            assert refused.headers["content-type"] == PROBLEM
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["errors"][0]["field"] == "max_pending"
            assert "max_pending" in refused.json()["detail"]
            assert await _count(db, "a") == 5
            # Another tenant is not held to a's quota; a cancel makes room again.
            await _create(api, keys.of("b"))
            first = next(r for r in answers if r.status_code == 200).json()["id"]
            assert (await api.delete(f"/timer/{first}", headers=a)).status_code == 204
            await _create(api, a)
            again = await api.post(
                "/timer", json={"url": "https://example.com/h", "hours": 1}, headers=a
            )
            assert again.status_code == 429
            assert await _count(db, "a") == 6  # 5 pending and the cancelled one


async def test_the_creates_per_minute_and_payload_quotas(
    db: Database, keys: Keys, settings: Settings, database_url: str
) -> None:
    await db.tenants.set("a", creates_per_minute=4, max_payload_bytes=100)
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            a = {**keys.of("a"), "Idempotency-Key": "k1"}
            first = await _create(api, a)
            # A replay of a keyed create spends no token.
            assert await _create(api, a) == first
            for _ in range(3):
                await _create(api, keys.of("a"))
            over = await api.post(
                "/timer", json={"url": "https://example.com/h", "seconds": 9}, headers=keys.of("a")
            )
            assert over.status_code == 429, over.text
            assert over.json()["errors"][0]["field"] == "creates_per_minute"
            assert 1 <= int(over.headers["retry-after"]) <= 15  # one token every 15 s
            assert await _count(db, "a") == 4
            big = await api.post(
                "/timer", headers=keys.of("a"),
                json={"url": "https://example.com/h", "seconds": 9, "payload": {"x": "y" * 200}},
            )  # fmt: skip
            assert big.status_code == 413
            assert big.json()["errors"][0]["field"] == "max_payload_bytes"
            # The same key in another tenant is another tenant's key: a new timer.
            b = {**keys.of("b"), "Idempotency-Key": "k1"}
            assert await _create(api, b) != first


async def test_a_tenant_with_its_own_secret_signs_with_it_alone(
    db: Database,
    keys: Keys,
    sink: Sink,
    make_settings: Callable[..., Settings],
    database_url: str,
    start_dispatcher: Callable[..., Awaitable[Dispatcher]],
) -> None:
    await db.tenants.set("a", signing_secret=TENANT_SECRET)
    settings = make_settings(signing_secret=GLOBAL_SECRET)
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            ids = {
                who: await _create(api, keys.of(who), url=f"{sink.url}/{who}", seconds=0, hours=0)
                for who in ("a", "b")
            }
    await start_dispatcher(settings)
    received = await sink.wait_for(2, timeout=10)
    by_path = {r.path: r for r in received}
    for who, secret, other in (("a", TENANT_SECRET, GLOBAL_SECRET),
                               ("b", GLOBAL_SECRET, TENANT_SECRET)):  # fmt: skip
        r = by_path[f"/{who}"]
        assert json.loads(r.body)["id"] == ids[who]
        headers = {k: v for k, v in r.headers.items() if k.lower().startswith("webhook-")}
        Webhook(secret).verify(r.body, headers)
        with pytest.raises(Exception, match="signature"):
            Webhook(other).verify(r.body, headers)
