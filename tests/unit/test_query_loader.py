"""The named-query loader."""

from __future__ import annotations

import pytest

from db.query_loader import UnknownQuery, _expand, _parse, names, query


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


def test_a_part_is_written_into_the_queries_that_use_it_at_their_indentation() -> None:
    text = (
        "-- part: lease\nset a = 1,\n    b = 2\n\n"
        "-- name: x_claim\nupdate t\n-- use: lease\nwhere true;\n\n"
        "-- name: y_claim\nwith c as (\n    update t\n    -- use: lease\n)\nselect 1;\n"
    )
    blocks = _parse(text)
    parts = {k[5:]: v for k, v in blocks.items() if k.startswith("part:")}
    assert parts == {"lease": "set a = 1,\n    b = 2"}
    assert (
        _expand(blocks["x_claim"], parts, "x_claim")
        == "update t\nset a = 1,\n    b = 2\nwhere true"
    )
    assert _expand(blocks["y_claim"], parts, "y_claim") == (
        "with c as (\n    update t\n    set a = 1,\n        b = 2\n)\nselect 1"
    )


def test_an_unknown_part_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown part 'nope'"):
        _expand("select 1\n-- use: nope\n", {}, "z_get")


def test_every_claim_takes_the_one_lease_and_row_shape() -> None:
    # the lease and the claimed row are written once (db/queries/timers.sql) and reach every
    # claim query whole
    for name in ("bucket_claim", "timer_claim_ranked", "timer_claim_capped", "timer_claim_held"):
        sql = query(name)
        assert "-- use:" not in sql
        assert sql.count("lease_token = t.lease_token + 1") == 1, name
        assert sql.count("t.priority, t.resources, t.request_id, t.tenant, t.series_id") == 1, name
