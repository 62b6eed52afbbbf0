"""Targets refused early and for good: malformed and non-canonical hosts at create whatever the
settings, literal private addresses at create when private targets are not allowed, and names
that resolve to them at send, ended ``failed`` after one attempt (never retried)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.settings import Settings
from db.database import Database
from dispatcher.service import Dispatcher
from tests.support.sink import Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


@asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, settings.database_url or "")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://timerhook") as c:
            yield c


NOT_CANONICAL = [
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0177.0.0.1/",  # octal
    "http://127.1/",  # short form
    "http://0x7f000001/",  # hexadecimal
    "http://0x7f.0.0.1/",
    "http://127.0.0.1./",  # a trailing dot on an address
    "http://1.2.3/",
    "http://8.8.8.010/",
    "http://example.0x10/",  # a name whose last label is a number is an address to browsers
    "http://%31%32%37.0.0.1/",  # percent-encoded
    "http://exa..mple.com/",
    "http://-dash.example.com/",
    f"http://{'a' * 64}.example.com/",
]


@pytest.mark.parametrize("url", NOT_CANONICAL)
async def test_malformed_and_non_canonical_hosts_are_refused_at_create(
    url: str, client: httpx.AsyncClient, db: Database
) -> None:
    # The test settings allow private targets: the form is checked whatever they say.
    response = await client.post("/timer", json={"url": url})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == ["url"]
    assert "host" in problem["errors"][0]["reason"]
    assert (await db.timers.counts()).get("pending", 0) == 0


LITERAL_PRIVATE = [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),  # IPv4-mapped 127.0.0.1
    ("http://0.0.0.0/", "unspecified"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.10/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://100.100.100.200/", "metadata"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://100.64.0.1/", "shared"),
]


async def test_literal_private_addresses_are_refused_at_create_unless_allowed(
    make_settings: Callable[..., Settings], db: Database
) -> None:
    async with _client(make_settings(allow_private_targets=False)) as strict:
        for url, why in LITERAL_PRIVATE:
            response = await strict.post("/timer", json={"url": url})
            assert response.status_code == 422, (url, response.text)
            error = response.json()["errors"][0]
            assert error["field"] == "url" and why in error["reason"], (url, error)
            assert "TIMERHOOK_ALLOW_PRIVATE_TARGETS" in error["reason"]
        # A public literal and a name pass (a name is checked where it resolves, at send).
        for url in ("http://93.184.215.14/hook", "https://example.com/hook", "http://localhost/"):
            assert (await strict.post("/timer", json={"url": url})).status_code == 200, url
        assert (await db.timers.counts()).get("pending", 0) == 3
    # An allowed network lets its own addresses through, and only those.
    networks = make_settings(allow_private_targets=False, allowed_networks="10.1.0.0/16")
    async with _client(networks) as allowed:
        assert (await allowed.post("/timer", json={"url": "http://10.1.2.3/"})).status_code == 200
        assert (await allowed.post("/timer", json={"url": "http://10.2.0.1/"})).status_code == 422
    async with _client(make_settings(allow_private_targets=True)) as open_:
        assert (await open_.post("/timer", json={"url": "http://127.0.0.1/"})).status_code == 200


async def test_a_name_resolving_to_loopback_fails_at_send_after_one_attempt(
    make_settings: Callable[..., Settings],
    sink: Sink,
    db: Database,
    start_dispatcher: StartDispatcher,
) -> None:
    strict = make_settings(allow_private_targets=False)
    port = sink.url.rsplit(":", 1)[1]
    async with _client(strict) as client:
        created = await client.post("/timer", json={"url": f"http://localhost:{port}/hook"})
        assert created.status_code == 200
        timer_id = created.json()["id"]
        dispatcher = await start_dispatcher(strict)
        await dispatcher.wait_recorded(1, timeout=10)
        detail = (await client.get(f"/timer/{timer_id}")).json()
    assert detail["status"] == "failed" and detail["attempts"] == 1
    assert "target refused" in detail["last_result"]["error"]
    assert "loopback" in detail["last_result"]["error"]
    assert sink.received == []


@pytest.mark.parametrize("allow_private", [True, False])
async def test_a_stored_non_canonical_host_fails_at_once_instead_of_retrying(
    allow_private: bool,
    make_timer: Callable[..., Awaitable[Any]],
    make_settings: Callable[..., Settings],
    db: Database,
    start_dispatcher: StartDispatcher,
) -> None:
    # Written before creates checked the form (straight into the table, as an old row is).
    timer = await make_timer(0, url="http://127.1:9/hook")
    dispatcher = await start_dispatcher(make_settings(allow_private_targets=allow_private))
    await dispatcher.wait_recorded(1, timeout=10)
    stored = await db.timers.get(timer.id)
    assert stored is not None and stored.state == "failed" and stored.attempts == 1
    assert stored.last_error is not None and "not a canonical IPv4 address" in stored.last_error
