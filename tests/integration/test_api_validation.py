"""Every refusal is a 4xx problem+json naming the field and the reason; nothing is a 500.

The table of refusals goes to one real `timerhook api` process per module (each case costs
milliseconds); a refused create writes nothing (test_a_refused_request_writes_nothing)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from core.settings import Settings
from db.database import Database
from tests.support.processes import Service

URL = "https://someserver.com"


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"hours": "4", "url": URL}, "hours", "whole number"),
        ({"minutes": 1.5, "url": URL}, "minutes", "whole number"),
        ({"seconds": 2.0, "url": URL}, "seconds", "whole number"),
        ({"seconds": True, "url": URL}, "seconds", "whole number"),
        ({"seconds": None, "url": URL}, "seconds", "whole number"),
        ({"hours": -1, "url": URL}, "hours", "greater than or equal to 0"),
        ({"seconds": 1}, "url", "required"),
        ({"seconds": 1, "url": "ftp://x.org"}, "url", "http"),
        ({"seconds": 1, "url": "x.org/hook"}, "url", "http"),
        ({"seconds": 1, "url": "http://"}, "url", "host"),
        ({"seconds": 1, "url": "https://x.org/" + "a" * 2048}, "url", "2048"),
        ({"seconds": 1, "url": URL, "secs": 3}, "secs", "not a known field"),
        (
            {"hours": 30 * 24, "seconds": 1, "url": URL},
            "hours, minutes, seconds",
            "longest accepted",
        ),
        ({"seconds": 10**30, "url": URL}, "hours, minutes, seconds", "longest accepted"),
        ({"seconds": 1, "url": URL, "payload": "x" * 70_000}, "payload", "at most 65536"),
        ({"seconds": 1, "url": URL, "headers": {"Connection": "close"}}, "headers", "hop-by-hop"),
        ({"seconds": 1, "url": URL, "headers": {"Transfer-Encoding": "x"}}, "headers", "may not"),
        ({"seconds": 1, "url": URL, "headers": {"webhook-signature": "v1,x"}}, "headers", "not"),
        ({"seconds": 1, "url": URL, "headers": {"Timerhook-Attempt": "9"}}, "headers", "not"),
        ({"seconds": 1, "url": URL, "headers": {"Idempotency-Key": "k"}}, "headers", "may not"),
        ({"seconds": 1, "url": URL, "headers": {"Bad Name": "v"}}, "headers", "header name"),
        ({"seconds": 1, "url": URL, "headers": {"X-A": "a\r\nX-B: b"}}, "headers", "one line"),
        ({"seconds": 1, "url": URL, "headers": {"X-A": "1", "x-a": "2"}}, "headers", "twice"),
        (
            {"seconds": 1, "url": URL, "headers": {f"X-{i}": "v" for i in range(33)}},
            "headers",
            "at most 32",
        ),
        ({"seconds": 1, "url": URL, "headers": {"X-A": 1}}, "headers.X-A", "string"),
        ({"seconds": 1, "url": URL, "headers": ["X-A"]}, "headers", "dictionary"),
        ({"seconds": 1, "url": URL, "timeout_seconds": 0}, "timeout_seconds", "greater than 0"),
        ({"seconds": 1, "url": URL, "timeout_seconds": 61}, "timeout_seconds", "at most 60"),
        ({"seconds": 1, "url": URL, "timeout_seconds": "5"}, "timeout_seconds", "number"),
        ({"seconds": 1, "url": URL, "max_attempts": 0}, "max_attempts", "greater than or equal"),
        ({"seconds": 1, "url": URL, "max_attempts": 101}, "max_attempts", "less than or equal"),
        ({"seconds": 1, "url": URL, "delivery": "exactly_once"}, "delivery", "at_most_once"),
        ({"url": URL, "priority": 0}, "priority", "greater than or equal to 1"),
        ({"url": URL, "priority": 11}, "priority", "less than or equal to 10"),
        ({"url": URL, "priority": "high"}, "priority", "whole number"),
        ({"url": URL, "priority": 5.5}, "priority", "whole number"),
        ({"url": URL, "resources": "disk"}, "resources", "valid list"),
        ({"url": URL, "resources": [f"r{i}" for i in range(17)]}, "resources", "at most 16"),
        ({"url": URL, "resources": ["has space"]}, "resources", "not a resource name"),
        ({"url": URL, "resources": [""]}, "resources", "not a resource name"),
        ({"url": URL, "resources": ["x" * 65]}, "resources", "1 to 64"),
        ({"url": URL, "resources": ["ok", "é"]}, "resources", "not a resource name"),
        ({"url": URL, "resources": [1]}, "resources", "valid string"),
    ],
)
def test_refusals_name_field_and_reason(
    running_api: Service, body: dict[str, Any], field: str, reason: str
) -> None:
    response = httpx.post(f"{running_api.base_url}/timer", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["title"] == "Unprocessable Entity"
    matching = [e for e in problem["errors"] if e["field"] == field]
    assert matching, problem
    assert reason in matching[0]["reason"]
    assert field in problem["detail"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "required"),
        (b"[1, 2]", "valid dictionary"),
        (b'"text"', "valid dictionary"),
    ],
)
def test_bodies_that_are_not_json_objects_are_refused(
    running_api: Service, content: bytes, reason: str
) -> None:
    response = httpx.post(
        f"{running_api.base_url}/timer",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert reason in response.json()["detail"]


async def test_exactly_the_horizon_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/timer", json={"hours": 30 * 24, "url": URL})  # test horizon
    assert response.status_code == 200
    assert response.json()["time_left"] == 30 * 86400


def test_the_default_horizon_is_365_days() -> None:
    assert Settings(_env_file=None).horizon_days == 365  # type: ignore[call-arg]


async def test_a_missing_partition_is_made_on_the_spot(
    make_settings: Callable[..., Settings], database_url: str, db: Database
) -> None:
    """Maintenance behind (the template has 30 days): the create still succeeds, no 500."""
    app = create_app(make_settings(horizon_days=60), database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/timer", json={"hours": 55 * 24, "url": URL})
    assert response.status_code == 200
    assert await db.timers.counts() == {"pending": 1}


async def test_a_refused_request_writes_nothing(client: httpx.AsyncClient, db: Database) -> None:
    await client.post("/timer", json={"seconds": "1", "url": URL})
    await client.post("/timer", json={"hours": 10**6, "url": URL})
    assert await db.timers.counts() == {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(
        st.sampled_from(["hours", "minutes", "seconds", "url", "extra"]), json_values, max_size=5
    )
)
async def test_no_body_produces_a_server_error(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post(
        "/timer", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["errors"]


# Any character (NUL and lone surrogates too) and any float (infinities too).
wild_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(st.characters(), max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    options=st.dictionaries(
        st.sampled_from(["payload", "headers", "timeout_seconds", "max_attempts", "delivery"]),
        wild_values,
        max_size=3,
    )
)
async def test_no_delivery_option_produces_a_server_error(
    client: httpx.AsyncClient, options: dict[str, Any]
) -> None:
    body = {"seconds": 1, "url": URL, **options}
    response = await client.post(
        "/timer", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        fields = {e["field"].split(".")[0] for e in response.json()["errors"]}
        assert fields <= set(options), response.text


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('"\\u0000"', "NUL"),
        ('{"k\\u0000": 1}', "NUL"),
        ('"\\ud800"', "surrogates"),
        ("1e999", "finite"),
        ("[" * 40 + "]" * 40, "deeper than 32"),
        ("[" * 5000 + "]" * 5000, ""),
    ],
)
async def test_payloads_postgres_cannot_store_are_refused(
    client: httpx.AsyncClient, raw: str, reason: str
) -> None:
    body = f'{{"seconds": 1, "url": "{URL}", "payload": {raw}}}'
    response = await client.post(
        "/timer", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert reason in response.text


async def test_priority_and_resources_are_stored_and_shown(client: httpx.AsyncClient) -> None:
    body = {"url": URL, "priority": 9, "resources": ["disk", "camera:1", "disk", "a.b_c-d"]}
    created = (await client.post("/timer", json=body)).json()
    shown = (await client.get(f"/timer/{created['id']}")).json()
    assert shown["priority"] == 9
    assert shown["resources"] == ["a.b_c-d", "camera:1", "disk"]  # sorted, distinct
    assert shown["waiting_on"] is None
    plain = (await client.post("/timer", json={"url": URL, "resources": []})).json()
    shown = (await client.get(f"/timer/{plain['id']}")).json()
    assert (shown["priority"], shown["resources"]) == (5, None)
    listed = (await client.get("/timer")).json()["items"]
    assert sorted((i["priority"], i["resources"] is None) for i in listed) == [
        (5, True),
        (9, False),
    ]


async def test_an_idempotency_key_matches_a_body_that_spells_out_the_defaults(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "same"}
    first = await client.post("/timer", json={"url": URL}, headers=headers)
    again = await client.post(
        "/timer", json={"url": URL, "priority": 5, "resources": None}, headers=headers
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = await client.post("/timer", json={"url": URL, "priority": 6}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]


@pytest.mark.parametrize(("key", "why"), [("", "at least 1"), ("k" * 256, "at most 255")])
async def test_an_idempotency_key_outside_1_to_255_characters_is_refused_naming_it(
    client: httpx.AsyncClient, key: str, why: str
) -> None:
    refused = await client.post("/timer", json={"url": URL}, headers={"Idempotency-Key": key})
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["errors"]
    assert error["field"] == "idempotency-key" and why in error["reason"], error
    listed = (await client.get("/timer")).json()["items"]
    assert listed == []  # nothing was written
