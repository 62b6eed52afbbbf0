"""A fleet of real ``timerhook dispatcher`` processes: shared work, SIGKILL and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from db.database import Database
from db.models import DeliveryOptions
from tests.support.processes import Service
from tests.support.sink import Received, Reply, Sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FLEET_ENV = {
    "TIMERHOOK_ALLOW_PRIVATE_TARGETS": "1",
    "TIMERHOOK_HORIZON_DAYS": "30",
    "TIMERHOOK_HEARTBEAT_SECONDS": "1",
    "TIMERHOOK_DEAD_AFTER_SECONDS": "3",
    "TIMERHOOK_LOG_LEVEL": "WARNING",
}


@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Iterator[Callable[[int], list[Service]]]:
    started: list[Service] = []

    def start(count: int) -> list[Service]:
        env = {**FLEET_ENV, "TIMERHOOK_DATABASE_URL": database_url}
        made = [
            Service("dispatcher", env, tmp_path / f"dispatcher-{len(started) + i}.log")
            for i in range(count)
        ]
        for service in made:
            service.start()
        started.extend(made)
        return made

    yield start
    for service in started:
        service.ensure_dead()


def _query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


async def _registered(url: str, services: list[Service], timeout: float = 60) -> dict[int, str]:
    """Waits until every process registered; returns {pid: dispatcher id}."""
    pids = {s.proc.pid for s in services if s.proc}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _query(url, "select pid, id from dispatchers where stopped_at is null")
        found = {int(pid): str(i) for pid, i in rows if pid in pids}  # type: ignore[call-overload]
        if len(found) == len(pids):
            return found
        for s in services:
            assert s.proc is not None and s.proc.poll() is None, s.log()
        await asyncio.sleep(0.1)
    raise AssertionError("dispatchers did not register in time")


def _counts(sink: Sink) -> Counter[str]:
    return Counter(json.loads(r.body)["id"] for r in sink.received)


async def _stream(db: Database, sink: Sink, count: int, seconds: float) -> set[str]:
    """``count`` timers due evenly over ``seconds``, starting 3 s from now."""
    delays = [3000 + int(i * seconds * 1000 / count) for i in range(count)]
    created = await db.creates.insert(delays, [f"{sink.url}/h"] * count, shards=16)
    return {str(t.id) for t in created}


async def test_sigkill_mid_stream_loses_nothing_and_doubles_at_most_what_was_in_flight(
    fleet: Callable[[int], list[Service]],
    database_url: str,
    db: Database,
    sink: Sink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dispatchers = fleet(3)
    owners = await _registered(database_url, dispatchers)
    ids = await _stream(db, sink, 20_000, 10.0)
    await sink.wait_for(5_000, timeout=60)
    victim = dispatchers[0]
    await victim.kill()
    assert victim.proc is not None
    victim_id = owners[victim.proc.pid]
    # Frozen now that the process is dead: only these rows can be sent twice.
    [(in_flight,)] = _query(
        database_url,
        "select count(*) from timers where state = 'inflight' and lease_owner = %s",
        victim_id,
    )
    # Every timer, counted once: the survivors take the victim's leases over.
    await sink.wait_until(lambda: sink.distinct_bodies() == len(ids), timeout=90)
    for survivor in dispatchers[1:]:
        assert await survivor.terminate() == 0, survivor.log()
    counts = _counts(sink)
    duplicates = sum(n - 1 for n in counts.values())
    with capsys.disabled():  # shown in every run: the issue asks for both numbers
        print(f"\nSIGKILL: victim had {in_flight} in flight; {duplicates} sent twice")  # noqa: T201
    assert set(counts) == ids, "a timer was lost"
    assert duplicates <= int(in_flight)  # type: ignore[call-overload]
    assert _query(database_url, "select state, count(*) from timers group by state") == [
        ("delivered", len(ids))
    ]
    # every dispatcher took part: each recorded answers (the victim's counter in the registry
    # is written at its heartbeats, which it may not have reached before the kill)
    sent = _query(
        database_url,
        "select dispatcher, count(*) from timer_attempts where status is not null"
        " group by dispatcher order by dispatcher",
    )
    assert len(sent) == 3 and victim_id in {d for d, _ in sent}, sent


async def test_sigterm_mid_stream_sends_nothing_twice(
    fleet: Callable[[int], list[Service]],
    database_url: str,
    db: Database,
    sink: Sink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dispatchers = fleet(3)
    await _registered(database_url, dispatchers)
    ids = await _stream(db, sink, 6_000, 5.0)
    await sink.wait_for(1_500, timeout=60)
    leaving = dispatchers[0]
    assert await leaving.terminate() == 0, leaving.log()
    await sink.wait_until(lambda: sink.distinct_bodies() == len(ids), timeout=60)
    for survivor in dispatchers[1:]:
        assert await survivor.terminate() == 0, survivor.log()
    counts = _counts(sink)
    with capsys.disabled():
        print(f"\nSIGTERM: {sum(n - 1 for n in counts.values())} sent twice")  # noqa: T201
    assert set(counts) == ids
    assert max(counts.values()) == 1, "a timer was sent twice"
    [(stopped,)] = _query(
        database_url, "select count(*) from dispatchers where stopped_at is not null"
    )
    assert stopped == 3


async def test_sigkill_mid_send_repeats_at_least_once_and_never_at_most_once(
    fleet: Callable[[int], list[Service]], database_url: str, db: Database, sink: Sink
) -> None:
    # The first request of every timer hangs, so the victim dies with all of them mid-send.
    first_seen: set[str] = set()

    def answer(request: Received) -> int | Reply:
        key = request.headers["Idempotency-Key"]
        if key in first_seen:
            return 200
        first_seen.add(key)
        return Reply(200, delay=8.0)

    sink.status_for = answer
    [victim] = fleet(1)
    await _registered(database_url, [victim])
    urls = [f"{sink.url}/h"] * 20
    least = await db.creates.insert([500] * 20, urls, shards=16)
    most = await db.creates.insert(
        [500] * 20, urls, shards=16, options=[DeliveryOptions(delivery="at_most_once")] * 20
    )
    await sink.wait_for(40, timeout=30)
    await victim.kill()
    [survivor] = fleet(1)  # takes the leases over once the victim's heartbeat is stale
    await sink.wait_until(lambda: len(sink.received) >= 60, timeout=60)
    assert await survivor.terminate() == 0, survivor.log()
    counts = _counts(sink)
    assert {counts[str(t.id)] for t in least} == {2}, "at_least_once: each sent again"
    assert {counts[str(t.id)] for t in most} == {1}, "at_most_once: never sent twice"
    states = dict(_query(database_url, "select delivery, array_agg(distinct state) from timers "
                                       "group by delivery"))  # fmt: skip
    assert states == {"at_least_once": ["delivered"], "at_most_once": ["failed"]}
    lost = await db.timers.get(most[0].id)
    assert lost is not None and lost.last_error is not None
    assert "at_most_once" in lost.last_error and "not repeated" in lost.last_error
    assert lost.fired_at is not None and lost.last_status is None  # GET shows it as last_result
    [attempt] = await db.timers.attempts(most[0].id)
    assert attempt.error is not None and attempt.error.startswith("outcome unknown")


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


async def _children_registered(
    url: str, parent: Service, count: int, exclude: set[int], timeout: float = 60
) -> set[int]:
    """Waits until ``count`` live dispatchers run as children of ``parent`` (pids not in
    ``exclude``); returns their pids."""
    assert parent.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _query(url, "select pid from dispatchers where stopped_at is null")
        pids = set()
        for (pid,) in rows:
            try:
                if _parent_of(int(pid)) == parent.proc.pid:  # type: ignore[call-overload]
                    pids.add(int(pid))  # type: ignore[call-overload]
            except FileNotFoundError:
                continue
        if len(pids - exclude) >= count:
            return pids - exclude
        assert parent.proc.poll() is None, parent.log()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} child dispatchers did not register:\n{parent.log()}")


async def test_one_command_runs_n_dispatcher_processes_and_restarts_one_that_dies(
    tmp_path: Path, database_url: str, db: Database, sink: Sink
) -> None:
    env = {**FLEET_ENV, "TIMERHOOK_DATABASE_URL": database_url,
           "TIMERHOOK_DISPATCHER_PROCESSES": "2", "TIMERHOOK_LOG_LEVEL": "INFO"}  # fmt: skip
    parent = Service("dispatcher", env, tmp_path / "fleet.log")
    parent.start()
    try:
        children = await _children_registered(database_url, parent, 2, exclude=set())
        ids = await _stream(db, sink, 3000, 2.0)
        await sink.wait_until(lambda: sink.distinct_bodies() == len(ids), timeout=60)
        by = _query(
            database_url,
            "select dispatcher, count(*) from timer_attempts group by dispatcher",
        )
        assert len(by) == 2, by  # both processes took part
        # A child killed outright is started again by the parent.
        victim = min(children)
        os.kill(victim, signal.SIGKILL)
        await _children_registered(database_url, parent, 1, exclude=children)
        assert "exited with signal SIGKILL; starting it again" in parent.log()
        assert await parent.terminate() == 0, parent.log()
        left = _query(
            database_url,
            "select pid from dispatchers where stopped_at is null and pid <> %s",
            victim,
        )
        assert left == [], "a child did not stop cleanly"
        for pid in children - {victim}:
            with pytest.raises(ProcessLookupError):  # stopped and reaped by the parent
                os.kill(pid, 0)
    finally:
        parent.ensure_dead()
