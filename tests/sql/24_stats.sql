-- Usage analytics over [start, end) windows: credit_aggregate_stats, credit_daily_spend,
-- credit_spend_by_model, credit_spend_by_user, credit_top_users. Charges are spend; refunds
-- count in the window they are made, for the charge's model and user; expiries and credits
-- are not spend; a team pool's charges count for the member. Service role only.
--
-- Pricing: 'm-a' and 'm-b' cost 1 credit per request; the fixed job 'report' costs 3.
-- Day 1 (2040-03-01, UTC):  test_owner  m-a 10, and 5 by amount
--                           test_member m-b 20
--                           test_holder m-a 7 from team T's pool
-- Day 2 (2040-03-02):       test_owner  refund 4 of the m-a charge; 6 promotional
--                                       credits expired at midnight
--                           test_member the job 'report' (3)
-- (Far in the future, so that nothing else in this database falls in these windows.)
begin;
select plan(24);

set local timezone to 'UTC';
set local ducto.now to '2040-03-01 10:00:00+00';

\ir helpers/tests_schema.psql

select credit_publish_pricing(
    '{"models": [{"model": "m-a", "input": 0, "output": 0, "request": 1},
                 {"model": "m-b", "input": 0, "output": 0, "request": 1}],
      "default": null, "fixed_jobs": {"report": 3}}'
);
select credit_add_credits('test_owner', 100);
select credit_add_credits(
    'test_owner', 6, p_category => 'promotional', p_priority => 90,
    p_expires_at => '2040-03-02 00:00:00+00'
);
select credit_add_credits('test_member', 100);
select credit_upsert_team('11111111-1111-4111-8111-111111111111', 'T');
select credit_add_credits('team:11111111-1111-4111-8111-111111111111', 50);
select credit_set_team_member('11111111-1111-4111-8111-111111111111', 'test_holder');

create temp table owner_charge as
select * from credit_deduct_usage('test_owner', '{"model": "m-a", "requests": 10}');
select credit_deduct_credits('test_owner', 5);
select credit_deduct_usage('test_member', '{"model": "m-b", "requests": 20}');
select credit_deduct_team(
    '11111111-1111-4111-8111-111111111111', 'test_holder', '{"model": "m-a", "requests": 7}'
);

set local ducto.now to '2040-03-02 09:00:00+00';
select credit_refund_transaction((select transaction_id from owner_charge), 4);
select credit_deduct_fixed('test_member', 'report');

-- ---------------------------------------------------------------- aggregate

select is(
    to_jsonb(credit_aggregate_stats('2040-03-01 00:00:00+00', '2040-03-03 00:00:00+00')),
    '{"window_start": "2040-03-01T00:00:00+00:00", "window_end": "2040-03-03T00:00:00+00:00",
      "spent": 45, "refunded": 4, "net_spent": 41, "credited": 256, "expired": 6,
      "charges": 5, "refunds": 1, "users": 3}'::jsonb,
    'Two days: 45 spent (10 + 5 + 20 + 7 + 3), 4 refunded, 41 net; 256 credited; the 6'
    || ' expired are not spend; 3 users charged.'
);
select is(
    to_jsonb(credit_aggregate_stats('2040-03-02 00:00:00+00', '2040-03-03 00:00:00+00'))
    - 'window_start' - 'window_end',
    '{"spent": 3, "refunded": 4, "net_spent": -1, "credited": 0, "expired": 6, "charges": 1,
      "refunds": 1, "users": 1}'::jsonb,
    'Day 2 alone: the refund counts when it was made, so its net spend is negative.'
);
select is(
    to_jsonb(credit_aggregate_stats('2040-03-01 10:00:00+00', '2040-03-02 09:00:00+00'))
    -> 'charges',
    '4'::jsonb,
    'The window includes its start and excludes its end: day 2''s 09:00 rows are out.'
);
select is(
    to_jsonb(credit_aggregate_stats('2041-01-01 00:00:00+00', '2041-01-02 00:00:00+00'))
    - 'window_start' - 'window_end',
    '{"spent": 0, "refunded": 0, "net_spent": 0, "credited": 0, "expired": 0, "charges": 0,
      "refunds": 0, "users": 0}'::jsonb,
    'An empty window is all zeros.'
);

-- ---------------------------------------------------------------- daily

select results_eq(
    $$select * from credit_daily_spend('2040-02-29 12:00:00+00', '2040-03-03 00:00:00+00')$$,
    $$values ('2040-02-29'::date, 0::numeric, 0::numeric, 0::numeric, 0::bigint, 0::bigint),
             ('2040-03-01', 42, 0, 42, 4, 3),
             ('2040-03-02', 3, 4, -1, 1, 1)$$,
    'One row per UTC day the window touches, zeros included, oldest first.'
);
select results_eq(
    $$select day from credit_daily_spend('2040-03-01 00:00:00+00', '2040-03-02 00:00:00+00')$$,
    $$values ('2040-03-01'::date)$$,
    'A window ending at midnight does not touch the next day.'
);
set local timezone to 'Pacific/Kiritimati';
select results_eq(
    $$select day, spent from credit_daily_spend('2040-03-01 00:00:00+00', '2040-03-02 00:00:00+00')$$,
    $$values ('2040-03-01'::date, 42::numeric)$$,
    'Days are UTC days whatever the session''s time zone.'
);
set local timezone to 'UTC';

