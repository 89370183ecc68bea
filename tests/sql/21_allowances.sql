-- Periodic allowances: credit_grant_allowances grants each assigned user's plan allowance
-- for the current calendar period (UTC) as a grant expiring at the period's end, once per
-- user and period; rollover carries what the previous period left, up to the cap; a
-- missed period is skipped. Plan changes within a period: 26_plan_changes.sql.
--
-- Actors: test_owner (plan 'monthly': 100 a month, rollover up to 30), test_member (plan
-- 'weekly': 10 a week, no rollover), test_holder (plan 'gates': features, no allowance).
begin;
select plan(31);

set local timezone to 'UTC';
set local ducto.now to '2030-01-15 12:00:00+00';

\ir helpers/tests_schema.psql

-- only this file's users are assigned (rolled back at the end)
delete from credit_user_plans;

select credit_upsert_plan(
    'monthly', 'Monthly', '{}', p_allowance => 100, p_allowance_period => 'month',
    p_rollover_cap => 30
);
select credit_upsert_plan('weekly', 'Weekly', '{}', p_allowance => 10, p_allowance_period => 'week');
select credit_upsert_plan('gates', 'Gates', '{"export": true}');
select credit_assign_plan('test_owner', 'monthly');
select credit_assign_plan('test_member', 'weekly');
select credit_assign_plan('test_holder', 'gates');

-- the journal row and grant of each allowance, newest first
create temp view allowance as
select
    a.user_id, ag.period, ag.period_start, ag.allowance, ag.rollover, g.amount, g.remaining,
    g.category, g.expires_at, t.type, t.metadata
from credit_allowance_grants as ag
join credit_accounts as a on a.id = ag.account_id
join credit_grants as g on g.id = ag.grant_id
join credit_transactions as t on t.id = g.transaction_id;

-- ---------------------------------------------------------------- the first period

select is(
    to_jsonb(credit_grant_allowances()),
    '{"users": 2, "granted": 2, "already_granted": 0, "amount": 110, "rollover": 0}'::jsonb,
    'The job grants both users with an allowance (not the plan without one): 100 + 10.'
);
select results_eq(
    $$select user_id, period, period_start, amount, category, expires_at, type
      from allowance order by user_id$$,
    $$values
        ('test_member', 'week', '2030-01-14 00:00:00+00'::timestamptz, 10::bigint,
         'promotional', '2030-01-21 00:00:00+00'::timestamptz, 'grant'),
        ('test_owner', 'month', '2030-01-01 00:00:00+00', 100, 'promotional',
         '2030-02-01 00:00:00+00', 'grant')$$,
    'Each is a promotional grant expiring at the end of its calendar period (weeks start on'
    || ' Monday, UTC).'
);
select is(
    (select metadata from allowance where user_id = 'test_owner'),
    '{"plan_id": "monthly", "period": "month", "period_start": "2030-01-01T00:00:00+00:00",
      "allowance": 100, "rollover": 0}'::jsonb,
    'The journal row says which plan and period it is for.'
);
select is(
    to_jsonb(credit_grant_allowances()),
    '{"users": 2, "granted": 0, "already_granted": 2, "amount": 0, "rollover": 0}'::jsonb,
    'Running the job again in the same period grants nothing.'
);
select is(
    (credit_get_balance('test_owner')).balance, 100::bigint,
    '(test_owner still has 100.)'
);
select is(
    to_jsonb(credit_grant_allowances('test_holder')),
    '{"users": 0, "granted": 0, "already_granted": 0, "amount": 0, "rollover": 0}'::jsonb,
    'A user whose plan has no allowance gets nothing.'
);
select is(
    to_jsonb(credit_grant_allowances('test_stranger')),
    '{"users": 0, "granted": 0, "already_granted": 0, "amount": 0, "rollover": 0}'::jsonb,
    'Nor does a user without an assignment.'
);

select is(
    (credit_deduct_credits('test_owner', 50)).balance_after, 50::bigint,
    'test_owner spends 50 of the allowance.'
);

-- ---------------------------------------------------------------- the period boundary

set local ducto.now to '2030-01-31 23:59:59.999999+00';
select is(
    (credit_grant_allowances('test_owner')).already_granted, 1,
    'One microsecond before the month ends, January is still the period.'
);
select is(
    (credit_get_balance('test_owner')).balance, 50::bigint,
    'And January''s credits still count.'
);

