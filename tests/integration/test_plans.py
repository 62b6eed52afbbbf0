"""Statement cost independent of the horizon: at the default 365-day horizon (about 368
partitions per table) every hot statement plans in at most 5 ms on a pooled connection.

Each statement runs as the dispatcher and the API run it: on a connection of the product's
pool (configured by db/connection.py), prepared by psycopg, with the parameters the stores
pass. ``EXPLAIN (ANALYZE, SUMMARY) EXECUTE`` of that prepared statement then reports its
planning time. Without the pool's ``plan_cache_mode`` PostgreSQL's default would plan some of
them (``bucket_claim``, ``timer_record``) over every partition on every run: 50 to 600 ms.
"""

from __future__ import annotations

import re
import statistics
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from core.ids import bucket_of, lock_key
from core.settings import Settings
from db.creating import insert_params
from db.database import Database
from db.leases import REAP_LIMIT
from db.params import named_rows
from db.query_loader import query
from tests.support import postgres

HORIZON_DAYS = Settings.model_fields["horizon_days"].default
PLANNING_BOUND_MS = 5.0


@pytest.fixture(scope="module")
def horizon_url(pg_admin_url: str) -> Iterator[str]:
    """A database migrated with the default horizon's partitions."""
    assert HORIZON_DAYS == 365
    name = postgres.build_template(pg_admin_url, HORIZON_DAYS)
    yield postgres.with_database(pg_admin_url, name)
    postgres.drop_database(pg_admin_url, name)


@pytest.fixture
async def horizon_db(horizon_url: str) -> AsyncIterator[Database]:
    async with Database(horizon_url, max_size=1, name="plans") as db:
        yield db


def _parameter_names(text: str) -> list[str]:
    """The named parameters in the order psycopg numbers them ($1, $2, ...)."""
    names: list[str] = []
    for name in re.findall(r"%\((\w+)\)s", text):
        if name not in names:
            names.append(name)
    return names


