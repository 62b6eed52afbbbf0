"""The dispatcher against a real database and a real HTTP sink on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from core.settings import Settings
from db.database import Database
from db.models import DueKey
from dispatcher.recorder import Recorder
from dispatcher.retry import ceiling
from dispatcher.sender import Result
from dispatcher.service import Dispatcher
from dispatcher.stats import SendStats
from tests.conftest import MakeTimer
from tests.support.sink import Reply, Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


async def _state(db: Database, timer_id: object) -> tuple[str, int, int | None, str | None]:
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "select state, attempts, last_status, last_error from timers where id = %s",
            (timer_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


async def test_a_due_timer_fires_once_with_the_exact_body(
    make_timer: MakeTimer, sink: Sink, db: Database, start_dispatcher: StartDispatcher
) -> None:
    # started first: its start-up (under a loaded CI, seconds) is not what is measured
    dispatcher = await start_dispatcher()
    timer = await make_timer(delay_ms=1200)
    [received] = await sink.wait_for(1, timeout=10)
    assert received.body == json.dumps({"id": str(timer.id)}).encode()
    assert received.body == f'{{"id": "{timer.id}"}}'.encode()
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["Idempotency-Key"] == str(timer.id)
    assert received.headers["Timerhook-Attempt"] == "1"
    # Never early (the sink's clock and the database's are this machine's), and on time.
    due = timer.due_at.timestamp()
    assert due <= received.at < due + 1.0
    await dispatcher.wait_recorded(1, timeout=5)
    assert await _state(db, timer.id) == ("delivered", 1, 200, None)
    shown = await db.timers.get(timer.id)
    assert shown is not None and shown.fired_at is not None
    assert timer.due_at <= shown.fired_at < timer.due_at + timedelta(seconds=1)
    # Nothing more is sent afterwards: another full tick and a drain change nothing.
    assert await dispatcher.drain() == 0
    assert len(sink.received) == 1


async def test_nothing_is_claimed_before_its_bucket_by_the_database_clock(
    make_timer: MakeTimer, db: Database, sink: Sink, settings: Settings, database_url: str
) -> None:
    base = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    timer = await make_timer(delay_ms=10_500, now=base)  # due 12:00:10.5, bucket 12:00:11
    dispatcher = Dispatcher(db, settings)
    ahead = dispatcher.lookahead_seconds
    early = base + timedelta(seconds=11 - ahead) - timedelta(milliseconds=1)
    assert await db.leases.due_keys(limit=10, lookahead_seconds=ahead, now=early) == []
    keys = await db.leases.due_keys(
        limit=10, lookahead_seconds=ahead, now=early + timedelta(milliseconds=2)
    )
    assert [k.slot for k in keys] == [base + timedelta(seconds=11)]
    claim = await db.leases.claim(
        keys[0], owner="t", batch=10, lease_seconds=30, now=base + timedelta(seconds=11)
    )
    claimed = claim.rows
    assert [c.id for c in claimed] == [timer.id]
    assert claimed[0].run_at == timer.due_at


async def test_a_claimed_key_is_skipped_by_a_second_claimer_while_locked(
    make_timer: MakeTimer, db: Database, database_url: str
) -> None:
    timer = await make_timer(delay_ms=0)
    [key] = await db.leases.due_keys(limit=10, lookahead_seconds=2)
    from core.ids import lock_key

    async with db.pool.connection() as holder, holder.transaction():
        await holder.execute("select pg_advisory_xact_lock(%s)", (lock_key(key.slot, key.shard),))
        assert (await db.leases.claim(key, owner="b", batch=10, lease_seconds=30)).rows == []
    claimed = (await db.leases.claim(key, owner="b", batch=10, lease_seconds=30)).rows
    assert [c.id for c in claimed] == [timer.id]


async def test_failures_are_recorded_and_only_retryable_ones_retried(
    make_timer: MakeTimer, sink: Sink, db: Database, start_dispatcher: StartDispatcher
) -> None:
    sink.status_for = lambda r: 503 if r.path == "/busy" else 404
    busy = await make_timer(delay_ms=0, url=f"{sink.url}/busy")
    missing = await make_timer(delay_ms=0, url=f"{sink.url}/gone")
    unreachable = await make_timer(delay_ms=0, url="http://127.0.0.1:9/closed-port")
    dispatcher = await start_dispatcher()
    await dispatcher.wait_recorded(3, timeout=10)
    # A 404 fails at once: retrying cannot fix it.
    assert await _state(db, missing.id) == ("failed", 1, 404, "HTTP 404")
    assert [(a.attempt, a.status) for a in await db.timers.attempts(missing.id)] == [(1, 404)]
    # A 503 and a network error are retried later: the timer is not final, and a pending one
    # waits at most the backoff ceiling of the attempt it failed (60 s, then 240 s, ...).
    for timer, status in ((busy, 503), (unreachable, None)):
        first = (await db.timers.attempts(timer.id))[0]
        assert (first.attempt, first.status, first.dispatcher) == (1, status, dispatcher.id)
        assert first.latency_ms is not None
        assert first.error is not None and (status or "connect" in first.error)
        found = await db.timers.get(timer.id)
        assert found is not None and found.state in ("pending", "inflight"), found
        if found.state == "pending":
            assert found.fired_at is not None
            wait = (found.run_at - found.fired_at).total_seconds()
            assert 0 <= wait <= ceiling(found.attempts, base=60, cap=86_400) + 1, wait


async def test_private_targets_are_refused_unless_allowed(
    make_timer: MakeTimer,
    sink: Sink,
    db: Database,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    by_literal = await make_timer(delay_ms=0)  # http://127.0.0.1:<port>/hook
    by_name = await make_timer(delay_ms=0, url=sink.url.replace("127.0.0.1", "localhost") + "/x")
    dispatcher = await start_dispatcher(make_settings(allow_private_targets=False))
    await dispatcher.wait_recorded(2, timeout=10)
    assert sink.received == []
    for timer in (by_literal, by_name):
        state, _, status, error = await _state(db, timer.id)
        assert state == "failed" and status is None
        assert error is not None and "target refused" in error and "loopback" in error


async def test_allowed_networks_open_the_guard_for_those_networks_only(
    make_timer: MakeTimer,
    sink: Sink,
    db: Database,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    by_literal = await make_timer(delay_ms=0)  # 127.0.0.1
    by_name = await make_timer(delay_ms=0, url=sink.url.replace("127.0.0.1", "localhost") + "/n")
    private = await make_timer(delay_ms=0, url="http://10.255.255.1:9/never")
    settings = make_settings(allow_private_targets=False, allowed_networks="127.0.0.0/8, ::1/128")
    dispatcher = await start_dispatcher(settings)
    await dispatcher.wait_recorded(3, timeout=10)
    assert len(sink.received) == 2
    assert (await _state(db, by_literal.id))[0] == "delivered"
    assert (await _state(db, by_name.id))[0] == "delivered"
    state, _, _, error = await _state(db, private.id)
    assert state == "failed" and error is not None and "target refused" in error


async def test_redirects_are_not_followed(
    make_timer: MakeTimer, sink: Sink, db: Database, start_dispatcher: StartDispatcher
) -> None:
    sink.status_for = lambda r: 307 if r.path == "/hook" else 200
    timer = await make_timer(delay_ms=0)
    dispatcher = await start_dispatcher()
    await dispatcher.wait_recorded(1, timeout=10)
    assert [r.path for r in sink.received] == ["/hook"]  # the Location was never requested
    assert (await _state(db, timer.id))[:3] == ("failed", 1, 307)


async def test_two_dispatchers_share_the_work_and_send_each_timer_once(
    db: Database, sink: Sink, settings: Settings, start_dispatcher: StartDispatcher
) -> None:
    count = 600
    created = await db.creates.insert(
        [1500 + i % 1000 for i in range(count)], [f"{sink.url}/h"] * count, shards=settings.shards
    )
    first = await start_dispatcher()
    second = await start_dispatcher()
    await sink.wait_for(count, timeout=20)
    await first.wait_idle(timeout=10)
    await second.wait_idle(timeout=10)
    ids = [json.loads(r.body)["id"] for r in sink.received]
    assert sorted(ids) == sorted(str(t.id) for t in created)
    assert await db.timers.counts() == {"delivered": count}
    assert first.sent_total + second.sent_total == count


async def test_idle_means_recorded_even_while_a_record_is_being_written(
    make_timer: MakeTimer, db: Database, sink: Sink, database_url: str,
    start_dispatcher: StartDispatcher,
) -> None:  # fmt: skip
    """``wait_idle`` counts a record whose statement is still running as unwritten: while a
    row lock holds the record back it does not return, so a caller reading the table after
    it never sees the row in flight."""
    sink.status_for = lambda _r: Reply(200, delay=0.5)
    timer = await make_timer(delay_ms=0)
    dispatcher = await start_dispatcher()
    await sink.wait_for(1, timeout=10)
    async with await psycopg.AsyncConnection.connect(database_url) as locker:
        await locker.execute("select 1 from timers where id = %s for update", (timer.id,))
        await asyncio.sleep(1.0)  # the answer came, and its record waits for the lock
        assert dispatcher.in_flight == 0
        with pytest.raises(TimeoutError):
            await dispatcher.wait_idle(timeout=1.0)
        await locker.rollback()
    await dispatcher.wait_idle(timeout=10)
    assert (await _state(db, timer.id))[:2] == ("delivered", 1)


async def test_rows_leased_by_a_lost_claim_answer_go_out_as_soon_as_the_database_is_back(
    make_timer: MakeTimer, db: Database, sink: Sink, start_dispatcher: StartDispatcher,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A claim can commit while its connection dies (the database killed mid-answer): its rows
    are leased to a dispatcher that never got them. When the database is reachable again
    the dispatcher gives back every row leased to it that it does not hold, so they go out
    at once instead of when their lease runs out (30 s); a row it holds (here, being sent)
    is left alone and sent once."""
    sink.status_for = lambda r: Reply(200, delay=3.0) if r.path == "/held" else 200
    lost = await make_timer(delay_ms=0)
    async with db.pool.connection() as conn:
        await conn.execute(
            "update timers set state = 'inflight', lease_owner = 'd-lost', attempts = 1,"
            " lease_until = now() + interval '90 seconds' where id = %s",  # a fresh claim's
            (lost.id,),
        )
    held = await make_timer(delay_ms=0, url=f"{sink.url}/held")
    dispatcher = await start_dispatcher(dispatcher_id="d-lost")
    await sink.wait_until(lambda: bool(sink.for_id(held.id)), timeout=10)
    assert sink.for_id(lost.id) == []  # leased away: nobody sends it before its lease ends
    outage = dispatcher.db.outage
    outage.failed("claim", ConnectionError("terminating connection"))
    back_at = asyncio.get_running_loop().time()
    outage.recovered()
    await sink.wait_until(lambda: bool(sink.for_id(lost.id)), timeout=5)
    assert asyncio.get_running_loop().time() - back_at < 2.0
    await dispatcher.wait_idle(timeout=10)
    assert len(sink.for_id(lost.id)) == len(sink.for_id(held.id)) == 1
    assert (await _state(db, lost.id))[:2] == ("delivered", 1)  # the lost attempt uncounted
    assert (await _state(db, held.id))[:2] == ("delivered", 1)
    took_back = [r for r in caplog.records if "took back" in r.getMessage()]
    assert [r.levelname for r in took_back] == ["WARNING"]
    assert "took back 1 rows" in took_back[0].getMessage()


