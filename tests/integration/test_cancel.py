"""DELETE /timer/{id}: a cancelled timer never fires, also when the cancel races a claim."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from core.ids import bucket_of
from core.settings import Settings
from db.database import Database
from dispatcher.service import Dispatcher
from tests.conftest import MakeTimer
from tests.support.sink import Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


async def _state(db: Database, timer_id: uuid.UUID) -> str:
    async with db.pool.connection() as conn:
        cur = await conn.execute("select state from timers where id = %s", (timer_id,))
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def test_a_cancelled_timer_never_fires_and_cancelling_again_is_204(
    client: httpx.AsyncClient, db: Database, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    created = (await client.post("/timer", json={"seconds": 1, "url": f"{sink.url}/c"})).json()
    kept = (await client.post("/timer", json={"seconds": 1, "url": f"{sink.url}/k"})).json()
    first = await client.delete(f"/timer/{created['id']}")
    assert first.status_code == 204 and first.content == b""
    assert (await client.delete(f"/timer/{created['id']}")).status_code == 204
    assert await _state(db, uuid.UUID(created["id"])) == "cancelled"
    dispatcher = await start_dispatcher()
    # The kept timer, due at the same second, arrives; once it is recorded, that second has
    # been claimed whole, so the cancelled one had its chance to fire and did not.
    await sink.wait_for(1, timeout=10)
    await dispatcher.wait_idle(timeout=5)
    assert [json.loads(r.body)["id"] for r in sink.received] == [kept["id"]]
    assert await _state(db, uuid.UUID(created["id"])) == "cancelled"


async def test_a_delivered_timer_cannot_be_cancelled(
    client: httpx.AsyncClient,
    make_timer: MakeTimer,
    sink: Sink,
    start_dispatcher: StartDispatcher,
) -> None:
    timer = await make_timer(delay_ms=0)
    dispatcher = await start_dispatcher()
    await dispatcher.wait_recorded(1, timeout=10)
    response = await client.delete(f"/timer/{timer.id}")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert "already delivered" in response.json()["detail"]


async def test_an_in_flight_timer_cannot_be_cancelled(
    client: httpx.AsyncClient, db: Database, make_timer: MakeTimer
) -> None:
    timer = await make_timer(delay_ms=0)
    [key] = await db.leases.due_keys(limit=1, lookahead_seconds=1)
    await db.leases.claim(key, owner="someone", batch=1, lease_seconds=30)
    response = await client.delete(f"/timer/{timer.id}")
    assert response.status_code == 409
    assert "being sent" in response.json()["detail"]
    assert await _state(db, timer.id) == "inflight"


async def test_unknown_and_malformed_ids_are_404(client: httpx.AsyncClient) -> None:
    unknown = uuid.UUID(int=(1_795_000_000_000 << 80) | (7 << 76) | (2 << 62) | 99)
    for timer_id in [str(unknown), "not-an-id", str(uuid.uuid4())]:
        assert (await client.delete(f"/timer/{timer_id}")).status_code == 404


async def test_cancel_racing_claims_never_both_cancels_and_sends(
    db: Database, sink: Sink, settings: Settings, start_dispatcher: StartDispatcher
) -> None:
    """Every timer is due now; claims and cancels run at the same moment. Each timer ends
    either cancelled and never sent, or sent and its cancel refused: never both, never neither.
    A cancel that met a claimed row revoked it: it cancelled the timer if its dispatcher
    dropped it unsent (the answer DELETE waits for)."""
    count = 300
    created = await db.creates.insert([0] * count, [f"{sink.url}/r"] * count, shards=16)
    dispatcher = await start_dispatcher()

    async def cancel(timer_id: uuid.UUID) -> bool:
        result = await db.revocations.cancel(timer_id)
        assert result is not None
        if result.revoke_token is not None:
            [state] = await db.revocations.settle(
                [(timer_id, bucket_of(timer_id), result.revoke_token)]
            )
            assert state.settled, "the dispatcher answered the revocation"
            return not state.sent
        return result.cancelled

    outcomes = await asyncio.gather(*(cancel(t.id) for t in created))
    cancelled = {str(t.id) for t, ok in zip(created, outcomes, strict=True) if ok}
    await dispatcher.wait_idle(timeout=15)
    sent = {json.loads(r.body)["id"] for r in sink.received}
    assert cancelled.isdisjoint(sent), "a cancelled timer was sent"
    assert cancelled | sent == {str(t.id) for t in created}, "a timer was neither"
    counts = await db.timers.counts()
    assert counts.get("cancelled", 0) == len(cancelled)
    assert counts.get("delivered", 0) == len(sent)


async def test_a_row_dropped_before_its_send_task_ever_ran_is_let_go(
    db: Database, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    """A revocation or a take-over heard in the very step a claim's rows are scheduled cancels
    send tasks that never started: the dispatcher still lets go of each row (none is left
    claimed, so it goes idle), and keeps sending the rest."""
    dispatcher = await start_dispatcher()
    pipeline = dispatcher.pipeline
    schedule = pipeline.schedule
    dropped: list[uuid.UUID] = []
    done = asyncio.Event()

    def schedule_then_drop(claim: Any, per_minute: int, stream: Any) -> None:
        schedule(claim, per_minute, stream)
        if not dropped:  # the first claim's rows, in the same step as they were scheduled
            ids = {row.id for row in pipeline.claimed.values()}
            dropped.extend(ids)
            assert pipeline.drop(ids) == len(ids)
            done.set()

    pipeline.schedule = schedule_then_drop  # type: ignore[method-assign]
    first = await db.creates.insert([0] * 20, [f"{sink.url}/r"] * 20, shards=1)
    await asyncio.wait_for(done.wait(), 10)
    await dispatcher.wait_idle(timeout=5)
    assert pipeline.waiting() == {} and not pipeline._waiting  # no host slot counted either
    later = await db.creates.insert([0] * 5, [f"{sink.url}/later"] * 5, shards=1)
    await sink.wait_for(5, timeout=10)
    sent = {json.loads(r.body)["id"] for r in sink.received}
    assert sent == {str(t.id) for t in later}
    assert set(dropped) <= {t.id for t in first}


async def test_revocations_are_purged_after_a_day_unless_their_claim_still_holds_the_row(
    db: Database, make_timer: MakeTimer
) -> None:
    """A revocation is kept while the claim it revoked still holds its row (the reap reads it:
    a dispatcher paused for days must not send that row on waking), and purged a day after it
    was made once the row moved on."""
    await db.dispatchers.register(dispatcher_id="holder", host="h", pid=1)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    answered, unanswered = [await make_timer(delay_ms=0, now=hour_ago) for _ in range(2)]
    rows = []
    for key in await db.leases.due_keys(limit=10):
        rows += (await db.leases.claim(key, owner="holder", batch=10, lease_seconds=60)).rows
    held = {row.id: row for row in rows}
    assert set(held) >= {answered.id, unanswered.id}
    for timer in (answered, unanswered):
        result = await db.revocations.cancel(timer.id)
        assert result is not None and result.revoke_token == held[timer.id].lease_token
    await db.revocations.answer(held[answered.id], owner="holder", dropped=True)
    assert await db.revocations.purge() == 0  # both are new
    assert await db.revocations.purge(now=datetime.now(UTC) + timedelta(days=2)) == 1
    kept = held[unanswered.id]
    [state] = await db.revocations.revoked([(kept.id, kept.bucket, kept.lease_token)])
    assert (state.answer, state.held) == (None, True)  # kept: its claim still holds the row
    gone = held[answered.id]
    assert await db.revocations.revoked([(gone.id, gone.bucket, gone.lease_token)]) == []
