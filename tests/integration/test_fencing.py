"""Once means once when nothing dies: a dispatcher paused past dead_after_seconds (SIGSTOP) is
declared dead by a peer that saw its heartbeat unchanged, its leases are taken over, and when
it wakes it sends none of what it lost (real processes, real signals, the default liveness
settings)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from core.settings import Settings
from db.database import Database
from dispatcher.service import Dispatcher
from tests.support.processes import Service
from tests.support.sink import Reply, Sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# The liveness settings are the defaults (heartbeat 2 s, dead after 10 s, lease 90 s).
ENV = {
    "TIMERHOOK_ALLOW_PRIVATE_TARGETS": "1",
    "TIMERHOOK_HORIZON_DAYS": "30",
    "TIMERHOOK_LOG_LEVEL": "INFO",
}


@pytest.fixture
def dispatchers(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(name: str, **env: str) -> Service:
        service = Service(
            "dispatcher", {**ENV, "TIMERHOOK_DATABASE_URL": database_url, **env},
            tmp_path / f"{name}.log",
        )  # fmt: skip
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.proc is not None and service.proc.poll() is None:
            os.kill(service.proc.pid, signal.SIGCONT)
        service.ensure_dead()


def _query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


async def _until(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Polls ``check`` (the processes are external: polling is the signal)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _registered(url: str, service: Service) -> str | None:
    assert service.proc is not None and service.proc.poll() is None, service.log()
    rows = _query(
        url, "select id from dispatchers where pid = %s and stopped_at is null", service.proc.pid
    )
    return str(rows[0][0]) if rows else None


@pytest.mark.long(seconds=25)
async def test_a_dispatcher_paused_past_dead_after_sends_none_of_what_it_lost(
    dispatchers: Callable[..., Service], database_url: str, db: Database, sink: Sink
) -> None:
    # Two sends at a time to the one host, half a second each: 30 timers wait behind the
    # host limit in the first dispatcher, which holds every lease.
    sink.status_for = lambda r: Reply(200, delay=0.5)
    first = dispatchers("first", TIMERHOOK_HOST_CONCURRENCY="2")
    await _until(lambda: _registered(database_url, first) is not None, "first", 60)
    first_id = _registered(database_url, first)
    created = await db.creates.insert([500] * 30, [f"{sink.url}/h"] * 30, shards=16)
    ids = {str(t.id) for t in created}
    leased = "select count(*) from timers where state = 'inflight' and lease_owner = %s"
    await _until(lambda: _query(database_url, leased, first_id)[0][0] == 30, "the claim", 30)
    second = dispatchers("second", TIMERHOOK_HOST_CONCURRENCY="2")
    await _until(lambda: _registered(database_url, second) is not None, "second", 60)
    await sink.wait_for(2, timeout=30)
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    paused_wall = time.time()
    try:
        # The second saw the first's heartbeat unchanged for 10 s, declared it dead, took its
        # leases over and sent every timer.
        await sink.wait_until(lambda: sink.distinct_bodies() == len(ids), timeout=90)
        assert time.monotonic() - paused_at > 10
        before = len(sink.received)
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    # The first wakes with rows in memory whose leases are gone. Its sends wait for a
    # heartbeat, which finds it declared dead: it drops them all and registers again.
    await _until(lambda: "was declared dead by a peer" in first.log(), "the news", 30)
    await _until(lambda: _registered(database_url, first) is not None, "re-registration", 30)
    assert len(sink.received) == before, "the woken dispatcher sent what it had lost"
    counts = Counter(json.loads(r.body)["id"] for r in sink.received)
    assert set(counts) == ids
    # Only what the first had sent and not recorded at the pause went twice: the requests on
    # the wire (two, the host limit) and any answered within its last record interval
    # (docs/architecture.md, "Once"; once seen under a loaded CI: four). Each was first
    # received before the pause, and each is an outcome the first could not record on
    # waking: stale, and counted.
    twice = {i for i, n in counts.items() if n > 1}
    assert all(counts[i] == 2 for i in twice), counts
    first_seen = {
        i: min(r.at for r in sink.received if json.loads(r.body)["id"] == i) for i in twice
    }
    assert all(at < paused_wall for at in first_seen.values()), (first_seen, paused_wall)
    stale = "select stale from send_totals"
    need = max(1, len(twice))
    await _until(
        lambda: int(_query(database_url, stale)[0][0]) >= need,  # type: ignore[call-overload]
        f"{need} stale outcomes", 30,
    )  # fmt: skip
    # The second records its last sends (answered half a second after they arrived).
    states = "select state, count(*) from timers group by state"
    await _until(lambda: _query(database_url, states) == [("delivered", len(ids))], "records", 10)
    assert await first.terminate() == 0, first.log()
    assert await second.terminate() == 0, second.log()
    assert "Traceback" not in first.log() + second.log()


async def test_no_send_follows_a_2xx_cancel_or_pause_of_a_series_or_a_cancel_of_a_timer(
    client: httpx.AsyncClient,
    sink: Sink,
    database_url: str,
    start_dispatcher: Callable[..., Awaitable[object]],
) -> None:
    """Rows are claimed up to a tick and a half before their instant. A DELETE or a pause
    that meets one revokes its claim: its dispatcher drops it unsent, or says its request
    went out (and it is then never retried). Either way, once the request answered 2xx,
    nothing of it is sent. Twenty every-second series are deleted and twenty paused, each
    at a random instant; a one-shot timer is cancelled 1 s before it is due.

    The sink, the API and the dispatcher share one event loop here, so a request that went
    out before the answer can reach the sink after it: a request that arrives after its 2xx
    must be the one occurrence whose revocation its dispatcher answered 'sending' (it was on
    the wire when the revocation came), once."""
    await start_dispatcher()
    rng = random.Random(int(time.time()))
    series = []
    for _ in range(40):
        made = await client.post("/timer", json={"url": f"{sink.url}/s", "every": 1})
        assert made.status_code == 200, made.text
        series.append(made.json()["id"])
    once = await client.post("/timer", json={"url": f"{sink.url}/once", "seconds": 3})
    assert once.status_code == 200

    answered: dict[str, float] = {}

    async def stop(series_id: str, delete: bool) -> None:
        await asyncio.sleep(rng.uniform(0.5, 4.0))
        if delete:
            response = await client.delete(f"/timer/{series_id}")
            assert response.status_code == 204, response.text
        else:
            response = await client.post(f"/timer/{series_id}/pause")
            assert response.status_code == 200, response.text
        answered[series_id] = time.time()

    async def cancel_once() -> None:
        await asyncio.sleep(2.0)  # 1 s before it is due: claimed already
        response = await client.delete(f"/timer/{once.json()['id']}")
        assert response.status_code == 204, response.text

    await asyncio.gather(*(stop(s, i % 2 == 0) for i, s in enumerate(series)), cancel_once())
    await asyncio.sleep(3.0)  # anything claimed before the answers would have gone by now
    on_the_wire = {
        (str(series_id), occurrence)
        for series_id, occurrence in _query(
            database_url,
            "select t.series_id, t.occurrence from revocations r"
            " join timers t on t.id = r.timer_id and t.bucket = r.bucket"
            " where r.answer = 'sending' and t.series_id is not null",
        )
    }
    late = Counter(
        (json.loads(r.body)["id"], json.loads(r.body)["occurrence"])
        for r in sink.received
        if r.path == "/s" and r.at > answered[json.loads(r.body)["id"]]
    )
    assert set(late) <= on_the_wire, (late, on_the_wire)  # each went out before its 2xx
    assert all(n == 1 for n in late.values()), late  # and was not retried
    assert [r for r in sink.received if r.path == "/once"] == []
    assert sum(1 for r in sink.received if r.path == "/s") >= 20  # the series did run
    detail = (await client.get(f"/timer/{once.json()['id']}")).json()
    assert detail["status"] == "cancelled"


@pytest.mark.long(seconds=145)
async def test_timers_queued_behind_a_host_slower_than_their_lease_are_each_sent_once(
    db: Database,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: Callable[..., Awaitable[Dispatcher]],
) -> None:
    """2,000 timers to one host that answers after 9 s, at the default limits (128 in flight
    to a host, a 90 s lease): they need about 140 s. The heartbeat renews the lease of every
    row the dispatcher holds, so none is taken back and sent twice; and once the host's
    latency is known, the dispatcher holds no more of its rows than it sends within half a
    lease (128 x 45 s / 9 s = 640 waiting, besides the 128 being sent): the rest wait
    pending, due when their turn comes."""
    sink.status_for = lambda r: Reply(200, delay=9.0)
    settings = make_settings(http_timeout_seconds=10.0)  # the default timeout
    assert (settings.host_concurrency, settings.lease_seconds) == (128, 90.0)
    dispatcher = await start_dispatcher(settings)
    created = await db.creates.insert([0] * 2000, [f"{sink.url}/slow"] * 2000, shards=16)
    held: list[int] = []

    async def sample() -> None:
        await sink.wait_for(129, timeout=30)  # the first answers came: the latency is known
        await asyncio.sleep(2 * settings.heartbeat_seconds + 1)  # a heartbeat has shed
        while True:
            held.append(dispatcher.in_flight)
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    await sink.wait_until(lambda: sink.distinct_bodies() == len(created), timeout=200)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    await dispatcher.wait_idle(timeout=30)
    assert held and max(held) <= 128 + 640, max(held)
    counts = Counter(json.loads(r.body)["id"] for r in sink.received)
    assert set(counts) == {str(t.id) for t in created}
    # Each request the host received is an attempt recorded once: none was sent again by a
    # lease outliving its sends. A second request of a timer is only ever its retry after an
    # attempt recorded as timed out (a 9 s answer against the default 10 s timeout: on a
    # loaded machine one round once came late), never unrecorded.
    twice = [i for i, n in counts.items() if n > 1]
    for timer_id in twice:
        attempts = await db.timers.attempts(uuid.UUID(timer_id))
        assert len(attempts) == counts[timer_id], (timer_id, counts[timer_id], attempts)
        assert all("timeout" in (a.error or "") for a in attempts[:-1]), attempts
    assert len(twice) <= 2 * 128, len(twice)  # a round or two of timeouts, not a pattern
    assert (await db.timers.counts()) == {"delivered": len(created)}
    assert sink.max_in_flight <= 128
