"""TimerCreate refuses what the contract does not allow (the API turns this into 422)."""

from __future__ import annotations

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
