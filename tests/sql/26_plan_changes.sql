-- Allowances after a plan change within a period: the new plan tops the live allowance up
-- to its own level for the rest of that period, never both in full; a downgrade takes
-- nothing back; the next period is the new plan's in full. Each user here has their own
-- story (pc_up: an upgrade, pc_down: a downgrade, pc_daily: monthly to daily, pc_monthly:
-- daily to monthly).
begin;
select plan(17);

set local timezone to 'UTC';
set local ducto.now to '2031-03-10 12:00:00+00';

select credit_upsert_plan('pc-basic', 'Basic', '{}', p_allowance => 100, p_allowance_period => 'month');
select credit_upsert_plan(
    'pc-pro', 'Pro', '{}', p_allowance => 500, p_allowance_period => 'month', p_rollover_cap => 1000
);
select credit_upsert_plan('pc-day', 'Daily', '{}', p_allowance => 50, p_allowance_period => 'day');

-- what the allowances of a user hold
create temp view live as
select a.user_id, sum(g.remaining) as remaining, count(*) as grants
from credit_allowance_grants as ag
join credit_accounts as a on a.id = ag.account_id
join credit_grants as g on g.id = ag.grant_id
group by a.user_id;

-- ---------------------------------------------------------------- an upgrade

select credit_assign_plan('pc_up', 'pc-basic');
select is((credit_grant_allowances('pc_up')).amount, 100::bigint, 'Basic grants 100 for March.');
select credit_deduct_credits('pc_up', 30);
select credit_assign_plan('pc_up', 'pc-pro');
select is(
    to_jsonb(credit_grant_allowances('pc_up')) - 'users',
    '{"granted": 1, "already_granted": 0, "amount": 430, "rollover": 0}'::jsonb,
    'An upgrade within the month tops the 70 left up to Pro''s 500: 430 more, not 500.'
);
select is(
    (credit_get_balance('pc_up')).balance, 500::bigint,
    'pc_up has Pro''s level for the rest of March.'
);
select is(
    (credit_grant_allowances('pc_up')).already_granted, 1,
    'Running the job again grants nothing more.'
);
select credit_assign_plan('pc_up', 'pc-basic');
select credit_grant_allowances('pc_up');
select credit_assign_plan('pc_up', 'pc-pro');
select is(
    (select remaining from live where user_id = 'pc_up'), 500::numeric,
    'Down and up again in the month grants nothing: each plan had its turn.'
);
select results_eq(
    $$select ag.plan_id, ag.allowance, ag.rollover from credit_allowance_grants as ag
      join credit_accounts as a on a.id = ag.account_id where a.user_id = 'pc_up'
      order by ag.created_at, ag.plan_id$$,
    $$values ('pc-basic', 100::bigint, 0::bigint), ('pc-pro', 430, 0)$$,
    'The allowance rows record what each plan added.'
);

-- ---------------------------------------------------------------- a downgrade

select credit_assign_plan('pc_down', 'pc-pro');
select credit_grant_allowances('pc_down');
select credit_assign_plan('pc_down', 'pc-basic');
select is(
    to_jsonb(credit_grant_allowances('pc_down')) - 'users',
    '{"granted": 0, "already_granted": 1, "amount": 0, "rollover": 0}'::jsonb,
    'A downgrade grants nothing while the live allowance is above the new level ...'
);
select is(
    (credit_get_balance('pc_down')).balance, 500::bigint,
    '... and takes nothing back.'
);

-- ---------------------------------------------------------------- monthly to daily

select credit_assign_plan('pc_daily', 'pc-basic');
select credit_grant_allowances('pc_daily');
select credit_assign_plan('pc_daily', 'pc-day');
select is(
    (credit_grant_allowances('pc_daily')).already_granted, 1,
    'Monthly to daily: the 100 left of the month are above the daily 50, nothing is added.'
);
select credit_deduct_credits('pc_daily', 80);
select is(
    (credit_grant_allowances('pc_daily')).amount, 30::bigint,
    'Once below the daily level, the same day''s run tops the 20 left up to 50.'
);
select is(
    (credit_grant_allowances('pc_daily')).already_granted, 1,
    'And only once that day.'
);

-- ---------------------------------------------------------------- daily to monthly

select credit_assign_plan('pc_monthly', 'pc-day');
select credit_grant_allowances('pc_monthly');
select credit_deduct_credits('pc_monthly', 20);
select credit_assign_plan('pc_monthly', 'pc-basic');
select is(
    (credit_grant_allowances('pc_monthly')).amount, 70::bigint,
    'Daily to monthly: the 30 left of the day are topped up to the month''s 100.'
);

-- ---------------------------------------------------------------- the next period

set local ducto.now to '2031-04-01 00:00:00+00';
select is(
    to_jsonb(credit_grant_allowances('pc_up')) - 'users',
    '{"granted": 1, "already_granted": 0, "amount": 1000, "rollover": 500}'::jsonb,
    'April is Pro''s in full, with March''s 500 rolled over (cap 1000).'
);
select is(
    (credit_grant_allowances('pc_down')).amount, 100::bigint,
    'The downgraded user gets Basic''s 100 in April.'
);
select is(
    (credit_grant_allowances('pc_daily')).amount, 50::bigint,
    'The daily user gets 50 on April 1st: the month''s leftover expired with March.'
);

-- ---------------------------------------------------------------- consistency

select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent after every plan change.'
);
select is(
    (select count(*) from credit_allowance_grants as ag
     join credit_accounts as a on a.id = ag.account_id
     where a.user_id like 'pc\_%' and ag.period_start < '2031-04-01'),
    7::bigint,
    'Seven allowances in March: one per plan a user was on, and only where it added credits.'
);

select * from finish();
rollback;
