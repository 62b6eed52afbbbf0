"""Dispatchers: claim due buckets, send the webhooks, record what happened.

The claim protocol
==================

A timer row is ``pending``, ``inflight``, ``delivered``, ``failed``, ``dead`` or ``cancelled``.
``pending`` rows wait for their ``run_at`` (the due time, or a retry's time); they are the only
rows in the partial index ``timers_pending_idx (slot, shard, run_at)``, so finding due work
costs the same however much history the partitions keep. ``inflight`` rows are leased: they
carry ``lease_owner`` (a dispatcher id) and ``lease_until``. The other four are final (a
requeue makes a ``dead`` or ``failed`` row ``pending`` again) and stay until their daily
partition is dropped after the retention period. Every send is also written to
``timer_attempts`` (when, status, latency, error, which dispatcher).

Every dispatcher ticks once a second (APScheduler). A tick wakes the drain loop, which asks for
the oldest (slot, shard) keys due by the database clock plus a lookahead of a tick and 1.5 s,
and claims each key in a short transaction: ``pg_try_advisory_xact_lock`` on the key (another
dispatcher holding it is skipped, not waited for), then one UPDATE that moves up to a batch of
the key's pending rows to ``inflight`` with a lease, and COMMIT, which releases the lock. No
transaction is ever open while a webhook is being sent.

Each claimed row carries the database's ``clock_timestamp()`` as it was produced, and the claim
notes the local monotonic clock as the rows arrive, before the COMMIT (whose flush to disk can
take tens of milliseconds). Each row is then sent at the monotonic instant that corresponds to
its ``run_at`` on the database clock, computed so that it is never early (the database clock is
read before the rows arrive, so the local estimate errs late, by well under a millisecond), and
the wait for it is checked against the clock (``sleep_until``), because a timer on uvloop can
fire up to a millisecond early. Outcomes are recorded in batches by a recorder task, each
UPDATE guarded by ``state = 'inflight' and lease_owner = me``.

What happens on each failure:

- The target answers non-2xx or the network fails: the retry policy (``dispatcher.retry``)
  decides. A retryable failure (network error, timeout, 408, 429, 5xx) with attempts left in
  the round is recorded ``pending`` with a later ``run_at`` and the ``slot`` of that second: the
  retry is claimed like any timer, under the same caps and shards, from the same partition.
  Out of attempts, it is ``dead``; any other answer is ``failed`` at once.
- The dispatcher dies (SIGKILL, OOM, power): its rows stay ``inflight``. Its heartbeat goes
  stale, and after ``dead_after_seconds`` any other dispatcher's reaper returns them to
  ``pending``; failing that, the lease itself runs out after ``lease_seconds``. A row that was
  sent but not yet recorded is then sent again: that is the one window for a duplicate, and
  receivers dedupe on the ``Idempotency-Key`` header (the timer id). An ``at_most_once`` row is
  not sent again: the reaper records it ``failed`` ("outcome unknown"), so that window loses
  the call instead (it may or may not have gone out). Either way the reaper writes the attempt.
- The dispatcher is stopped with SIGTERM: it stops claiming, gives back rows it had claimed
  but not started sending (``lease_release``), waits up to ``shutdown_grace_seconds`` for sends
  in progress, records them, and deregisters. A send still running after the grace period keeps
  its lease and is reaped at once because the owner is marked stopped.
- The database is unreachable: claims and records are retried with backoff (tenacity); rows
  whose outcome cannot be recorded keep their lease and are reaped later (sent again).
- Two dispatchers race for one key: the advisory lock lets one in; the other moves on. Rows
  are additionally taken ``FOR UPDATE SKIP LOCKED`` so that a concurrent cancel never blocks a
  claim.
"""
