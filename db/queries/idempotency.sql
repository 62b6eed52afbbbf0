-- Named queries for idempotent creates.

-- name: idempotency_lock
-- Serialises requests that carry the same key until the end of the transaction, so that
-- concurrent retries of one request create one timer.
select pg_advisory_xact_lock(hashtext('timerhook.idempotency'), hashtext(%(key)s));

-- name: idempotency_get
-- What an earlier request with this key created, if any.
select fingerprint, timer_id from idempotency_keys where key = %(key)s;

-- name: idempotency_record
-- Remembers the timer a keyed request created.
insert into idempotency_keys (key, fingerprint, timer_id) values (%(key)s, %(fingerprint)s, %(timer_id)s);

-- name: idempotency_purge
-- Forgets keys older than the window.
delete from idempotency_keys
where created_at < coalesce(%(now)s::timestamptz, now()) - %(hours)s * interval '1 hour';
