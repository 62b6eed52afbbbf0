"""Named resources across a fleet of real ``timerhook dispatcher`` processes: never two holders
in flight at once, and holds that die with their dispatcher are taken back."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest

from db.database import Database
from db.models import DeliveryOptions
from tests.integration.test_fleet import _query, _registered, fleet  # noqa: F401 (a fixture)
from tests.support.processes import Service
from tests.support.sink import Received, Reply, Sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _counts(sink: Sink) -> Counter[str]:
    return Counter(json.loads(r.body)["id"] for r in sink.received)


async def test_three_dispatchers_never_have_two_holders_of_a_resource_in_flight(
    fleet: Callable[[int], list[Service]],  # noqa: F811
    database_url: str,
    db: Database,
    sink: Sink,
) -> None:
    # Each request takes 10 ms to answer, so an overlap would show in the sink's count.
    sink.status_for = lambda r: Reply(delay=0.01)
    dispatchers = fleet(3)
    await _registered(database_url, dispatchers)
    count = 300
    created = await db.creates.insert(
        [1000] * count, [f"{sink.url}/lock"] * count, shards=16,
        options=[DeliveryOptions(resources=("the-lock",))] * count,
    )  # fmt: skip
    await sink.wait_until(lambda: sink.distinct_bodies() == count, timeout=120)
    for service in dispatchers:
        assert await service.terminate() == 0, service.log()
    assert sink.max_in_flight == 1
    assert _counts(sink) == Counter({str(t.id): 1 for t in created})  # each exactly once
    assert _query(database_url, "select count(*) from resource_holds") == [(0,)]
    assert _query(database_url, "select state, count(*) from timers group by state") == [
        ("delivered", count)
    ]


async def test_sigkill_while_holding_resources_releases_them_when_the_lease_is_taken_back(
    fleet: Callable[[int], list[Service]],  # noqa: F811
    database_url: str,
    db: Database,
    sink: Sink,
) -> None:
    first_seen: set[str] = set()

    def answer(request: Received) -> int | Reply:
        if request.path == "/first" and "first" not in first_seen:
            first_seen.add("first")
            return Reply(delay=10)  # in flight, holding "printer", when its dispatcher dies
        return 200

    sink.status_for = answer
    [victim] = fleet(1)
    await _registered(database_url, [victim])
    opts = DeliveryOptions(resources=("printer", "paper"))
    [first] = await db.creates.insert([0], [f"{sink.url}/first"], shards=16, options=[opts])
    await sink.wait_for(1, timeout=10)
    rest = await db.creates.insert(
        [0] * 3, [f"{sink.url}/rest"] * 3, shards=16,
        options=[DeliveryOptions(resources=("printer",))] * 3,
    )  # fmt: skip
    held = _query(database_url, "select resource, timer_id from resource_holds order by 1")
    assert held == [("paper", first.id), ("printer", first.id)]
    await victim.kill()
    # Nothing can go while the dead dispatcher's holds stand.
    [survivor] = fleet(1)
    await sink.wait_until(lambda: len(sink.received) >= 5, timeout=30)
    assert await survivor.terminate() == 0, survivor.log()
    counts = _counts(sink)
    assert counts[str(first.id)] == 2  # at least once: the lost send went again
    assert all(counts[str(t.id)] == 1 for t in rest)
    reaped = _query(
        database_url,
        "select error from timer_attempts where timer_id = %s and attempt = 1", first.id,
    )  # fmt: skip
    assert reaped and "outcome unknown: lease taken back" in str(reaped[0][0])
    assert _query(database_url, "select count(*) from resource_holds") == [(0,)]
    # The ones waiting for the printer went only after the victim's lease was taken back.
    takeover = min(r.at for r in sink.received[1:])
    assert all(r.at >= takeover for r in sink.received if r.path == "/rest")
