"""The scaling story: 1, 2 and 4 dispatcher processes firing one backlog, and 1 and 2 API
processes taking creates, each against one PostgreSQL, with the CPU every part used.

For each step it prints the throughput and, from /proc over the same interval, the cores
used by the timerhook processes (a process and its children), by PostgreSQL (every
``postgres`` process) and by the whole machine, so that where the next core would go is a
figure, not a guess. Firing is measured against the cheap sink (bench/sink.py); creates
under wrk (64 connections), as in bench.creates. Run: ``python -m bench.scaling [timers]
[seconds]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import psutil
import uvloop

from bench import harness
from bench.creates import BODY, api
from bench.wrk import ensure
from bench.wrk import post as wrk_post


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a live process and its live descendants."""
    root = psutil.Process(pid)
    return _cpu(root) + sum(_cpu(child) for child in root.children(recursive=True))


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every live postgres process, by pid."""
    found = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            found[proc.pid] = _cpu(proc)
    return found


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU used between start() and stop() by some processes, PostgreSQL and the machine."""

    def start(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.own0 = sum(tree_cpu(p) for p in pids)
        self.pg0 = postgres_cpu()
        self.busy0 = machine_busy()

    def stop(self, span: float | None = None) -> dict[str, float]:
        """Cores used: CPU seconds over ``span`` seconds (default: since start())."""
        seconds = span or (time.perf_counter() - self.t0)
        own = sum(tree_cpu(p) for p in self.pids) - self.own0
        pg_now = postgres_cpu()
        pg = sum(cpu - self.pg0.get(pid, 0.0) for pid, cpu in pg_now.items())
        busy = machine_busy() - self.busy0
        return {
            "timerhook_cores": round(own / seconds, 2),
            "postgres_cores": round(pg / seconds, 2),
            "machine_cores": round(busy / seconds, 2),
        }


async def dispatchers(url: str, sink: str, count: int, n: int) -> dict[str, float]:
    """``count`` overdue timers drained by ``n`` dispatcher processes."""
    await harness.sink_reset(sink)
    procs = [harness.dispatcher(url) for _ in range(n)]
    try:
        # started and registered first, then the backlog: the CPU measured is the firing's
        await harness.wait_dispatchers(url, n)
        await asyncio.sleep(1.0)
        harness.insert_due(url, count, first_ms=-60_000, spread_ms=30_000, target=f"{sink}/hook")
        meter = Meter()
        meter.start([p.popen.pid for p in procs])
        stats = await harness.wait_count(sink, count, timeout=300)
        # over the span the webhooks arrived in (the first claim waits up to a tick)
        cpu = meter.stop(stats["last"] - stats["first"])
    finally:
        for p in procs:
            p.stop()
    assert stats["unique"] == count and stats["duplicates"] == 0, stats
    return {"webhooks_per_s": round(count / (stats["last"] - stats["first"])), **cpu}


async def apis(url: str, seconds: float, workers: int) -> dict[str, float]:
    """Creates per second under wrk (64 connections) into ``timerhook api`` with ``workers``."""
    proc, base = await api(url, TIMERHOOK_API_WORKERS=str(workers))
    try:
        wrk_post(f"{base}/timer", json.dumps(BODY), seconds=1, connections=64)  # warm up
        meter = Meter()
        meter.start([proc.popen.pid])
        result = wrk_post(f"{base}/timer", json.dumps(BODY), seconds=seconds, connections=64)
        cpu = meter.stop()
    finally:
        proc.stop()
    assert result.refused == 0, result
    return {"creates_per_s": round(result.requests_per_s), **cpu}


async def main(count: int, seconds: float) -> None:
    ensure()
    figures: dict[str, object] = {"timers": count, "create_seconds": seconds}
    async with harness.database() as url, harness.sink() as sink:
        for n in (1, 2, 4):
            figures[f"dispatchers_{n}"] = await dispatchers(url, sink, count, n)
        for workers in (1, 2):
            figures[f"api_workers_{workers}"] = await apis(url, seconds, workers)
    harness.report("scaling", figures)
    lines = []
    for n in (1, 2, 4):
        f = figures[f"dispatchers_{n}"]
        assert isinstance(f, dict)
        lines.append(
            f"{n} dispatcher(s) {f['webhooks_per_s']:,}/s (timerhook {f['timerhook_cores']} "
            f"cores, PostgreSQL {f['postgres_cores']}, machine {f['machine_cores']})"
        )
    for workers in (1, 2):
        f = figures[f"api_workers_{workers}"]
        assert isinstance(f, dict)
        lines.append(
            f"{workers} API process(es) {f['creates_per_s']:,} creates/s (timerhook "
            f"{f['timerhook_cores']} cores, PostgreSQL {f['postgres_cores']}, machine "
            f"{f['machine_cores']})"
        )
    print("SUMMARY scaling: " + "; ".join(lines))


if __name__ == "__main__":
    args = sys.argv[1:]
    uvloop.run(main(int(args[0]) if args else 50_000, float(args[1]) if len(args) > 1 else 8.0))