async def test_a_stopped_dispatcher_gives_back_what_it_had_not_sent(
    db: Database,
    sink: Sink,
    make_timer: MakeTimer,
    start_dispatcher: StartDispatcher,
    settings: Settings,
) -> None:
    dispatcher = Dispatcher(db, settings)
    await dispatcher.sender.start()
    try:
        timer = await make_timer(delay_ms=60_000)
        # Claimed "at" half a second before it is due: it waits for its time, holding a lease.
        claimed = await dispatcher.drain(now=timer.due_at - timedelta(milliseconds=500))
        assert claimed == 1
        assert await _state(db, timer.id) == ("inflight", 1, None, None)
    finally:
        await dispatcher.stop()
    assert await _state(db, timer.id) == ("pending", 0, None, None)
    assert sink.received == []
    # ... and another dispatcher sends it when it is due, once.
    other = await start_dispatcher()
    assert await other.drain(now=timer.due_at) == 1
    await other.wait_recorded(1, timeout=10)
    assert [json.loads(r.body)["id"] for r in sink.received] == [str(timer.id)]


async def _beat(db: Database, dispatcher_id: str) -> datetime:
    """The heartbeat of a registered dispatcher as an observer reads it."""
    [beat] = [b for b in await db.dispatchers.peers(dead_after_seconds=10) if b.id == dispatcher_id]
    return beat.heartbeat_at


