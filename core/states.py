"""The timer states and their legal transitions, defined once.

schema.sql's ``timers_state_check`` lists the same states (a test compares them with the
catalog), the API's ``status`` field is this ``TimerState`` (a test compares the OpenAPI
enum), and a test records every transition the real queries make and checks each one is in
``TRANSITIONS``. The claim protocol that moves rows between them is in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

TimerState = Literal["pending", "inflight", "delivered", "failed", "dead", "cancelled"]

# pending:   waiting for run_at (the first send, a retry, or its turn: a cap, a resource or
#            an open circuit holds it back); the only state the claim queries read.
# inflight:  leased to one dispatcher (lease_owner, lease_until): being sent, or waiting in
#            that dispatcher for its instant or for a per-host slot.
# delivered: the target answered 2xx. Final.
# failed:    a failure retrying cannot fix (4xx but 408/429, a refused target, an
#            at_most_once send whose outcome was lost), or a dependency (``after``) that
#            ended failed, dead or cancelled. Final until requeued.
# dead:      retryable failures used up max_attempts. Final until requeued.
# cancelled: called off by its client while pending, or while claimed and not yet sent (the
# claim revoked, its dispatcher dropped it). Final.
TIMER_STATES: tuple[TimerState, ...] = (
    "pending", "inflight", "delivered", "failed", "dead", "cancelled",
)  # fmt: skip

# Which state may follow which, and what moves it (the named query in db/queries/).
TRANSITIONS: dict[tuple[TimerState, TimerState], str] = {
    ("pending", "inflight"): "bucket_claim, timer_claim_ranked, timer_claim_held",
    ("pending", "cancelled"): "timer_cancel, schedule_cancel, schedule_set_state (a pause), "
    "occurrence_skip (coalesced)",
    ("pending", "failed"): "deps_resolve (a dependency ended failed, dead or cancelled)",
    ("inflight", "delivered"): "timer_record",
    ("inflight", "failed"): "timer_record (final failure), lease_reap (at_most_once lost)",
    ("inflight", "dead"): "timer_record (out of attempts)",
    ("inflight", "pending"): "timer_record (retry), lease_release, lease_take_back, lease_renew "
    "(a lease it does not hold, run out), lease_reap",
    ("inflight", "cancelled"): "revocation_answer (dropped unsent), timer_record (a deleted or "
    "paused series' occurrence not retried), lease_reap (a revoked claim)",
    ("dead", "pending"): "timer_requeue, timers_requeue",
    ("failed", "pending"): "timer_requeue, timers_requeue",
}

DeadLetterState = Literal["dead", "failed"]

# States no dispatcher will move on its own.
FINAL_STATES: frozenset[TimerState] = frozenset({"delivered", "failed", "dead", "cancelled"})
# The final states of a dependency (``after``) that fail its dependents (deps.sql's
# ``deps_resolve`` says the same for dependencies that end later).
FAILING_DEPENDENCY_STATES: frozenset[TimerState] = frozenset({"failed", "dead", "cancelled"})
# The dead letters: what a requeue takes.
DEAD_LETTER_STATES: tuple[DeadLetterState, ...] = ("dead", "failed")


def legal(before: TimerState, after: TimerState) -> bool:
    """Whether a row may move from ``before`` to ``after`` (staying put is always legal)."""
    return before == after or (before, after) in TRANSITIONS


def dependency_verdict(
    deps: Sequence[tuple[object, TimerState]],
) -> tuple[tuple[object, TimerState] | None, int]:
    """What a new timer's dependencies (id, state) make of it: the first that ended in a
    failing state (the timer fails at once, naming it), and how many are not delivered yet
    (while any is not, the timer is blocked)."""
    failure = next((d for d in deps if d[1] in FAILING_DEPENDENCY_STATES), None)
    return failure, sum(1 for d in deps if d[1] != "delivered")


def parse_states(
    texts: Iterable[str], allowed: Sequence[TimerState] = TIMER_STATES
) -> list[TimerState]:
    """States given as text, each comma separated or not ("dead,failed"), in order and without
    repeats; raises ValueError naming the first one that is not allowed."""
    states: list[TimerState] = []
    for text in (part.strip() for item in texts for part in item.split(",")):
        state = next((s for s in allowed if s == text), None)
        if state is None:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        if state not in states:
            states.append(state)
    return states
