-- 0003: cancelled timers (DELETE /timer/{id}).

-- cancelled: a pending timer its client called off; never sent, never pending again.
alter table timers drop constraint timers_state_check;
alter table timers add constraint timers_state_check
    check (state in ('pending', 'inflight', 'delivered', 'failed', 'cancelled'));
