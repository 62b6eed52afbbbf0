"""Medians of the runs in bench/results/*.jsonl, as the tables of docs/benchmarks.md.

Run after ``make bench`` (several times): ``python -m bench.summarize``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path("bench/results")
LAST = 3  # each table is the median of the last runs of its bench


def _runs(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _get(run: dict[str, Any], key: str) -> Any:
    """A figure by name; ``a.b`` reads figure b of the nested figures a."""
    value: Any = run
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _median(runs: list[dict[str, Any]], key: str) -> str:
    values = [v for r in runs if isinstance(v := _get(r, key), int | float)]
    if not values:
        return "-"
    spread = f" ({_fmt(min(values))} to {_fmt(max(values))})" if len(values) > 1 else ""
    return f"{_fmt(statistics.median(values))}{spread}"


def table(
    name: str,
    rows: list[tuple[str, str]],
    *,
    having: str | None = None,
    last: int = 0,
    where: dict[str, object] | None = None,
) -> str:
    """The medians of the last LAST runs (those with the figure ``having``, when given: older
    runs of a bench that measured something else are left out)."""
    runs = [r for r in _runs(name) if having is None or having in r]
    if where is not None:
        runs = [r for r in runs if all(r.get(k) == v for k, v in where.items())]
    runs = runs[-(last or LAST) :]
    lines = [f"| figure ({len(runs)} runs: median (min to max)) | value |", "| --- | --- |"]
    lines += [f"| {label} | {_median(runs, key)} |" for label, key in rows]
    return "\n".join(lines)


def main() -> None:
    machine = next((r["machine"] for r in _runs("firing")), "unknown")
    print(f"Machine: {machine}\n")
    print("### HTTP clients (`python -m bench.clients 30000 3`, medians of 3 within one run)\n")
    print(table("clients", [
        ("aiohttp, POSTs/s, 64 in flight", "aiohttp_per_s"),
        ("pycurl CurlMulti on the event loop (dispatcher/curl.py), POSTs/s", "pycurl_per_s"),
        ("the same with the connect-time address guard, POSTs/s", "pycurl_guarded_per_s"),
    ], last=1))  # fmt: skip
    print("\n### Creates over HTTP (`python -m bench.creates`, wrk)\n")
    print(table("creates", [
        ("plain endpoint (one INSERT per request), 1 client, creates/s", "plain_1_client_per_s"),
        ("plain endpoint, 64 clients, creates/s", "plain_64_clients_per_s"),
        ("timerhook (group commit), 1 client, creates/s", "batched_1_client_per_s"),
        ("timerhook (group commit), 64 clients, creates/s", "batched_64_clients_per_s"),
        ("group commit / plain at 64 clients", "batched_vs_plain_64"),
        ("the ceiling: a FastAPI endpoint that only validates the body, 64 connections, "
         "requests/s", "validate_only_64_per_s"),
        ("timerhook / the validate-only ceiling at 64 connections",
         "batched_vs_validate_only_64"),
        ("raw PostgreSQL single-row INSERT + commit, rows/s", "raw_single_insert_per_s"),
        ("raw PostgreSQL COPY, rows/s", "raw_copy_rows_per_s"),
    ]))  # fmt: skip
    print("\n### Firing throughput (`python -m bench.firing`)\n")
    print(table("firing", [
        ("timers fired per run", "timers"),
        ("one dispatcher, webhooks/s end to end", "one_dispatcher_per_s"),
        ("two dispatchers, webhooks/s end to end", "two_dispatchers_per_s"),
        ("two dispatchers / one", "two_vs_one"),
        ("cores the machine kept busy, one dispatcher", "machine_cores_one"),
        ("cores the machine kept busy, two dispatchers", "machine_cores_two"),
        ("two / one the cores hold at one dispatcher's CPU per webhook", "two_vs_one_ceiling"),
        ("raw client (pycurl CurlMulti, the dispatcher's), POSTs/s to the same sink, 128 in "
         "flight", "raw_client_posts_per_s"),
        ("one dispatcher / raw client", "one_vs_raw"),
        ("raw aiohttp POSTs/s to the same sink, 128 in flight", "raw_aiohttp_posts_per_s"),
        ("one dispatcher, 10% of timers naming one of 100 resources, webhooks/s",
         "one_dispatcher_10pct_resources_per_s"),
    ], having="raw_client_posts_per_s"))  # fmt: skip
    print("\n### Lateness at 1,000 timers/s (`python -m bench.lateness`)\n")
    print(table("lateness", [
        ("timers", "timers"),
        ("p50 lateness, ms", "p50_ms"),
        ("p99 lateness, ms", "p99_ms"),
        ("max lateness, ms", "max_ms"),
        ("sent early", "early"),
        ("earliest arrival relative to the due time, ms (negative: early)", "earliest_ms"),
    ]))  # fmt: skip
    print("\n### Herd of 100,000 in one second under 60,000/min (`python -m bench.herd`)\n")
    print(table("herd", [
        ("delivered", "delivered"),
        ("duplicates", "duplicates"),
        ("drain time, s (ideal 100)", "drain_s"),
        ("worst full second's deviation from 1,000/s", "worst_deviation_after_first_second"),
    ]))  # fmt: skip
    print("\n### Bulk create (`python -m bench.batch 5 3`, medians of 3 within one run)\n")
    print(table("batch", [
        ("POST /timer/batch, 1 process, 4 clients x 1,000 timers, timers/s", "api_per_s"),
        ("the same with `--workers 2`, timers/s", "api_2_workers_per_s"),
        ("the ceiling: the same COPY from 4 connections without HTTP, rows/s", "copy_per_s"),
        ("1 process / the COPY ceiling", "api_vs_copy"),
    ], last=1))  # fmt: skip
    print("\n### Short delays at 100 creates/s (`python -m bench.short_delays 10 100 -1 0`)\n")
    print(table("short_delays", [
        ("p50 lateness, ms", "p50_ms"),
        ("p99 lateness, ms", "p99_ms"),
        ("max lateness, ms", "max_ms"),
        ("sent early", "early"),
    ], having="warmup_s", where={"warmup_s": 0, "delay_s": "0 and 1"}))  # fmt: skip
    print("\n### The same after 15 s of that load (`... 10 100 -1 15`)\n")
    print(table("short_delays", [
        ("p50 lateness, ms", "p50_ms"),
        ("p99 lateness, ms", "p99_ms"),
        ("max lateness, ms", "max_ms"),
        ("sent early", "early"),
    ], having="warmup_s", where={"warmup_s": 15, "delay_s": "0 and 1"}))  # fmt: skip
    print("\n### Scaling on one PostgreSQL (`python -m bench.scaling 50000 8`)\n")
    rows = []
    parts = [("webhooks/s", "webhooks_per_s"), ("cores used by the dispatchers",
             "timerhook_cores"), ("cores used by PostgreSQL", "postgres_cores"),
             ("cores busy on the machine", "machine_cores")]  # fmt: skip
    for n in (1, 2, 4):
        rows += [(f"{n} dispatcher(s): {label}", f"dispatchers_{n}.{key}") for label, key in parts]
    parts = [("creates/s (wrk, 64 connections)", "creates_per_s"), ("cores used by the API",
             "timerhook_cores"), ("cores used by PostgreSQL", "postgres_cores"),
             ("cores busy on the machine", "machine_cores")]  # fmt: skip
    for w in (1, 2):
        rows += [
            (f"{w} API process(es): {label}", f"api_workers_{w}.{key}") for label, key in parts
        ]
    print(table("scaling", rows, having="dispatchers_1"))  # fmt: skip
    print("\n### Dispatcher memory (`python -m bench.memory`)\n")
    print(table("memory", [
        ("RSS with nothing pending, MiB", "rss_mib_empty"),
        ("RSS peak with 1,000,000 overdue, MiB", "rss_mib_backlog_peak"),
        ("RSS at the end of the measure, MiB", "rss_mib_backlog_final"),
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
