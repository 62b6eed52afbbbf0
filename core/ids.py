"""Timer ids carry their due time: a UUIDv7 shape whose first 48 bits are Unix milliseconds.

Pure functions, no database: the API uses them to route a lookup to one partition and to
refuse ids that cannot be ours without a query.
"""

from __future__ import annotations

import math
import os
import uuid
from datetime import UTC, datetime, timedelta

_EARLIEST_MS = 946_684_800_000  # 2000-01-01: no timer id is older than the project
_LATEST_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z: the last second timestamptz names
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timer_id(text: str) -> uuid.UUID | None:
    """The id if ``text`` is a timerhook id (version 7, RFC 4122 variant, plausible time)."""
    return _parse(text, 7)


def parse_series_id(text: str) -> uuid.UUID | None:
    """The id if ``text`` is a recurring timer's (series) id: shaped like a timer id, with
    version 8 in place of 7, so that a lookup knows which table to read without a query."""
    return _parse(text, 8)


def _parse(text: str, version: int) -> uuid.UUID | None:
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    if value.version != version or value.variant != uuid.RFC_4122:
        return None
    if not _EARLIEST_MS <= due_ms_of(value) <= _LATEST_MS:
        return None
    return value


def new_series_id(first_ms: int) -> uuid.UUID:
    """A new series id: its first occurrence's due time in the first 48 bits, version 8, the
    RFC 4122 variant, 74 random bits."""
    noise = int.from_bytes(os.urandom(10), "big") & _RANDOM_MASK
    return uuid.UUID(int=(first_ms << 80) | noise | (0x8 << 76) | (0x2 << 62))


def due_ms_of(timer_id: uuid.UUID) -> int:
    """The due time, in Unix milliseconds, that the id's leading 48 bits hold."""
    return timer_id.int >> 80


def due_at_of(timer_id: uuid.UUID) -> datetime:
    """The due time that the id holds, to the millisecond."""
    return EPOCH + timedelta(milliseconds=due_ms_of(timer_id))


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


def new_timer_ids(due_ms: list[int]) -> list[uuid.UUID]:
    """New ids for timers due at these Unix milliseconds: the twin of the SQL function
    ``timerhook_id`` (db/schema.sql), for rows written by COPY, where no SQL function runs.
    The due time in the first 48 bits, version 7, the RFC 4122 variant, 74 random bits."""
    noise = os.urandom(10 * len(due_ms))
    return [
        uuid.UUID(
            int=(ms << 80)
            | (int.from_bytes(noise[10 * i : 10 * i + 10], "big") & _RANDOM_MASK)
            | _VERSION_VARIANT
        )
        for i, ms in enumerate(due_ms)
    ]


_LOW_80 = (1 << 80) - 1
# Of the low 80 bits: the 4 version bits (7) and the 2 variant bits (binary 10) are fixed.
_VERSION_VARIANT = (0x7 << 76) | (0x2 << 62)
_RANDOM_MASK = _LOW_80 & ~((0xF << 76) | (0x3 << 62))
