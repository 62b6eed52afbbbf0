-- 0002: per-minute caps as token buckets shared by every dispatcher.

-- One row per cap. scope is 'global' (later 'tenant:<name>' and 'host:<name>'). The bucket
-- holds one second of tokens plus one (so fractions of a token carry over) and refills
-- continuously at per_minute / 60 per second, so a cap of 6,000/min is a steady 100/s,
-- never 6,000 in the first second of a minute.
-- per_minute = 0 means no cap.
create table caps (
    scope      text             primary key,
    per_minute integer          not null check (per_minute >= 0),
    tokens     double precision not null default 0,
    updated_at timestamptz      not null default now()
);
