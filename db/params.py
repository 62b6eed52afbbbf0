"""How statements take rows and arrays: the rows named by id and bucket (with a bucket range
that prunes partitions), and arrays as text literals joined in C."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime


def named_rows(rows: Sequence[tuple[uuid.UUID, datetime]]) -> dict[str, object]:
    """The parameters that name rows to a statement: their ids and buckets, and the range of
    the buckets as two scalars. A range of scalar parameters prunes partitions when the
    executor starts, which neither a join with the rows nor ``bucket = any(array)`` does, so
    a statement over a batch sets up only the partitions that hold it (one or two), not all
    of them (about 368 at the default horizon)."""
    buckets = [bucket for _, bucket in rows]
    return {
        "id": [timer_id for timer_id, _ in rows],
        "bucket": buckets,
        "first_bucket": min(buckets),
        "last_bucket": max(buckets),
    }


def array_literal(items: Iterable[str]) -> str:
    """A PostgreSQL array's text form from its elements' (already quoted where needed)."""
    return "{" + ",".join(items) + "}"


def number_or_null(value: float | None) -> str:
    return "NULL" if value is None else repr(value)


def quoted_or_null(text: str | None) -> str:
    if text is None:
        return "NULL"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
