"""Dispatcher CPU per webhook: N overdue timers, one dispatcher, its utime + stime from /proc.

Steadier than throughput on a shared machine, so it is the figure that compares two versions
of the hot path (run it in alternating pairs). Run: ``python -m bench.cpu [N]``.
"""

from __future__ import annotations

import asyncio
import os
import sys

import uvloop

from bench import harness


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(count: int) -> None:
    async with harness.database() as url, harness.sink() as sink:
        await harness.sink_reset(sink)
        harness.insert_due(url, count, first_ms=-60_000, spread_ms=30_000, target=f"{sink}/hook")
        proc = harness.dispatcher(url)
        try:
            stats = await harness.wait_count(sink, count, timeout=300)
            await asyncio.sleep(0.5)  # the last outcomes are recorded
            cpu = cpu_seconds(proc.popen.pid)
        finally:
            proc.stop()
    rate = count / (stats["last"] - stats["first"])
    per_1000 = cpu * 1000 / count * 1000
    harness.report("cpu", {"timers": count, "cpu_ms_per_1000": round(per_1000, 1),
                           "webhooks_per_s": round(rate)})  # fmt: skip
    print(f"SUMMARY cpu: {per_1000:.1f} ms of dispatcher CPU per 1,000 webhooks; {rate:,.0f}/s")


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
