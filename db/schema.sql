-- timerhook: the whole current schema.
-- A fresh database is built from this file; an existing one reaches the same state through
-- db/migrations/NNNN_*.sql (tests/migration checks that both roads end in the same place).

-- The id of a timer is shaped like a UUIDv7: its leading 48 bits are the timer's due time in
-- Unix milliseconds, the rest (but for the version and variant bits) come from
-- gen_random_uuid(), so an id tells its partition and is still unguessable (74 random bits).
create function timerhook_id(due_ms bigint) returns uuid
language sql volatile parallel safe as $$
    select encode(set_byte(raw, 6, (get_byte(raw, 6) & 15) | 112), 'hex')::uuid  -- version 7
    from (select overlay(uuid_send(gen_random_uuid())
                         placing substring(int8send(due_ms) from 3) from 1 for 6) as raw) as r
$$;

-- The whole second at or after an instant: the bucket of a due time and the slot of a run
-- time (dispatchers claim by slot). Every query that sets a slot or a bucket calls it. A
-- stable SQL function of one expression: PostgreSQL inlines it into the calling statement,
-- so it costs what the expression written out cost.
create function timerhook_slot(at timestamptz) returns timestamptz
language sql stable parallel safe as $$
    select 'epoch'::timestamptz + ceil(extract(epoch from at)) * interval '1 second'
$$;

create table timers (
    id          uuid        not null,
    -- Partition key: the whole second at or after the timer's due time. Never changes, and
    -- is derived from the id, so a lookup by id prunes to one partition.
    bucket      timestamptz not null,
    -- The due time the client asked for, to the millisecond (rounded up: never early).
    due_at      timestamptz not null,
    -- When the next send is due (equal to due_at until a retry moves it on).
    run_at      timestamptz not null,
    -- The whole second at or after run_at: dispatchers claim by (slot, shard).
    slot        timestamptz not null,
    -- Splits a slot so that a herd due in one second is drained by several dispatchers.
    shard       smallint    not null default 0,
    url         text        not null,
    -- pending:   waiting for run_at (the first send or a retry); only these rows are in the
    --            partial index below.
    -- inflight:  leased by lease_owner until lease_until, being sent right now.
    -- delivered: the target answered 2xx.
    -- failed:    a failure that retrying cannot fix (a 4xx other than 408 and 429, a refused
    --            target, or an at_most_once call whose outcome is unknown).
    -- dead:      retryable failures used up max_attempts; listed as a dead letter.
    -- cancelled: a pending timer its client called off; never sent, never pending again.
    state       text        not null default 'pending',
    -- Sends so far, over the timer's whole life (a requeue does not reset it).
    attempts    integer     not null default 0,
    -- Attempts allowed per round; a round starts at creation and at every requeue.
    max_attempts integer    not null default 8,
    -- attempts when the current round began (0, or the count at the last requeue).
    round_start integer     not null default 0,
    -- at_least_once: a send whose outcome was lost (its dispatcher died) is sent again.
    -- at_most_once: such a send is never repeated; the timer ends failed instead.
    delivery    text        not null default 'at_least_once',
    -- Optional request shape: sent as {"id", "payload"}; extra headers; a per-timer timeout.
    payload     jsonb,
    headers     jsonb,
    timeout_ms  integer,
    lease_owner text,
    lease_until timestamptz,
    created_at  timestamptz not null default now(),
    fired_at    timestamptz,
    finished_at timestamptz,
    last_status integer,
    last_error  text,
    -- 1 to 10, higher first when more is due than may be sent now; 5 by default.
    priority    smallint    not null default 5,
    -- Named resources (sorted, distinct; null for none): two timers that share one are never
    -- in flight at the same time (see resource_holds).
    resources   text[],
    -- Why a due timer is not being sent yet (a resource, a host limit, an open circuit),
    -- written by the planner when it holds a row back; cleared when the row is claimed.
    waiting_on  text,
    -- The X-Request-ID of the create (given or generated): sent with every webhook as
    -- Timerhook-Request-Id and logged with every line about the timer.
    request_id  text,
    -- The tenant the timer belongs to ('default' for timers made without an API key).
    tenant      text        not null default 'default',
    -- The target URL's host, lower case, without brackets or port (as caps key it).
    host        text        not null default '',
    -- The series an occurrence row belongs to (null for a one-shot timer), and its number in
    -- the series (1 for the schedule's first time; skipped and coalesced times keep theirs).
    series_id   uuid,
    occurrence  integer,
    -- An SLA window's end: the timer may be sent at any moment from due_at to deadline_at
    -- (null: exactly at due_at). Until the window planner gives it an instant, its run_at is
    -- the deadline (and its slot that second), so the claims leave it to the planner; a row
    -- the planner never reached is still sent, at its deadline.
    deadline_at timestamptz,
    -- Whether other timers wait for this one (``after``): its recorded outcome resolves them.
    dependents  boolean     not null default false,
    -- The fencing token of the current lease: every claim sets it one higher, and nothing
    -- else changes it, so a lease's outcome is recorded only by the claim that made it (the
    -- attempt count cannot serve: a row given back unsent counts its attempt down again).
    lease_token bigint      not null default 0,
    primary key (id, bucket),
    constraint timers_state_check
        check (state in ('pending', 'inflight', 'delivered', 'failed', 'dead', 'cancelled')),
    constraint timers_delivery_check check (delivery in ('at_least_once', 'at_most_once')),
    constraint timers_attempts_check check (max_attempts >= 1 and round_start <= attempts),
    constraint timers_lease_check
        check ((state = 'inflight') = (lease_owner is not null and lease_until is not null)),
    constraint timers_slot_check check (slot >= bucket and run_at <= slot),
    constraint timers_priority_check check (priority between 1 and 10),
    constraint timers_resources_check
        check (resources is null or cardinality(resources) between 1 and 16),
    constraint timers_series_check check ((series_id is null) = (occurrence is null)),
    constraint timers_window_check check (deadline_at is null or deadline_at >= due_at)
) partition by range (bucket);