-- ---------------------------------------------------------------- by model

select results_eq(
    $$select * from credit_spend_by_model('2040-03-01 00:00:00+00', '2040-03-03 00:00:00+00')$$,
    $$values ('m-b', 20::numeric, 0::numeric, 20::numeric, 1::bigint, 1::bigint),
             ('m-a', 17, 4, 13, 2, 2),
             (null, 8, 0, 8, 2, 2)$$,
    'By model, highest net first: the refund counts for m-a, the charge''s model; charges'
    || ' by amount and fixed jobs have none.'
);

-- ---------------------------------------------------------------- by user and top users

select results_eq(
    $$select * from credit_spend_by_user('2040-03-01 00:00:00+00', '2040-03-03 00:00:00+00')$$,
    $$values ('test_member', 23::numeric, 0::numeric, 23::numeric, 2::bigint),
             ('test_owner', 15, 4, 11, 2),
             ('test_holder', 7, 0, 7, 1)$$,
    'By user: the pool''s charge counts for the member who spent it, not the pool.'
);
select results_eq(
    $$select * from credit_top_users(2, '2040-03-01 00:00:00+00', '2040-03-03 00:00:00+00')$$,
    $$values (1::bigint, 'test_member', 23::numeric, 23::numeric, 0::numeric, 2::bigint),
             (2, 'test_owner', 11, 15, 4, 2)$$,
    'The top 2 users by net spend, ranked.'
);
select is(
    (select count(*) from credit_top_users(1000, '2040-03-01 00:00:00+00',
                                           '2040-03-03 00:00:00+00')),
    3::bigint,
    'A limit above the number of users returns them all.'
);
select results_eq(
    $$select rank, user_id from credit_top_users(3, '2040-03-02 00:00:00+00',
                                                '2040-03-03 00:00:00+00')$$,
    $$values (1::bigint, 'test_member'), (2, 'test_owner')$$,
    'Day 2: the owner''s refund gives them a negative net spend, ranked last.'
);

-- ---------------------------------------------------------------- they agree

select is(
    (select sum(spent) from credit_spend_by_user('2040-03-01', '2040-03-03')),
    (select spent::numeric from credit_aggregate_stats('2040-03-01', '2040-03-03')),
    'spend_by_user sums to the aggregate''s spent ...'
);
select is(
    (select sum(net_spent) from credit_spend_by_model('2040-03-01', '2040-03-03')),
    (select net_spent::numeric from credit_aggregate_stats('2040-03-01', '2040-03-03')),
    '... spend_by_model to its net spend ...'
);
select is(
    (select sum(charges) from credit_daily_spend('2040-03-01', '2040-03-03')),
    (select charges::numeric from credit_aggregate_stats('2040-03-01', '2040-03-03')),
    '... and daily_spend to its charges.'
);
select is(
    (select spent::numeric from credit_aggregate_stats('2040-03-01', '2040-03-03')),
    (select -sum(t.amount) from credit_transactions as t
     where t.type in ('usage', 'fixed_job', 'capture')
       and t.created_at >= '2040-03-01' and t.created_at < '2040-03-03'),
    'spent is exactly the charges of the journal in the window.'
);

-- ---------------------------------------------------------------- bad windows

select throws_ok(
    $$select credit_aggregate_stats('2040-03-02', '2040-03-01')$$, 'DC006', null,
    'A window that ends before it starts is DC006.'
);
select throws_ok(
    $$select credit_daily_spend('2040-03-02', '2040-03-02')$$, 'DC006', null,
    'An empty window (start = end) is DC006.'
);
select throws_ok(
    $$select credit_spend_by_user('-infinity', 'infinity')$$, 'DC006', null,
    'An infinite window is DC006.'
);
select throws_ok(
    $$select credit_spend_by_model(null, '2040-03-02')$$, 'DC006', null,
    'A missing bound is DC006.'
);
select throws_ok(
    $$select credit_top_users(0, '2040-03-01', '2040-03-02')$$, 'DC006',
    'limit must be from 1 to 1000, got 0',
    'A limit of 0 is DC006.'
);

-- ---------------------------------------------------------------- service role only

set local role authenticated;
set local request.jwt.claims to '{"sub": "test_owner", "role": "authenticated"}';
select throws_ok(
    $$select credit_spend_by_user('2040-03-01', '2040-03-03')$$, '42501', null,
    'A signed-in user cannot read usage analytics, not even their own line.'
);
select throws_ok(
    $$select * from credit_private.journal_activity$$, '42501', null,
    'Nor the read model behind them.'
);
reset role;
set local role anon;
select throws_ok(
    $$select credit_aggregate_stats('2040-03-01', '2040-03-03')$$, '42501', null,
    'Nor can anon.'
);
reset role;

select * from finish();
rollback;
