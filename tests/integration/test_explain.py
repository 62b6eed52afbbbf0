"""The hot queries use the indexes they were written for (as pgqueuer checks)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from core.caps import NO_CAPPED
from core.ids import bucket_of, partition_of
from db.database import Database
from db.query_loader import query


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


async def _explain(db: Database, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with db.pool.connection() as conn:
        cur = await conn.execute(f"explain (format json) {sql}", params)  # type: ignore[arg-type]
        row = await cur.fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return _nodes(doc[0]["Plan"])


async def _history(db: Database) -> None:
    """20,000 delivered timers today and a handful pending, then ANALYZE: a realistic table."""
    now = datetime.now(UTC)
    async with db.pool.connection() as conn:
        await conn.execute(
            """
            insert into timers (id, bucket, due_at, run_at, slot, shard, url, state, finished_at)
            select timerhook_id(ms), b, d, d, b, (g %% 16)::smallint, 'https://x.org',
                   'delivered', d
            from generate_series(1, 20000) g,
                 lateral (select (extract(epoch from %(now)s::timestamptz) * 1000)::bigint
                                 - g * 3 as ms) m,
                 lateral (select 'epoch'::timestamptz + ms * interval '1 millisecond' as d,
                                 'epoch'::timestamptz + ceil(ms / 1000.0) * interval '1 second'
                                     as b) x
            """,
            {"now": now},
        )
        await conn.execute("analyze timers")
    await db.creates.insert([0, 500, 2000], ["https://x.org"] * 3, shards=16)


async def _rows(db: Database) -> dict[str, float]:
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "select relname, reltuples from pg_class where relname ~ '^timers_p[0-9]{8}$'"
        )
        return {str(name): float(n) for name, n in await cur.fetchall()}


# No tenant or host has a cap of its own: the claims' parameters for that.
UNCAPPED = NO_CAPPED.params()


def _scans(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in nodes if "Relation Name" in n and "Scan" in n["Node Type"]]


async def test_the_due_query_reads_the_partial_pending_index(db: Database) -> None:
    await _history(db)
    rows = await _rows(db)
    nodes = await _explain(
        db, query("bucket_keys_due"), {"limit": 64, "lookahead": 1.5, "now": None, **UNCAPPED}
    )
    scans = _scans(nodes)
    # Future partitions cannot hold anything due: pruned at executor start-up.
    assert {n["Relation Name"] for n in scans} <= {
        "timers_p" + (datetime.now(UTC) + timedelta(days=d)).strftime("%Y%m%d") for d in (-1, 0, 1)
    }
    assert sum(n.get("Subplans Removed", 0) for n in nodes) >= 25
    # Every partition that holds rows is read through the pending index; a sequential scan
    # is only ever planned for an empty partition, where it reads nothing.
    for scan in scans:
        if rows[scan["Relation Name"]] > 0:
            assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan
            assert scan["Index Name"].endswith("slot_shard_run_at_idx"), scan


async def test_the_claim_reads_the_partial_pending_index(db: Database) -> None:
    await _history(db)
    [key, *_] = await db.leases.due_keys(limit=1, lookahead_seconds=3)
    params = {
        "slot": key.slot,
        "shard": key.shard,
        "lock_key": 1,
        "owner": "x",
        "batch": 100,
        "lease_seconds": 30,
        "now": None,
        **UNCAPPED,
    }
    nodes = await _explain(db, query("bucket_claim"), params)
    rows = await _rows(db)
    busy = [n for n in _scans(nodes) if rows[n["Relation Name"]] > 0]
    assert busy, nodes
    # The rows are picked through the pending index, then updated through the primary key.
    assert {s["Index Name"].removeprefix(s["Relation Name"]) for s in busy} <= {
        "_slot_shard_run_at_idx",
        "_pkey",
    }, busy
    assert any(s["Index Name"].endswith("_slot_shard_run_at_idx") for s in busy)


async def test_get_by_id_touches_exactly_one_partition(db: Database) -> None:
    [created] = await db.creates.insert([86_400_000 * 3], ["https://x.org"], shards=16)
    bucket = bucket_of(created.id)
    nodes = await _explain(
        db, query("timer_get"), {"id": created.id, "bucket": bucket, "now": None, "tenant": None}
    )
    touched = [n["Relation Name"] for n in nodes if "Relation Name" in n]
    # one partition of timers, and whether it waits for other timers (issue 9's ``after``)
    # from timer_deps by its primary key
    assert touched == [partition_of(bucket), "timer_deps"], touched
    assert any(n.get("Index Name") == "timer_deps_pkey" for n in nodes), nodes
