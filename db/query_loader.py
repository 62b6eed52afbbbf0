"""Loads the named SQL blocks of db/queries/*.sql once, by name (``-- name: noun_verb``).

A block may also be a part (``-- part: name``): a piece of SQL that several queries share,
such as the lease a claim sets and the row it returns. A query takes a part in with a line
``-- use: name``, replaced by the part's text when the queries are loaded, so the shared
rule is written once and each query still reads (and is planned) as one statement. A part
is not a query of its own.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

_MARK = re.compile(r"^-- (name|part): (\w+)\s*$", re.MULTILINE)
_USE = re.compile(r"^([ \t]*)-- use: (\w+)[ \t]*$", re.MULTILINE)


class UnknownQuery(KeyError):
    """No named query by that name in db/queries/."""


def _parse(text: str) -> dict[str, str]:
    """Splits a query file into {name: sql}; a block runs from its name line to the next.
    Parts are kept under ``part:<name>``."""
    blocks: dict[str, str] = {}
    marks = list(_MARK.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[mark.end() : end].strip()
        key = mark.group(2) if mark.group(1) == "name" else f"part:{mark.group(2)}"
        blocks[key] = body.rstrip(";").strip()
    return blocks


def _expand(sql: str, parts: dict[str, str], name: str) -> str:
    """The query with each ``-- use: part`` line replaced by the part, at its indentation."""

    def used(match: re.Match[str]) -> str:
        part = parts.get(match.group(2))
        if part is None:
            raise ValueError(f"query {name!r} uses an unknown part {match.group(2)!r}")
        return "\n".join(match.group(1) + line if line else line for line in part.splitlines())

    return _USE.sub(used, sql)


@cache
def _all() -> dict[str, str]:
    found: dict[str, str] = {}
    parts: dict[str, str] = {}
    for entry in resources.files("db").joinpath("queries").iterdir():
        if entry.name.endswith(".sql"):
            for key, sql in _parse(entry.read_text()).items():
                into, name = (parts, key[5:]) if key.startswith("part:") else (found, key)
                if name in into:
                    raise ValueError(f"query or part {name!r} is defined twice")
                into[name] = sql
    return {name: _expand(sql, parts, name) for name, sql in found.items()}


def query(name: str) -> LiteralString:
    """The SQL of the named query; the text comes from files shipped with the package."""
    try:
        return _all()[name]
    except KeyError:
        raise UnknownQuery(name) from None


def names() -> list[str]:
    """Every query name, for tests that check each one at least parses."""
    return sorted(_all())
