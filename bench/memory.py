"""Dispatcher memory against the backlog: RSS with nothing pending, then with N overdue.

The overdue backlog drains under a cap, so the dispatcher works on it the whole time; its RSS
must stay flat because it only ever holds what it has claimed (at most the send limit plus
two batches). Run: ``python -m bench.memory [N]``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvloop

from bench import harness


async def rss_while_working(url: str, sink: str, seconds: float) -> tuple[float, float]:
    """Peak and final RSS of one dispatcher over ``seconds`` (MiB)."""
    proc = harness.dispatcher(url, TIMERHOOK_MAX_PER_MINUTE="60000")
    await harness.wait_dispatchers(url, 1)
    peak = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, proc.rss_mib())
        await asyncio.sleep(0.25)
    final = proc.rss_mib()
    proc.stop()
    return peak, final


async def main(count: int) -> None:
    async with harness.database() as url, harness.sink() as sink:
        idle_peak, _ = await rss_while_working(url, sink, 8)
        start = time.perf_counter()
        for _ in range(count // 100_000):
            harness.insert_due(url, 100_000, first_ms=-600_000, spread_ms=300_000,
                               target=f"{sink}/hook")  # fmt: skip
        load_s = time.perf_counter() - start
        busy_peak, busy_final = await rss_while_working(url, sink, 15)
        sent = (await harness.sink_stats(sink))["count"]
    figures = {
        "backlog": count,
        "rss_mib_empty": round(idle_peak, 1),
        "rss_mib_backlog_peak": round(busy_peak, 1),
        "rss_mib_backlog_final": round(busy_final, 1),
        "sent_during_measure": sent,
        "backlog_insert_s": round(load_s, 1),
    }
    harness.report("memory", figures)
    print(
        f"SUMMARY memory: dispatcher RSS {idle_peak:.0f} MiB with nothing pending, "
        f"{busy_peak:.0f} MiB peak with {count:,} overdue (sending {sent:,} under a cap)"
    )


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