async def test_leases_of_a_dead_dispatcher_are_reaped_at_once(
    db: Database, make_timer: MakeTimer
) -> None:
    timer = await make_timer(delay_ms=0)
    await db.dispatchers.register(dispatcher_id="ghost", host="h", pid=1)
    [key] = await db.leases.due_keys(limit=1, lookahead_seconds=1)
    await db.leases.claim(key, owner="ghost", batch=10, lease_seconds=3600)
    seen = await _beat(db, "ghost")
    # Alive (nobody declared it dead): its lease stands, however old its heartbeat looks.
    later = datetime.now(UTC) + timedelta(hours=2)
    assert await db.leases.reap(now=later) == []
    # Declared dead with the heartbeat an observer saw unchanged: taken over at once.
    reaped = await db.leases.reap(dead=[("ghost", seen)])
    assert [(r.id, r.lease_owner) for r in reaped] == [(timer.id, "ghost")]
    assert await _state(db, timer.id) == ("pending", 1, None, None)
    # ... and the ghost learns it at its next heartbeat: nothing renewed, registered again.
    renewal = await db.leases.renew([], owner="ghost", lease_seconds=90)
    assert not renewal.alive


async def test_a_peer_that_heartbeated_since_it_was_seen_is_not_declared_dead(
    db: Database, make_timer: MakeTimer
) -> None:
    """The reap declares a peer dead only while its heartbeat is the one the observer saw
    unchanged: one that heartbeated meanwhile (after a stall of the database, say) is alive,
    and its leases stand."""
    timer = await make_timer(delay_ms=0)
    await db.dispatchers.register(dispatcher_id="slow", host="h", pid=1)
    [key] = await db.leases.due_keys(limit=1, lookahead_seconds=1)
    claim = await db.leases.claim(key, owner="slow", batch=10, lease_seconds=3600)
    seen = await _beat(db, "slow")
    [row] = claim.rows
    renewal = await db.leases.renew(
        [(row.id, row.bucket, row.lease_token)], owner="slow", lease_seconds=90
    )
    assert renewal.alive and renewal.owned == [timer.id]
    assert await db.leases.reap(dead=[("slow", seen)]) == []
    assert await _state(db, timer.id) == ("inflight", 1, None, None)
    assert (await _beat(db, "slow")) > seen


