"""Recurring timers through a crash: real ``timerhook serve`` processes, SIGKILL, 5 s down."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.support.processes import Service
from tests.support.sink import Received, Sink

pytestmark = [pytest.mark.slow, pytest.mark.long(seconds=20), pytest.mark.timeout(180)]


def _n(r: Received) -> int:
    return int(json.loads(r.body)["occurrence"])


async def _crash_and_restart(
    make_service: Callable[..., Service], database_url: str, sink: Sink, misfire: str
) -> tuple[float, set[int], list[Received], float, float]:
    """A 1 s series on a real serve, SIGKILLed after its third occurrence, down 5 s, started
    again; returns its first time, what came before the kill, what came after, the kill's
    and the restart's instants."""
    first = make_service(TIMERHOOK_DATABASE_URL=database_url)
    first.start()
    await first.wait_ready()
    start = datetime.now(UTC) + timedelta(seconds=1.5)
    start = start.replace(microsecond=start.microsecond // 1000 * 1000)
    async with httpx.AsyncClient(base_url=first.base_url) as client:
        created = await client.post("/timer", json={
            "url": f"{sink.url}/r", "every": 1, "at": start.isoformat(), "misfire": misfire,
        })  # fmt: skip
        assert created.status_code == 200, created.text
    await sink.wait_for(3, timeout=15)
    await first.kill()
    killed_at = time.time()
    before = {_n(r) for r in sink.received}
    count = len(sink.received)
    await asyncio.sleep(5.0)
    second = make_service(TIMERHOOK_DATABASE_URL=database_url, TIMERHOOK_PORT=str(first.port))
    restarted_at = time.time()
    second.start()
    await second.wait_ready()
    # past the dead dispatcher's takeover (10 s of silence) and a few occurrences more
    await asyncio.sleep(max(0.0, killed_at + 14.0 - time.time()))
    after = sink.received[count:]
    assert await second.terminate() == 0
    return start.timestamp(), before, after, killed_at, restarted_at


async def test_after_a_crash_missed_occurrences_coalesce_into_one_then_the_grid(
    make_service: Callable[..., Service], database_url: str, sink: Sink
) -> None:
    start, before, after, killed_at, restarted_at = await _crash_and_restart(
        make_service, database_url, sink, "coalesce"
    )
    fresh = [r for r in after if _n(r) not in before]  # a repeat of one in flight is allowed
    numbers = [_n(r) for r in fresh]
    assert len(numbers) == len(set(numbers)), numbers  # none twice
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    # one coalesced send for everything missed while down, numbered as the latest of them
    coalesced = fresh[0]
    k = _n(coalesced)
    assert start + (k - 1) <= coalesced.at, "sent before its time"
    assert start + (k - 1) > killed_at + 3.0, (k, start, killed_at)  # not an old one
    assert start + k > restarted_at, "the coalesced one is the latest missed"
    skipped = set(range(max(before) + 1, k)) - before
    assert len(skipped) >= 3 and not skipped & {_n(r) for r in after}, (before, numbers)
    # then the schedule goes on on its grid
    for r in fresh[1:]:
        late = r.at - (start + _n(r) - 1)
        assert 0 <= late <= 0.1, (_n(r), late)
    assert len(fresh) >= 4


async def test_after_a_crash_misfire_all_sends_each_missed_occurrence_once(
    make_service: Callable[..., Service], database_url: str, sink: Sink
) -> None:
    start, before, after, _, _ = await _crash_and_restart(make_service, database_url, sink, "all")
    counts = Counter(_n(r) for r in after)
    repeats = {n for n in counts if n in before}
    assert all(counts[n] == 1 for n in counts), counts  # each once (a repeat of one in flight)
    fresh = sorted(n for n in counts if n not in repeats)
    # no occurrence is missing between the last before the kill and the last sent
    assert fresh == list(range(max(before) + 1, max(fresh) + 1)), (sorted(before), fresh)
    assert max(fresh) - max(before) >= 10  # the 5 s down and the time since, every one
    for r in after:
        assert r.at >= start + _n(r) - 1  # none early
