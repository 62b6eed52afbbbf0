-- 0012: one home for each rule (issue 23).

-- The whole second at or after an instant: the bucket of a due time and the slot of a run
-- time (dispatchers claim by slot). Every query that sets a slot or a bucket calls it. A
-- stable SQL function of one expression: PostgreSQL inlines it into the calling statement,
-- so it costs what the expression written out cost.
create function timerhook_slot(at timestamptz) returns timestamptz
language sql stable parallel safe as $$
    select 'epoch'::timestamptz + ceil(extract(epoch from at)) * interval '1 second'
$$;

-- When a take from the cap last granted fewer tokens than it asked for: the cap binds, and a
-- due timer it applies to waits its turn (core.caps.cap_turn, the API's waiting_on).
alter table caps add column short_at timestamptz;
