"""Ownership on the monotonic clock, and peers judged dead by observation only."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

from db.models import PeerBeat
from dispatcher.ownership import MARGIN_SHARE, Ownership, PeerWatch, pid_namespace, process_gone

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _beats(**ids: datetime) -> list[PeerBeat]:
    return [PeerBeat(i, beat, True) for i, beat in ids.items()]


def test_a_peer_seen_unchanged_for_dead_after_over_steady_reads_is_dead() -> None:
    watch = PeerWatch(owner="me", dead_after_seconds=10, max_gap=5)
    dead = []
    for second in range(0, 12, 2):  # reads 2 s apart, the peer's heartbeat never moves
        dead = watch.observe(_beats(me=T0 + timedelta(seconds=second), peer=T0), at=second)
    assert dead == [("peer", T0)]  # at 10 s of watching, with the value seen


def test_a_heartbeat_that_moves_is_never_dead() -> None:
    watch = PeerWatch(owner="me", dead_after_seconds=10, max_gap=5)
    for second in range(0, 30, 2):
        beat = T0 + timedelta(seconds=second)
        assert watch.observe(_beats(peer=beat), at=second) == []


def test_an_observer_that_paused_or_could_not_read_starts_every_count_again() -> None:
    """A gap between reads (this process paused, the database frozen) is no evidence: a peer
    whose heartbeat could not move meanwhile is not judged on it."""
    watch = PeerWatch(owner="me", dead_after_seconds=10, max_gap=5)
    assert watch.observe(_beats(peer=T0), at=0) == []
    assert watch.observe(_beats(peer=T0), at=2) == []
    # 20 s without a read, then the same value: the count starts at this read
    assert watch.observe(_beats(peer=T0), at=22) == []
    assert watch.observe(_beats(peer=T0), at=26) == []
    assert watch.observe(_beats(peer=T0), at=30) == []
    assert watch.observe(_beats(peer=T0), at=32) == [("peer", T0)]  # 10 s of steady reads
    # ... and a reset (a failed heartbeat of its own) forgets everything
    watch.reset()
    assert watch.observe(_beats(peer=T0), at=33) == []


def test_the_observer_never_judges_itself() -> None:
    watch = PeerWatch(owner="me", dead_after_seconds=10, max_gap=5)
    for second in range(0, 30, 2):
        assert watch.observe(_beats(me=T0), at=second) == []


def test_leases_are_safe_for_less_than_dead_after_from_a_confirmation() -> None:
    async def run() -> None:
        ownership = Ownership(dead_after_seconds=10, lease_seconds=90)
        assert ownership.window == (1 - MARGIN_SHARE) * 10
        assert not ownership.safe()  # never confirmed: nothing may go out
        ownership.confirmed(time.monotonic())
        assert ownership.safe()
        ownership.confirmed(time.monotonic() - ownership.window)  # confirmed long ago
        assert ownership.safe()  # an older confirmation never shortens a newer one
        ownership.lost()
        assert not ownership.safe()
        waiter = asyncio.create_task(ownership.wait_safe())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # waits for the next confirmation
        ownership.confirmed(time.monotonic())
        await asyncio.wait_for(waiter, 1)

    asyncio.run(run())


def test_a_short_lease_bounds_the_safe_window_too() -> None:
    ownership = Ownership(dead_after_seconds=100, lease_seconds=20)
    assert ownership.window == (1 - MARGIN_SHARE) * 20


def test_a_peer_whose_process_is_gone_on_this_host_is_dead_at_once() -> None:
    """Observed in the process table: a restart after a crash takes over at once. A peer on
    another host, in another PID namespace, or whose process exists (a paused one does) is
    left to the heartbeat watch."""
    ns = pid_namespace()
    assert ns is not None
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now (until reused)
    here = dict(host="h", pidns=ns)
    watch = PeerWatch(owner="me", dead_after_seconds=10, max_gap=5, **here)
    beats = [
        PeerBeat("dead", T0, True, pid=gone.pid, **here),
        PeerBeat("alive", T0, True, pid=os.getpid(), **here),
        PeerBeat("elsewhere", T0, True, host="other", pid=gone.pid, pidns=ns),
        PeerBeat("other-ns", T0, True, host="h", pid=gone.pid, pidns="pid:[1]"),
    ]
    assert process_gone(beats[0], "h", ns)
    assert watch.observe(beats, at=0) == [("dead", T0)]