-- "What is due" reads only pending rows, however much delivered history the partitions hold.
-- Key claims take rows without resources; the resource pass reads its own index below.
create index timers_pending_idx on timers (slot, shard, run_at)
    where state = 'pending' and resources is null;
-- Under a binding cap due rows are taken by priority, then due time, across every key: one
-- short index range per priority. The predicate names priority so that only the queries
-- that rank (and say so) use it; the key claims keep timers_pending_idx.
create index timers_pending_rank_idx on timers (priority, run_at)
    where state = 'pending' and resources is null and priority >= 1;
-- The resource pass reads the pending rows that name resources, by slot.
create index timers_pending_held_idx on timers (slot, priority, run_at)
    where state = 'pending' and resources is not null;
-- Due rows of one capped tenant (and host): the capped pass reads them by priority, then
-- run_at; max-pending quotas count a tenant's pending rows here. The predicate names host
-- (always true) so that only the queries that say so use it; the key claims keep
-- timers_pending_idx.
create index timers_pending_scope_idx on timers (tenant, host, priority, run_at)
    where state = 'pending' and host >= '';
-- The lease reaper reads only in-flight rows.
create index timers_inflight_idx on timers (lease_until) where state = 'inflight';
-- Listing by state in id order (due order): GET /timer?status=dead, say, never walks the
-- delivered history to find the few dead letters.
create index timers_state_list_idx on timers (state, id);

-- A series' occurrence rows by due time: the schedule pass reads its unsent ones, GET its
-- last and next times, a cancel or pause its pending ones. Every row of a series has its
-- bucket at most a lookahead ahead of now (retries keep their bucket), so a bucket bound
-- prunes every later partition.
create index timers_series_idx on timers (series_id, due_at) where series_id is not null;

-- The window planner reads the pending windowed rows by deadline (earliest deadline first).
create index timers_window_idx on timers (deadline_at)
    where state = 'pending' and deadline_at is not null;

