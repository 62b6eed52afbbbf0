-- Named queries for idempotent creates.

-- name: idempotency_lock
-- Serialises requests that carry the same key until the end of the transaction, so that
-- concurrent retries of one request create one timer.
select pg_advisory_xact_lock(hashtext('timerhook.idempotency'), hashtext(%(key)s));

-- name: idempotency_get
-- What an earlier request with this key created, if any (timer_ids: a batch's timers).
select fingerprint, timer_id, timer_ids from idempotency_keys where key = %(key)s;

-- name: idempotency_record
-- Remembers the timer a keyed request created (%(timer_ids)s: every timer of a batch, or
-- null).
insert into idempotency_keys (key, fingerprint, timer_id, timer_ids)
values (%(key)s, %(fingerprint)s, %(timer_id)s, %(timer_ids)s::uuid[]);

-- name: idempotency_purge
-- Forgets keys older than the window.
delete from idempotency_keys
where created_at < coalesce(%(now)s::timestamptz, now()) - %(hours)s * interval '1 hour';
