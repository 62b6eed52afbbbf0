"""The admin commands, run as real ``timerhook`` processes against this test's database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from core.caps import GLOBAL
from db.database import Database

pytestmark = pytest.mark.slow


async def _timerhook(
    database_url: str, *args: str, columns: int = 160
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIMERHOOK_DATABASE_URL": database_url, "COLUMNS": str(columns)}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli.main", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_backlog_shows_pending_per_step_and_the_overdue(
    db: Database, database_url: str
) -> None:
    await db.creates.insert([30_000] * 7 + [90_000] * 3, ["https://x.org"] * 10, shards=16)
    await db.creates.insert([-65_000] * 4, ["https://x.org"] * 4, shards=16)  # a minute overdue
    result = await _timerhook(database_url, "backlog", "--window", "2m")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "pending timers, next 2m in steps of 5 s" in out
    assert "│       7 │" in out and "│       3 │" in out
    assert "overdue: 4" in out
    assert "oldest overdue: 1.1 min" in out or "oldest overdue: 6" in out
    assert "total ahead: 10" in out


async def test_backlog_refuses_a_bad_window(database_url: str) -> None:
    result = await _timerhook(database_url, "backlog", "--window", "soon")
    assert result.returncode == 2
    assert "90s, 10m, 2h or 1d" in result.stderr


async def test_dispatchers_lists_the_registry_with_liveness(
    db: Database, database_url: str
) -> None:
    await db.dispatchers.register(dispatcher_id="alive-one", host="h1", pid=11)
    await db.dispatchers.register(dispatcher_id="gone-one", host="h2", pid=22)
    await db.dispatchers.deregister(dispatcher_id="gone-one")
    async with db.pool.connection() as conn:
        await conn.execute("insert into dispatchers (id, host, pid, heartbeat_at) "
                           "values ('dead-one', 'h3', 33, now() - interval '1 hour')")  # fmt: skip
    result = await _timerhook(database_url, "dispatchers")
    assert result.returncode == 0, result.stderr
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines()
             if line.startswith("│") and "-one" in line}  # fmt: skip
    assert "alive" in lines["alive-one"]
    assert "stopped" in lines["gone-one"]
    assert "dead" in lines["dead-one"]


async def test_caps_set_and_show(db: Database, database_url: str) -> None:
    result = await _timerhook(database_url, "caps", "set", "global", "6000")
    assert result.returncode == 0, result.stderr
    assert "global cap: 6,000/min (100.0/s)" in result.stdout
    assert [(c.scope, c.per_minute) for c in await db.caps.list()] == [(GLOBAL, 6000)]
    shown = await _timerhook(database_url, "caps")
    assert "6,000" in shown.stdout and "100.0/s" in shown.stdout
    refused = await _timerhook(database_url, "caps", "set", "tenant", "5")  # no name
    assert refused.returncode == 2 and "tenant NAME N" in refused.stderr
    negative = await _timerhook(database_url, "caps", "set", "global", "-5")
    assert negative.returncode == 2
    with_port = await _timerhook(database_url, "caps", "set", "host", "api.example.com:8080", "6")
    assert with_port.returncode == 2 and "without its port" in with_port.stderr
    assert [(c.scope, c.per_minute) for c in await db.caps.list()] == [(GLOBAL, 6000)]
    # Tenants' and hosts' caps beside the global one; hosts as URLs name them, lower case.
    for args in (
        ("tenant", "acme", "600"),
        ("host", "API.Example.com", "60"),
        ("host", "[::1]", "6"),
    ):
        done = await _timerhook(database_url, "caps", "set", *args)
        assert done.returncode == 0, done.stderr
    assert [(c.scope, c.per_minute) for c in await db.caps.list()] == [
        (GLOBAL, 6000),
        ("host:::1", 6),
        ("host:api.example.com", 60),
        ("tenant:acme", 600),
    ]


async def test_dead_lists_dead_letters_and_requeue_puts_them_back(
    db: Database, database_url: str
) -> None:
    created = await db.creates.insert(
        [0] * 4, ["https://a.example/1", "https://a.example/2", "https://b.example/1",
                  "https://b.example/2"], shards=16,
    )  # fmt: skip
    ids = [t.id for t in created]
    async with db.pool.connection() as conn:
        await conn.execute(
            "update timers set state = 'dead', attempts = 8, last_status = 503, "
            "last_error = 'HTTP 503', finished_at = now() where id = any(%s)", (ids[:3],),
        )  # fmt: skip
        await conn.execute("update timers set state = 'delivered', attempts = 1, "
                           "finished_at = now() where id = %s", (ids[3],))  # fmt: skip
    listed = await _timerhook(database_url, "dead")
    assert listed.returncode == 0, listed.stderr
    assert all(str(i) in listed.stdout for i in ids[:3]) and str(ids[3]) not in listed.stdout

    one = await _timerhook(database_url, "requeue", str(ids[0]))
    assert (one.returncode, one.stdout.strip()) == (0, f"requeued 1 timer: {ids[0]}")
    again = await _timerhook(database_url, "requeue", str(ids[0]))
    assert again.returncode == 1 and "is pending" in again.stdout
    delivered = await _timerhook(database_url, "requeue", str(ids[3]))
    assert delivered.returncode == 1 and "is delivered" in delivered.stdout
    bare = await _timerhook(database_url, "requeue")
    assert bare.returncode == 2 and "--all" in bare.stderr

    only_b = await _timerhook(database_url, "requeue", "--all", "--url-prefix", "https://b.")
    assert (only_b.returncode, only_b.stdout.strip()) == (0, "requeued 1 timer")
    rest = await _timerhook(database_url, "requeue", "--all", "--status", "dead")
    assert (rest.returncode, rest.stdout.strip()) == (0, "requeued 1 timer")
    states = [(await db.timers.get(i)).state for i in ids]  # type: ignore[union-attr]
    assert states == ["pending", "pending", "pending", "delivered"]


async def test_plan_shows_what_goes_now_and_why_the_rest_waits(
    db: Database, database_url: str
) -> None:
    # 1/min: the bucket holds at most 1 + 1/60 tokens, so exactly one whole token now
    await db.caps.set(scope=GLOBAL, per_minute=1)
    async with db.pool.connection() as conn:
        await conn.execute("update caps set tokens = 1, updated_at = now()")
    from db.models import DeliveryOptions

    await db.creates.insert(
        [-5000] * 3, ["https://a.example/x"] * 3, shards=16,
        options=[DeliveryOptions(priority=p) for p in (2, 9, 4)],
    )  # fmt: skip
    [holder] = await db.creates.insert(
        [-5000], ["https://b.example/y"], shards=16,
        options=[DeliveryOptions(priority=10, resources=("scanner",))],
    )  # fmt: skip
    async with db.pool.connection() as conn:  # someone holds the scanner
        await conn.execute(
            "insert into resource_holds (tenant, resource, timer_id, bucket, owner) "
            "values ('default', 'scanner', gen_random_uuid(), now(), 'd1')"
        )
    await db.circuits.open(host="c.example", seconds=60, failures=5, reason="refused", owner="d1")
    await db.creates.insert([-5000], ["https://c.example/z"], shards=16)
    result = await _timerhook(database_url, "plan")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(lines) == 5, result.stdout
    # Priority order; the one token goes to priority 9; the others say why they wait.
    assert "scanner" in lines[0] and "resource scanner held by timer" in lines[0]
    assert "│    9 │" in lines[1] and "send" in lines[1]
    assert "│    5 │" in lines[2] and "circuit open for host c.example: refused" in lines[2]
    assert "│    4 │" in lines[3] and "global cap: no token left now" in lines[3]
    assert "│    2 │" in lines[4] and "global cap" in lines[4]
    assert "1 would go now, 4 wait; global cap 1/min" in result.stdout
    assert "open circuits: c.example" in result.stdout
    assert str(holder.id)[:8] in lines[0]


async def test_tenants_set_and_show_and_keys_revoke(db: Database, database_url: str) -> None:
    empty = await _timerhook(database_url, "tenants")
    assert "no tenant has quotas" in empty.stdout, empty.stdout
    done = await _timerhook(
        database_url, "tenants", "set", "billing", "--max-pending", "100",
        "--creates-per-minute", "600", "--max-payload-bytes", "4096",
        "--signing-secret", "whsec_" + "c2VjcmV0LW9mLWJpbGxpbmctMzItYnl0ZXMtbG9uZyE=",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [tenant] = await db.tenants.list()
    assert (tenant.name, tenant.max_pending, tenant.creates_per_minute) == ("billing", 100, 600)
    assert tenant.max_payload_bytes == 4096 and tenant.signing_secret is not None
    shown = await _timerhook(database_url, "tenants")
    row = next(line for line in shown.stdout.splitlines() if "billing" in line)
    assert "100" in row and "600" in row and "4,096" in row and "own secret" in row
    # 0 removes a quota, what is not given stays; a malformed secret is refused.
    assert (
        await _timerhook(database_url, "tenants", "set", "billing", "--max-pending", "0")
    ).returncode == 0
    [tenant] = await db.tenants.list()
    assert tenant.max_pending is None and tenant.creates_per_minute == 600
    bad = await _timerhook(database_url, "tenants", "set", "billing", "--signing-secret", "nope")
    assert bad.returncode == 2 and "whsec_" in bad.stderr
    made = await _timerhook(database_url, "keys", "create", "--tenant", "billing", "--label", "svc")
    key_id = made.stdout.split(":")[0]
    # The id that revoke takes is shown whole, even in a narrow terminal.
    listed = await _timerhook(database_url, "keys", "list", columns=60)
    assert key_id in listed.stdout, listed.stdout
    revoked = await _timerhook(database_url, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and f"{key_id} revoked" in revoked.stdout
    again = await _timerhook(database_url, "keys", "revoke", key_id)
    assert again.returncode == 1
    [key] = await db.keys.list()
    assert key.revoked_at is not None and key.label == "svc"
