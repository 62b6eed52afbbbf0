-- 0011: fencing (docs/architecture.md, "The claim protocol").

-- The fencing token of the current lease: every claim sets it one higher, and nothing else
-- changes it, so a lease's outcome is recorded only by the claim that made it. The attempt
-- count cannot serve: a row given back unsent counts its attempt down again.
alter table timers add column lease_token bigint not null default 0;

-- Set when a peer declared this dispatcher dead (its heartbeat seen unchanged for
-- dead_after_seconds by a live observer) and took its leases over; with stopped_at set too.
-- The dispatcher learns it at its next heartbeat, drops what it holds and registers again.
alter table dispatchers add column declared_dead_at timestamptz;
-- The PID namespace of the process (the inode of /proc/self/ns/pid), with host and pid: a
-- peer on the same host and namespace whose process no longer exists is dead at once.
alter table dispatchers add column pidns text;

-- Send outcomes not recorded because their lease had been taken over (a stale token).
alter table send_totals add column stale bigint not null default 0;

-- A claim revoked before its request went out: a cancel, a pause or a DELETE of a series met
-- a row a dispatcher had claimed ahead of its instant. The owner hears of it at once
-- (NOTIFY timerhook_revoke) and answers: 'dropped' (never sent; the timer is cancelled with
-- the reason given) or 'sending' (its request had gone out). The request that revoked waits
-- for the answer, a bounded while. Kept a day (partition maintenance purges older ones).
create table revocations (
    timer_id     uuid        not null,
    bucket       timestamptz not null,
    token        bigint      not null,
    owner        text        not null,
    -- the cancelled timer's last_error ('skipped: the series was paused'); null for none
    reason       text,
    requested_at timestamptz not null default now(),
    answer       text        check (answer in ('dropped', 'sending')),
    primary key (timer_id, bucket, token)
);

-- Revokes the claims of in-flight rows (id, bucket, lease token, owner): notes each one and
-- tells its owner (NOTIFY timerhook_revoke, 'owner id token'), who drops the row unsent
-- (cancelled, with ``why`` as its last_error) or answers that its request went out. A
-- revocation noted already is not noted or told again. Returns how many were made.
create function timerhook_revoke(ids uuid[], buckets timestamptz[], tokens bigint[],
                                 owners text[], why text) returns integer
language sql volatile as $$
    with made as (
        insert into revocations (timer_id, bucket, token, owner, reason)
        select r.id, r.bucket, r.token, r.owner, why
        from unnest(ids, buckets, tokens, owners) as r(id, bucket, token, owner)
        on conflict do nothing
        returning owner, timer_id, token
    )
    select count(*)::integer
    from (select pg_notify('timerhook_revoke', owner || ' ' || timer_id || ' ' || token)
          from made) as told
$$;
