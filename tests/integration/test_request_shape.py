"""What goes out: the body with and without a payload, extra headers, per-timer timeouts, and
the outbound guard's table of refused targets."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx
import pytest

from db.database import Database
from db.models import ClaimedTimer
from dispatcher.sender import BODY_READ_CAP, Sender
from dispatcher.service import Dispatcher
from tests.support.sink import Reply, Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


async def test_payload_headers_and_timeout_reach_the_target(
    client: httpx.AsyncClient, sink: Sink, db: Database, start_dispatcher: StartDispatcher
) -> None:
    payload = {"order": 42, "items": ["a", "b"], "note": "ünïcode", "nested": {"ok": True}}
    rich = await client.post("/timer", json={
        "seconds": 0, "url": f"{sink.url}/rich", "payload": payload,
        "headers": {"X-Tenant": "acme", "Authorization": "Bearer t0k3n"},
        "timeout_seconds": 2.5,
    })  # fmt: skip
    plain = await client.post("/timer", json={"seconds": 0, "url": f"{sink.url}/plain"})
    assert rich.status_code == plain.status_code == 200
    rich_id, plain_id = rich.json()["id"], plain.json()["id"]
    detail = (await client.get(f"/timer/{rich_id}")).json()
    assert detail["payload"] == payload and detail["timeout_seconds"] == 2.5
    assert detail["headers"] == {"X-Tenant": "acme", "Authorization": "Bearer t0k3n"}

    dispatcher = await start_dispatcher()
    await dispatcher.wait_recorded(2, timeout=10)
    [got_rich] = sink.for_id(rich_id)
    [got_plain] = sink.for_id(plain_id)
    assert got_plain.body == json.dumps({"id": plain_id}).encode()  # exactly {"id": ...}
    assert json.loads(got_rich.body) == {"id": rich_id, "payload": payload}
    assert list(json.loads(got_rich.body)) == ["id", "payload"]
    assert got_rich.headers["X-Tenant"] == "acme"
    assert got_rich.headers["Authorization"] == "Bearer t0k3n"
    assert got_rich.headers["Content-Type"] == "application/json"
    assert "X-Tenant" not in got_plain.headers


async def test_a_per_timer_timeout_cuts_a_slow_target_short(
    client: httpx.AsyncClient, sink: Sink, db: Database, start_dispatcher: StartDispatcher
) -> None:
    sink.status_for = lambda r: Reply(200, delay=3.0) if r.path == "/slow" else 200
    body = {"seconds": 0, "url": f"{sink.url}/slow", "timeout_seconds": 0.5, "max_attempts": 1}
    created = (await client.post("/timer", json=body)).json()
    dispatcher = await start_dispatcher()  # the global timeout is 5 s in tests
    await dispatcher.wait_recorded(1, timeout=10)
    [attempt] = (await client.get(f"/timer/{created['id']}/attempts")).json()["attempts"]
    assert attempt["error"] == "timeout after 0.5 s" and attempt["status_code"] is None
    assert 450 <= attempt["latency_ms"] < 2000
    assert (await client.get(f"/timer/{created['id']}")).json()["status"] == "dead"


async def test_only_the_start_of_a_failed_answer_is_read(
    client: httpx.AsyncClient, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    sink.status_for = lambda r: Reply(400, body=b"no such order\n" + b"x" * 5_000_000)
    created = (await client.post("/timer", json={"seconds": 0, "url": f"{sink.url}/h"})).json()
    dispatcher = await start_dispatcher()
    await dispatcher.wait_recorded(1, timeout=10)
    detail = (await client.get(f"/timer/{created['id']}")).json()
    assert detail["status"] == "failed"  # a 400 is not retried
    error = detail["last_result"]["error"]
    assert error.startswith("HTTP 400: no such order x")
    assert len(error) <= len("HTTP 400: ") + BODY_READ_CAP


async def test_a_failed_answer_with_quotes_backslashes_and_nul_is_recorded_as_sent(
    client: httpx.AsyncClient, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    # The recorder sends its arrays as text literals: quoting must survive any answer text,
    # and NUL (which PostgreSQL text cannot hold) must not make the record fail.
    sink.status_for = lambda r: Reply(400, body=b'say "no", {x} \\ back\x00slash\nNULL')
    created = (await client.post("/timer", json={"seconds": 0, "url": f"{sink.url}/h"})).json()
    dispatcher = await start_dispatcher()
    await dispatcher.wait_recorded(1, timeout=10)
    detail = (await client.get(f"/timer/{created['id']}")).json()
    assert detail["status"] == "failed"
    assert detail["last_result"]["error"] == 'HTTP 400: say "no", {x} \\ back slash NULL'


def _claimed(url: str) -> ClaimedTimer:
    now = datetime.now(UTC)
    return ClaimedTimer(
        id=uuid.uuid4(), bucket=now, url=url, run_at=now, attempts=1, max_attempts=1,
        round_start=0, delivery="at_least_once", payload=None, headers=None, timeout_ms=None,
        db_now=now,
    )  # fmt: skip


REFUSED_TARGETS = [
    ("http://127.0.0.1:{port}/t", "loopback"),
    ("http://[::1]:{port}/t", "loopback"),
    ("http://10.0.0.1:{port}/t", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::ffff:127.0.0.1]:{port}/t", "loopback"),
    ("http://localhost:{port}/t", "loopback"),  # a name that resolves to loopback
]


@pytest.mark.parametrize("allowed", [False, True], ids=["default", "allowed"])
@pytest.mark.parametrize(("target", "why"), REFUSED_TARGETS)
async def test_private_targets_are_refused_unless_allowed(
    target: str, why: str, allowed: bool, sink: Sink
) -> None:
    sender = Sender(timeout_seconds=0.5, concurrency=4, allow_private=allowed)
    await sender.start()
    try:
        url = target.format(port=sink.url.rsplit(":", 1)[1])
        result = await sender.send(_claimed(url))
    finally:
        await sender.close()
    if not allowed:
        assert result.failure is not None and result.failure.refused
        assert result.error is not None and "target refused" in result.error
        assert why in result.error and sink.received == []
        if "localhost" in url:  # a resolved address is never named to the timer's tenant
            assert "127.0.0.1" not in result.error and "::1" not in result.error, result.error
        return
    # Allowed, the request is really attempted: the sink on 127.0.0.1 answers; the others
    # fail in the network (nothing listens there), never at the guard.
    assert result.failure is None or not result.failure.refused
    assert result.error is None or "target refused" not in result.error
    if "127.0.0.1" in url or "localhost" in url:
        assert result.delivered and len(sink.received) == 1
