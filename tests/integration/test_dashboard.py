"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a real ``timerhook serve``: it follows the backlog live, requeues a dead letter by a
click, looks a timer up, fits a phone, and logs no console error. Saves docs/dashboard.png."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from db.database import Database
from tests.support.processes import Service
from tests.support.sink import Received, Sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MakeService = Callable[..., Service]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


def chromium() -> str:
    """The system Chromium (``make test`` installs Debian's package when it is missing)."""
    for candidate in (os.environ.get("TIMERHOOK_TEST_CHROMIUM"), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    message = (
        "no chromium: the dashboard test drives Debian's chromium package "
        "(apt-get install chromium; `make test` installs it as root on Debian and Ubuntu), "
        "or set TIMERHOOK_TEST_CHROMIUM to a Chromium binary"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        await launched.close()


async def status_of(client: httpx.AsyncClient, timer_id: str) -> str:
    return str((await client.get(f"/timer/{timer_id}")).json()["status"])


async def wait_status(client: httpx.AsyncClient, timer_id: str, wanted: str) -> None:
    deadline = time.monotonic() + 20
    while (await status_of(client, timer_id)) != wanted:
        assert time.monotonic() < deadline, f"timer {timer_id} never became {wanted}"
        await asyncio.sleep(0.1)


async def test_dashboard_in_a_real_browser(
    make_service: MakeService, database_url: str, sink: Sink, browser: Browser
) -> None:
    calls: dict[str, int] = {}

    def first_fails(received: Received) -> int:
        calls[received.path] = calls.get(received.path, 0) + 1
        return 500 if received.path == "/flaky" and calls[received.path] == 1 else 200

    sink.status_for = first_fails
    service = make_service("serve", TIMERHOOK_DATABASE_URL=database_url)
    service.start()
    await service.wait_ready()
    async with httpx.AsyncClient(base_url=service.base_url) as client:
        # A dead letter (one attempt allowed, answered 500) and some traffic for the charts.
        flaky = (
            await client.post(
                "/timer", json={"seconds": 0, "url": f"{sink.url}/flaky", "max_attempts": 1}
            )
        ).json()["id"]
        for _ in range(20):
            await client.post("/timer", json={"seconds": 0, "url": f"{sink.url}/ok"})
        await wait_status(client, flaky, "dead")

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: _console(m, problems))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        await page.goto(f"{service.base_url}/dashboard")
        await page.wait_for_selector("#status:has-text('live')", timeout=10_000)
        dead_row = page.locator(f"#dead button.requeue[data-id='{flaky}']")
        await dead_row.wait_for(timeout=10_000)

        # Timers created through the API show in the backlog within 3 s.
        started = time.monotonic()
        for _ in range(7):
            response = await client.post("/timer", json={"seconds": 40, "url": f"{sink.url}/ok"})
            assert response.status_code == 200
        # (each figure is its own cached read: they catch up within the same 3 s)
        for shows in (
            "#backlog-hour[data-total='7']",
            "#backlog-minute[data-total='7']",
            "#pending:text-is('7')",
            "#backlog-hour-total:text-is('7 pending')",
        ):
            left = 3.0 - (time.monotonic() - started)
            await page.wait_for_selector(shows, timeout=max(1, left * 1000))
        assert time.monotonic() - started < 3.0

        # The dead letter is requeued by a click, and then delivered.
        await dead_row.click()
        await page.wait_for_selector(f"#dead-message:has-text('Requeued {flaky}')")
        await wait_status(client, flaky, "delivered")
        await page.wait_for_selector("#dead td.empty", timeout=5000)  # the list is empty again

        # Looking a timer up shows its status and attempts.
        await page.fill("#lookup-id", flaky)
        await page.click("#lookup button")
        await page.wait_for_selector("#lookup-fields dd:has-text('delivered')")
        attempts = page.locator("#lookup-attempts tbody tr")
        assert await attempts.count() == 2
        assert "HTTP 500" in (await attempts.nth(0).text_content() or "")

        # The dispatcher is listed alive; the sends show in the charts.
        await page.wait_for_selector("#dispatchers .dot.alive")
        await page.wait_for_selector("#rate-chart path.s0")
        await page.screenshot(path=str(SCREENSHOT), full_page=True)

        await _fits_a_phone(page)
        assert problems == []
    assert await service.terminate() == 0


def _console(message: ConsoleMessage, problems: list[str]) -> None:
    if message.type in ("error", "warning"):
        problems.append(f"console {message.type}: {message.text}")


async def _fits_a_phone(page: Page) -> None:
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.wait_for_timeout(1200)  # a poll redraws the charts at the new width
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"


async def test_the_dashboard_asks_for_a_key_once_keys_exist(
    make_service: MakeService, database_url: str, browser: Browser
) -> None:
    async with Database(database_url, max_size=1) as db:
        _, tenant_key = await db.keys.create(tenant="a", admin=False, label=None)
        _, admin_key = await db.keys.create(tenant="ops", admin=True, label=None)
    service = make_service("api", TIMERHOOK_DATABASE_URL=database_url)
    service.start()
    await service.wait_ready()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{service.base_url}/dashboard")
    # No key: the page asks for one instead of polling on.
    await page.wait_for_selector("#key-form:not([hidden])", timeout=10_000)
    assert "API key is required" in (await page.text_content("#key-why") or "")
    # A tenant's key is not enough: the dashboard shows every tenant.
    await page.fill("#key-input", tenant_key)
    await page.click("#key-form button")
    await page.wait_for_selector("#key-why:has-text('admin key')", timeout=10_000)
    await page.wait_for_selector("#key-form:not([hidden])")
    # An admin key: live.
    await page.fill("#key-input", admin_key)
    await page.click("#key-form button")
    await page.wait_for_selector("#status:has-text('live')", timeout=10_000)
    assert await page.is_hidden("#key-form")
    assert await service.terminate() == 0
