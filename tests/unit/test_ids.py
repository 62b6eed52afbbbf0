"""Bucket, partition and id math: pure functions, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from core.ids import (
    bucket_of,
    bucket_of_ms,
    due_at_of,
    due_ms_of,
    lock_key,
    new_timer_ids,
    parse_timer_id,
    partition_of,
)


def make_v7(due_ms: int, rand: int = 0x123456789ABCDEF) -> uuid.UUID:
    value = (due_ms << 80) | (0x7 << 76) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


@pytest.mark.parametrize(
    ("due_ms", "bucket_s"),
    [
        (1_795_000_000_000, 1_795_000_000),  # exactly on a second: that second
        (1_795_000_000_001, 1_795_000_001),  # 1 ms past: the next second, never early
        (1_795_000_000_999, 1_795_000_001),
        (1_795_000_001_000, 1_795_000_001),
    ],
)
def test_bucket_is_the_whole_second_at_or_after_the_due_time(due_ms: int, bucket_s: int) -> None:
    assert bucket_of_ms(due_ms) == datetime.fromtimestamp(bucket_s, tz=UTC)
    assert bucket_of_ms(due_ms).timestamp() * 1000 >= due_ms


def test_the_id_carries_its_due_time_and_bucket() -> None:
    timer_id = make_v7(1_795_000_000_500)
    assert due_ms_of(timer_id) == 1_795_000_000_500
    assert bucket_of(timer_id) == datetime.fromtimestamp(1_795_000_001, tz=UTC)


def test_partition_is_named_by_the_utc_day_of_the_bucket() -> None:
    assert partition_of(datetime(2026, 11, 23, 23, 59, 59, tzinfo=UTC)) == "timers_p20261123"
    assert partition_of(datetime(2026, 11, 24, 0, 0, 0, tzinfo=UTC)) == "timers_p20261124"


@pytest.mark.parametrize(
    "text",
    [
        "not-a-uuid",
        "",
        # a version 4 id never came from us (a fixed one: xdist's workers collect alike)
        "5f0c2a8e-3b1d-4c7e-9a2f-6d8b1e4c7a90",
        str(make_v7(5)),  # a time before 2000: not a timer of ours
        "01a208e8-fcba-7d11-90dc-a8ad9908650",  # one digit short
    ],
)
def test_ids_that_cannot_be_ours_are_refused_without_a_query(text: str) -> None:
    assert parse_timer_id(text) is None


def test_a_v7_id_with_a_plausible_time_is_accepted() -> None:
    timer_id = make_v7(1_795_000_000_500)
    assert parse_timer_id(str(timer_id)) == timer_id


def test_lock_keys_differ_per_shard_and_per_second() -> None:
    slot = datetime.fromtimestamp(1_795_000_000, tz=UTC)
    keys = {lock_key(slot, s) for s in range(1024)}
    later = datetime.fromtimestamp(1_795_000_001, tz=UTC)
    assert len(keys) == 1024
    assert lock_key(later, 0) not in keys
    assert max(keys) < 2**63


def test_ids_made_for_copy_have_the_shape_of_timerhook_id() -> None:
    """new_timer_ids, the twin of the SQL timerhook_id: the due time in the first 48 bits,
    version 7, the RFC 4122 variant, and the other 74 bits random (so never repeated)."""
    due = [1_764_000_000_123, 1_764_000_000_999, 1_764_000_001_000] * 1000
    ids = new_timer_ids(due)
    assert [due_ms_of(i) for i in ids] == due
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert all(parse_timer_id(str(i)) == i for i in ids)
    assert len(set(ids)) == len(ids)
    random_bits = {i.int & ((1 << 62) - 1) for i in ids}
    assert len(random_bits) == len(ids)
    assert due_at_of(ids[1]) == datetime(2025, 11, 24, 16, 0, 0, 999000, tzinfo=UTC)
    assert bucket_of(ids[2]) == datetime(2025, 11, 24, 16, 0, 1, tzinfo=UTC)
