"""TimerCreate refuses what the contract does not allow (the API turns this into 422)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from api.schemas import TimerCreate

URL = "https://someserver.com"


def test_the_contract_example_is_accepted() -> None:
    body = TimerCreate.model_validate_json(
        '{"hours": 4, "minutes": 0, "seconds": 1, "url": "https://someserver.com"}'
    )
    assert body.delay_seconds == 14401
    assert body.url == URL


def test_the_url_is_kept_exactly_as_given() -> None:
    url = "https://Example.com:8443/a/b?c=d#e"
    assert TimerCreate.model_validate({"seconds": 1, "url": url}).url == url


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hours": "4", "url": URL}, "hours"),
        ({"minutes": 1.0, "url": URL}, "minutes"),
        ({"seconds": 1.5, "url": URL}, "seconds"),
        ({"seconds": True, "url": URL}, "seconds"),
        ({"seconds": None, "url": URL}, "seconds"),
        ({"seconds": -1, "url": URL}, "seconds"),
        ({"seconds": 1}, "url"),
        ({"seconds": 1, "url": "ftp://x.org/f"}, "url"),
        ({"seconds": 1, "url": "/relative"}, "url"),
        ({"seconds": 1, "url": "https://"}, "url"),
        ({"seconds": 1, "url": " https://x.org"}, "url"),
        ({"seconds": 1, "url": "https://x.org/a b"}, "url"),
        ({"seconds": 1, "url": "https://x.org/" + "a" * 2040}, "url"),
        ({"seconds": 1, "url": 42}, "url"),
        ({"seconds": 1, "url": URL, "minuts": 3}, "minuts"),
    ],
)
def test_refused_bodies_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TimerCreate.model_validate_json(__import__("json").dumps(body))
    fields = {str(e["loc"][0]) for e in caught.value.errors()}
    assert field in fields


def test_a_url_of_exactly_2048_characters_is_accepted() -> None:
    url = "https://x.org/" + "a" * (2048 - len("https://x.org/"))
    assert len(url) == 2048
    assert TimerCreate.model_validate({"seconds": 1, "url": url}).url == url


def test_compact_json_counts_nesting_outside_strings_only() -> None:
    from api.schemas import MAX_PAYLOAD_DEPTH, compact_json

    deepest = "[" * MAX_PAYLOAD_DEPTH + "0" + "]" * MAX_PAYLOAD_DEPTH
    assert compact_json(json.loads(deepest)) == deepest
    too_deep = "[" + deepest + "]"
    with pytest.raises(ValueError, match="deeper than 32"):
        compact_json(json.loads(too_deep))
    brackets = {"text": "[{" * 100, "escaped": '\\"[[[', "deep": json.loads(deepest)[0]}
    assert json.loads(compact_json(brackets)) == brackets
    with pytest.raises(ValueError, match="NUL"):
        compact_json({"a": ["x\x00y"]})
    assert (
        compact_json("a\\u0000 is six characters, not NUL")
        == '"a\\\\u0000 is six characters, not NUL"'
    )
    with pytest.raises(ValueError, match="finite"):
        compact_json([1.0, float("nan")])
    with pytest.raises(ValueError, match="surrogates"):
        compact_json(["\ud800"])
