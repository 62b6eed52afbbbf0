"""Typed rows: everything that leaves db/ is one of these, never a bare dict."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from core.states import DEAD_LETTER_STATES, TimerState
from core.timing import time_left

Delivery = Literal["at_least_once", "at_most_once"]


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """How one timer is to be sent, as both ways of writing a new row (``timer_insert`` and
    the batch's COPY, db/bulk.py) store it: the defaults are these, written once.

    ``payload`` and ``headers`` are JSON text, stored as jsonb.
    """

    payload: str | None = None
    headers: str | None = None
    timeout_ms: int | None = None
    max_attempts: int = 8
    delivery: Delivery = "at_least_once"
    priority: int = 5
    resources: tuple[str, ...] | None = None
    request_id: str | None = None  # the X-Request-ID of the create
    tenant: str = "default"  # the tenant of the API key that created it
    # an absolute due time (Unix milliseconds, from ``at``) instead of the delay
    at_ms: int | None = None
    # an SLA window: sent at any moment from the due time to this many milliseconds after it
    window_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CreatedTimer:
    """A timer just inserted: what POST /timer answers."""

    id: uuid.UUID
    due_at: datetime
    time_left: int


@dataclass(frozen=True, slots=True)
class Timer:
    """One stored timer, as GET /timer/{id} reads it."""

    id: uuid.UUID
    state: TimerState
    due_at: datetime
    run_at: datetime
    url: str
    attempts: int
    created_at: datetime
    fired_at: datetime | None
    finished_at: datetime | None
    last_status: int | None
    last_error: str | None
    read_at: datetime  # the database clock when it was read: time_left counts from it
    max_attempts: int
    round_start: int
    delivery: Delivery
    payload: Any
    headers: dict[str, str] | None
    timeout_ms: int | None
    priority: int
    resources: list[str] | None
    waiting_on: str | None
    request_id: str | None = None
    tenant: str = "default"
    series_id: uuid.UUID | None = None  # the series of an occurrence (null: a one-shot)
    occurrence: int | None = None
    deadline_at: datetime | None = None  # the end of its SLA window (null: exact)
    has_deps: bool = False  # it waits for other timers (``after``)

    @property
    def time_left(self) -> int:
        """The contract's time_left when it was read."""
        return time_left(self.due_at, self.read_at)


@dataclass(frozen=True, slots=True)
class TimerSummary:
    """One timer in a listing."""

    id: uuid.UUID
    state: TimerState
    due_at: datetime
    run_at: datetime
    url: str
    attempts: int
    max_attempts: int
    fired_at: datetime | None
    finished_at: datetime | None
    last_status: int | None
    last_error: str | None
    priority: int
    resources: list[str] | None
    tenant: str = "default"
    series_id: uuid.UUID | None = None
    occurrence: int | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded attempt to send a timer."""

    attempt: int
    at: datetime
    status: int | None
    latency_ms: float | None
    error: str | None
    dispatcher: str


@dataclass(frozen=True, slots=True)
class RequeueFilter:
    """Which dead letters a bulk requeue takes: by state, URL prefix and when they ended."""

    states: tuple[TimerState, ...] = DEAD_LETTER_STATES
    url_prefix: str | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class RequeueResult:
    """What a requeue of one timer found: its state before, and whether it was requeued."""

    found: TimerState
    requeued: bool


@dataclass(frozen=True, slots=True)
class DueKey:
    """A (slot, shard) claim key with pending rows due."""

    slot: datetime
    shard: int


@dataclass(slots=True)
class ClaimedTimer:
    """A row leased to this dispatcher, to be sent at run_at."""

    id: uuid.UUID
    bucket: datetime
    url: str
    run_at: datetime
    attempts: int
    max_attempts: int
    round_start: int
    delivery: Delivery
    payload: str | None  # JSON text
    headers: dict[str, str] | None
    timeout_ms: int | None
    db_now: datetime
    priority: int = 5
    resources: list[str] | None = None
    request_id: str | None = None
    tenant: str = "default"
    series_id: uuid.UUID | None = None  # the series of an occurrence (null: a one-shot)
    occurrence: int | None = None
    # The fencing token of this lease: every record, release and renewal must name it.
    lease_token: int = 0

    @property
    def attempts_left(self) -> int:
        """Attempts this round still allows after the one being made now."""
        return self.max_attempts - (self.attempts - self.round_start)


@dataclass(frozen=True, slots=True)
class Claim:
    """Rows leased by one claim, and the local monotonic instant at which the database had
    answered (before the commit): with each row's ``db_now`` it maps the database clock onto
    this process's clock, erring late, never early."""

    rows: list[ClaimedTimer]
    answered_at: float


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one send ended in, to be recorded; state pending means a retry ``retry_in``
    seconds after the database's now at the time it is recorded."""

    id: uuid.UUID
    bucket: datetime
    state: TimerState
    status: int | None
    error: str | None
    fired_at: datetime
    latency_ms: float | None = None
    retry_in: float | None = None
    held: bool = False  # the row held resources, released when this is recorded
    token: int = 0  # the lease's fencing token (ClaimedTimer.lease_token)


@dataclass(frozen=True, slots=True)
class ReapedLease:
    """An in-flight row put back to pending, and the owner it was taken from."""

    id: uuid.UUID
    lease_owner: str


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a dispatcher's heartbeat found (``lease_renew``): whether it is still registered
    as alive (False: a peer declared it dead), which of the leases it named are still its
    own, and how many rows leased to it but not named it gave back unsent."""

    alive: bool
    owned: list[uuid.UUID]
    given_back: int


@dataclass(frozen=True, slots=True)
class RevocationState:
    """Where one revocation stands: the owner's answer ('dropped', 'sending', or None while
    it has not answered), the timer's state, and whether it is still in flight under the
    revoked lease."""

    id: uuid.UUID
    answer: str | None
    state: TimerState
    held: bool

    @property
    def settled(self) -> bool:
        """Whether its fate is known: answered, or no longer held under that lease."""
        return self.answer is not None or not self.held

    @property
    def sent(self) -> bool:
        """Whether its request went out (or may have): anything but dropped unsent."""
        return not (self.answer == "dropped" or self.state == "cancelled")


@dataclass(frozen=True, slots=True)
class PeerBeat:
    """A registered dispatcher that has not stopped: its last heartbeat as the registry holds
    it (compared for change only, never for age), and whether that is recent by the database
    clock (the claims' split of the keys counts only those); or one that stopped a moment ago
    (``stopped``)."""

    id: str
    heartbeat_at: datetime
    fresh: bool
    host: str = ""
    pid: int = 0
    pidns: str | None = None  # the PID namespace it runs in (None: not known)
    stopped: bool = False  # stopped (or declared dead) within dead_after: it may have left rows


@dataclass(frozen=True, slots=True)
class Dispatcher:
    """A registry row."""

    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    in_flight: int
    sent_total: int
    failed_total: int
    alive: bool


@dataclass(frozen=True, slots=True)
class BacklogStep:
    """Pending timers due in one step of the histogram."""

    at: datetime
    pending: int


@dataclass(frozen=True, slots=True)
class Overdue:
    """Pending timers already due, the age of the oldest, and rows in flight."""

    overdue: int
    oldest_age_seconds: float | None
    in_flight: int


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel found: the timer's state before, and whether this call cancelled it."""

    found: TimerState
    cancelled: bool
    dependents: bool = False  # other timers wait for it (``after``)
    # in flight: the token of the lease whose claim this cancel revoked (its owner answers)
    revoke_token: int | None = None


@dataclass(frozen=True, slots=True)
class IdempotentCreate:
    """A keyed create: the timer, whether an earlier request made it, and whether that
    earlier request had a different body (the key was reused)."""

    timer_id: uuid.UUID
    replayed: bool
    conflict: bool


@dataclass(frozen=True, slots=True)
class BatchCreate:
    """A batch create: its timers in request order; whether an earlier request with the same
    key made them (then ``conflict``: that request's body differed, and no timers)."""

    timers: list[CreatedTimer]
    replayed: bool
    conflict: bool


@dataclass(frozen=True, slots=True)
class Circuit:
    """A target host's circuit: open until ``open_until`` after ``failures`` failures."""

    host: str
    open_until: datetime
    failures: int
    reason: str
    opened_by: str
    opened_at: datetime
    open: bool
    seconds_left: float


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as listed (never the key itself, which is shown once at creation)."""

    id: str
    tenant: str
    admin: bool
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ValidKey:
    """A valid key as stored (its SHA-256) and whom it speaks for."""

    key_hash: str
    id: str
    tenant: str
    admin: bool


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant's quotas and signing secret (None: no limit, or the global setting)."""

    name: str
    max_pending: int | None = None
    creates_per_minute: int | None = None
    max_payload_bytes: int | None = None
    signing_secret: str | None = None


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    """A create refused by a tenant's quota: which quota, why, and when to retry."""

    quota: str
    reason: str
    retry_after: int
