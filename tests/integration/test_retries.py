"""Retries against a scripted sink: backoff bounds, Retry-After, dead letters and requeue."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx

from core.settings import Settings
from db.database import Database
from db.models import ClaimedTimer
from dispatcher.retry import ceiling
from dispatcher.sender import Result, Sender
from dispatcher.service import Dispatcher
from tests.conftest import MakeTimer
from tests.support.sink import Received, Reply, Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]

BASE = 0.4  # the first backoff ceiling in these tests; then 1.6 s, 6.4 s ...
# A retry is claimed ahead and sent at its run_at, so it arrives within milliseconds of it;
# this allows for a loaded machine.
SLACK = 0.35


def _fail_first(times: int, reply: Reply) -> Callable[[Received], int | Reply]:
    """Answers ``reply`` to the first ``times`` requests of each timer, then 200."""
    seen: dict[str, int] = defaultdict(int)

    def answer(request: Received) -> int | Reply:
        key = request.headers["Idempotency-Key"]
        seen[key] += 1
        return reply if seen[key] <= times else 200

    return answer


async def _state(db: Database, timer_id: object) -> str:
    timer = await db.timers.get(timer_id)  # type: ignore[arg-type]
    assert timer is not None
    return timer.state


async def test_failures_are_retried_with_growing_full_jitter_backoff(
    make_timer: MakeTimer,
    sink: Sink,
    db: Database,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    sink.status_for = _fail_first(2, Reply(503))
    count = 30
    timers = [await make_timer(delay_ms=500, max_attempts=5) for _ in range(count)]
    settings = make_settings(retry_base_seconds=BASE, retry_max_seconds=60)
    dispatcher = await start_dispatcher(settings)
    await sink.wait_for(3 * count, timeout=30)
    await dispatcher.wait_recorded(3 * count, timeout=10)
    first_gaps, second_gaps = [], []
    for timer in timers:
        arrivals = [r.at for r in sink.for_id(timer.id)]
        assert len(arrivals) == 3, "two failures, then delivered: three requests, no more"
        first_gaps.append(arrivals[1] - arrivals[0])
        second_gaps.append(arrivals[2] - arrivals[1])
        assert [r.headers["Timerhook-Attempt"] for r in sink.for_id(timer.id)] == ["1", "2", "3"]
        assert await _state(db, timer.id) == "delivered"
        attempts = await db.timers.attempts(timer.id)
        assert [(a.attempt, a.status) for a in attempts] == [(1, 503), (2, 503), (3, 200)]
    # Within [0, ceiling] of each attempt (plus the send's own slack), never beyond.
    assert max(first_gaps) <= ceiling(1, base=BASE, cap=60) + SLACK, first_gaps
    assert max(second_gaps) <= ceiling(2, base=BASE, cap=60) + SLACK, second_gaps
    # Full jitter: the waits are spread out, and the second ceiling is four times the first.
    assert statistics.pstdev(second_gaps) > 0.15, second_gaps
    assert statistics.mean(second_gaps) > 2 * statistics.mean(first_gaps)


async def test_retry_after_in_seconds_is_honoured(
    make_timer: MakeTimer,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    sink.status_for = _fail_first(1, Reply(429, headers={"Retry-After": "2"}))
    timer = await make_timer(delay_ms=0)
    # Without Retry-After this would wait anywhere up to an hour.
    await start_dispatcher(make_settings(retry_base_seconds=3600, retry_max_seconds=7200))
    await sink.wait_for(2, timeout=15)
    first, second = sink.for_id(timer.id)
    assert 2.0 <= second.at - first.at <= 2.0 + SLACK


async def test_retry_after_as_an_http_date_is_honoured(
    make_timer: MakeTimer,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    def answer(request: Received) -> int | Reply:
        if len(sink.received) > 1:
            return 200
        when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        return Reply(503, headers={"Retry-After": format_datetime(when, usegmt=True)})

    sink.status_for = answer
    timer = await make_timer(delay_ms=0)
    await start_dispatcher(make_settings(retry_base_seconds=3600, retry_max_seconds=7200))
    await sink.wait_for(2, timeout=15)
    first, second = sink.for_id(timer.id)
    # the date has whole seconds: 2 to 3 s after the first answer
    assert 2.0 <= second.at - first.at <= 3.0 + SLACK


async def test_dead_after_max_attempts_then_requeued_and_delivered(
    make_timer: MakeTimer,
    sink: Sink,
    db: Database,
    client: httpx.AsyncClient,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    healthy = False
    sink.status_for = lambda r: 200 if healthy else Reply(500, body=b"database exploded")
    timer = await make_timer(delay_ms=0, max_attempts=3)
    dispatcher = await start_dispatcher(make_settings(retry_base_seconds=0.2))
    await dispatcher.wait_recorded(3, timeout=20)
    assert len(sink.for_id(timer.id)) == 3, "three attempts, then no more"
    detail = (await client.get(f"/timer/{timer.id}")).json()
    assert (detail["status"], detail["attempts"], detail["max_attempts"]) == ("dead", 3, 3)
    assert detail["last_result"]["status_code"] == 500
    assert detail["last_result"]["error"] == "HTTP 500: database exploded"
    assert detail["next_attempt_at"] is None

    dead = (await client.get("/timer", params={"status": "dead,failed"})).json()
    assert [t["id"] for t in dead["items"]] == [str(timer.id)]
    assert dead["items"][0]["finished_at"] is not None

    healthy = True
    response = await client.post(f"/timer/{timer.id}/requeue")
    assert (response.status_code, response.json()) == (200, {"requeued": 1})
    await dispatcher.wait_recorded(4, timeout=10)
    assert len(sink.for_id(timer.id)) == 4
    detail = (await client.get(f"/timer/{timer.id}")).json()
    assert (detail["status"], detail["attempts"]) == ("delivered", 4)
    attempts = (await client.get(f"/timer/{timer.id}/attempts")).json()["attempts"]
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [
        (1, 500), (2, 500), (3, 500), (4, 200),
    ]  # fmt: skip
    assert all(a["dispatcher"] == dispatcher.id and a["latency_ms"] >= 0 for a in attempts)
    # A delivered timer is not requeued again.
    again = await client.post(f"/timer/{timer.id}/requeue")
    assert again.status_code == 409 and "delivered" in again.json()["detail"]


async def test_a_requeued_timer_gets_a_fresh_round_of_attempts(
    make_timer: MakeTimer,
    sink: Sink,
    db: Database,
    client: httpx.AsyncClient,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    sink.status_for = lambda r: 502
    timer = await make_timer(delay_ms=0, max_attempts=2)
    dispatcher = await start_dispatcher(make_settings(retry_base_seconds=0.2))
    await dispatcher.wait_recorded(2, timeout=15)
    assert await _state(db, timer.id) == "dead"
    assert (await client.post(f"/timer/{timer.id}/requeue")).status_code == 200
    await dispatcher.wait_recorded(4, timeout=15)
    assert await _state(db, timer.id) == "dead"
    assert len(sink.for_id(timer.id)) == 4  # two more, not one: the round restarted


async def test_bulk_requeue_takes_a_filtered_set_or_all(
    db: Database, sink: Sink, client: httpx.AsyncClient, make_timer: MakeTimer
) -> None:
    ids = {name: (await make_timer(delay_ms=0, url=f"{sink.url}/{name}")).id
           for name in ("a1", "a2", "b1", "b2", "c1")}  # fmt: skip
    async with db.pool.connection() as conn:
        for name, state in (("a1", "dead"), ("a2", "failed"), ("b1", "dead"), ("b2", "failed")):
            await conn.execute(
                "update timers set state = %s, attempts = 1, finished_at = now() where id = %s",
                (state, ids[name]),
            )
    only_dead_a = {"status": ["dead"], "url_prefix": f"{sink.url}/a"}
    response = await client.post("/timer/requeue", json=only_dead_a)
    assert response.json() == {"requeued": 1}
    assert [await _state(db, ids[n]) for n in ("a1", "a2", "b1", "b2", "c1")] == [
        "pending", "failed", "dead", "failed", "pending",
    ]  # fmt: skip
    assert (await client.post("/timer/requeue", json={"limit": 1})).json() == {"requeued": 1}
    assert (await client.post("/timer/requeue", json={})).json() == {"requeued": 2}
    assert {await _state(db, i) for i in ids.values()} == {"pending"}
    refused = await client.post("/timer/requeue", json={"status": ["delivered"]})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "status"
    # PostgreSQL text cannot hold NUL: a 422 naming the field, never a 500 (found by fuzzing)
    refused = await client.post("/timer/requeue", json={"url_prefix": "http://a\u0000"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "url_prefix"
    assert "NUL" in refused.json()["errors"][0]["reason"]


async def test_a_retry_after_that_is_no_ascii_number_ends_dead_after_max_attempts(
    make_timer: MakeTimer,
    sink: Sink,
    db: Database,
    client: httpx.AsyncClient,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    """'²' is a digit to str.isdigit() and not to float(): it once raised inside the send,
    no outcome was recorded, and the timer was POSTed again every lease for ever."""
    sink.status_for = lambda r: Reply(503, headers={"Retry-After": "²"}, body=b"busy")
    timer = await make_timer(delay_ms=0, max_attempts=3)
    dispatcher = await start_dispatcher(make_settings(retry_base_seconds=0.2))
    await dispatcher.wait_recorded(3, timeout=20)
    assert len(sink.for_id(timer.id)) == 3
    detail = (await client.get(f"/timer/{timer.id}")).json()
    assert (detail["status"], detail["attempts"]) == ("dead", 3)
    assert detail["last_result"]["error"] == "HTTP 503: busy"


class _BrokenSender(Sender):
    """A sender with a bug: every send raises (what a header that does not parse did)."""

    async def send(self, timer: ClaimedTimer) -> Result:
        raise RuntimeError("a bug in the send path")


async def test_an_exception_in_the_send_path_is_a_failed_attempt_counted_against_max_attempts(
    make_timer: MakeTimer,
    sink: Sink,
    db: Database,
    client: httpx.AsyncClient,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    settings = make_settings(retry_base_seconds=0.2)
    timer = await make_timer(delay_ms=0, max_attempts=2)
    dispatcher = await start_dispatcher(settings, sender=_BrokenSender(**_sender_args(settings)))
    await dispatcher.wait_recorded(2, timeout=20)
    detail = (await client.get(f"/timer/{timer.id}")).json()
    assert (detail["status"], detail["attempts"]) == ("dead", 2)
    error = detail["last_result"]["error"]
    assert error == "internal error while sending: RuntimeError: a bug in the send path"


def _sender_args(settings: Settings) -> dict[str, object]:
    return {
        "timeout_seconds": settings.http_timeout_seconds, "concurrency": settings.concurrency,
        "allow_private": True,
    }  # fmt: skip
