"""Daily partitions: made ahead for the whole horizon, dropped after retention when idle."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from db.database import Database
from tests.conftest import TEST_HORIZON_DAYS, MakeTimer


def _day(name: str) -> date:
    return datetime.strptime(name.removeprefix("timers_p"), "%Y%m%d").replace(tzinfo=UTC).date()


async def test_partitions_cover_yesterday_to_the_end_of_the_horizon(db: Database) -> None:
    today = datetime.now(UTC).date()
    days = [_day(n) for n in await db.partitions.names()]
    assert days[0] <= today - timedelta(days=1)
    assert days[-1] >= today + timedelta(days=TEST_HORIZON_DAYS + 1)
    # no gap anywhere
    assert days == [days[0] + timedelta(days=i) for i in range(len(days))]


async def test_ensuring_partitions_twice_makes_nothing_the_second_time(db: Database) -> None:
    later = datetime.now(UTC) + timedelta(days=10)
    assert await db.partitions.ensure(horizon_days=TEST_HORIZON_DAYS, now=later) == 10
    assert await db.partitions.ensure(horizon_days=TEST_HORIZON_DAYS, now=later) == 0


async def test_retention_drops_old_idle_partitions_and_keeps_pending_ones(
    db: Database, make_timer: MakeTimer
) -> None:
    now = datetime.now(UTC)
    kept_pending = await make_timer(delay_ms=0, now=now - timedelta(days=1))  # yesterday
    future = now + timedelta(days=9)
    dropped = await db.partitions.drop_expired(retention_days=7, now=future)
    # Everything that ended before (future - 7 days) goes, except yesterday, which is busy.
    yesterday = "timers_p" + (now - timedelta(days=1)).strftime("%Y%m%d")
    assert yesterday not in dropped
    assert "timers_p" + now.strftime("%Y%m%d") in dropped
    assert all(_day(n) < (future - timedelta(days=7)).date() for n in dropped)
    assert await db.timers.get(kept_pending.id) is not None


async def test_each_day_has_an_attempts_partition_made_and_dropped_with_its_timers(
    db: Database,
) -> None:
    async def children(parent: str) -> set[str]:
        async with db.pool.connection() as conn:
            cur = await conn.execute(
                "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                "where i.inhparent = %s::regclass", (parent,),
            )  # fmt: skip
            return {str(r[0]).split("_p")[-1] for r in await cur.fetchall()}

    assert await children("timer_attempts") == await children("timers")
    later = datetime.now(UTC) + timedelta(days=10)
    await db.partitions.ensure(horizon_days=TEST_HORIZON_DAYS, now=later)
    assert await children("timer_attempts") == await children("timers")
    dropped = await db.partitions.drop_expired(retention_days=1, now=later)
    assert dropped
    days = await children("timer_attempts")
    assert days == await children("timers")
    assert not {n.removeprefix("timers_p") for n in dropped} & days
