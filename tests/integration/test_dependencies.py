"""Dependencies (``after``): a timer is sent only once every timer it names was delivered, and
fails at once, saying why, when one of them fails for good."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable

import httpx

from dispatcher.service import Dispatcher
from tests.support.sink import Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]


async def _create(client: httpx.AsyncClient, **body: object) -> str:
    response = await client.post("/timer", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def test_a_chain_fires_in_dependency_order_whatever_its_due_times(
    client: httpx.AsyncClient, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    dispatcher = await start_dispatcher()
    # A is due last, C first: C waits for B, B for A
    a = await _create(client, url=f"{sink.url}/a", seconds=3)
    b = await _create(client, url=f"{sink.url}/b", seconds=1, after=[a])
    c = await _create(client, url=f"{sink.url}/c", seconds=0, after=[b])
    waiting = (await client.get(f"/timer/{c}")).json()
    assert waiting["status"] == "pending"
    assert waiting["after"] == [{"id": b, "status": "pending"}]
    assert waiting["waiting_on"] == "after: waiting for 1 of its dependencies"
    received = await sink.wait_for(3, timeout=15)
    assert [r.path for r in received] == ["/a", "/b", "/c"]
    due_a = uuid.UUID(a).int >> 80
    assert received[0].at * 1000 >= due_a  # A at its own time, not before
    # each goes at once when the one before it is recorded (no polling, no tick)
    assert received[1].at - received[0].at < 0.5, received[1].at - received[0].at
    assert received[2].at - received[1].at < 0.5, received[2].at - received[1].at
    await dispatcher.wait_idle(5)
    done = (await client.get(f"/timer/{c}")).json()
    assert done["status"] == "delivered" and done["after"] == [{"id": b, "status": "delivered"}]


async def test_a_dependency_that_fails_fails_its_dependents_at_once_with_the_reason(
    client: httpx.AsyncClient, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    sink.status_for = lambda r: 404 if r.path == "/gone" else 200
    await start_dispatcher()
    gone = await _create(client, url=f"{sink.url}/gone", seconds=1)
    ok = await _create(client, url=f"{sink.url}/ok", seconds=0)
    child = await _create(client, url=f"{sink.url}/child", seconds=0, after=[ok, gone])
    grandchild = await _create(client, url=f"{sink.url}/grandchild", seconds=0, after=[child])
    await sink.wait_until(lambda: any(r.path == "/gone" for r in sink.received), timeout=10)
    deadline = asyncio.get_running_loop().time() + 5
    while (await client.get(f"/timer/{grandchild}")).json()["status"] != "failed":
        assert asyncio.get_running_loop().time() < deadline, "the dependents did not fail"
        await asyncio.sleep(0.05)
    failed = (await client.get(f"/timer/{child}")).json()
    assert failed["status"] == "failed"
    assert failed["last_result"]["error"] == f"dependency {gone} ended failed"
    assert {d["id"]: d["status"] for d in failed["after"]} == {ok: "delivered", gone: "failed"}
    chained = (await client.get(f"/timer/{grandchild}")).json()
    assert chained["last_result"]["error"] == f"dependency {child} ended failed"
    await asyncio.sleep(0.5)
    assert sorted(r.path for r in sink.received) == ["/gone", "/ok"]  # neither was sent
    # a timer made after a failed one fails at once too, and a cancel fails its dependents
    late = await _create(client, url=f"{sink.url}/late", seconds=0, after=[gone])
    assert (await client.get(f"/timer/{late}")).json()["status"] == "failed"
    parent = await _create(client, url=f"{sink.url}/p", hours=1)
    waiting = await _create(client, url=f"{sink.url}/w", seconds=0, after=[parent])
    assert (await client.delete(f"/timer/{parent}")).status_code == 204
    cancelled = (await client.get(f"/timer/{waiting}")).json()
    assert cancelled["status"] == "failed"
    assert cancelled["last_result"]["error"] == f"dependency {parent} ended cancelled"
    assert json.loads(sink.received[0].body)["id"] in (gone, ok)


async def test_after_is_refused_naming_it(client: httpx.AsyncClient) -> None:
    known = await _create(client, url="https://example.com/k", hours=1)
    series = await _create(client, url="https://example.com/s", every=60)
    unknown = str(uuid.UUID(known).hex[:-4] + "0000")
    for after in ([str(uuid.UUID(unknown))], [series], ["nope"], [known] * 2 + ["x"],
                  [str(uuid.uuid4())]):  # fmt: skip
        response = await client.post(
            "/timer", json={"url": "https://example.com/d", "after": after}
        )
        assert response.status_code == 422, (after, response.text)
        assert [e["field"] for e in response.json()["errors"]] == ["after"]
    too_many = await client.post(
        "/timer", json={"url": "https://example.com/d", "after": [known] * 33}
    )
    assert too_many.status_code == 422
    recurring = await client.post(
        "/timer", json={"url": "https://example.com/d", "every": 5, "after": [known]}
    )
    assert [e["field"] for e in recurring.json()["errors"]] == ["after"]
    listed = (await client.get("/timer", params={"kind": "once"})).json()["items"]
    assert [t["id"] for t in listed] == [known]  # nothing half-written
