"""The observability surface of one API in-process: request ids, /metrics, /dispatchers, the
dashboard's files and state; and what a dispatcher logs at INFO."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from db.database import Database
from dispatcher.service import Dispatcher
from tests.conftest import MakeTimer
from tests.support.sink import Sink

URL = "http://127.0.0.1:9/hook"
DOCS = Path(__file__).resolve().parents[2] / "docs"


async def test_a_sane_request_id_is_kept_echoed_and_stored(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/timer", json={"minutes": 5, "url": URL}, headers={"X-Request-ID": "checkout-42:a/b"}
    )
    assert response.headers["x-request-id"] == "checkout-42:a/b"
    timer = (await client.get(f"/timer/{response.json()['id']}")).json()
    assert timer["request_id"] == "checkout-42:a/b"


@pytest.mark.parametrize(
    "given", [None, "", "x" * 129, "has space", "semi;colon", "é".encode(), b"tab\there"]
)
async def test_a_missing_or_unsafe_request_id_is_replaced(
    client: httpx.AsyncClient, given: str | bytes | None
) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    response = await client.post("/timer", json={"minutes": 5, "url": URL}, headers=headers)
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    timer = (await client.get(f"/timer/{response.json()['id']}")).json()
    assert timer["request_id"] == generated


async def test_every_answer_carries_a_request_id_errors_included(
    client: httpx.AsyncClient,
) -> None:
    refused = await client.post("/timer", json={"seconds": -1, "url": URL})
    missing = await client.get("/timer/nope", headers={"X-Request-ID": "r-1"})
    too_large = await client.post("/timer", content=b"x" * 200_000)
    assert refused.status_code == 422
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])
    assert (missing.status_code, missing.headers["x-request-id"]) == (404, "r-1")
    assert too_large.status_code == 413 and "x-request-id" in too_large.headers


async def test_metrics_page_parses_and_counts_this_apis_creates(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        assert (await client.post("/timer", json={"minutes": 5, "url": URL})).status_code == 200
    response = await client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    created = families["timerhook_timers_created"]
    assert created.type == "counter"
    assert [(s.labels, s.value) for s in created.samples if s.name.endswith("_total")] == [
        ({"kind": "once"}, 3.0),
        ({"kind": "recurring"}, 0.0),  # recurring timers (issue 9): none made here
    ]
    assert families["timerhook_webhook_lateness_seconds"].type == "histogram"
    assert families["timerhook_webhook_attempt_duration_seconds"].type == "histogram"
    pending = families["timerhook_timers_pending"].samples[0].value
    assert pending == 3
    for name in (
        "timerhook_timers_overdue",
        "timerhook_oldest_overdue_age_seconds",
        "timerhook_dispatchers_alive",
        "timerhook_cap_waits",
        "timerhook_webhooks",
    ):
        assert name in families, name  # fmt: skip


async def test_dispatchers_lists_the_registry(
    client: httpx.AsyncClient, start_dispatcher: Callable[..., Awaitable[Dispatcher]]
) -> None:
    dispatcher = await start_dispatcher()
    body = (await client.get("/dispatchers")).json()
    assert len(body) == 1
    entry = body[0]
    assert (entry["id"], entry["state"], entry["in_flight"]) == (dispatcher.id, "alive", 0)
    assert set(entry) == {
        "id", "host", "pid", "state", "started_at", "heartbeat_age_seconds", "in_flight",
        "sent_total", "failed_total",
    }  # fmt: skip


async def test_dashboard_files_are_served_with_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    # Nothing from elsewhere: every script and style is one of the package's own files.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        assert f"/dashboard/static/{name}" in page.text
        served = await client.get(f"/dashboard/static/{name}")
        assert served.status_code == 200 and served.headers["content-type"].startswith(kind)
    assert (await client.get("/dashboard/static/../app.py")).status_code == 404
    assert (await client.get("/dashboard/static/dashboard.html")).status_code == 404


async def test_dashboard_state_shows_the_backlog_ahead(
    client: httpx.AsyncClient, db: Database
) -> None:
    for seconds in (30, 30, 600, 7200):
        response = await client.post("/timer", json={"seconds": seconds, "url": URL})
        assert response.status_code == 200
    state = (await client.get("/dashboard/state")).json()
    assert state["pending"] == 4
    assert sum(s["pending"] for s in state["backlog"]["minute"]) == 2
    assert sum(s["pending"] for s in state["backlog"]["hour"]) == 3
    assert sum(s["pending"] for s in state["backlog"]["day"]) == 4
    assert len(state["history"]) == 180  # 15 minutes by 5 seconds, no gaps
    assert state["dead"] == [] and state["dispatchers"] == []


async def test_at_info_only_failures_log_and_with_the_timers_context(
    make_timer: MakeTimer, sink: Sink, start_dispatcher: Callable[..., Awaitable[Dispatcher]],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    sink.status_for = lambda r: 500 if r.path == "/fail" else 200
    ok = await make_timer(delay_ms=0, url=f"{sink.url}/ok", request_id="req-ok")
    bad = await make_timer(delay_ms=0, url=f"{sink.url}/fail", request_id="req-bad", max_attempts=1)
    caplog.set_level(logging.INFO)
    dispatcher = await start_dispatcher()
    await dispatcher.wait_recorded(2, timeout=10)
    about_ok = [r for r in caplog.records if getattr(r, "timer_id", None) == str(ok.id)]
    about_bad = [r for r in caplog.records if getattr(r, "timer_id", None) == str(bad.id)]
    assert about_ok == []
    assert len(about_bad) == 1
    record = about_bad[0]
    assert record.levelno == logging.ERROR and "HTTP 500" in record.getMessage()
    assert (record.request_id, record.dispatcher_id, record.attempt, record.target_host) == (  # type: ignore[attr-defined]
        "req-bad", dispatcher.id, 1, "127.0.0.1",
    )  # fmt: skip


async def test_every_metric_is_documented_and_the_grafana_board_uses_real_ones(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/metrics")).text
    families = {f.name: f.type for f in text_string_to_metric_families(page)}
    exposed = {
        name + suffix
        for name, kind in families.items()
        if name.startswith("timerhook_")
        for suffix in {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(
            kind, [""]
        )
    }
    operations = (DOCS / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(timerhook_\w+)`", operations, re.MULTILINE))
    assert documented == {n for n in exposed if not n.endswith(("_bucket", "_sum", "_count"))} | {
        n.removesuffix("_bucket") for n in exposed if n.endswith("_bucket")
    }
    board = json.loads((DOCS / "grafana-dashboard.json").read_text())
    used = {
        name
        for panel in board["panels"]
        for target in panel["targets"]
        for name in re.findall(r"timerhook_\w+", target["expr"])
    }
    alerts = set(re.findall(r"expr: .*", operations))
    used |= {name for line in alerts for name in re.findall(r"timerhook_\w+", line)}
    assert used and used <= exposed, used - exposed
