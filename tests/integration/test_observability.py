"""Observability end to end: /metrics over real API and dispatcher processes (apart and in one
``serve``), JSON logs that follow a timer by its request id, X-Request-ID on the API."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Service
from tests.support.sink import Received, Sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MakeService = Callable[..., Service]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text page (parsed by the
    official parser, so a malformed page fails here)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def metrics_when(
    service: Service, ready: Callable[[dict[Any, float]], bool], timeout: float = 20.0
) -> dict[Any, float]:
    """Scrapes /metrics until ``ready`` holds (the dispatchers report at their heartbeat)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=service.base_url) as client:
        while True:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            samples = scrape(response.text)
            if ready(samples) or time.monotonic() > deadline:
                return samples
            await asyncio.sleep(0.25)


def json_lines(service: Service) -> list[dict[str, Any]]:
    """Every line the process logged, each of which must be one JSON object."""
    lines = [line for line in service.log().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    return parsed


async def wait_registered(url: str, service: Service, timeout: float = 60.0) -> str:
    """The dispatcher id a ``timerhook dispatcher`` process registered."""
    assert service.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "select id from dispatchers where pid = %s and stopped_at is null",
                (service.proc.pid,),
            ).fetchone()
        if row:
            return str(row[0])
        assert service.proc.poll() is None, service.log()
        await asyncio.sleep(0.1)
    raise AssertionError(f"dispatcher did not register:\n{service.log()}")


def no_unbounded_labels(samples: dict[Any, float]) -> None:
    for _name, labels in samples:
        for key, value in labels:
            assert not UUID.search(value), f"label {key}={value} carries a timer id"
            assert "://" not in value and "/" not in value, f"label {key}={value} is a URL"


def failing(received: Received) -> int:
    return 500 if received.path.startswith("/fail") else 200


