-- 0004: idempotent creates (Idempotency-Key on POST /timer).

-- One row per key used on a create: the request's fingerprint (a hash of its validated body)
-- and the timer it created. Kept 48 hours, then purged by the maintenance job.
create table idempotency_keys (
    key         text        primary key,
    fingerprint text        not null,
    timer_id    uuid        not null,
    created_at  timestamptz not null default now()
);
create index idempotency_keys_created_idx on idempotency_keys (created_at);
