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
-- Takes up to %(wanted)s whole tokens from a cap's bucket after refilling it for the time
-- since its last use; returns how many were granted (all of them when there is no cap) and
-- the cap per minute (0 for none), by which the dispatcher paces what it sends.
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
    where c.scope = %(scope)s and c.per_minute > 0
    for update of c
), granted as (
    -- the epsilon keeps 0.4 + 0.4 + 0.2 of a token from flooring to 0 in floating point
    select scope, least(%(wanted)s, floor(available + 1e-9))::integer as n, available
    from bucket
), taken as (
    update caps c set tokens = greatest(g.available - g.n, 0), updated_at = clock.now
    from granted g, clock
    where c.scope = g.scope
    returning g.n
)
select coalesce((select n from taken), %(wanted)s) as granted,
       coalesce((select per_minute from bucket), 0) as per_minute;

-- name: cap_give_back
-- Returns tokens that were taken but not used (fewer rows were due than tokens granted).
update caps set tokens = least(per_minute / 60.0 + 1.0, tokens + %(n)s)
where scope = %(scope)s and per_minute > 0;

-- name: cap_list
-- Every cap with its current fill, refilled to now for display.
select scope, per_minute,
       least(per_minute / 60.0 + 1.0,
             tokens + greatest(extract(epoch from now() - updated_at), 0) * per_minute / 60.0)
           as tokens
from caps order by scope;
