"""The timer states are defined once (core/states.py): the SQL check, the API schema and every
transition the real queries make are checked against that one definition."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx

from core.settings import Settings
from core.states import DEAD_LETTER_STATES, TIMER_STATES, TRANSITIONS, legal
from db.database import Database
from dispatcher.service import Dispatcher
from tests.conftest import MakeTimer
from tests.support.sink import Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


async def test_the_sql_check_lists_exactly_the_defined_states(db: Database) -> None:
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "select pg_get_constraintdef(oid) from pg_constraint "
            "where conname = 'timers_state_check' and conrelid = 'timers'::regclass"
        )
        row = await cur.fetchone()
    assert row is not None
    assert tuple(re.findall(r"'(\w+)'", row[0])) == TIMER_STATES


async def test_the_api_schema_offers_exactly_the_defined_states(
    client: httpx.AsyncClient,
) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for model in ("TimerDetail", "TimerSummary"):
        assert tuple(schemas[model]["properties"]["status"]["enum"]) == TIMER_STATES
    requeue = schemas["RequeueRequest"]["properties"]["status"]["items"]["enum"]
    assert tuple(requeue) == DEAD_LETTER_STATES


async def test_every_transition_the_queries_make_is_a_defined_one(
    db: Database,
    sink: Sink,
    make_timer: MakeTimer,
    settings: Settings,
    start_dispatcher: StartDispatcher,
) -> None:
    # Record every state change, in this test's database only.
    async with db.pool.connection() as conn:
        await conn.execute(
            """
            create table seen (before text, after text);
            create function note_state() returns trigger language plpgsql as $$
            begin insert into seen values (old.state, new.state); return null; end $$;
            create trigger note_state after update on timers for each row
            when (old.state is distinct from new.state) execute function note_state();
        """,
            prepare=False,
        )  # several statements: pooled connections prepare by default
    sink.status_for = lambda r: {"/ok": 200, "/gone": 404}.get(r.path, 503)
    delivered = await make_timer(delay_ms=0, url=f"{sink.url}/ok")
    failed = await make_timer(delay_ms=0, url=f"{sink.url}/gone")
    dead = await make_timer(delay_ms=0, url=f"{sink.url}/busy", max_attempts=1)
    retried = await make_timer(delay_ms=0, url=f"{sink.url}/busy", max_attempts=5)
    cancelled = await make_timer(delay_ms=60_000)
    held = await make_timer(delay_ms=0, url=f"{sink.url}/ok", resources=("r",))
    # a timer waiting for the one that is cancelled below fails at once (issue 9's after)
    waiting = await db.creates.insert_idempotent(
        key=None, fingerprint="", delay_ms=0, url=f"{sink.url}/ok", shards=16,
        after=[cancelled.id],
    )  # fmt: skip
    dispatcher = await start_dispatcher()
    await dispatcher.wait_recorded(5, timeout=10)
    assert (await db.revocations.cancel(cancelled.id)) is not None
    found = await db.timers.get(waiting.timer_id)
    assert found is not None and found.state == "failed", found
    for timer in (failed, dead):
        assert (await db.requeues.requeue(timer.id)) is not None
    # A lease given back unsent (a clean stop), one deferred for an open circuit, one reaped.
    later = await make_timer(delay_ms=30_000)
    other = Dispatcher(db, settings)
    await other.sender.start()
    await dispatcher.stop()  # the running one would claim it too
    assert await other.drain(now=later.due_at - timedelta(milliseconds=200)) >= 1
    await other.stop()
    [key] = await db.leases.due_keys(limit=1, lookahead_seconds=31)
    claim = await db.leases.claim(key, owner="someone", batch=1, lease_seconds=60)
    until = datetime.now(UTC) + timedelta(minutes=1)
    assert await db.leases.release(claim.rows, owner="someone", until=until, reason="t") == 1
    await db.dispatchers.register(dispatcher_id="ghost", host="h", pid=1)
    [key] = await db.leases.due_keys(limit=1, lookahead_seconds=120)  # its deferred slot
    claim = await db.leases.claim(key, owner="ghost", batch=1, lease_seconds=1)
    assert claim.rows
    [ghost] = [b for b in await db.dispatchers.peers(dead_after_seconds=10) if b.id == "ghost"]
    assert await db.leases.reap(dead=[("ghost", ghost.heartbeat_at)])
    # A claim revoked by a cancel before its request went out: dropped unsent, cancelled.
    revoked = await make_timer(delay_ms=0, now=datetime.now(UTC) - timedelta(hours=1))
    await db.dispatchers.register(dispatcher_id="holder", host="h", pid=1)
    [key] = await db.leases.due_keys(limit=1)  # the oldest key: the revoked timer's
    [row] = (await db.leases.claim(key, owner="holder", batch=1, lease_seconds=60)).rows
    assert row.id == revoked.id
    answer = await db.revocations.cancel(revoked.id)
    assert answer is not None and answer.revoke_token == row.lease_token
    await db.revocations.answer(row, owner="holder", dropped=True)
    [state] = await db.revocations.settle([(row.id, row.bucket, row.lease_token)])
    assert (state.answer, state.state, state.sent) == ("dropped", "cancelled", False)
    async with db.pool.connection() as conn:
        cur = await conn.execute("select distinct before, after from seen")
        seen = {(str(a), str(b)) for a, b in await cur.fetchall()}
    assert all(legal(a, b) for a, b in seen), seen - set(TRANSITIONS)  # type: ignore[arg-type]
    # ... and the scenario walked every one of them.
    assert seen == set(TRANSITIONS), set(TRANSITIONS) - seen
    for timer, state in ((delivered, "delivered"), (held, "delivered"), (retried, "pending")):
        found = await db.timers.get(timer.id)
        assert found is not None and found.state == state, (timer, found)
