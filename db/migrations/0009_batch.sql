-- 0009: bulk create (POST /timer/batch): a keyed batch remembers every timer it created.
alter table idempotency_keys add column timer_ids uuid[];