-- Every attempt to send a timer: when, the answer, how long it took, what went wrong. Kept in
-- the daily partition of the timer's bucket, so a timer's attempts are read from one
-- partition and dropped with it.
create table timer_attempts (
    timer_id    uuid             not null,
    bucket      timestamptz      not null,
    attempt     integer          not null,
    -- when the request went out (the database clock's estimate)
    at          timestamptz      not null,
    -- the HTTP status; null when none came (network error, timeout, refused target)
    status      integer,
    latency_ms  double precision,
    error       text,
    dispatcher  text             not null,
    primary key (timer_id, bucket, attempt)
) partition by range (bucket);

-- Creates the missing daily partitions of timers and timer_attempts for [first_day,
-- last_day]; returns how many days needed any. An attempt lives in the day of its timer's
-- bucket, so a day's two partitions are made and dropped together. Serialised by an advisory
-- lock so that processes starting together do not collide.
create function timerhook_partitions_ensure(first_day date, last_day date) returns integer
language plpgsql as $$
declare
    day date;
    parent text;
    made integer := 0;
    made_today boolean;
begin
    perform pg_advisory_xact_lock(hashtext('timerhook.partitions'));
    for day in select generate_series(first_day, last_day, interval '1 day')::date loop
        made_today := false;
        foreach parent in array array['timers', 'timer_attempts'] loop
            if to_regclass(format('%s_p%s', parent, to_char(day, 'YYYYMMDD'))) is null then
                execute format(
                    'create table %I partition of %I for values from (%L) to (%L)',
                    format('%s_p%s', parent, to_char(day, 'YYYYMMDD')), parent,
                    day::timestamp at time zone 'UTC',
                    (day + 1)::timestamp at time zone 'UTC');
                made_today := true;
            end if;
        end loop;
        if made_today then
            made := made + 1;
        end if;
    end loop;
    return made;
end
$$;

-- Drops the daily partitions (timers and their attempts) that ended before cutoff and hold no
-- pending or in-flight timer: this is how fired timers are purged, with no DELETE storm and
-- no bloat. Returns the names of the timers partitions dropped.
create function timerhook_partitions_drop(cutoff date) returns setof text
language plpgsql as $$
declare
    part record;
    busy boolean;
begin
    perform pg_advisory_xact_lock(hashtext('timerhook.partitions'));
    for part in
        select c.relname
        from pg_inherits i
        join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'timers'::regclass
          and c.relname ~ '^timers_p[0-9]{8}$'
          and to_date(substring(c.relname from 9), 'YYYYMMDD') < cutoff
        order by c.relname
    loop
        execute format('select exists (select 1 from %I where state in (''pending'', ''inflight''))',
                       part.relname) into busy;
        if not busy then
            execute format('drop table %I', part.relname);
            execute format('drop table if exists %I', 'timer_attempts_' || substring(part.relname from 8));
            return next part.relname;
        end if;
    end loop;
end
$$;

-- Every dispatcher process registers here; a stale heartbeat marks it dead.
create table dispatchers (
    id           text        primary key,
    host         text        not null,
    pid          integer     not null,
    started_at   timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    -- set when the dispatcher deregistered on a clean shutdown, or was declared dead
    stopped_at   timestamptz,
    -- set when a peer declared it dead (its heartbeat seen unchanged for dead_after_seconds
    -- by a live observer) and took its leases over; it learns so at its next heartbeat,
    -- drops what it holds and registers again
    declared_dead_at timestamptz,
    -- the PID namespace of the process (the inode of /proc/self/ns/pid), with host and pid:
    -- a peer on the same host and namespace whose process no longer exists is dead at once
    pidns        text,
    in_flight    integer     not null default 0,
    sent_total   bigint      not null default 0,
    failed_total bigint      not null default 0
);

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

-- One row per cap. scope is 'global', 'tenant:<name>' or 'host:<name>'. The bucket
-- holds one second of tokens plus one (so fractions of a token carry over) and refills
-- continuously at per_minute / 60 per second, so a cap of 6,000/min is a steady 100/s,
-- never 6,000 in the first second of a minute.
-- per_minute = 0 means no cap.
create table caps (
    scope      text             primary key,
    per_minute integer          not null check (per_minute >= 0),
    tokens     double precision not null default 0,
    updated_at timestamptz      not null default now(),
    -- When a take last granted fewer tokens than it asked for: the cap binds, and a due
    -- timer it applies to waits its turn (core.caps.cap_turn, the API's waiting_on).
    short_at   timestamptz
);

-- One row per key used on a create: the request's fingerprint (a hash of its validated body)
-- and the timer it created. Kept 48 hours, then purged by the maintenance job.
create table idempotency_keys (
    key         text        primary key,
    fingerprint text        not null,
    -- the timer a keyed create made (for a batch: its first)
    timer_id    uuid        not null,
    created_at  timestamptz not null default now(),
    -- every timer a keyed batch made, in request order (null for a single create)
    timer_ids   uuid[]
);
create index idempotency_keys_created_idx on idempotency_keys (created_at);

-- Who holds a named resource right now: one row per resource of a tenant (a name means the
-- same resource only within one tenant), so two timers that share one can never be in flight
-- together, across every dispatcher (the primary key decides). Taken in the transaction that
-- leases the timer; deleted when its outcome is recorded, when it is given back unsent, or
-- when its lease is reaped.
create table resource_holds (
    resource  text        not null,
    timer_id  uuid        not null,
    bucket    timestamptz not null,
    owner     text        not null,
    held_at   timestamptz not null default now(),
    tenant    text        not null,
    primary key (tenant, resource)
);
create index resource_holds_timer_idx on resource_holds (timer_id);

-- Open circuits: a target host that kept timing out or refusing connections is backed off
-- until open_until; every dispatcher defers its timers (pending, attempt uncounted) meanwhile.
create table host_circuits (
    host        text        primary key,
    open_until  timestamptz not null,
    failures    integer     not null,
    reason      text        not null,
    opened_by   text        not null,
    opened_at   timestamptz not null default now()
);

-- Adds two arrays element by element (histogram bucket counts); a null side counts as zeros.
create function timerhook_array_add(a bigint[], b bigint[]) returns bigint[]
language sql immutable parallel safe as $$
    select case
        when a is null then b
        when b is null then a
        else (select array_agg(coalesce(x, 0) + coalesce(y, 0) order by i)
              from unnest(a, b) with ordinality as u(x, y, i))
    end
$$;

-- Sends per second of their going out, by outcome, with lateness (due to sent) and attempt
-- latency as histogram bucket counts (bounds in db/stats.py), summed over every dispatcher:
-- each adds what it sent at its heartbeat. Feeds the dashboard's charts; kept one day.
create table send_stats (
    second     timestamptz not null primary key,
    -- outcomes: delivered (2xx), retried (a failure that will be tried again), failed (one
    -- that retrying cannot fix), dead (retries used up)
    delivered  bigint      not null default 0,
    retried    bigint      not null default 0,
    failed     bigint      not null default 0,
    dead       bigint      not null default 0,
    lateness   bigint[]    not null,
    latency    bigint[]    not null
);

-- The same since the database was made, never purged: the counters and histograms of
-- /metrics (one row).
create table send_totals (
    id           boolean          primary key default true check (id),
    delivered    bigint           not null default 0,
    retried      bigint           not null default 0,
    failed       bigint           not null default 0,
    dead         bigint           not null default 0,
    lateness     bigint[],
    lateness_sum double precision not null default 0,
    latency      bigint[],
    latency_sum  double precision not null default 0,
    -- claim passes that found a cap without tokens and waited for it
    cap_waits    bigint           not null default 0,
    -- send outcomes not recorded: their lease had been taken over (a stale fencing token)
    stale        bigint           not null default 0
);
insert into send_totals (id) values (true);

-- A tenant's settings; a tenant without a row has no quota and uses the global secret.
create table tenants (
    name               text primary key,
    -- the most pending timers at once (null: no limit)
    max_pending        integer check (max_pending >= 0),
    -- creates per minute, a token bucket holding a minute's worth (null: no limit)
    creates_per_minute integer check (creates_per_minute >= 0),
    create_tokens      double precision not null default 0,
    create_tokens_at   timestamptz not null default now(),
    -- the largest payload as compact JSON (null: the global TIMERHOOK_MAX_PAYLOAD_BYTES)
    max_payload_bytes  integer check (max_payload_bytes >= 0),
    -- Standard Webhooks secret(s) of this tenant's webhooks (null: the global one)
    signing_secret     text,
    updated_at         timestamptz not null default now()
);

-- API keys: only a SHA-256 of each key is stored; the key itself is shown once, at creation.
create table api_keys (
    id           text primary key,
    key_hash     text not null unique,
    tenant       text not null,
    -- admin keys see every tenant and may use the admin routes
    admin        boolean not null default false,
    label        text,
    created_at   timestamptz not null default now(),
    -- updated at most every few seconds per key (when the API's cache of it expires)
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- A recurring timer: the request it sends (as a timer row holds it) and when. Each
-- occurrence becomes a row of timers shortly before its time, made by the schedule pass of
-- a dispatcher in the same transaction that moves next_n/next_at on, so that a crash can
-- neither skip nor double one.
create table schedules (
    -- shaped like a timer id, version 8: the first occurrence's due time, 74 random bits
    id           uuid        primary key,
    tenant       text        not null default 'default',
    url          text        not null,
    host         text        not null default '',
    payload      jsonb,
    headers      jsonb,
    timeout_ms   integer,
    max_attempts integer     not null default 8,
    delivery     text        not null default 'at_least_once',
    priority     smallint    not null default 5,
    resources    text[],
    request_id   text,
    -- every: the period in milliseconds; cron: five crontab(5) fields in time_zone
    every_ms     bigint      check (every_ms >= 1000),
    cron         text,
    time_zone    text        not null default 'UTC',
    -- occurrence 1's time; none after until; none past the count-th
    first_at     timestamptz not null,
    until_at     timestamptz,
    max_count    integer     check (max_count >= 1),
    -- coalesce: occurrences missed unsent go out once, as the latest of them; all: each goes
    misfire      text        not null default 'coalesce',
    -- every occurrence's SLA window in milliseconds (null: exact)
    window_ms    bigint      check (window_ms >= 0),
    -- active:    occurrences are made as their times come
    -- paused:    none is made; times that fall in the pause are skipped
    -- ended:     past until or count, or a cron that never matches again
    -- cancelled: ended by DELETE
    state        text        not null default 'active',
    -- the next occurrence to make and its time (kept through a pause, where counting goes on
    -- from; null once ended or cancelled)
    next_n       integer     not null default 1,
    next_at      timestamptz,
    -- occurrences made so far (skipped and coalesced ones not counted)
    occurrences  integer     not null default 0,
    created_at   timestamptz not null default now(),
    paused_at    timestamptz,
    ended_at     timestamptz,
    constraint schedules_kind_check check ((every_ms is null) <> (cron is null)),
    constraint schedules_state_check
        check (state in ('active', 'paused', 'ended', 'cancelled')),
    constraint schedules_misfire_check check (misfire in ('coalesce', 'all')),
    constraint schedules_next_check
        check ((state in ('active', 'paused')) = (next_at is not null))
);
-- The schedule pass reads the active series whose next time is near.
create index schedules_next_idx on schedules (next_at) where state = 'active';
-- Listing a tenant's series.
create index schedules_tenant_idx on schedules (tenant, id);

-- The window planner's shared state: where the windowed sends planned so far end, so that
-- every dispatcher plans on from there (one row, locked by each plan).
create table window_pacer (
    id            boolean     primary key default true check (id),
    planned_until timestamptz not null default '-infinity'
);
insert into window_pacer (id) values (true);

-- Dependencies: a timer (timer_id, in its bucket) is sent only once every timer it names in
-- ``after`` (dep_id, in dep_bucket) was delivered; if one of them ends failed, dead or
-- cancelled, it fails at once (and so do its own dependents). Resolved when a dependency's
-- outcome is recorded; a blocked timer waits with its slot at 'infinity', out of every claim.
create table timer_deps (
    timer_id   uuid        not null,
    bucket     timestamptz not null,
    dep_id     uuid        not null,
    dep_bucket timestamptz not null,
    primary key (timer_id, dep_id)
);
create index timer_deps_dep_idx on timer_deps (dep_id);
