"""Loads the named SQL blocks of db/queries/*.sql once, by name (``-- name: noun_verb``)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


class UnknownQuery(KeyError):
    """No named query by that name in db/queries/."""


def _parse(text: str) -> dict[str, str]:
    """Splits a query file into {name: sql}; a block runs from its name line to the next."""
    blocks: dict[str, str] = {}
    marks = list(_NAME.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[mark.end() : end].strip()
        blocks[mark.group(1)] = body.rstrip(";").strip()
    return blocks


@cache
def _all() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in resources.files("db").joinpath("queries").iterdir():
        if entry.name.endswith(".sql"):
            for name, sql in _parse(entry.read_text()).items():
                if name in found:
                    raise ValueError(f"query {name!r} is defined twice")
                found[name] = sql
    return found


def query(name: str) -> LiteralString:
    """The SQL of the named query; the text comes from files shipped with the package."""
    try:
        return _all()[name]
    except KeyError:
        raise UnknownQuery(name) from None


def names() -> list[str]:
    """Every query name, for tests that check each one at least parses."""
    return sorted(_all())
