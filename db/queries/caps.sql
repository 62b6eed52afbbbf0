-- Named queries on the caps table (token buckets in PostgreSQL, shared by all dispatchers).

-- name: cap_seed
-- Sets a cap only if it has none yet: the environment seeds, `timerhook caps set` rules after.
insert into caps (scope, per_minute, tokens, updated_at)
values (%(scope)s, %(per_minute)s, 0, now())
on conflict (scope) do nothing;

-- name: cap_set
-- Sets a cap now, for every dispatcher at once; the bucket keeps what it held, within the
-- new size.
insert into caps (scope, per_minute, tokens, updated_at)
values (%(scope)s, %(per_minute)s, 0, now())
on conflict (scope) do update
set per_minute = excluded.per_minute,
    tokens = least(caps.tokens, excluded.per_minute / 60.0 + 1.0),
    updated_at = now();

-- name: cap_take
-- Takes up to %(wanted)s whole tokens from every cap of %(scopes)s at once (the global cap and
-- a tenant's and a host's, say), after refilling each for the time since its last use: as
-- many as the emptiest bucket allows, from each. Returns how many were granted (all of them
-- when none of the scopes has a cap), and the emptiest bucket's cap per minute (0 for none)
-- and fill before the take, by which the dispatcher paces what it sends. Rows are locked in scope order, so two takes over
-- overlapping scopes cannot deadlock.
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), bucket as (
    -- refill: per_minute / 60 tokens a second, up to one second's worth plus one token (the
    -- extra token keeps the fraction of a token that a refill brings past a whole one)
    select c.scope, c.per_minute,
           least(c.per_minute / 60.0 + 1.0,
                 c.tokens + greatest(extract(epoch from clock.now - c.updated_at), 0)
                            * c.per_minute / 60.0) as available
    from caps c, clock
    where c.scope = any(%(scopes)s::text[]) and c.per_minute > 0
    order by c.scope
    for update of c
), granted as (
    -- the epsilon keeps 0.4 + 0.4 + 0.2 of a token from flooring to 0 in floating point;
    -- with no capped scope, min() is null and least() grants everything asked for
    select least(%(wanted)s, floor(min(available) + 1e-9))::integer as n from bucket
), taken as (
    update caps c set tokens = greatest(b.available - g.n, 0), updated_at = clock.now,
                      -- this bucket could not give all that was asked: it binds
                      short_at = case when floor(b.available + 1e-9) < %(wanted)s
                                      then clock.now else c.short_at end
    from bucket b, granted g, clock
    where c.scope = b.scope
    returning 1
)
-- per_minute and available are the binding bucket's (the emptiest)
select coalesce((select n from granted), %(wanted)s) as granted,
       coalesce((select per_minute from bucket order by available limit 1), 0) as per_minute,
       coalesce((select available from bucket order by available limit 1), 0) as available,
       (select count(*) from taken) as buckets;

-- name: cap_give_back
-- Returns tokens that were taken but not used (fewer rows were due than tokens granted).
update caps set tokens = least(per_minute / 60.0 + 1.0, tokens + %(n)s)
where scope = any(%(scopes)s::text[]) and per_minute > 0;

-- name: cap_scopes
-- The tenants and hosts with a cap of their own (per_minute > 0), for the capped pass.
select scope from caps
where per_minute > 0 and (left(scope, 7) = 'tenant:' or left(scope, 5) = 'host:')
order by scope;

-- name: cap_list
-- Every cap with its current fill, refilled to now for display, and when it last bound.
select scope, per_minute,
       least(per_minute / 60.0 + 1.0,
             tokens + greatest(extract(epoch from now() - updated_at), 0) * per_minute / 60.0)
           as tokens,
       short_at
from caps order by scope;