async def test_a_reap_takes_at_most_its_limit_and_none_at_zero(
    db: Database, make_timer: MakeTimer
) -> None:
    """A dispatcher plans the reap at start with a limit of 0 (db/warmth.py): that reaps
    nothing, even with a dead owner's leases there; a limit bounds what one call takes."""
    timers = [await make_timer(delay_ms=0) for _ in range(3)]
    await db.dispatchers.register(dispatcher_id="ghost", host="h", pid=1)
    for key in await db.leases.due_keys(limit=10, lookahead_seconds=1):
        await db.leases.claim(key, owner="ghost", batch=10, lease_seconds=3600)
    await db.dispatchers.deregister(dispatcher_id="ghost")  # stopped: its leases are free
    assert await db.leases.reap(limit=0) == []
    assert [await _state(db, t.id) for t in timers] == [("inflight", 1, None, None)] * 3
    first = await db.leases.reap(limit=2)
    rest = await db.leases.reap(limit=2)
    assert (len(first), len(rest)) == (2, 1)
    assert {r.id for r in first + rest} == {t.id for t in timers}


async def test_an_expired_lease_its_live_owner_does_not_hold_is_given_back_by_its_renewal(
    db: Database, make_timer: MakeTimer
) -> None:
    """A peer never takes a live owner's lease for its age (a stall makes every lease look
    old); the owner's own renewal gives back a row leased to it that it does not hold (a
    claim whose answer was lost) once that lease ran out, and keeps the ones it holds."""
    timer, kept = await make_timer(delay_ms=0), await make_timer(delay_ms=0)
    await db.dispatchers.register(dispatcher_id="slow", host="h", pid=1)
    claimed = []
    for key in await db.leases.due_keys(limit=10, lookahead_seconds=1):
        claimed += (await db.leases.claim(key, owner="slow", batch=10, lease_seconds=0.2)).rows
    assert {c.id for c in claimed} == {timer.id, kept.id}
    await asyncio.sleep(0.3)
    assert await db.leases.reap() == []  # alive: nobody else touches its leases
    [held] = [c for c in claimed if c.id == kept.id]
    renewal = await db.leases.renew(
        [(held.id, held.bucket, held.lease_token)], owner="slow", lease_seconds=90
    )
    assert (renewal.alive, renewal.owned, renewal.given_back) == (True, [kept.id], 1)
    assert await _state(db, timer.id) == ("pending", 0, None, None)
    assert await _state(db, kept.id) == ("inflight", 1, None, None)


