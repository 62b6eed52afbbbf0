-- 0008: tenants and access: every timer belongs to a tenant and names its target host (for
-- the per-tenant and per-host caps); API keys; per-tenant quotas and signing secrets.

-- The tenant a timer belongs to ('default' for timers made without an API key).
alter table timers add column tenant text not null default 'default';
-- The target URL's host, lower case, without brackets or port (as caps key it).
alter table timers add column host text not null default '';
update timers
set host = coalesce(lower(btrim(substring(url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^]/?#]*\]|[^:/?#]*)'), '[]')), '')
where state in ('pending', 'inflight');

-- Due rows of one capped tenant (and host): the capped pass reads them by priority, then
-- run_at; max-pending quotas count a tenant's pending rows here. The predicate names host
-- (always true) so that only the queries that say so use it; the key claims keep
-- timers_pending_idx.
create index timers_pending_scope_idx on timers (tenant, host, priority, run_at)
    where state = 'pending' and host >= '';

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
