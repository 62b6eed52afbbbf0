"""When keys are required, with real ``timerhook api`` processes and the real CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from tests.support.processes import Service

BODY = {"url": "https://example.com/h", "hours": 1}


async def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIMERHOOK_DATABASE_URL": database_url, "COLUMNS": "160"}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "cli.main", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_beyond_loopback_keys_are_required_and_on_loopback_once_one_exists(
    make_service: Callable[..., Service], database_url: str
) -> None:
    # Listening on every address with no key: up and healthy, but every call is a 401 that
    # says how to make a key, and so does the start-up log.
    exposed = make_service("api", TIMERHOOK_DATABASE_URL=database_url, TIMERHOOK_HOST="0.0.0.0")
    exposed.start()
    await exposed.wait_ready()
    async with httpx.AsyncClient(base_url=exposed.base_url, timeout=5) as client:
        refused = await client.post("/timer", json=BODY)
        assert refused.status_code == 401, refused.text
        assert "timerhook keys create" in refused.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200
    assert "timerhook keys create" in exposed.log()
    assert await exposed.terminate() == 0
    # On loopback with no key yet: open, as before keys existed.
    local = make_service("api", TIMERHOOK_DATABASE_URL=database_url)
    local.start()
    await local.wait_ready()
    async with httpx.AsyncClient(base_url=local.base_url, timeout=5) as client:
        assert (await client.post("/timer", json=BODY)).status_code == 200
        made = await _cli(database_url, "keys", "create", "--tenant", "ops", "--admin")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]  # the key itself: the last line
        assert key.startswith("thk_")
        # Once a key exists it is required on loopback too (within the API's few seconds).
        started = time.monotonic()
        while (await client.post("/timer", json=BODY)).status_code != 401:
            assert time.monotonic() - started < 10, "no key still accepted after 10 s"
            await asyncio.sleep(0.1)
        who = {"Authorization": f"Bearer {key}"}
        created = await client.post("/timer", json=BODY, headers=who)
        assert created.status_code == 200, created.text
        listed = await _cli(database_url, "keys", "list")
        assert "ops" in listed.stdout and key not in listed.stdout
    assert await local.terminate() == 0
