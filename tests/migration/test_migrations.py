"""schema.sql and the migrations reach the same database; migrating is idempotent and safe
when several processes do it at the same moment."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator

import psycopg
import pytest

from db.database import Database
from db.migrate import migrate, migrations
from db.query_loader import query
from tests.support import postgres

CATALOG = {
    "columns": """
        select table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
        from information_schema.columns where table_schema = 'public'
        order by table_name, column_name""",
    "indexes": """
        select tablename, indexname, indexdef from pg_indexes
        where schemaname = 'public' order by tablename, indexname""",
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        from pg_constraint where connamespace = 'public'::regnamespace
        order by 1, 2""",
    "functions": """
        select proname, pg_get_functiondef(oid) from pg_proc
        where pronamespace = 'public'::regnamespace order by proname""",
    "partitioning": """
        select c.relname, pg_get_partkeydef(c.oid) from pg_class c
        where c.relkind = 'p' and c.relnamespace = 'public'::regnamespace order by 1""",
    "ledger": "select version, name from schema_migrations order by version",
}


def _catalog(url: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(url) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in CATALOG.items()}  # type: ignore[call-overload]


@pytest.fixture
def make_empty_database(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """Makes empty databases (no schema at all), dropped at the end of the test."""
    made: list[str] = []

    def make() -> str:
        name = f"timerhook_mig_{secrets.token_hex(5)}"
        made.append(name)
        return postgres.create_database(pg_admin_url, name)

    yield make
    for name in made:
        postgres.drop_database(pg_admin_url, name)


@pytest.fixture
def empty_database(make_empty_database: Callable[[], str]) -> str:
    return make_empty_database()


async def test_schema_sql_equals_the_migrations(
    empty_database: str, make_empty_database: Callable[[], str]
) -> None:
    other_empty_database = make_empty_database()
    assert await migrate(empty_database) == ["schema.sql"]
    stepwise = await migrate(other_empty_database, from_schema=False)
    assert stepwise == [f"{m.version:04d}_{m.name}" for m in migrations()]
    from_schema, from_steps = _catalog(empty_database), _catalog(other_empty_database)
    for part in CATALOG:
        assert from_schema[part] == from_steps[part], part
    assert from_schema["columns"], "the catalog query found nothing: the comparison proves nothing"


async def test_migrating_again_does_nothing(empty_database: str) -> None:
    await migrate(empty_database)
    assert await migrate(empty_database) == []


async def test_concurrent_migrations_apply_once(empty_database: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], ["schema.sql"]]
    assert len(_catalog(empty_database)["ledger"]) == len(migrations())


async def test_0005_keeps_existing_timers_and_gives_each_day_its_attempts_partition(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(query("migration_ledger_create"))
        for step in migrations()[:4]:
            conn.execute(step.sql)  # type: ignore[call-overload]
            conn.execute(query("migration_record"), {"version": step.version, "name": step.name})
        conn.execute("select timerhook_partitions_ensure(current_date - 1, current_date + 3)")
        [(old_id,)] = conn.execute(
            "insert into timers (id, bucket, due_at, run_at, slot, url, state, attempts, "
            "last_status, finished_at) "
            "select timerhook_id(ms), b, d, d, b, 'https://x.org', 'failed', 1, 503, now() "
            "from (select (extract(epoch from now()) * 1000)::bigint as ms) m, "
            "lateral (select 'epoch'::timestamptz + m.ms * interval '1 ms' as d) dd, "
            "lateral (select 'epoch'::timestamptz + ceil(m.ms / 1000.0) * interval '1 s' as b) bb "
            "returning id"
        ).fetchall()
    # 0005 and every migration after it (0006 came with the planner)
    assert await migrate(empty_database) == [f"{m.version:04d}_{m.name}" for m in migrations()[4:]]
    with psycopg.connect(empty_database) as conn:
        timers_days = {r[0][len("timers_"):] for r in conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = 'timers'::regclass").fetchall()}  # fmt: skip
        attempt_days = {r[0][len("timer_attempts_"):] for r in conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = 'timer_attempts'::regclass").fetchall()}  # fmt: skip
        assert timers_days and attempt_days == timers_days
        row = conn.execute(
            "select state, max_attempts, round_start, delivery, payload from timers where id = %s",
            (old_id,),
        ).fetchone()
    assert row == ("failed", 8, 0, "at_least_once", None)
    async with Database(empty_database, max_size=1, name="test") as db:
        assert (await db.requeues.requeue(old_id)) is not None  # the old row is a dead letter now
        found = await db.timers.get(old_id)
        assert found is not None and found.state == "pending"