async def test_metrics_and_logs_follow_separate_api_and_dispatcher_processes(
    make_service: MakeService, database_url: str, sink: Sink
) -> None:
    sink.status_for = failing
    env = {
        "TIMERHOOK_DATABASE_URL": database_url, "TIMERHOOK_LOG_FORMAT": "json",
        "TIMERHOOK_LOG_LEVEL": "DEBUG",
    }  # fmt: skip
    api = make_service("api", **env)
    dispatcher = make_service("dispatcher", **env)
    api.start()
    await api.wait_ready()
    dispatcher.start()
    dispatcher_id = await wait_registered(database_url, dispatcher)
    created: dict[str, str] = {}  # timer id -> request id
    async with httpx.AsyncClient(base_url=api.base_url) as client:
        for i in range(12):
            path, extra = ("/fail", {"max_attempts": 1}) if i < 2 else ("/ok", {})
            request_id = f"req-{i}-{path[1:]}"
            response = await client.post(
                "/timer", json={"seconds": 1, "url": f"{sink.url}{path}?token=s3cret", **extra},
                headers={"X-Request-ID": request_id},
            )  # fmt: skip
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == request_id
            created[response.json()["id"]] = request_id
    await sink.wait_for(12, timeout=30)
    # Each webhook carries the request id of the create that made its timer.
    for received in sink.received:
        timer_id = received.headers["Idempotency-Key"]
        assert received.headers["Timerhook-Request-Id"] == created[timer_id]

    delivered = ("timerhook_webhooks_total", (("outcome", "delivered"),))
    dead = ("timerhook_webhooks_total", (("outcome", "dead"),))
    samples = await metrics_when(api, lambda s: s.get(delivered) == 10 and s.get(dead) == 2)
    assert samples[delivered] == 10 and samples[dead] == 2
    assert samples[("timerhook_webhooks_total", (("outcome", "retry"),))] == 0
    assert samples[("timerhook_webhook_lateness_seconds_count", ())] == 12
    assert samples[("timerhook_webhook_attempt_duration_seconds_count", ())] == 12
    assert samples[("timerhook_webhook_lateness_seconds_bucket", (("le", "+Inf"),))] == 12
    assert samples[("timerhook_timers_created_total", (("kind", "once"),))] == 12
    assert samples[("timerhook_dispatcher_up", (("dispatcher", dispatcher_id),))] == 1
    assert samples[("timerhook_dispatchers_alive", ())] == 1
    # Gauges from cached reads, refreshed within about a second.
    samples = await metrics_when(api, lambda s: s[("timerhook_dead_letters", ())] == 2)
    assert samples[("timerhook_dead_letters", ())] == 2
    assert samples[("timerhook_timers_pending", ())] == 0
    no_unbounded_labels(samples)

    async with httpx.AsyncClient(base_url=api.base_url) as client:
        registry = (await client.get("/dispatchers")).json()
    assert [(d["id"], d["state"], d["sent_total"]) for d in registry] == [
        (dispatcher_id, "alive", 10)
    ]

    assert await dispatcher.terminate() == 0
    assert await api.terminate() == 0
    api_lines, dispatcher_lines = json_lines(api), json_lines(dispatcher)
    for line in api_lines + dispatcher_lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert "s3cret" not in json.dumps(line), f"a full URL was logged: {line}"
    for timer_id, request_id in created.items():
        # One grep for the request id follows the timer from its create to its last attempt.
        api_about = [x for x in api_lines if x.get("request_id") == request_id]
        sent_about = [x for x in dispatcher_lines if x.get("request_id") == request_id]
        assert [(x["message"], x["timer_id"]) for x in api_about] == [
            ("timer created, due in 1 s", timer_id)
        ]
        assert len(sent_about) == 1, sent_about
        line = sent_about[0]
        assert (line["timer_id"], line["dispatcher_id"], line["attempt"]) == (
            timer_id, dispatcher_id, 1,
        )  # fmt: skip
        assert line["target_host"] == "127.0.0.1"
        if "fail" in request_id:
            assert line["level"] == "ERROR" and "dead after 1 attempts" in line["message"]
        else:
            assert line["level"] == "DEBUG" and line["message"].startswith("webhook delivered")


async def test_serve_counts_once_and_logs_json_at_info(
    make_service: MakeService, database_url: str, sink: Sink
) -> None:
    service = make_service(
        "serve", TIMERHOOK_DATABASE_URL=database_url, TIMERHOOK_LOG_FORMAT="json",
        TIMERHOOK_ACCESS_LOG="1",
    )  # fmt: skip
    service.start()
    await service.wait_ready()
    async with httpx.AsyncClient(base_url=service.base_url) as client:
        for _ in range(8):
            response = await client.post("/timer", json={"seconds": 0, "url": f"{sink.url}/ok"})
            assert response.status_code == 200
            generated = response.headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", generated)
    await sink.wait_for(8, timeout=30)
    delivered = ("timerhook_webhooks_total", (("outcome", "delivered"),))
    # API and dispatcher in one process: the page counts each send once, not twice.
    samples = await metrics_when(service, lambda s: s.get(delivered, 0) >= 8)
    await asyncio.sleep(2.5)  # another heartbeat report and cache period: still 8
    samples = await metrics_when(service, lambda s: True)
    assert samples[delivered] == 8
    assert samples[("timerhook_timers_created_total", (("kind", "once"),))] == 8
    assert await service.terminate() == 0
    lines = json_lines(service)
    # At INFO a delivered timer logs nothing about itself; uvicorn's access log goes through
    # the same JSON formatter, with the request id.
    assert not [x for x in lines if "timer_id" in x]
    access = [x for x in lines if x["logger"] == "uvicorn.access" and "/timer" in x["message"]]
    assert len(access) == 8
    assert all(re.fullmatch(r"[0-9a-f]{32}", x["request_id"]) for x in access)
    assert any(x["logger"] == "uvicorn.error" for x in lines)  # uvicorn's own lines too
