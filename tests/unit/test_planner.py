"""The planner's pure decisions: the resource choice, the plan of a pass, host gates, breakers."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta

from core.caps import CappedScopes, CappedStream, Grant
from core.plan import HeldCandidate, PlanRow, choose_held, plan_pass
from dispatcher.hosts import Breaker, HostGate, host_of
from dispatcher.planner import CAP_SEND_DELAY_SECONDS, Planner, minted

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def _cand(name: str, priority: int, ms: int, *resources: str) -> HeldCandidate:
    return HeldCandidate(
        uuid.uuid5(uuid.NAMESPACE_DNS, name), T0, priority, T0 + timedelta(milliseconds=ms),
        list(resources),
    )  # fmt: skip


def _ordered(*cands: HeldCandidate) -> list[HeldCandidate]:
    """As the query returns them: priority first, then due time."""
    return sorted(cands, key=lambda c: (-c.priority, c.run_at))


def test_the_selectors_example_capture_goes_first_and_alone() -> None:
    clean = _cand("clean", 1, 0, "disk")
    upgrade = _cand("upgrade", 3, 1, "proc")
    capture = _cand("capture", 9, 2, "camera", "disk", "proc")  # due last, by milliseconds
    first = choose_held(_ordered(clean, upgrade, capture), {}, room=10)
    assert first.chosen == [capture]
    reasons = dict((c.id, why) for c, why in first.waiting)
    assert reasons[clean.id] == f"resource disk goes first to timer {capture.id} (priority 9)"
    assert reasons[upgrade.id] == f"resource proc goes first to timer {capture.id} (priority 9)"
    # While capture is in flight its holds keep both waiting, and they name it.
    holds = {(capture.tenant, name): capture.id for name in capture.resources}
    during = choose_held(_ordered(clean, upgrade), holds, room=10)
    assert during.chosen == []
    assert {why for _, why in during.waiting} == {
        f"resource disk held by timer {capture.id}",
        f"resource proc held by timer {capture.id}",
    }
    # Once its outcome is recorded, clean and upgrade do not conflict: they go together.
    after = choose_held(_ordered(clean, upgrade), {}, room=10)
    assert after.chosen == [upgrade, clean]
    assert after.waiting == []


def test_greedy_takes_every_free_candidate_by_priority_then_due_time() -> None:
    a = _cand("a", 5, 30, "x")
    b = _cand("b", 5, 10, "x")  # same priority, earlier: wins x
    c = _cand("c", 2, 0, "y")
    d = _cand("d", 7, 50, "z")
    chosen = choose_held(_ordered(a, b, c, d), {}, room=10).chosen
    assert chosen == [d, b, c]


def test_a_pass_takes_no_more_than_its_room() -> None:
    cands = [_cand(str(i), 5, i, f"r{i}") for i in range(5)]
    choice = choose_held(cands, {}, room=2)
    assert choice.chosen == cands[:2]
    full = "its turn: this pass is full (the dispatcher's send buffer)"
    assert [why for _, why in choice.waiting] == [full] * 3


def _row(name: str, priority: int, url: str = "http://a.example/h", **kw: object) -> PlanRow:
    values: dict[str, object] = {
        "id": uuid.uuid5(uuid.NAMESPACE_DNS, name), "bucket": T0, "state": "pending", "url": url,
        "priority": priority, "run_at": T0, "resources": None, "waiting_on": None,
        "lease_owner": None,
    }  # fmt: skip
    values.update(kw)
    return PlanRow(**values)  # type: ignore[arg-type]


def test_the_plan_spends_tokens_by_priority_and_names_every_reason() -> None:
    hi = _row("hi", 9)
    mid = _row("mid", 5)
    lo = _row("lo", 1)
    broken = _row("broken", 10, url="http://down.example:8080/x")
    held = _row("held", 8, resources=["db"])
    waiting = _row("waiting", 3, state="inflight", lease_owner="d1", waiting_on="host limit: x")
    holder = uuid.uuid4()
    decisions = plan_pass(
        [broken, hi, held, mid, lo, waiting],
        holds={("default", "db"): holder},
        circuits={"down.example": "5 consecutive failures"},
        tokens=2.4,
        room=100,
    )
    by = {d.row.id: d for d in decisions}
    assert by[broken.id].why == "circuit open for host down.example: 5 consecutive failures"
    assert by[held.id].why == f"resource db held by timer {holder}"
    assert by[hi.id].send_now and by[mid.id].send_now  # two whole tokens
    stale = _row("stale", 6, waiting_on="resource db held by timer x")  # since released
    [decision] = plan_pass([stale], holds={}, circuits={}, tokens=None, room=10)
    assert decision.send_now and decision.why == "nothing holds it back"
    assert not by[lo.id].send_now and by[lo.id].why == "global cap: no token left now"
    assert not by[waiting.id].send_now and by[waiting.id].why == "in dispatcher d1: host limit: x"
    no_cap = plan_pass([hi, mid, lo], holds={}, circuits={}, tokens=None, room=100)
    assert all(d.send_now for d in no_cap)


def test_the_plan_holds_a_capped_tenant_or_host_to_its_own_tokens() -> None:
    a1, a2 = _row("a1", 9, tenant="a"), _row("a2", 8, tenant="a")
    slow = _row("slow", 7, url="http://slow.example/h")
    free = _row("free", 1, tenant="b")
    decisions = plan_pass(
        [a1, a2, slow, free], holds={}, circuits={}, tokens=None, room=100,
        scope_tokens={"tenant:a": 1.5, "host:slow.example": 0.2},
    )  # fmt: skip
    by = {d.row.id: d for d in decisions}
    assert by[a1.id].send_now  # the tenant's one whole token
    assert by[a2.id].why == "tenant:a cap: no token left now"
    assert by[slow.id].why == "host:slow.example cap: no token left now"
    assert by[free.id].send_now  # neither its tenant nor its host is capped


def test_host_of_is_the_lower_case_name_without_the_port() -> None:
    assert host_of("http://API.Example.com:8443/x?y=1") == "api.example.com"
    assert host_of("http://[::1]:80/") == "::1"
    assert host_of("http://127.0.0.2:9/") == "127.0.0.2"


async def test_a_full_host_serves_its_waiters_by_priority_then_due_time() -> None:
    gate = HostGate(limit=1)
    await gate.acquire("h", priority=5, due=0.0)
    order: list[str] = []

    async def wait(name: str, priority: int, due: float) -> None:
        await gate.acquire("h", priority=priority, due=due)
        order.append(name)
        gate.release("h")

    tasks = [
        asyncio.create_task(wait("low-early", 1, 1.0)),
        asyncio.create_task(wait("high-late", 9, 3.0)),
        asyncio.create_task(wait("high-early", 9, 2.0)),
    ]
    await asyncio.sleep(0)
    assert gate.waiting("h") == 3 and gate.full("h")
    assert not gate.full("other")  # another host is not held up at all
    gate.release("h")
    await asyncio.gather(*tasks)
    assert order == ["high-early", "high-late", "low-early"]
    assert gate.active("h") == 0


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    gate = HostGate(limit=1)
    await gate.acquire("h", priority=5, due=0.0)
    first = asyncio.create_task(gate.acquire("h", priority=9, due=0.0))
    second = asyncio.create_task(gate.acquire("h", priority=1, due=0.0))
    await asyncio.sleep(0)
    first.cancel()
    gate.release("h")
    await asyncio.wait_for(second, 1)
    assert gate.active("h") == 1


def test_a_breaker_opens_after_the_threshold_and_doubles_its_cool_down() -> None:
    breaker = Breaker(threshold=3, base_seconds=10, max_seconds=25)
    assert breaker.failure("h", "refused") is None
    assert breaker.failure("h", "refused") is None
    trip = breaker.failure("h", "refused")
    assert trip is not None and trip.seconds == 10 and trip.failures == 3
    assert trip.reason == "3 consecutive failures, the last: refused"
    # Sends already under way when it opened only count.
    assert breaker.failure("h", "refused", circuit_open=True) is None
    again = breaker.failure("h", "timeout")  # the probe after the cool-down failed
    assert again is not None and again.seconds == 20
    third = breaker.failure("h", "timeout")
    assert third is not None and third.seconds == 25  # capped
    assert breaker.tripped("h")
    assert breaker.success("h") is True  # closes it
    assert not breaker.tripped("h") and breaker.success("h") is False
    assert breaker.failure("h", "x") is None  # counting starts over


def test_a_success_between_failures_resets_the_count() -> None:
    breaker = Breaker(threshold=2, base_seconds=1, max_seconds=1)
    assert breaker.failure("h", "x") is None
    breaker.success("h")
    assert breaker.failure("h", "x") is None
    assert breaker.failure("other", "x") is None


def test_tokens_are_sent_at_their_minting_instant_plus_the_fleet_delay() -> None:
    # 50/s; the bucket held 3.5 tokens when the take answered at t=100: the three whole ones
    # became whole 0.05, 0.03 and 0.01 s before, one every 1/50 s.
    grant = Grant(3, 3000, available=3.5, answered_at=100.0)
    got = [round(t - CAP_SEND_DELAY_SECONDS, 6) for t in minted(grant)]
    assert got == [99.95, 99.97, 99.99]
    # Two dispatchers taking alternately from one bucket get interleaved instants: one stream.
    first = minted(Grant(2, 600, available=2.2, answered_at=10.0))  # 10/s
    second = minted(Grant(1, 600, available=1.2, answered_at=10.1))  # 0.2 left + 0.1 s
    spaced = sorted(first + second)
    assert [round(b - a, 6) for a, b in itertools.pairwise(spaced)] == [0.1, 0.1]


def test_capped_streams_are_each_tenant_each_host_and_each_pair() -> None:
    planner = Planner.__new__(Planner)
    planner.capped = CappedScopes(("a",), ("h1", "h2"))
    assert planner.streams() == [
        CappedStream("a", None), CappedStream(None, "h1"), CappedStream(None, "h2"),
        CappedStream("a", "h1"), CappedStream("a", "h2"),
    ]  # fmt: skip
    assert planner.stream_of("a", "other") == CappedStream("a", None)
    assert planner.stream_of("b", "h2") == CappedStream(None, "h2")
    assert planner.stream_of("b", "other") is None
    assert CappedStream("a", "h1").scopes == ["global", "tenant:a", "host:h1"]


def test_a_resource_name_means_one_resource_only_within_a_tenant() -> None:
    # Tenant a holds customer:42; b's timer naming customer:42 is free to go, and never
    # learns a's timer id. Within b, its own two timers on customer:42 still go one at a time.
    now = datetime(2026, 12, 8, tzinfo=UTC)
    mine = HeldCandidate(uuid.uuid4(), now, 5, now, ["customer:42"], "b")
    again = HeldCandidate(uuid.uuid4(), now, 5, now, ["customer:42"], "b")
    holder = uuid.uuid4()
    choice = choose_held([mine, again], {("a", "customer:42"): holder}, room=10)
    assert choice.chosen == [mine]
    [(waiting, why)] = choice.waiting
    assert waiting == again and str(holder) not in why
    assert why == f"resource customer:42 goes first to timer {mine.id} (priority 5)"
    held = choose_held([mine], {("b", "customer:42"): holder}, room=10)
    assert held.chosen == []
    assert held.waiting[0][1] == f"resource customer:42 held by timer {holder}"