async def test_an_outcome_with_a_stale_token_changes_nothing_and_is_counted(
    db: Database, make_timer: MakeTimer, settings: Settings
) -> None:
    """A lease taken over and claimed again: the first claim's outcome names an old token,
    so it records nothing, even for the same owner; the recorder counts it as stale."""
    timer = await make_timer(delay_ms=0)
    await db.dispatchers.register(dispatcher_id="d1", host="h", pid=1)
    [key] = await db.leases.due_keys(limit=1, lookahead_seconds=1)
    [first] = (await db.leases.claim(key, owner="d1", batch=1, lease_seconds=90)).rows
    seen = await _beat(db, "d1")
    assert [r.id for r in await db.leases.reap(dead=[("d1", seen)])] == [timer.id]
    await db.dispatchers.register(dispatcher_id="d1", host="h", pid=1)  # back, same id
    [key] = await db.leases.due_keys(limit=1, lookahead_seconds=1)
    [second] = (await db.leases.claim(key, owner="d1", batch=1, lease_seconds=90)).rows
    assert second.lease_token == first.lease_token + 1
    stats = SendStats(db)
    recorder = Recorder(
        db, settings, owner="d1", retry_soon_seconds=2.5, wake_claims=lambda: None,
        recorded=lambda n: None, stats=stats,
    )  # fmt: skip
    recorder.outcome(first, Result(200, None, 1.0), datetime.now(UTC))
    await recorder.flush()
    assert stats.stale == 1
    assert await _state(db, timer.id) == ("inflight", 2, None, None)  # the second lease stands
    recorder.outcome(second, Result(200, None, 1.0), datetime.now(UTC))
    await recorder.flush()
    assert stats.stale == 1
    assert await _state(db, timer.id) == ("delivered", 2, 200, None)
    await stats.report()
    assert (await db.stats.totals()).stale == 1


async def test_timers_due_while_nothing_ran_fire_once_at_start(
    db: Database, sink: Sink, settings: Settings, start_dispatcher: StartDispatcher
) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    created = await db.creates.insert(
        [i * 1000 for i in range(30)], [f"{sink.url}/late"] * 30, shards=settings.shards, now=past
    )
    dispatcher = await start_dispatcher()
    await sink.wait_for(30, timeout=10)
    await dispatcher.wait_idle(timeout=5)
    assert sorted(json.loads(b)["id"] for b in sink.bodies()) == sorted(str(t.id) for t in created)


async def test_a_slow_commit_does_not_make_sends_late(
    make_timer: MakeTimer, sink: Sink, db: Database, start_dispatcher: StartDispatcher
) -> None:
    # Every transaction that changes timers now takes 0.3 s longer to commit, as on a disk
    # whose flush is slow. Sends are timed from before the claim's commit, so they stay on time
    # (they used to be late by the commit's duration).
    async with db.pool.connection() as conn:
        await conn.execute(
            """
            create function slow_commit() returns trigger language plpgsql as $$
            begin perform pg_sleep(0.3); return null; end $$;
            create constraint trigger slow_commit after update on timers
            deferrable initially deferred for each row execute function slow_commit();
        """,
            prepare=False,
        )  # several statements: pooled connections prepare by default
    timers = [await make_timer(delay_ms=3000 + 150 * i) for i in range(3)]
    await start_dispatcher()
    await sink.wait_for(3, timeout=15)
    for timer in timers:
        [received] = sink.for_id(timer.id)
        late = received.at - timer.due_at.timestamp()
        assert 0 <= late < 0.15, late


async def test_live_dispatchers_split_the_keys_and_take_a_peers_once_it_is_late(
    db: Database, sink: Sink, start_dispatcher: Callable[..., Awaitable[Dispatcher]]
) -> None:
    """Each live dispatcher claims its own (slot, shard) keys first; another's only once its
    owner should have claimed it (the lookahead less HELP_MARGIN_SECONDS before the slot), so
    that two do not each try every key, and a dead peer's keys still go on time."""
    created = await db.creates.insert([60_000] * 64, [f"{sink.url}/hook"] * 64, shards=16)
    async with db.pool.connection() as conn:
        cur = await conn.execute("select distinct slot from timers")
        [(slot,)] = await cur.fetchall()  # one slot, up to 16 keys
    dispatcher = await start_dispatcher()
    await db.dispatchers.register(dispatcher_id="peer", host="h", pid=1)
    await dispatcher.maintenance.learn_peers()
    assert dispatcher.claimer.share[1] == 2

    async def leased() -> list[tuple[datetime, int]]:
        async with db.pool.connection() as conn:
            cur = await conn.execute(
                "select slot, shard from timers where lease_owner = %s", (dispatcher.id,)
            )
            return [(r[0], r[1]) for r in await cur.fetchall()]

    # 2.2 s before the slot: inside the claim lookahead, not yet late for the peer
    mine = await dispatcher.drain(now=slot - timedelta(seconds=2.2))
    first = await leased()
    assert 0 < mine < 64 and len(first) == mine
    assert all(dispatcher.claimer._owns(DueKey(s, shard)) for s, shard in first)
    # 1.5 s before it the peer's keys are late: this dispatcher takes them too
    rest = await dispatcher.drain(now=slot - timedelta(seconds=1.5))
    assert mine + rest == len(created) and len(await leased()) == len(created)
