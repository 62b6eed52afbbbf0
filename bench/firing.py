"""Firing throughput: N overdue timers, one then two dispatchers, webhooks/s end to end.

Also measures, in the same run, the ceiling: raw POSTs per second to the same sink from one
process through the dispatcher's own HTTP client (pycurl's CurlMulti, dispatcher/curl.py) with
as many in flight as a dispatcher sends to one host (TIMERHOOK_HOST_CONCURRENCY, 128), and
through aiohttp (the client before it) for reference. A fourth run has one timer in ten name
one of 100 resources. Run: ``python -m bench.firing [N]``.
"""

from __future__ import annotations

import sys

import uvloop

from bench import harness
from bench.clients import aiohttp_posts, curl_posts

IN_FLIGHT = 128  # the default per-host limit of a dispatcher


async def fire(
    url: str, sink: str, count: int, dispatchers: int, *, resource_every: int = 0
) -> float:
    await harness.sink_reset(sink)
    harness.insert_due(
        url, count, first_ms=-60_000, spread_ms=30_000, target=f"{sink}/hook",
        resource_every=resource_every,
    )  # fmt: skip
    procs = [harness.dispatcher(url) for _ in range(dispatchers)]
    try:
        stats = await harness.wait_count(sink, count, timeout=300)
    finally:
        for p in procs:
            p.stop()
    assert stats["unique"] == count, stats["unique"]
    return count / (stats["last"] - stats["first"])


async def main(count: int) -> None:
    async with harness.database() as url, harness.sink() as sink:
        raw = await curl_posts(sink, min(count, 30_000), IN_FLIGHT, guarded=False)
        raw_aiohttp = await aiohttp_posts(sink, min(count, 30_000), IN_FLIGHT)
        one = await fire(url, sink, count, 1)
        two = await fire(url, sink, count, 2)
        # One timer in ten names one of 100 resources (never two holders in flight at once).
        held = await fire(url, sink, count, 1, resource_every=10)
    figures = {
        "timers": count,
        "one_dispatcher_per_s": round(one),
        "two_dispatchers_per_s": round(two),
        "two_vs_one": round(two / one, 2),
        "raw_client_posts_per_s": round(raw),
        "raw_aiohttp_posts_per_s": round(raw_aiohttp),
        "one_vs_raw": round(one / raw, 2),
        "one_dispatcher_10pct_resources_per_s": round(held),
    }
    harness.report("firing", figures)
    print(
        f"SUMMARY firing: 1 dispatcher {one:,.0f}/s, 2 dispatchers {two:,.0f}/s, "
        f"raw client (pycurl) {raw:,.0f}/s (1 dispatcher = {one / raw:.0%} of it; aiohttp "
        f"{raw_aiohttp:,.0f}/s); "
        f"1 dispatcher with 10% of timers holding one of 100 resources {held:,.0f}/s"
    )


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
