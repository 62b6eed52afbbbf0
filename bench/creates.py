"""Creates per second over HTTP: group commit against a plain one-INSERT-per-request endpoint,
and both against the ceiling, a FastAPI endpoint that only validates the same body.

The load is wrk (bench/wrk.py; 1 thread, 64 keep-alive connections, and 1 connection), so
the load generator costs far less than the API it loads. The two APIs are ``timerhook api``
on the same database in the same run (the plain one has ``TIMERHOOK_CREATE_BATCH_MAX=1``);
the ceiling is bench/validate_only.py under the same load. Also measures PostgreSQL's raw
single-row INSERT and COPY rates into the timers table, so every figure is also a ratio.
Run: ``python -m bench.creates [seconds]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import psycopg
import uvloop

from bench import harness, wrk

BODY = {"minutes": 30, "url": "https://example.com/hook"}


async def load(
    base: str, clients: int, seconds: float, headers: dict[str, str] | None = None
) -> float:
    """Creates per second from ``clients`` concurrent clients over ``seconds``."""
    done = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                async with session.post(f"{base}/timer", json=BODY) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.perf_counter() - start)


async def api(url: str, **env: str) -> tuple[harness.Proc, str]:
    port = harness.free_port()
    proc = harness.Proc(
        [sys.executable, "-m", "cli.main", "api"],
        {
            "TIMERHOOK_DATABASE_URL": url,
            "TIMERHOOK_PORT": str(port),
            "TIMERHOOK_HORIZON_DAYS": str(harness.HORIZON_DAYS),
            "TIMERHOOK_LOG_LEVEL": "WARNING",
            **env,
        },
    )
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(base, "api")
    return proc, base


async def wait_healthy(base: str, what: str) -> None:
    """Polls ``base``/healthz until it answers 200 (15 s at most)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def raw_inserts(url: str, count: int) -> float:
    """Single-row INSERT + commit per row, one connection: PostgreSQL's per-commit ceiling."""
    sql = """insert into timers (id, bucket, due_at, run_at, slot, shard, url)
             select timerhook_id(ms), b, d, d, b, 0, 'https://example.com/hook'
             from (select (extract(epoch from now()) * 1000)::bigint + 60000 as ms) m,
                  lateral (select 'epoch'::timestamptz + ms * interval '1 millisecond' as d,
                                  'epoch'::timestamptz + ceil(ms / 1000.0) * interval '1 second'
                                      as b) x"""
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for _ in range(count):
            conn.execute(sql)
        return count / (time.perf_counter() - start)


def raw_copy(url: str, count: int) -> float:
    """COPY of ``count`` rows in one transaction: the bulk-load ceiling."""
    now_ms = int(time.time() * 1000) + 120_000
    with psycopg.connect(url) as conn:
        ids = [r[0] for r in conn.execute("select timerhook_id(%s) from generate_series(1, %s)",
                                          (now_ms, count)).fetchall()]  # fmt: skip
        due = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now_ms / 1000))}+00"
        start = time.perf_counter()
        with conn.cursor().copy(
            "copy timers (id, bucket, due_at, run_at, slot, shard, url) from stdin"
        ) as copy:
            for timer_id in ids:
                copy.write_row((timer_id, due, due, due, due, 0, "https://example.com/hook"))
        conn.commit()
        return count / (time.perf_counter() - start)


async def validate_only() -> tuple[harness.Proc, str]:
    """The ceiling's process (bench/validate_only.py), once it answers."""
    port = harness.free_port()
    proc = harness.Proc([sys.executable, "-m", "bench.validate_only", str(port)])
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(base, "the validate-only endpoint")
    return proc, base


def wrk_rate(base: str, seconds: float, connections: int) -> float:
    """Creates per second under wrk; every answer must have been a 200."""
    result = wrk.post(f"{base}/timer", json.dumps(BODY), seconds=seconds, connections=connections)
    assert result.refused == 0, f"{result.refused} of {result.requests} creates refused"
    return result.requests_per_s


async def main(seconds: float) -> None:
    figures: dict[str, float] = {}
    wrk.ensure()
    async with harness.database() as url:
        figures["raw_single_insert_per_s"] = round(raw_inserts(url, 3000))
        figures["raw_copy_rows_per_s"] = round(raw_copy(url, 100_000))
        proc, base = await validate_only()
        try:
            wrk_rate(base, 1.0, 64)  # warm up
            figures["validate_only_64_per_s"] = round(wrk_rate(base, seconds, 64))
        finally:
            proc.stop()
        for name, env in (("plain", {"TIMERHOOK_CREATE_BATCH_MAX": "1"}), ("batched", {})):
            proc, base = await api(url, **env)
            try:
                wrk_rate(base, 1.0, 64)  # warm up
                figures[f"{name}_1_client_per_s"] = round(wrk_rate(base, seconds, 1))
                figures[f"{name}_64_clients_per_s"] = round(wrk_rate(base, seconds, 64))
            finally:
                proc.stop()
    figures["batched_vs_plain_64"] = round(
        figures["batched_64_clients_per_s"] / figures["plain_64_clients_per_s"], 2
    )
    figures["batched_vs_validate_only_64"] = round(
        figures["batched_64_clients_per_s"] / figures["validate_only_64_per_s"], 2
    )
    harness.report("creates", figures)
    print(
        f"SUMMARY creates (wrk, 64 connections): batched {figures['batched_64_clients_per_s']:,}/s"
        f" = {figures['batched_vs_validate_only_64']:.0%} of the validate-only ceiling "
        f"{figures['validate_only_64_per_s']:,}/s; plain {figures['plain_64_clients_per_s']:,}/s"
        f" ({figures['batched_vs_plain_64']}x); 1 connection "
        f"{figures['batched_1_client_per_s']:,}/s; raw INSERT "
        f"{figures['raw_single_insert_per_s']:,}/s, COPY {figures['raw_copy_rows_per_s']:,}/s"
    )


if __name__ == "__main__":
    uvloop.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 8.0))
