"""The named-query loader."""

from __future__ import annotations

import pytest

from db.query_loader import UnknownQuery, _parse, names, query


def test_blocks_split_on_name_lines() -> None:
    text = "-- header\n-- name: a_get\nselect 1;\n\n-- name: b_put\n-- why\nselect 2;\n"
    assert _parse(text) == {"a_get": "select 1", "b_put": "-- why\nselect 2"}


def test_every_query_is_named_noun_verb_and_loads() -> None:
    for name in names():
        assert "_" in name
        assert query(name).strip()


def test_an_unknown_name_is_an_error() -> None:
    with pytest.raises(UnknownQuery):
        query("nothing_here")
