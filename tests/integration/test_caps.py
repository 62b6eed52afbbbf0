"""Per-minute caps: a token bucket in PostgreSQL, refilled continuously, shared and live."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from core.caps import GLOBAL
from core.ids import bucket_of
from core.settings import Settings
from db.database import Database
from dispatcher.service import Dispatcher
from tests.support.sink import Received, Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]
T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


async def _granted(db: Database, wanted: int, at: datetime) -> int:
    return (await db.caps.take(scope=GLOBAL, wanted=wanted, now=at)).granted


async def test_no_cap_grants_everything(db: Database) -> None:
    assert await _granted(db, 5000, T0) == 5000
    await db.caps.set(scope=GLOBAL, per_minute=0)
    assert await _granted(db, 5000, T0) == 5000


async def test_tokens_refill_continuously_at_cap_over_sixty_per_second(db: Database) -> None:
    await db.caps.set(scope=GLOBAL, per_minute=6000)  # 100 per second
    async with db.pool.connection() as conn:  # start the bucket empty at T0
        await conn.execute("update caps set tokens = 0, updated_at = %s", (T0,))
    assert await _granted(db, 1000, T0) == 0
    assert await _granted(db, 1000, T0 + timedelta(milliseconds=250)) == 25
    assert await _granted(db, 1000, T0 + timedelta(milliseconds=500)) == 25
    # A long pause fills the bucket to one second's worth (plus the one token that lets
    # fractions carry over), never a minute's.
    assert await _granted(db, 100_000, T0 + timedelta(minutes=5)) == 101


async def test_fractions_of_a_token_carry_over(db: Database) -> None:
    await db.caps.set(scope=GLOBAL, per_minute=60)  # one a second
    async with db.pool.connection() as conn:
        await conn.execute("update caps set tokens = 0, updated_at = %s", (T0,))
    got = [await _granted(db, 10, T0 + timedelta(milliseconds=400 * i)) for i in range(1, 11)]
    assert sum(got) == 4  # 4.0 s at 1/s, granted as whole tokens when they complete
    assert max(got) == 1


async def test_seeding_does_not_override_a_cap_set_at_run_time(db: Database) -> None:
    await db.caps.set(scope=GLOBAL, per_minute=120)
    await db.caps.seed(scope=GLOBAL, per_minute=999)
    assert [(c.scope, c.per_minute) for c in await db.caps.list()] == [(GLOBAL, 120)]


async def test_a_capped_backlog_drains_as_a_paced_stream_oldest_first(
    db: Database,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    past = datetime.now(UTC) - timedelta(minutes=5)
    created = await db.creates.insert(
        [i * 10 for i in range(120)], [f"{sink.url}/h"] * 120, shards=16, now=past
    )
    await start_dispatcher(make_settings(max_per_minute=3000))  # 50 per second
    received = await sink.wait_for(120, timeout=15)
    spread = received[-1].at - received[0].at
    # 120 at 50/s takes about 2.4 s (the first second's worth may go at once): not a burst.
    assert 1.2 <= spread <= 4.0, spread
    gaps = [b.at - a.at for a, b in itertools.pairwise(received[60:])]
    assert max(gaps) < 0.2 and sorted(gaps)[len(gaps) // 2] > 0.01  # paced, ~20 ms apart
    # Oldest first by bucket: no timer is sent before one from an earlier second.
    buckets = [bucket_of(uuid.UUID(json.loads(r.body)["id"])) for r in received]
    assert buckets == sorted(buckets)
    assert len(set(buckets)) >= 2
    assert {json.loads(r.body)["id"] for r in received} == {str(t.id) for t in created}


async def test_a_cap_set_at_run_time_applies_without_a_restart(
    db: Database, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    dispatcher = await start_dispatcher()
    await db.caps.set(scope=GLOBAL, per_minute=60)  # one a second, set while running
    await db.creates.insert([0] * 30, [f"{sink.url}/h"] * 30, shards=16)
    await sink.wait_for(1, timeout=10)
    first = sink.received[0].at
    await sink.wait_for(2, timeout=10)
    assert sink.received[1].at - first > 0.5  # paced at one a second, not all 30 at once
    await db.caps.set(scope=GLOBAL, per_minute=0)  # lifted while running
    await sink.wait_for(30, timeout=10)
    await dispatcher.wait_idle(timeout=5)
    assert len({r.body for r in sink.received}) == 30


async def test_retries_are_held_to_the_cap_like_any_timer(
    db: Database,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    first_seen: set[str] = set()

    def fail_once(request: Received) -> int:
        key = request.headers["Idempotency-Key"]
        if key in first_seen:
            return 200
        first_seen.add(key)
        return 503

    sink.status_for = fail_once
    await db.creates.insert([0] * 10, [f"{sink.url}/h"] * 10, shards=16)
    settings = make_settings(max_per_minute=240, retry_base_seconds=0.1)  # 4 per second
    await start_dispatcher(settings)
    received = await sink.wait_for(20, timeout=30)
    # Uncapped, the ten retries would follow within 0.1 s of their first attempts (about 1.5 s
    # in all). Capped, 20 sends at 4/s with a bucket of 5 tokens take at least (20 - 5) / 4 s.
    spread = received[-1].at - received[0].at
    assert spread >= 3.4, spread
    retries = [r for r in received if r.headers["Timerhook-Attempt"] == "2"]
    assert len(retries) == 10
    gaps = [b.at - a.at for a, b in itertools.pairwise(retries)]
    assert sorted(gaps)[len(gaps) // 2] > 0.15, gaps  # paced about 0.25 s apart
