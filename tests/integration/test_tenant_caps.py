"""Caps per tenant and per target host: each capped stream smooth at its own rate, shared by
the fleet, and never in anyone else's way."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from core.settings import Settings
from db.database import Database
from db.models import DeliveryOptions
from dispatcher.service import Dispatcher
from tests.support.sink import Received, Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


def per_second(received: list[Received], start: float, seconds: int) -> list[int]:
    """How many arrived in each whole second from ``start``."""
    counts = Counter(int(r.at - start) for r in received if r.at >= start)
    return [counts.get(i, 0) for i in range(seconds)]


def within(counts: list[int], rate: float) -> bool:
    """Every second within 5% of the rate, or within one send where 5% is less than one."""
    slack = max(1.0, 0.05 * rate)
    return all(abs(c - rate) <= slack for c in counts)


async def test_two_capped_tenants_drain_at_their_own_rates_with_two_dispatchers(
    db: Database, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    await db.caps.set(scope="tenant:slow", per_minute=600)  # 10/s
    await db.caps.set(scope="tenant:fast", per_minute=3000)  # 50/s
    past = datetime.now(UTC) - timedelta(seconds=30)
    for tenant, n in (("slow", 120), ("fast", 600)):
        await db.creates.insert(
            [0] * n, [f"{sink.url}/{tenant}"] * n, shards=16, now=past,
            options=[DeliveryOptions(tenant=tenant)] * n,
        )  # fmt: skip
    await start_dispatcher()
    await start_dispatcher()
    # Ten seconds of both streams (the herds last 12 s at these rates).
    await sink.wait_until(lambda: len(sink.received) >= 1, timeout=10)
    start = sink.received[0].at + 1.0  # after the first second (a full bucket may go at once)
    await sink.wait_until(lambda: sink.received[-1].at >= start + 9.0, timeout=20)
    slow = [r for r in sink.received if r.path == "/slow"]
    fast = [r for r in sink.received if r.path == "/fast"]
    slow_counts, fast_counts = per_second(slow, start, 9), per_second(fast, start, 9)
    assert within(slow_counts, 10), slow_counts
    assert within(fast_counts, 50), fast_counts
    ids = [json.loads(r.body)["id"] for r in sink.received]
    assert len(ids) == len(set(ids))  # each timer once across the two dispatchers


async def test_a_capped_host_waits_while_another_host_goes_on_time(
    db: Database, sink: Sink, other_sink: Sink, start_dispatcher: StartDispatcher,
    make_settings: Callable[..., Settings],
) -> None:  # fmt: skip
    await db.caps.set(scope="host:127.0.0.2", per_minute=60)  # 1/s
    created = await db.creates.insert(
        [2000] * 400,
        [f"{other_sink.url}/capped"] * 200 + [f"{sink.url}/free"] * 200,
        shards=16,
    )
    due = created[0].due_at.timestamp()
    await start_dispatcher(make_settings())
    free = await sink.wait_for(200, timeout=10)
    late = max(r.at for r in free) - due
    assert late < 1.0, late
    # Meanwhile the capped host gets its one a second (a bucket of two at most at once).
    await other_sink.wait_until(lambda: len(other_sink.received) >= 4, timeout=10)
    capped = other_sink.received
    assert capped[3].at - capped[0].at >= 1.5, [r.at - due for r in capped]