set local ducto.now to '2030-02-01 00:00:00+00';
select is(
    (credit_get_balance('test_owner')).balance, 0::bigint,
    'At the end of January its allowance has expired.'
);
select is(
    to_jsonb(credit_grant_allowances('test_owner')),
    '{"users": 1, "granted": 1, "already_granted": 0, "amount": 130, "rollover": 30}'::jsonb,
    'February''s grant is 100 plus a rollover of 30: January left 50, capped at 30.'
);
select results_eq(
    $$select t.type, t.amount, t.balance_after from credit_transactions as t
      where t.user_id = 'test_owner' and t.created_at = '2030-02-01 00:00:00+00' order by t.seq$$,
    $$values ('expiry', -50::bigint, 0::bigint), ('grant', 130, 130)$$,
    'The journal shows January''s 50 expiring and February''s 130 granted.'
);
select results_eq(
    $$select allowance, rollover, expires_at from allowance
      where user_id = 'test_owner' and period_start = '2030-02-01 00:00:00+00'$$,
    $$values (100::bigint, 30::bigint, '2030-03-01 00:00:00+00'::timestamptz)$$,
    'The allowance row records 100 and 30; the grant expires at the end of February.'
);
select is(
    (credit_grant_allowances('test_member')).granted, 1,
    'test_member''s new week (2030-01-28) is granted on the same run ...'
);
select is(
    (select rollover from allowance where user_id = 'test_member'
     and period_start = '2030-01-28 00:00:00+00'),
    0::bigint,
    '... with no rollover: the weekly plan has no cap.'
);
select is(
    (select count(*) from allowance where user_id = 'test_member'), 2::bigint,
    'The week of 2030-01-21 was missed, so it was skipped, not granted late.'
);

-- ---------------------------------------------------------------- the cap bounds the carry

set local ducto.now to '2030-03-10 00:00:00+00';
select is(
    to_jsonb(credit_grant_allowances('test_owner')) - 'users',
    '{"granted": 1, "already_granted": 0, "amount": 130, "rollover": 30}'::jsonb,
    'Nothing spent in February (130 left): March carries only the cap, 30.'
);
select is(
    (credit_get_balance('test_owner')).balance, 130::bigint,
    'So the balance never grows past allowance + cap.'
);

-- ---------------------------------------------------------------- a missed month

set local ducto.now to '2030-05-02 00:00:00+00';
select is(
    to_jsonb(credit_grant_allowances('test_owner')) - 'users',
    '{"granted": 1, "already_granted": 0, "amount": 100, "rollover": 0}'::jsonb,
    'April was never granted: May gets its allowance and no rollover.'
);
select is(
    (select count(*) from allowance where user_id = 'test_owner' and period_start = '2030-04-01'),
    0::bigint,
    'April is skipped, not caught up.'
);
select is(
    (credit_get_balance('test_owner')).balance, 100::bigint,
    'March''s credits expired at its end; May''s 100 are what is left.'
);

-- ---------------------------------------------------------------- a yearly and a daily plan

select credit_upsert_plan('yearly', 'Yearly', '{}', p_allowance => 1200, p_allowance_period => 'year');
select credit_upsert_plan(
    'daily', 'Daily', '{}', p_allowance => 5, p_allowance_period => 'day', p_rollover_cap => 0
);
select credit_assign_plan('test_holder', 'yearly');
select credit_assign_plan('test_stranger', 'daily');
select results_eq(
    $$select (credit_grant_allowances(u)).amount from unnest(array['test_holder', 'test_stranger']) as u$$,
    $$values (1200::bigint), (5::bigint)$$,
    'Yearly and daily allowances are granted too.'
);
select results_eq(
    $$select user_id, period_start, expires_at from allowance
      where user_id in ('test_holder', 'test_stranger') order by user_id$$,
    $$values ('test_holder', '2030-01-01 00:00:00+00'::timestamptz,
              '2031-01-01 00:00:00+00'::timestamptz),
             ('test_stranger', '2030-05-02 00:00:00+00', '2030-05-03 00:00:00+00')$$,
    'They expire at the end of the year and of the day.'
);
set local ducto.now to '2030-05-03 00:00:00+00';
select is(
    (credit_grant_allowances('test_stranger')).rollover, 0::bigint,
    'A rollover cap of 0 carries nothing.'
);

-- ---------------------------------------------------------------- time zones

set local timezone to 'Pacific/Kiritimati';
select results_eq(
    $$select period_start, period_end
      from credit_private.period_bounds('month', '2030-06-30 23:00:00+00')$$,
    $$values ('2030-06-01 00:00:00+00'::timestamptz, '2030-07-01 00:00:00+00'::timestamptz)$$,
    'Periods are UTC calendar periods whatever the session''s time zone (here UTC+14).'
);
select results_eq(
    $$select period_start, period_end
      from credit_private.period_bounds('week', '2030-01-06 23:59:59+00')$$,
    $$values ('2029-12-31 00:00:00+00'::timestamptz, '2030-01-07 00:00:00+00'::timestamptz)$$,
    'A week runs from Monday 00:00 UTC to the next Monday.'
);
reset timezone;

-- ---------------------------------------------------------------- the ledger stays consistent

select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent after every allowance, expiry and rollover.'
);
select is(
    (select count(*) from credit_allowance_grants as ag
     join credit_accounts as a on a.id = ag.account_id
     where a.user_id in ('test_owner', 'test_member', 'test_holder', 'test_stranger')),
    9::bigint,
    'Nine allowances in all (4 monthly, 2 weekly, 1 yearly, 2 daily): never two for one user'
    || ' and period.'
);
select throws_ok(
    $$select credit_grant_allowances('')$$, 'DC002', null,
    'A blank user id is DC002.'
);
set local role authenticated;
select throws_ok(
    $$select credit_grant_allowances()$$, '42501', null,
    'A signed-in user cannot run the allowance job.'
);

select * from finish();
rollback;
