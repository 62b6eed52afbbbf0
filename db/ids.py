"""Timer ids carry their due time: a UUIDv7 shape whose first 48 bits are Unix milliseconds.

Pure functions, no database: the API uses them to route a lookup to one partition and to
refuse ids that cannot be ours without a query.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

_EARLIEST_MS = 946_684_800_000  # 2000-01-01: no timer id is older than the project
_LATEST_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z: the last second timestamptz names


def parse_timer_id(text: str) -> uuid.UUID | None:
    """The id if ``text`` is a timerhook id (version 7, RFC 4122 variant, plausible time)."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    if value.version != 7 or value.variant != uuid.RFC_4122:
        return None
    if not _EARLIEST_MS <= due_ms_of(value) <= _LATEST_MS:
        return None
    return value


def due_ms_of(timer_id: uuid.UUID) -> int:
    """The due time, in Unix milliseconds, that the id's leading 48 bits hold."""
    return timer_id.int >> 80


def bucket_of_ms(due_ms: int) -> datetime:
    """The bucket of a due time: the whole second at or after it (never early)."""
    return datetime.fromtimestamp(math.ceil(due_ms / 1000), tz=UTC)


def bucket_of(timer_id: uuid.UUID) -> datetime:
    """The bucket (partition key) that the id names."""
    return bucket_of_ms(due_ms_of(timer_id))


def partition_of(bucket: datetime) -> str:
    """The daily partition that holds a bucket: ``timers_pYYYYMMDD`` by its UTC date."""
    return "timers_p" + bucket.astimezone(UTC).strftime("%Y%m%d")


def lock_key(slot: datetime, shard: int) -> int:
    """The advisory-lock key of a (slot, shard) claim key: epoch seconds * 1024 + shard."""
    return int(slot.timestamp()) * 1024 + shard
