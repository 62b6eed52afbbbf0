"""Sends wait until their instant and never wake before it, also on uvloop (which the
dispatcher runs on)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import uvloop

from dispatcher.service import sleep_until


async def _early_wakes(wait: Callable[[float], Awaitable[None]], count: int) -> list[float]:
    """Waits ``count`` times for a random instant up to 10 ms ahead; returns how early each
    wake that came before its instant was, in ms."""
    rng = random.Random(5)
    early = []
    for _ in range(count):
        deadline = time.monotonic() + rng.uniform(0.0001, 0.01)
        await wait(deadline)
        if (left := deadline - time.monotonic()) > 0:
            early.append(left * 1000)
    return early


async def _plain_sleep(deadline: float) -> None:
    await asyncio.sleep(deadline - time.monotonic())


def test_a_plain_sleep_on_uvloop_can_wake_early() -> None:
    # Why sleep_until exists: uvloop's timers count whole milliseconds from the loop's cached
    # time, so a fair share of plain sleeps end before their instant.
    assert len(uvloop.run(_early_wakes(_plain_sleep, 200))) > 5


def test_sleep_until_never_wakes_early_on_uvloop() -> None:
    assert uvloop.run(_early_wakes(sleep_until, 200)) == []
