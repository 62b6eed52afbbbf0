"""Medians of the runs in bench/results/*.jsonl, as the tables of docs/benchmarks.md.

Run after ``make bench`` (several times): ``python -m bench.summarize``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path("bench/results")


def _runs(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _median(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    if not values:
        return "-"
    spread = f" ({_fmt(min(values))} to {_fmt(max(values))})" if len(values) > 1 else ""
    return f"{_fmt(statistics.median(values))}{spread}"


def table(name: str, rows: list[tuple[str, str]], *, having: str | None = None) -> str:
    """The medians of the runs (those with the figure ``having``, when given: older runs of
    a bench that measured something else are left out)."""
    runs = [r for r in _runs(name) if having is None or having in r]
    lines = [f"| figure ({len(runs)} runs: median (min to max)) | value |", "| --- | --- |"]
    lines += [f"| {label} | {_median(runs, key)} |" for label, key in rows]
    return "\n".join(lines)


def main() -> None:
    machine = next((r["machine"] for r in _runs("firing")), "unknown")
    print(f"Machine: {machine}\n")
    print("### Creates over HTTP (`python -m bench.creates`)\n")
    print(table("creates", [
        ("plain endpoint (one INSERT per request), 1 client, creates/s", "plain_1_client_per_s"),
        ("plain endpoint, 64 clients, creates/s", "plain_64_clients_per_s"),
        ("timerhook (group commit), 1 client, creates/s", "batched_1_client_per_s"),
        ("timerhook (group commit), 64 clients, creates/s", "batched_64_clients_per_s"),
        ("group commit / plain at 64 clients", "batched_vs_plain_64"),
        ("raw PostgreSQL single-row INSERT + commit, rows/s", "raw_single_insert_per_s"),
        ("raw PostgreSQL COPY, rows/s", "raw_copy_rows_per_s"),
    ]))  # fmt: skip
    print("\n### Firing throughput (`python -m bench.firing`)\n")
    print(table("firing", [
        ("timers fired per run", "timers"),
        ("one dispatcher, webhooks/s end to end", "one_dispatcher_per_s"),
        ("two dispatchers, webhooks/s end to end", "two_dispatchers_per_s"),
        ("two dispatchers / one", "two_vs_one"),
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
    print("\n### Dispatcher memory (`python -m bench.memory`)\n")
    print(table("memory", [
        ("RSS with nothing pending, MiB", "rss_mib_empty"),
        ("RSS peak with 1,000,000 overdue, MiB", "rss_mib_backlog_peak"),
        ("RSS at the end of the measure, MiB", "rss_mib_backlog_final"),
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
