"""Shared pieces: a fresh embedded PostgreSQL, the sink process, timerhook processes, figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg

from db.database import Database
from db.embedded import get_server, size_lock_table
from db.migrate import migrate

# Every bench runs at the default horizon users run (about 368 partitions), so that figures
# include what planning and executor start-up over every partition cost.
HORIZON_DAYS = 365


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores, {cpu}, {system}, Python {platform.python_version()}"


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A fresh embedded PostgreSQL with the schema and partitions; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="timerhook-bench-") as folder:
        server = get_server(Path(folder) / "pgdata", cleanup_mode="delete")
        size_lock_table(server)  # as timerhook's own embedded server (db/embedded.py)
        url = str(server.get_uri())

        async def prepare() -> None:
            await migrate(url)
            async with Database(url, max_size=1) as db:
                await db.partitions.ensure(horizon_days=HORIZON_DAYS)

        await prepare()
        try:
            yield url
        finally:
            server.cleanup()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process that is always stopped on exit."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix="timerhook-bench-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.popen = subprocess.Popen(
                args, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.asynccontextmanager
async def sink() -> AsyncIterator[str]:
    """The sink process; yields its base URL once it answers."""
    port = free_port()
    proc = Proc([sys.executable, "-m", "bench.sink", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/stats"):
                        break
                await asyncio.sleep(0.05)
        yield url
    finally:
        proc.stop()


async def sink_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/stats") as r:
        return dict(await r.json())


async def sink_reset(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/reset"):
        pass


def dispatcher(url: str, **env: str) -> Proc:
    """A ``timerhook dispatcher`` process on the database."""
    base = {
        "TIMERHOOK_DATABASE_URL": url,
        "TIMERHOOK_ALLOW_PRIVATE_TARGETS": "1",
        "TIMERHOOK_HORIZON_DAYS": str(HORIZON_DAYS),
        "TIMERHOOK_LOG_LEVEL": "WARNING",
    }
    return Proc([sys.executable, "-m", "cli.main", "dispatcher"], {**base, **env})


async def wait_dispatchers(url: str, count: int, timeout: float = 60) -> None:
    """Until ``count`` dispatchers are registered and alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "select count(*) from dispatchers where stopped_at is null"
            ).fetchone()
        if row and row[0] >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("dispatchers did not register")


async def wait_count(url: str, count: int, timeout: float) -> dict[str, Any]:
    """Polls the sink's cheap counter until ``count`` distinct timers arrived; returns the full
    stats once (computing them is the expensive part, so it is not done while measuring)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{url}/count") as r:
                progress = await r.json()
            if progress["unique"] >= count or progress["count"] >= count:
                break
            await asyncio.sleep(0.2)
    return await sink_stats(url)


def insert_due(
    url: str,
    count: int,
    *,
    first_ms: int,
    spread_ms: int,
    target: str,
    resource_every: int = 0,
    resource_names: int = 100,
    wake: bool = False,
) -> None:
    """Inserts ``count`` timers due from now + first_ms over spread_ms, straight in SQL; with
    ``resource_every`` = k, every k-th one names one of ``resource_names`` resources. With
    ``wake``, the insert commits with the notification POST /timer sends for timers due soon
    (db/listen.py), so every running dispatcher starts on them at once, not at its next tick."""
    with psycopg.connect(url, autocommit=not wake) as conn:
        conn.execute(
            """
            with clock as (select ceil(extract(epoch from now()) * 1000)::bigint as now_ms),
            rows as (
                select clock.now_ms + %(first)s
                           + (g::bigint * %(spread)s / greatest(%(n)s, 1)) as due_ms,
                       (g %% 16)::smallint as shard,
                       case when %(every)s > 0 and g %% greatest(%(every)s, 1) = 0
                            then array['r' || (g / greatest(%(every)s, 1)) %% %(names)s]
                       end as resources
                from generate_series(0, %(n)s - 1) g, clock
            ), shaped as (
                select timerhook_id(due_ms) as id, shard, resources,
                       'epoch'::timestamptz + due_ms * interval '1 millisecond' as due_at,
                       'epoch'::timestamptz + ceil(due_ms / 1000.0) * interval '1 second' as bucket
                from rows
            )
            insert into timers (id, bucket, due_at, run_at, slot, shard, url, resources)
            select id, bucket, due_at, due_at, bucket, shard, %(url)s, resources from shaped
            """,
            {
                "n": count,
                "first": first_ms,
                "spread": spread_ms,
                "url": target,
                "every": resource_every,
                "names": resource_names,
            },
        )
        if wake:
            conn.execute("select pg_notify('timerhook_due', '')")
            conn.commit()


def clear_timers(url: str) -> None:
    """Empties the timers and their attempts, so that each measured run starts from the same
    tables (no earlier run's rows for it to update around, nor autovacuum to catch up on)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate timers, timer_attempts, resource_holds")


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


# Timers fired through running dispatchers before a measured backlog (about 3 s of firing).
WARM_UP = 30_000


async def fire_backlog(
    url: str, sink: str, count: int, dispatchers: int, *, resource_every: int = 0
) -> tuple[float, dict[str, float]]:
    """Webhooks per second while ``dispatchers`` running processes drain ``count`` overdue
    timers, with the cores used meanwhile (``Meter``: theirs, PostgreSQL's, the machine's).

    Each run starts from empty tables, with its dispatchers started, warm and registered
    before the backlog appears (as POST /timer makes it: the commit wakes them), so that a
    run measures firing, not process start-up (docs/benchmarks.md gives that on its own). A
    first backlog (WARM_UP timers, not measured) goes through them before: a pool adds a
    connection under load when its periodic jobs meet the claims and the recorder (planning
    the hot statements on it, about 0.6 s of PostgreSQL's CPU), so the measured run sees
    steady firing, not a process's first seconds."""
    await sink_reset(sink)
    clear_timers(url)
    procs = [dispatcher(url) for _ in range(dispatchers)]
    try:
        await wait_dispatchers(url, dispatchers)
        insert_due(url, WARM_UP, first_ms=-60_000, spread_ms=30_000, target=f"{sink}/hook",
                   wake=True)  # fmt: skip
        await wait_count(sink, WARM_UP, timeout=60)
        await sink_reset(sink)
        insert_due(
            url, count, first_ms=-60_000, spread_ms=30_000, target=f"{sink}/hook",
            resource_every=resource_every, wake=True,
        )  # fmt: skip
        meter = Meter()
        meter.start([p.popen.pid for p in procs])
        stats = await wait_count(sink, count, timeout=300)
        span = stats["last"] - stats["first"]
        cores = meter.stop(span)
    finally:
        for p in procs:
            p.stop()
    assert stats["unique"] == count and stats["duplicates"] == 0, stats
    return count / span, cores


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]
        if len(values) > 1
        else values[0]
    )


def report(name: str, figures: dict[str, Any]) -> None:
    """Prints the figures as JSON and appends them to bench/results/<name>.jsonl."""
    figures = {
        "bench": name,
        "machine": machine(),
        "at": time.strftime("%Y-%m-%d %H:%M:%S"),
        **figures,
    }
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}.jsonl").open("a") as f:
        f.write(json.dumps(figures) + "\n")
    print(json.dumps(figures, indent=2))
