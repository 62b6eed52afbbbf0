"""The plan stage against a real database and real sinks: priority under a cap, resources,
slow hosts isolated, circuits, and why a timer waits."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx

from core.plan import choose_held
from core.settings import Settings
from db.database import Database
from db.models import CreatedTimer, DeliveryOptions, Timer
from dispatcher.service import Dispatcher
from tests.support.sink import Received, Reply, Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


def _id(request: Received) -> str:
    return str(json.loads(request.body)["id"])


async def _insert(
    db: Database, url: str, delays_ms: list[int], **options: object
) -> list[CreatedTimer]:
    opts = [DeliveryOptions(**options)] * len(delays_ms)  # type: ignore[arg-type]
    return await db.creates.insert(delays_ms, [url] * len(delays_ms), shards=16, options=opts)


async def test_priority_goes_first_under_a_binding_cap(
    db: Database,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    low = await _insert(db, f"{sink.url}/low", [0] * 200, priority=1)
    high = await _insert(db, f"{sink.url}/high", [1000] * 20, priority=10)
    await start_dispatcher(make_settings(max_per_minute=600))  # 10 a second
    high_ids = {str(t.id) for t in high}
    await sink.wait_until(lambda: high_ids <= {_id(r) for r in sink.received}, timeout=15)
    arrivals = [(r.at, _id(r)) for r in sink.received]
    first_high = min(at for at, i in arrivals if i in high_ids)
    last_high = max(at for at, i in arrivals if i in high_ids)
    # The high ones fell due a second after the low ones, while about 190 low ones still
    # waited; they were sent back to back, passing all of those. The low ones a dispatcher
    # already held in hand (about 0.5 s of paced sends) go before them, none between them.
    between = [i for at, i in arrivals if first_high < at < last_high and i not in high_ids]
    assert between == []
    sent_low_before = sum(1 for at, i in arrivals if at < first_high and i not in high_ids)
    assert sent_low_before < 40, sent_low_before  # the cap held the low ones back
    # Within a poll and the paced sends a dispatcher holds in hand (about 0.5 s) of falling due.
    assert high[0].due_at.timestamp() <= first_high < high[0].due_at.timestamp() + 1.0
    # 20 sends paced at the cap's full rate: 1.9 s from the first to the last, no slower.
    assert 1.8 < last_high - first_high < 2.2, last_high - first_high
    assert len(low) == 200 and all(str(t.id) not in high_ids for t in low)


async def test_without_contention_priority_delays_nobody(
    db: Database, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    low = await _insert(db, f"{sink.url}/low", [1500] * 50, priority=1)
    await _insert(db, f"{sink.url}/high", [1500] * 50, priority=10)
    await start_dispatcher()
    await sink.wait_for(100, timeout=10)
    due = low[0].due_at.timestamp()
    late = [r.at - due for r in sink.received if r.path == "/low"]
    assert len(late) == 50 and all(0 <= x < 0.3 for x in late), late


async def _same_second(db: Database) -> int:
    """A delay (ms) from the database's now that lands 0.1 s into a second 2 to 3 s ahead,
    so timers created within the next few milliseconds share that second."""
    while True:
        now = await db.timers.clock()
        ms = now.microsecond // 1000
        if ms < 600:
            return 2000 + (1000 - ms) + 100 if ms > 100 else 2100 - ms
        await asyncio.sleep((1000 - ms) / 1000)


async def test_the_selectors_example_capture_first_then_clean_and_upgrade_together(
    db: Database, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    sink.status_for = lambda r: Reply(delay=1.0)
    delay = await _same_second(db)
    # Created lowest priority first: capture is due last, by a few milliseconds (the 2 ms
    # steps keep the order when two inserts fall within one millisecond of the clock).
    clean = (await _insert(db, f"{sink.url}/clean", [delay], priority=1, resources=("disk",)))[0]
    upgrade = (
        await _insert(db, f"{sink.url}/upgrade", [delay + 2], priority=3, resources=("proc",))
    )[0]
    capture = (
        await _insert(
            db, f"{sink.url}/capture", [delay + 4], priority=9,
            resources=("camera", "disk", "proc"),
        )
    )[0]  # fmt: skip
    assert clean.due_at < upgrade.due_at < capture.due_at
    assert clean.due_at.replace(microsecond=0) == capture.due_at.replace(microsecond=0)
    dispatcher = await start_dispatcher()
    await sink.wait_for(3, timeout=15)
    at = {r.path: r.at for r in sink.received}
    assert sink.received[0].path == "/capture"
    assert capture.due_at.timestamp() <= at["/capture"] < capture.due_at.timestamp() + 0.2
    # Capture took 1 s to answer; clean and upgrade went only after it, and together.
    for path in ("/clean", "/upgrade"):
        assert at[path] >= at["/capture"] + 1.0, at
    assert abs(at["/clean"] - at["/upgrade"]) < 0.2, at
    await dispatcher.wait_recorded(3, timeout=10)
    assert await db.leases.holds(["camera", "disk", "proc"]) == {}


async def test_two_tenants_that_name_the_same_resource_do_not_wait_for_each_other(
    db: Database, sink: Sink, client: httpx.AsyncClient, start_dispatcher: StartDispatcher
) -> None:
    # Each holds "customer:42" for the 2 s its send takes. Within a tenant the second timer
    # waits for the first; across tenants they go together, and neither names the other's.
    sink.status_for = lambda r: Reply(delay=2.0)
    made = {
        (tenant, n): (await _insert(db, f"{sink.url}/{tenant}{n}", [500], tenant=tenant,
                                    resources=("customer:42",)))[0]
        for tenant in ("a", "b") for n in (1, 2)
    }  # fmt: skip
    dispatcher = await start_dispatcher()
    await sink.wait_for(2, timeout=10)
    first_two = {r.path for r in sink.received}
    assert len({p[1] for p in first_two}) == 2, first_two  # one of a's and one of b's
    at = [r.at for r in sink.received]
    assert abs(at[0] - at[1]) < 0.5, at
    await dispatcher.wait_pass_after(datetime.now(UTC), timeout=10)
    for tenant in ("a", "b"):
        for n in (1, 2):
            shown = (await client.get(f"/timer/{made[tenant, n].id}")).json()
            other = "b" if tenant == "a" else "a"
            assert all(str(made[other, k].id) not in (shown["waiting_on"] or "") for k in (1, 2))
    await sink.wait_for(4, timeout=10)


async def test_waiting_on_names_the_resource_and_its_holder(
    db: Database, sink: Sink, client: httpx.AsyncClient, start_dispatcher: StartDispatcher
) -> None:
    sink.status_for = lambda r: Reply(delay=3.0) if r.path == "/first" else 200
    created = await client.post(
        "/timer", json={"url": f"{sink.url}/first", "resources": ["db", "db"], "priority": 7}
    )
    first = created.json()["id"]
    dispatcher = await start_dispatcher()
    await sink.wait_for(1, timeout=10)
    body = {"url": f"{sink.url}/second", "resources": ["db"]}
    second = (await client.post("/timer", json=body)).json()["id"]
    # The first pass that began after the create found the second due and held back.
    await dispatcher.wait_pass_after(datetime.now(UTC), timeout=10)
    shown = (await client.get(f"/timer/{second}")).json()
    assert shown["waiting_on"] == f"resource db held by timer {first}"
    assert shown["status"] == "pending" and shown["resources"] == ["db"]
    assert shown["priority"] == 5
    detail = (await client.get(f"/timer/{first}")).json()
    assert detail["resources"] == ["db"] and detail["priority"] == 7  # stored distinct
    await sink.wait_for(2, timeout=10)
    await dispatcher.wait_recorded(2, timeout=10)
    shown = (await client.get(f"/timer/{second}")).json()
    assert shown["status"] == "delivered" and shown["waiting_on"] is None


async def test_waiting_on_names_a_binding_cap(
    db: Database, sink: Sink, client: httpx.AsyncClient, start_dispatcher: StartDispatcher
) -> None:
    await db.caps.set(scope="global", per_minute=60)
    await _insert(db, f"{sink.url}/h", [0] * 5)
    dispatcher = await start_dispatcher()
    await sink.wait_for(1, timeout=5)
    last = (await client.post("/timer", json={"url": f"{sink.url}/h"})).json()["id"]
    # A pass that began after the create asked the cap for the due rows, the last among them.
    await dispatcher.wait_pass_after(datetime.now(UTC), timeout=10)
    shown = (await client.get(f"/timer/{last}")).json()
    assert shown["status"] == "pending"
    assert shown["waiting_on"] == "global cap: 60/min, no token left now"


async def test_every_due_timer_a_cap_holds_back_says_so_at_any_look(
    sink: Sink, client: httpx.AsyncClient, start_dispatcher: StartDispatcher, db: Database
) -> None:
    # Not polled until some look shows a reason: one look at each timer, 2 s past its due
    # time, while the cap lets one out a second. Pending or claimed and paced, each unsent
    # one names the cap.
    await db.caps.set(scope="global", per_minute=60)
    await start_dispatcher()
    ids = [
        (await client.post("/timer", json={"url": f"{sink.url}/h"})).json()["id"] for _ in range(8)
    ]
    await sink.wait_for(1, timeout=5)
    await asyncio.sleep(2.0)  # the timers are due now: 2 s of the cap's pace go by
    unsent = []
    for timer_id in ids:
        body = (await client.get(f"/timer/{timer_id}")).json()
        if body["status"] in ("pending", "inflight") and body["last_result"] is None:
            unsent.append(body)
    assert len(unsent) >= 3, unsent
    for body in unsent:
        assert body["waiting_on"] is not None, body
        assert body["waiting_on"].startswith("global cap: 60/min"), body


async def test_a_slow_host_does_not_hold_up_the_others(
    db: Database,
    sink: Sink,
    other_sink: Sink,
    client: httpx.AsyncClient,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    other_sink.status_for = lambda r: Reply(delay=9.0)
    # The defaults users run: 256 sends in flight, 128 per host, a 10 s timeout.
    settings = make_settings(http_timeout_seconds=10.0, shutdown_grace_seconds=0)
    assert (settings.concurrency, settings.host_concurrency) == (256, 128)
    # One statement: all 900 due at the same instant.
    urls = [f"{other_sink.url}/s"] * 600 + [f"{sink.url}/f"] * 300
    created = await db.creates.insert([2500] * 900, urls, shards=16)
    slow, fast = created[:600], created[600:]
    assert slow[0].due_at == fast[-1].due_at
    dispatcher = await start_dispatcher(settings)
    await sink.wait_for(300, timeout=15)
    due = fast[0].due_at.timestamp()
    late = sorted(r.at - due for r in sink.received)
    assert late[0] >= 0 and late[-1] < 1.0, (late[0], late[-1])
    # The slow host has exactly its per-host share in flight, no more.
    assert other_sink.max_in_flight == 128
    # A row that has waited a second for the slow host says why (noted at the next tick,
    # every row waiting at once).
    await dispatcher.wait_until(lambda: dispatcher.recorder.notes_written > 0, timeout=5)
    found = [await db.timers.get(t.id) for t in slow[200:260]]
    waiting = [t for t, f in zip(slow[200:260], found, strict=True) if f and f.waiting_on]
    assert waiting, "no waiting row was noted"
    found_one = await db.timers.get(waiting[0].id)
    assert found_one is not None and found_one.waiting_on is not None
    assert found_one.waiting_on.startswith(
        f"host limit: 127.0.0.2 has 128 sends in flight in dispatcher {dispatcher.id}"
    )
    shown = (await client.get(f"/timer/{waiting[0].id}")).json()
    assert shown["status"] == "inflight" and shown["waiting_on"] == found_one.waiting_on


async def test_a_host_that_keeps_refusing_is_backed_off_without_using_attempts(
    db: Database,
    sink: Sink,
    client: httpx.AsyncClient,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    # Nothing listens on this port: every connection is refused.
    dead_url = "http://127.0.0.3:9/down"
    # Paced at 10/s, so that most of them fall due after the circuit opened; a long cool-down
    # keeps it open for the whole test.
    settings = make_settings(circuit_failures=3, circuit_seconds=60.0, max_per_minute=600)
    refused = await db.creates.insert([0] * 20, [dead_url] * 20, shards=16)
    dispatcher = await start_dispatcher(settings)
    await dispatcher.wait_until(lambda: dispatcher.planner.circuits_opened >= 1, timeout=10)
    circuits = await db.circuits.list()
    assert [(c.host, c.open, c.failures) for c in circuits] == [("127.0.0.3", True, 3)]
    assert "consecutive failures" in circuits[0].reason
    states = await _settled(db, dispatcher, [t.id for t in refused])
    held_back = [t for t in states if t.attempts == 0]
    # Timers held back while it is open wait pending, charged no attempt, and say why.
    assert len(held_back) >= 10, [(t.attempts, t.state, t.waiting_on) for t in states]
    for timer in held_back:
        assert timer.state == "pending" and timer.waiting_on is not None
        assert timer.waiting_on.startswith("circuit open for host 127.0.0.3: ")
        assert timer.run_at >= circuits[0].open_until
    shown = (await client.get(f"/timer/{held_back[0].id}")).json()
    assert shown["waiting_on"].startswith("circuit open for host 127.0.0.3")
    # The rest of the fleet's work is untouched meanwhile.
    other = await _insert(db, f"{sink.url}/fine", [0] * 5)
    await sink.wait_for(5, timeout=5)
    assert {_id(r) for r in sink.received} == {str(t.id) for t in other}


async def _settled(db: Database, dispatcher: Dispatcher, ids: list[uuid.UUID]) -> list[Timer]:
    """The timers once each was tried or held back with a reason: looked at after each pass
    that ends with nothing held or unrecorded (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        await dispatcher.wait_pass_after(datetime.now(UTC), timeout=10)
        await dispatcher.wait_idle(timeout=10)
        found = [t for t in [await db.timers.get(i) for i in ids] if t is not None]
        if all(t.attempts or t.waiting_on for t in found) or time.monotonic() > deadline:
            return found


async def test_a_circuit_closes_when_the_host_answers_again(
    db: Database,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    sink = Sink(host="127.0.0.4")
    sink.status_for = lambda r: 200
    # Learn a free port, then stop listening: the host refuses until the sink comes back.
    await sink.start()
    url = f"{sink.url}/back"
    await sink.stop()
    settings = make_settings(circuit_failures=2, circuit_seconds=1.0, retry_base_seconds=0.2)
    created = await db.creates.insert([0] * 6, [url] * 6, shards=16)
    dispatcher = await start_dispatcher(settings)
    await dispatcher.wait_until(lambda: dispatcher.planner.circuits_opened >= 1, timeout=10)
    port = int(url.split(":")[2].split("/")[0])
    back = Sink(host="127.0.0.4")
    back.status_for = lambda r: 200
    await _listen_on(back, port)
    try:
        await back.wait_for(6, timeout=15)
        assert {_id(r) for r in back.received} == {str(t.id) for t in created}
        # The close is written in the background; the dispatcher says when it is stored.
        await dispatcher.wait_until(lambda: dispatcher.planner.circuits_closed >= 1, timeout=5)
        assert await db.circuits.list() == []  # closed by the first success
    finally:
        await back.stop()


async def _listen_on(sink: Sink, port: int) -> None:
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", sink._handle)
    sink._runner = web.AppRunner(app, access_log=None)
    await sink._runner.setup()
    await web.TCPSite(sink._runner, sink.host, port).start()
    sink.url = f"http://{sink.host}:{port}"


async def test_holds_are_released_when_a_dead_dispatchers_leases_are_reaped(
    db: Database, sink: Sink
) -> None:
    # A dispatcher took the hold and the lease, then died without a word.
    first = (await _insert(db, f"{sink.url}/a", [0], resources=("printer",)))[0]
    rest = await _insert(db, f"{sink.url}/b", [0] * 3, resources=("printer",))
    await db.dispatchers.register(dispatcher_id="ghost", host="h", pid=1)

    candidates, holds = await db.leases.held_view(lookahead_seconds=2)
    chosen = choose_held(candidates, holds, room=10).chosen
    claim = await db.leases.claim_held(chosen, owner="ghost", lease_seconds=60)
    assert claim is not None and [r.id for r in claim.rows] == [first.id]
    assert await db.leases.holds(["printer"]) == {("default", "printer"): first.id}
    [ghost] = [b for b in await db.dispatchers.peers(dead_after_seconds=10) if b.id == "ghost"]
    reaped = await db.leases.reap(dead=[("ghost", ghost.heartbeat_at)])
    assert [r.id for r in reaped] == [first.id]
    assert await db.leases.holds(["printer"]) == {}
    assert {t.id for t in rest} | {first.id} == {
        t.id
        for t in [first, *rest]
        if (await db.timers.get(t.id)).state == "pending"  # type: ignore[union-attr]
    }