def _hot_statements(now: datetime, timer_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """Every statement the create, get, claim, record and reap paths run, with parameters as
    the stores build them (``now`` null: the database clock decides, as in production)."""
    slot = now.replace(microsecond=0)
    capped = {"capped_tenants": [], "capped_hosts": []}
    bucket = bucket_of(timer_id)
    lease = {"owner": "plans", "batch": 256, "lease_seconds": 30.0, "now": None}
    return {
        "timer_insert": insert_params(
            [1000] * 64, ["http://127.0.0.1:9/h"] * 64, None, shards=16, now=None, wake_ms=2500
        ),
        "timer_get": {"id": timer_id, "bucket": bucket, "tenant": None, "now": None},
        "timer_cancel": {"id": timer_id, "bucket": bucket, "tenant": "t", "now": None},
        "bucket_keys_due": {"limit": 64, "lookahead": 1.0, "now": None, **capped},
        "bucket_claim": {
            "slot": slot,
            "shard": 0,
            "lock_key": lock_key(slot, 0),
            **lease,
            **capped,
        },
        "timer_claim_ranked": {"after": [None] * 10, **lease, **capped},
        "timer_claim_capped": {
            "tenant": "t",
            "host": None,
            "lookahead": 1.0,
            **lease,
            **capped,
        },
        "timer_record": {
            **named_rows([(timer_id, bucket)]),
            "state": ["delivered"],
            "status": [200],
            "error": [None],
            "fired_at": [now],
            "latency_ms": [1.5],
            "retry_in": [None],
            "held": [],
            "token": [1],
            "owner": "plans",
        },
        "lease_renew": {
            **named_rows([(timer_id, bucket)]),
            "token": [1],
            "owner": "plans",
            "lease_seconds": 90.0,
            "in_flight": 1,
            "sent_total": 0,
            "failed_total": 0,
            "sweep": True,
        },
        "lease_reap": {"dead": ["gone"], "seen": [now], "now": None, "limit": REAP_LIMIT},
        # run every tick (issue 9): the window plan, the schedule pass; and dependents
        "window_work": {"now": None, "lookahead": 2.5},
        "window_pick": {"now": None, "lookahead": 2.5, "n": 40, "start": now, "step": 0.05},
        "occurrence_unsent": {"ids": [timer_id], "now": None},
        "occurrence_skip": {
            "series_id": [timer_id],
            "occurrence": [1],
            "into_n": [2],
            "now": None,
        },
        "deps_resolve": {"id": [timer_id]},
    }


async def _prepared_name(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """The name of the statement psycopg prepared last. The lookup itself is left out: a
    pooled connection prepares every statement (prepare_threshold 0), this one too, just
    before it runs, so at its first run it would find itself."""
    cur = await conn.execute(
        "select name from pg_prepared_statements where not from_sql"
        " and statement not like '%pg_prepared_statements%'"
        " order by prepare_time desc limit 1"
    )
    (statement,) = await cur.fetchone() or (None,)
    return str(statement) if statement is not None else None


async def _planning_ms(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]
) -> float:
    """The median planning time of three runs of the statement as psycopg prepared it."""
    text = query(name)
    await conn.execute(text, params, prepare=True)
    statement = await _prepared_name(conn)
    assert statement is not None, f"{name} was not prepared"
    names = _parameter_names(text)
    arguments = ", ".join(["%s"] * len(names))
    explain = f"explain (analyze, summary, format json) execute {statement}({arguments})"
    times = []
    for _ in range(3):
        # Client-side binding: EXECUTE's arguments are literals typed by the statement.
        explained = await psycopg.AsyncClientCursor(conn).execute(
            explain, [params[n] for n in names]
        )
        (plan,) = await explained.fetchone() or (None,)
        times.append(plan[0]["Planning Time"])
    return statistics.median(times)


async def test_every_hot_statement_plans_within_5_ms_at_the_default_horizon(
    horizon_db: Database,
) -> None:
    (created,) = await horizon_db.creates.insert([0], ["http://127.0.0.1:9/h"], shards=16)
    async with horizon_db.pool.connection() as conn:
        partitions = await conn.execute(
            "select count(*) from pg_inherits where inhparent = 'timers'::regclass"
        )
        (count,) = await partitions.fetchone() or (0,)
        assert count >= HORIZON_DAYS
        cur = await conn.execute("select now()")
        (now,) = await cur.fetchone() or (None,)
        statements = _hot_statements(now, created.id)
        planning = {name: await _planning_ms(conn, name, p) for name, p in statements.items()}
    slow = {name: round(ms, 2) for name, ms in planning.items() if ms > PLANNING_BOUND_MS}
    assert not slow, f"planning over {PLANNING_BOUND_MS} ms at {count} partitions: {slow}"


def _scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a JSON plan that reads a partition of timers."""
    if str(node.get("Relation Name", "")).startswith("timers_p"):
        yield node
    for child in node.get("Plans", []):
        yield from _scans(child)


async def _explained(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]
) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the statement as psycopg prepared it, in a transaction rolled back
    (so a claim or record changes nothing)."""
    text = query(name)
    names = _parameter_names(text)
    async with conn.transaction(force_rollback=True):
        await conn.execute(text, params, prepare=True)
        statement = await _prepared_name(conn)
        explain = (
            f"explain (analyze, format json) execute {statement}({', '.join(['%s'] * len(names))})"
        )
        explained = await psycopg.AsyncClientCursor(conn).execute(
            explain, [params[n] for n in names]
        )
        (plan,) = await explained.fetchone() or (None,)
    return dict(plan[0]["Plan"])


async def test_a_claim_and_a_record_read_only_the_rows_they_name_at_the_default_horizon(
    horizon_db: Database,
) -> None:
    """A generic plan is costed over every partition. While most of them were never analyzed
    (the usual state of the days ahead), a join of the claimed or recorded rows with the
    partitioned table came out as a hash join over whole partitions: the claim read all of
    today's rows and the record set up all 368 partitions and scanned each one's in-flight
    rows, at every call. Both now name their rows by arrays of ids (and buckets)."""
    created = await horizon_db.creates.insert([0] * 3000, ["http://127.0.0.1:9/h"] * 3000, shards=1)
    first = created[0]
    async with horizon_db.pool.connection() as conn:
        cur = await conn.execute("select now()")
        (now,) = await cur.fetchone() or (None,)
        cur = await conn.execute("select slot from timers where id = %s", (first.id,))
        (slot,) = await cur.fetchone() or (None,)
        statements = _hot_statements(now, first.id)
        claim = {**statements["bucket_claim"], "slot": slot, "lock_key": lock_key(slot, 0)}
        batch = claim["batch"]
        ids = [t.id for t in created[:batch]]
        await conn.execute(
            "update timers set state = 'inflight', lease_owner = 'plans', attempts = 1,"
            " lease_until = now() + interval '30 seconds' where id = any(%s)",
            (ids,),
        )
        n = len(ids)
        record = {
            **statements["timer_record"],
            **named_rows([(i, bucket_of(i)) for i in ids]), "state": ["delivered"] * n,
            "status": [200] * n, "error": [None] * n, "fired_at": [now] * n,
            "latency_ms": [1.0] * n, "retry_in": [None] * n,
        }  # fmt: skip
        for name, params, named in (("bucket_claim", claim, batch), ("timer_record", record, n)):
            scans = list(_scans(await _explained(conn, name, params)))
            assert len(scans) <= 4, f"{name} set up {len(scans)} partition scans"
            read = sum(s["Actual Rows"] * s["Actual Loops"] for s in scans)
            assert read <= 2 * named, f"{name} read {read} rows of timers for {named} rows"


async def test_a_record_reads_no_other_in_flight_rows_at_the_default_horizon(
    horizon_db: Database,
) -> None:
    """The record names its rows by owner and lease, not by state: said as state =
    'inflight', its generic plan walked every in-flight row of the partition (every
    dispatcher's) through the in-flight index and tested each against the whole id array, a
    cost that grew with the fleet. Now it looks the ids up in the primary key: recording 200
    rows beside 2,800 rows another dispatcher holds reads the 200 and no more."""
    created = await horizon_db.creates.insert([0] * 3000, ["http://127.0.0.1:9/h"] * 3000, shards=1)
    mine = [t.id for t in created[:200]]
    theirs = [t.id for t in created[200:]]
    async with horizon_db.pool.connection() as conn:
        # statistics as autovacuum leaves them in production: taken while few rows were in
        # flight, so the in-flight index looks small to the planner
        await conn.execute("analyze timers")
        cur = await conn.execute("select now()")
        (now,) = await cur.fetchone() or (None,)
        for owner, ids in (("plans", mine), ("another", theirs)):
            await conn.execute(
                "update timers set state = 'inflight', lease_owner = %s, attempts = 1,"
                " lease_until = now() + interval '30 seconds' where id = any(%s)",
                (owner, ids),
            )
        n = len(mine)
        record = {
            **_hot_statements(now, mine[0])["timer_record"],
            **named_rows([(i, bucket_of(i)) for i in mine]), "state": ["delivered"] * n,
            "status": [200] * n, "error": [None] * n, "fired_at": [now] * n,
            "latency_ms": [1.0] * n, "retry_in": [None] * n,
        }  # fmt: skip
        plan = await _explained(conn, "timer_record", record)
    scans = list(_scans(plan))
    read = sum(
        (s["Actual Rows"] + s.get("Rows Removed by Filter", 0)) * s["Actual Loops"] for s in scans
    )
    assert read == n, f"the record read {read} rows of timers to record {n}"
    assert all(s.get("Index Name", "").endswith("_pkey") for s in scans), [
        (s.get("Node Type"), s.get("Index Name")) for s in scans
    ]
