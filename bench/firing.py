"""Firing throughput: N overdue timers, one and two dispatchers, webhooks/s end to end.

Also measures, in the same run, the ceiling: raw POSTs per second to the same sink from one
process through the dispatcher's own HTTP client (pycurl's CurlMulti, dispatcher/curl.py) with
as many in flight as a dispatcher sends to one host (TIMERHOOK_HOST_CONCURRENCY, 128), and
through aiohttp (the client before it) for reference. One and two dispatchers are run twice
each (one, two, two, one), and the cores the machine kept busy give the ratio it has room for
at one dispatcher's CPU per webhook. A last run has one timer in ten name one of 100 resources. Run:
``python -m bench.firing [N]``.
"""

from __future__ import annotations

import os
import sys

import uvloop

from bench import harness
from bench.clients import aiohttp_posts, curl_posts

IN_FLIGHT = 128  # the default per-host limit of a dispatcher


async def fire(
    url: str, sink: str, count: int, dispatchers: int, *, resource_every: int = 0
) -> tuple[float, float]:
    """Webhooks per second of ``dispatchers`` running processes draining ``count`` overdue
    timers (harness.fire_backlog), and the cores the whole machine kept busy meanwhile."""
    rate, cores = await harness.fire_backlog(
        url, sink, count, dispatchers, resource_every=resource_every
    )
    return rate, cores["machine_cores"]


def _mean(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return (a[0] + b[0]) / 2, round((a[1] + b[1]) / 2, 2)


async def main(count: int) -> None:
    async with harness.database() as url, harness.sink() as sink:
        raw = await curl_posts(sink, min(count, 30_000), IN_FLIGHT, guarded=False)
        raw_aiohttp = await aiohttp_posts(sink, min(count, 30_000), IN_FLIGHT)
        # one, two, two, one: a drift of the shared machine's speed during the bench weighs
        # on both figures alike (each is the mean of its two runs)
        first_one = await fire(url, sink, count, 1)
        first_two = await fire(url, sink, count, 2)
        second_two = await fire(url, sink, count, 2)
        second_one = await fire(url, sink, count, 1)
        one, one_cores = _mean(first_one, second_one)
        two, two_cores = _mean(first_two, second_two)
        # One timer in ten names one of 100 resources (never two holders in flight at once).
        held, _ = await fire(url, sink, count, 1, resource_every=10)
    # The ratio the machine leaves room for at one dispatcher's CPU per webhook (its own,
    # PostgreSQL's and the sink's): the cores there are over the cores one dispatcher's firing
    # kept busy. Two processes beat it only by spending less per webhook than one.
    ceiling = (os.cpu_count() or 1) / one_cores
    figures = {
        "timers": count,
        "one_dispatcher_per_s": round(one),
        "two_dispatchers_per_s": round(two),
        "two_vs_one": round(two / one, 2),
        "machine_cores_one": one_cores,
        "machine_cores_two": two_cores,
        "two_vs_one_ceiling": round(ceiling, 2),
        "raw_client_posts_per_s": round(raw),
        "raw_aiohttp_posts_per_s": round(raw_aiohttp),
        "one_vs_raw": round(one / raw, 2),
        "one_dispatcher_10pct_resources_per_s": round(held),
    }
    harness.report("firing", figures)
    print(
        f"SUMMARY firing: 1 dispatcher {one:,.0f}/s, 2 dispatchers {two:,.0f}/s "
        f"({two / one:.2f}x; at one's CPU per webhook {os.cpu_count()} cores hold "
        f"{ceiling:.2f}x: one dispatcher kept {one_cores} cores busy, two {two_cores}), "
        f"raw client (pycurl) {raw:,.0f}/s (1 dispatcher = {one / raw:.0%} of it; aiohttp "
        f"{raw_aiohttp:,.0f}/s); "
        f"1 dispatcher with 10% of timers holding one of 100 resources {held:,.0f}/s"
    )


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
