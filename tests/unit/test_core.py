"""The bottom layer's plain rules: time_left, a dependency's verdict, a cap's turn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.caps import Cap, cap_turn, cap_wait, scopes_of
from core.states import dependency_verdict
from core.timing import time_left

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def test_time_left_rounds_up_to_whole_seconds_and_stops_at_zero() -> None:
    ms = timedelta(milliseconds=1)
    assert time_left(NOW + 1000 * ms, NOW) == 1
    assert time_left(NOW + 1001 * ms, NOW) == 2
    assert time_left(NOW + timedelta(microseconds=1), NOW) == 1
    assert time_left(NOW, NOW) == 0
    assert time_left(NOW - 5000 * ms, NOW) == 0
    assert time_left(NOW + timedelta(hours=4), NOW) == 4 * 3600


def test_a_dependency_that_ended_badly_fails_the_timer_and_the_rest_block_it() -> None:
    assert dependency_verdict([("a", "delivered"), ("b", "delivered")]) == (None, 0)
    assert dependency_verdict([("a", "delivered"), ("b", "pending")]) == (None, 1)
    failure, waiting = dependency_verdict([("a", "pending"), ("b", "dead"), ("c", "failed")])
    assert failure == ("b", "dead") and waiting == 3
    assert dependency_verdict([("a", "cancelled")])[0] == ("a", "cancelled")


def test_the_caps_of_a_timer_are_the_global_its_tenants_and_its_hosts() -> None:
    assert scopes_of("acme", "api.example") == ["global", "tenant:acme", "host:api.example"]


def test_a_cap_waits_a_due_timer_while_the_planners_takes_find_it_short() -> None:
    scopes = scopes_of("acme", "h")
    # a take was short half a second ago: the cap binds, whatever its bucket holds now (the
    # dispatchers leave a token or two there for the fleet's pace)
    caps = {"global": Cap("global", 60, 1.5, short_at=NOW - timedelta(seconds=0.5))}
    assert cap_turn(scopes, caps, NOW) == "global cap: 60/min, no token left now"
    # short long ago, or never: it does not bind
    caps = {"global": Cap("global", 60, 0.2, short_at=NOW - timedelta(seconds=5))}
    assert cap_turn(scopes, caps, NOW) is None
    assert cap_turn(scopes, {"global": Cap("global", 60, 0.2)}, NOW) is None
    # a slow cap binds for two of its tokens' intervals: 6/min, 20 s
    caps = {"tenant:acme": Cap("tenant:acme", 6, 0.0, short_at=NOW - timedelta(seconds=15))}
    assert cap_turn(scopes, caps, NOW) == "tenant:acme cap: 6/min, no token left now"
    # the first binding cap of those that apply is named; a cap without a rate binds nothing
    caps = {
        "global": Cap("global", 0, 0.0, short_at=NOW),
        "host:h": Cap("host:h", 600, 0.0, short_at=NOW),
        "host:other": Cap("host:other", 60, 0.0, short_at=NOW),
    }
    assert cap_turn(scopes, caps, NOW) == "host:h cap: 600/min, no token left now"


def test_a_cap_wait_names_the_rate_of_one_cap_and_every_cap_of_a_stream() -> None:
    assert cap_wait(["global"], 60) == "global cap: 60/min, no token left now"
    assert cap_wait(["global"]) == "global cap: no token left now"
    assert cap_wait(["global", "tenant:a"], 60) == ("global cap, tenant:a cap: no token left now")
