-- 0010: when a timer may fire: recurring timers (every / cron), their occurrences, pause and
-- resume; SLA windows; dependencies.

-- The series an occurrence row belongs to (null for a one-shot timer), and its number in the
-- series (1 for the schedule's first time; skipped and coalesced times keep their numbers).
alter table timers add column series_id uuid;
alter table timers add column occurrence integer;
alter table timers add constraint timers_series_check
    check ((series_id is null) = (occurrence is null));
-- An SLA window's end: the timer may be sent at any moment from due_at to deadline_at (null:
-- exactly at due_at). Until the window planner gives it an instant, its run_at is the
-- deadline (and its slot that second), so the claims leave it to the planner; a row the
-- planner never reached is still sent, at its deadline.
alter table timers add column deadline_at timestamptz;
alter table timers add constraint timers_window_check
    check (deadline_at is null or deadline_at >= due_at);
-- Whether other timers wait for this one (``after``): its recorded outcome resolves them.
alter table timers add column dependents boolean not null default false;

-- The window planner reads the pending windowed rows by deadline (earliest deadline first).
create index timers_window_idx on timers (deadline_at)
    where state = 'pending' and deadline_at is not null;

-- The window planner's shared state: where the windowed sends planned so far end, so that
-- every dispatcher plans on from there (one row, locked by each plan).
create table window_pacer (
    id            boolean     primary key default true check (id),
    planned_until timestamptz not null default '-infinity'
);
insert into window_pacer (id) values (true);

-- A series' occurrence rows by due time: the schedule pass reads its unsent ones, GET its
-- last and next times, a cancel or pause its pending ones. Every row of a series has its
-- bucket at most a lookahead ahead of now (retries keep their bucket), so a bucket bound
-- prunes every later partition.
create index timers_series_idx on timers (series_id, due_at) where series_id is not null;

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
