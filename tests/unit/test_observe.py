"""Pure pieces of observability: histogram quantiles, the dashboard's history binning, the
shared cache of database reads, the log formatters."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from api.observe import Cached, history, quantile
from core.logs import formatter, target_host, timer_context
from db.stats import BOUNDS, BUCKETS, SecondStats


def buckets(**at_bound: int) -> list[int]:
    """Per-bucket counts, given by bound index ("b3": 10) or "inf"."""
    counts = [0] * BUCKETS
    for key, n in at_bound.items():
        counts[BUCKETS - 1 if key == "inf" else int(key[1:])] = n
    return counts


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 100 observations, all in (0.005, 0.01]: the median is half way through that bucket.
    counts = buckets(b3=100)
    assert quantile(0.5, counts) == pytest.approx(0.0075)
    assert quantile(0.99, counts) == pytest.approx(0.005 + 0.005 * 0.99)
    # 90 fast, 10 slow: p50 among the fast ones, p99 among the slow ones.
    mixed = buckets(b0=90, b9=10)
    assert quantile(0.5, mixed) == pytest.approx(0.001 * 50 / 90)
    assert BOUNDS[8] < quantile(0.99, mixed) <= BOUNDS[9]  # type: ignore[operator]


def test_quantile_of_nothing_is_none_and_past_the_last_bound_is_that_bound() -> None:
    assert quantile(0.5, [0] * BUCKETS) is None
    assert quantile(0.99, buckets(inf=5)) == BOUNDS[-1]


def test_history_bins_seconds_into_steps_without_gaps() -> None:
    end = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def second(offset: int, delivered: int, dead: int = 0) -> SecondStats:
        s = SecondStats(end - timedelta(seconds=offset))
        s.counts.update(delivered=delivered, dead=dead)
        s.lateness[2] = delivered + dead
        return s

    points = history([second(1, 10), second(3, 5, dead=5), second(2000, 99)], end=end)
    assert len(points) == 180
    assert points[-1].at == end  # the step under way
    last_full = points[-2]  # 11:59:55 .. 11:59:59 holds both seconds
    assert last_full.at == end - timedelta(seconds=5)
    assert last_full.sent_per_second == (10 + 10) / 5
    assert last_full.failed_per_second == 5 / 5
    assert BOUNDS[1] < last_full.lateness_p50_ms / 1000 <= BOUNDS[2]  # type: ignore[operator]
    # Steps without sends are zeros, not missing; the second 2000 s back is out of range.
    assert sum(p.sent_per_second for p in points) == 4.0
    assert points[0].lateness_p50_ms is None and points[0].sent_per_second == 0


async def test_cached_reads_once_for_concurrent_callers_and_again_after_the_ttl() -> None:
    reads = 0

    async def read() -> int:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)  # fast: kept for the ttl
        return reads

    cached = Cached(read, ttl=0.2)
    assert await asyncio.gather(*(cached.get() for _ in range(10))) == [1] * 10
    assert await cached.get() == 1 and reads == 1
    await asyncio.sleep(0.25)
    assert await cached.get() == 2 and reads == 2


async def test_a_slow_read_is_kept_longer() -> None:
    reads = 0

    async def slow() -> int:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.1)
        return reads

    cached = Cached(slow, ttl=0.05, share=0.25, max_hold=1.0)  # 0.1 s read: kept 0.4 s
    assert await cached.get() == 1
    await asyncio.sleep(0.2)
    assert await cached.get() == 1
    await asyncio.sleep(0.3)
    assert await cached.get() == 2
    capped = Cached(slow, ttl=0.05, share=0.01, max_hold=0.3)  # would be 10 s: kept 0.3 s
    assert await capped.get() == 3
    await asyncio.sleep(0.4)
    assert await capped.get() == 4


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("dispatcher.recorder", logging.WARNING, __file__, 1,
                               "webhook failed: %s", ("HTTP 500",), None)  # fmt: skip
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_time_level_logger_message_and_context() -> None:
    url = "https://user:pw@hooks.example.com:8443/a?token=secret"
    context = timer_context("t-1", request_id="r-1", dispatcher_id="d-1", attempt=2, url=url)
    line = json.loads(formatter("json").format(_record(**context)))
    assert line["level"] == "WARNING" and line["logger"] == "dispatcher.recorder"
    assert line["message"] == "webhook failed: HTTP 500"
    assert datetime.fromisoformat(line["time"]).tzinfo is not None
    assert {k: line[k] for k in ("timer_id", "request_id", "dispatcher_id", "attempt")} == {
        "timer_id": "t-1", "request_id": "r-1", "dispatcher_id": "d-1", "attempt": 2,
    }  # fmt: skip
    assert line["target_host"] == "hooks.example.com"
    assert "secret" not in json.dumps(line) and "pw" not in json.dumps(line)
    # uvicorn's coloured copy of its message stays out of the JSON
    coloured = json.loads(formatter("json").format(_record(color_message="\x1b[36mx\x1b[0m")))
    assert "color_message" not in coloured


def test_text_lines_end_with_the_context_they_carry() -> None:
    text = formatter("text").format(_record(timer_id="t-1", attempt=3))
    assert text.endswith("dispatcher.recorder: webhook failed: HTTP 500 [timer_id=t-1 attempt=3]")
    assert formatter("text").format(_record()).endswith("webhook failed: HTTP 500")


def test_target_host_never_fails() -> None:
    assert target_host("http://[::1]:80/x") == "::1"
    assert target_host("not a url") == "?"
    assert target_host("http://[bad/x") == "?"
