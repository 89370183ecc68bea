-- Limits: spend windows (day, week, month, rolling hours; per model pattern) that count the
-- active holds and reset by time, a cap on active holds, a credit line with a grace, the
-- setter's validation and who may read the limits.
--
-- The clock starts on Monday 2042-03-03 10:00 UTC (far in the future, so nothing else in
-- this database falls in these windows). Prices: m-a and img-x cost 1 credit a request.
begin;
select plan(56);

set local timezone to 'UTC';
set local ducto.now to '2042-03-03 10:00:00+00';

\ir helpers/tests_schema.psql

select credit_publish_pricing(
    '{"models": [{"model": "m-a", "input": 0, "output": 0, "request": 1},
                 {"model": "img-x", "input": 0, "output": 0, "request": 1}],
      "default": null, "fixed_jobs": {}}'
);

create function tests.usage(p_user text, p_model text, p_requests integer)
returns bigint
language sql
as $$
    select (credit_deduct_usage(
        p_user, jsonb_build_object('model', p_model, 'requests', p_requests)
    )).amount;
$$;

create function tests.window_json(p_user text, p_index integer)
returns jsonb
language sql
as $$
    select (credit_get_limits(p_user)).windows -> p_index;
$$;

-- ---------------------------------------------------------------- a day window

select credit_add_credits('lim-day', 1000);
select credit_set_limits('lim-day', '[{"period": "day", "spend_limit": 10}]');
select is(
    array[tests.usage('lim-day', 'm-a', 4), (credit_deduct_credits('lim-day', 6)).amount],
    array[4, 6]::bigint [],
    'A day window of 10 admits charges by usage and by amount up to exactly 10.'
);
select is(
    (tests.error_of($$select credit_deduct_credits('lim-day', 1)$$)) ->> 'code', 'DC085',
    'One more credit in the day is refused with DC085.'
);
select is(
    (tests.error_of($$select credit_deduct_credits('lim-day', 1)$$) ->> 'detail')::jsonb
    - 'user_id',
    '{"window": {"period": "day", "hours": null, "model_pattern": null,
                 "window_start": "2042-03-03T00:00:00+00:00"},
      "spend_limit": 10, "used": 10, "held": 0, "needed": 1}'::jsonb,
    'The refusal names the window, its limit, what is used and held, and what was needed.'
);
select is(
    (select balance from credit_accounts where user_id = 'lim-day'), 990::bigint,
    'A refused charge writes nothing.'
);
set local ducto.now to '2042-03-03 23:59:59+00';
select is(
    (tests.error_of($$select credit_deduct_credits('lim-day', 1)$$)) ->> 'code', 'DC085',
    'The day lasts until midnight UTC.'
);
set local ducto.now to '2042-03-04 00:00:00+00';
select is(
    (credit_deduct_credits('lim-day', 10)).amount, 10::bigint,
    'At midnight UTC the day window resets by itself, with no job.'
);

-- ---------------------------------------------------------------- week and month

set local ducto.now to '2042-03-03 10:00:00+00';
select credit_add_credits('lim-week', 1000);
select credit_set_limits(
    'lim-week', '[{"period": "week", "spend_limit": 5}, {"period": "month", "spend_limit": 8}]'
);
select credit_deduct_credits('lim-week', 5);
set local ducto.now to '2042-03-09 23:00:00+00';
select is(
    (tests.error_of($$select credit_deduct_credits('lim-week', 1)$$) ->> 'detail')::jsonb
    #>> '{window,period}', 'week',
    'The week window still holds on Sunday.'
);
set local ducto.now to '2042-03-10 00:00:00+00';
select is(
    (credit_deduct_credits('lim-week', 3)).amount, 3::bigint,
    'The week resets on Monday 00:00 UTC.'
);
select is(
    (tests.error_of($$select credit_deduct_credits('lim-week', 1)$$) ->> 'detail')::jsonb
    #>> '{window,period}', 'month',
    'The month window (8) refuses once the two weeks add up to it.'
);
set local ducto.now to '2042-04-01 00:00:00+00';
select is(
    (credit_deduct_credits('lim-week', 5)).amount, 5::bigint,
    'The month resets on the 1st, 00:00 UTC.'
);
select is(
    tests.window_json('lim-week', 1) - 'window_start',
    '{"period": "month", "hours": null, "model_pattern": null, "spend_limit": 8, "used": 5,
      "held": 0, "remaining": 3}'::jsonb,
    'credit_get_limits reports what each window has used now.'
);

-- ---------------------------------------------------------------- rolling hours

set local ducto.now to '2042-03-03 10:00:00+00';
select credit_add_credits('lim-roll', 1000);
select credit_set_limits('lim-roll', '[{"period": "hours", "hours": 2, "spend_limit": 6}]');
select credit_deduct_credits('lim-roll', 4);
set local ducto.now to '2042-03-03 11:00:00+00';
select credit_deduct_credits('lim-roll', 2);
set local ducto.now to '2042-03-03 11:59:59+00';
select is(
    (tests.error_of($$select credit_deduct_credits('lim-roll', 1)$$)) ->> 'code', 'DC085',
    'A rolling 2-hour window counts the charges of the last two hours.'
);
set local ducto.now to '2042-03-03 12:00:01+00';
select is(
    (credit_deduct_credits('lim-roll', 4)).amount, 4::bigint,
    'Two hours after a charge it leaves the rolling window.'
);
select is(
    (tests.window_json('lim-roll', 0) ->> 'used')::bigint, 6::bigint,
    'The rolling window now holds the 11:00 charge and the new one.'
);

-- ---------------------------------------------------------------- model patterns

set local ducto.now to '2042-03-03 10:00:00+00';
select credit_add_credits('lim-model', 1000);
select credit_set_limits(
    'lim-model', '[{"period": "day", "spend_limit": 3, "model_pattern": "IMG-*"}]'
);
select is(
    array[tests.usage('lim-model', 'm-a', 50), tests.usage('lim-model', 'img-x', 3),
          (credit_deduct_credits('lim-model', 20)).amount],
    array[50, 3, 20]::bigint [],
    'A window for img-* counts only img models: chat usage and charges by amount pass.'
);
select is(
    (tests.error_of($$select tests.usage('lim-model', 'img-x', 1)$$)) ->> 'code', 'DC085',
    'An img charge past the pattern''s limit is refused (the pattern is stored lower case).'
);
select is(
    tests.window_json('lim-model', 0) ->> 'model_pattern', 'img-*',
    'The pattern is stored in lower case, as models are matched.'
);
select credit_refund_transaction(
    (select id from credit_transactions where user_id = 'lim-model' and model = 'img-x'), 2
);
select is(
    tests.usage('lim-model', 'img-x', 2), 2::bigint,
    'A refund of a charge in the window makes room again (net spend).'
);

-- ---------------------------------------------------------------- holds count

select credit_add_credits('lim-hold', 1000);
select credit_set_limits('lim-hold', '[{"period": "day", "spend_limit": 10}]');
create temp table lim_hold as
select * from credit_reserve_credits('lim-hold', 7);
select is(
    (tests.error_of($$select credit_deduct_credits('lim-hold', 4)$$) ->> 'detail')::jsonb
    ->> 'held', '7',
    'An active hold counts against the window: 7 held + 4 > 10 is refused.'
);
select is(
    (tests.error_of($$select credit_reserve_credits('lim-hold', 4)$$)) ->> 'code', 'DC085',
    'A new hold is checked against the window too.'
);
select is(
    (credit_settle_reservation((select reservation_id from lim_hold), 12)).amount, 12::bigint,
    'A settle of an admitted hold is never refused, even past the window (the usage happened).'
);
select is(
    (tests.window_json('lim-hold', 0) - 'window_start'),
    '{"period": "day", "hours": null, "model_pattern": null, "spend_limit": 10, "used": 12,
      "held": 0, "remaining": -2}'::jsonb,
    'The settled hold counts as spent, and the window shows it is 2 past its limit.'
);
set local ducto.now to '2042-03-04 10:00:00+00';
create temp table lim_hold2 as
select * from credit_reserve_credits('lim-hold', 9);
select credit_release_reservation((select reservation_id from lim_hold2));
select is(
    (credit_deduct_credits('lim-hold', 10)).amount, 10::bigint,
    'A released hold stops counting.'
);
set local ducto.now to '2042-03-05 10:00:00+00';
select credit_reserve_credits('lim-hold', 9, p_timeout_seconds => 60);
set local ducto.now to '2042-03-05 10:01:01+00';
select is(
    (credit_deduct_credits('lim-hold', 10)).amount, 10::bigint,
    'A timed-out hold stops counting, swept or not.'
);

-- ---------------------------------------------------------------- at most N active holds

set local ducto.now to '2042-03-03 10:00:00+00';
select credit_add_credits('lim-cap', 100);
select credit_set_limits('lim-cap', p_max_active_holds => 2);
create temp table lim_cap as
select * from credit_reserve_credits('lim-cap', 1);
select credit_reserve_credits('lim-cap', 1);
select is(
    tests.error_of($$select credit_reserve_credits('lim-cap', 1)$$) - 'message',
    jsonb_build_object(
        'code', 'DC086', 'hint', 'settle or release a hold first',
        'detail', '{"user_id": "lim-cap", "active_holds": 2, "max_active_holds": 2}'
    ),
    'A third active hold is refused with DC086, naming the cap and the count.'
);
select is(
    (credit_deduct_credits('lim-cap', 5)).amount, 5::bigint,
    'The cap on holds does not limit one-call charges.'
);
select credit_release_reservation((select reservation_id from lim_cap));
select isnt(
    (credit_reserve_credits('lim-cap', 1)).reservation_id, null,
    'Once one is released, a new hold fits under the cap.'
);
select is(
    ((credit_get_limits('lim-cap')).active_holds, (credit_get_limits('lim-cap')).held),
    (2, 2::bigint),
    'credit_get_limits reports the active holds and what they hold.'
);

-- ---------------------------------------------------------------- credit line

select credit_add_credits('lim-line', 10);
select credit_set_limits('lim-line', p_credit_line => 50);
select is(
    (credit_deduct_credits('lim-line', 60)).balance_after, -50::bigint,
    'A credit line of 50 lets the balance go to -50; the shortfall is debt.'
);
select is(
    (select debt from credit_accounts where user_id = 'lim-line'), 50::bigint,
    'What the grants could not pay is recorded as debt.'
);
select is(
    (tests.error_of($$select credit_deduct_credits('lim-line', 1)$$)) ->> 'code', 'DC010',
    'Beyond the credit line a charge is refused as insufficient credits.'
);
select credit_add_credits('lim-line', 70);
select is(
    ((select balance from credit_accounts where user_id = 'lim-line'),
     (select debt from credit_accounts where user_id = 'lim-line')),
    (20::bigint, 0::bigint),
    'New credits pay the debt first.'
);
select is(
    (tests.error_of($$select credit_deduct_credits('lim-line', 60, p_min_balance => 15)$$))
    ->> 'code', 'DC010',
    'With min_balance 15 the floor is 15 - 50 = -35: 20 - 60 = -40 is refused.'
);
select is(
    (credit_deduct_credits('lim-line', 55, p_min_balance => 15)).balance_after, -35::bigint,
    'and 20 - 55 = -35 is admitted.'
);
select credit_add_credits('lim-line', 35);
select is(
    (credit_reserve_credits('lim-line', 50)).available_after, -50::bigint,
    'A hold may use the credit line too.'
);

-- ---------------------------------------------------------------- a plan's credit line

select credit_upsert_plan('lim-plan', 'Plan with credit', '{}');
select credit_set_plan_credit_line('lim-plan', 30);
select credit_assign_plan('lim-planned', 'lim-plan');
select credit_add_credits('lim-planned', 5);
select is(
    (credit_deduct_credits('lim-planned', 35)).balance_after, -30::bigint,
    'An account without its own credit line gets its plan''s.'
);
select is(
    (credit_get_limits('lim-planned')).credit_line, 30::bigint,
    'credit_get_limits reports the effective credit line.'
);
select throws_ok(
    $$select credit_set_plan_credit_line('no-such-plan', 30)$$, 'DC080', null,
    'A credit line for a plan that does not exist is DC080.'
);

-- ---------------------------------------------------------------- grace

set local ducto.now to '2042-03-03 10:00:00+00';
select credit_add_credits('lim-grace', 10);
select credit_set_limits(
    'lim-grace', p_credit_line => 100, p_credit_line_grace_seconds => 86400
);
select credit_deduct_credits('lim-grace', 20);
set local ducto.now to '2042-03-04 09:59:59+00';
select is(
    (credit_deduct_credits('lim-grace', 5)).balance_after, -15::bigint,
    'Within the grace (a day below zero), the credit line is usable.'
);
set local ducto.now to '2042-03-04 10:00:00+00';
select is(
    tests.error_of($$select credit_deduct_credits('lim-grace', 1)$$) ->> 'code', 'DC087',
    'Once the balance has been below zero for the grace, charges are refused (DC087).'
);
select is(
    (credit_get_limits('lim-grace')).credit_line_due_at, '2042-03-04 10:00:00+00'::timestamptz,
    'credit_get_limits says when the grace ended: a day after the balance went below zero.'
);
select credit_add_credits('lim-grace', 16);
select is(
    (credit_deduct_credits('lim-grace', 30)).balance_after, -29::bigint,
    'Paid back to >= 0, the account may use its credit line again, with a new grace.'
);

-- ---------------------------------------------------------------- setter

select is(
    array(select tests.error_of(format('select credit_set_limits(%L, %L::jsonb)', 'lim-day', w))
        ->> 'code' from unnest(array[
        '{"period": "day", "spend_limit": 1}',
        '[{"period": "year", "spend_limit": 1}]',
        '[{"period": "hours", "spend_limit": 1}]',
        '[{"period": "day", "hours": 3, "spend_limit": 1}]',
        '[{"period": "hours", "hours": 1.5, "spend_limit": 1}]',
        '[{"period": "day", "spend_limit": -1}]',
        '[{"period": "day", "spend_limit": "5"}]',
        '[{"period": "day", "spend_limit": 1, "model_pattern": "*"}]',
        '[{"period": "day", "spend_limit": 1, "extra": 1}]'
    ]) as w),
    array['DC006', 'DC006', 'DC006', 'DC006', 'DC006', 'DC001', 'DC001', 'DC006', 'DC006'],
    'Malformed windows are refused with DC006 (DC001 for a limit that is no whole number).'
);
select is(
    (tests.window_json('lim-day', 0) ->> 'spend_limit'), '10',
    'A refused setting writes nothing: the old window stays.'
);
select credit_set_limits('lim-day');
select is(
    (select count(*) from credit_account_limits as l
     join credit_accounts as a on a.id = l.account_id where a.user_id = 'lim-day'),
    0::bigint,
    'Setting no limits removes the account''s limits row (its charges skip every check).'
);

-- ---------------------------------------------------------------- a team pool

select credit_upsert_team('dddddddd-dddd-4ddd-8ddd-dddddddddddd', 'Limited team');
select credit_set_team_member('dddddddd-dddd-4ddd-8ddd-dddddddddddd', 'lim-member');
select credit_add_credits('team:dddddddd-dddd-4ddd-8ddd-dddddddddddd', 100);
select credit_set_limits(
    'team:dddddddd-dddd-4ddd-8ddd-dddddddddddd', '[{"period": "day", "spend_limit": 2}]'
);
select credit_deduct_team(
    'dddddddd-dddd-4ddd-8ddd-dddddddddddd', 'lim-member', '{"model": "m-a", "requests": 2}'
);
select is(
    tests.error_of($$select credit_deduct_team('dddddddd-dddd-4ddd-8ddd-dddddddddddd',
        'lim-member', '{"model": "m-a", "requests": 1}')$$) ->> 'code', 'DC085',
    'A team pool''s window limits the team''s charges.'
);

-- ---------------------------------------------------------------- who may read

select credit_add_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 5);
select credit_set_limits(
    'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '[{"period": "day", "spend_limit": 4}]'
);
select credit_set_limits(
    'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', '[{"period": "day", "spend_limit": 4}]'
);
select credit_deduct_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1);
set local role authenticated;
set local request.jwt.claims to
    '{"sub": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "role": "authenticated"}';
select is(
    (select l.windows -> 0 ->> 'used' from credit_get_limits() as l), '1',
    'A signed-in user reads their own limits, with what is used, without naming themselves.'
);
select throws_ok(
    $$select credit_get_limits('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')$$, '42501', null,
    'A signed-in user may not read another user''s limits.'
);
select throws_ok(
    $$select credit_set_limits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')$$, '42501', null,
    'A signed-in user may not set limits, not even their own.'
);
set local role anon;
set local request.jwt.claims to '{"role": "anon"}';
select throws_ok(
    $$select credit_get_limits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')$$, '42501', null,
    'anon may not call credit_get_limits.'
);
reset role;

-- ---------------------------------------------------------------- limit.reached

create function tests.reached(p_user text)
returns bigint
language sql
as $$
    select count(*) from credit_events where user_id = p_user and type = 'limit.reached';
$$;
set local ducto.now to '2042-03-10 10:00:00+00';
select credit_add_credits('lim-event', 1000);
select credit_set_limits('lim-event', '[{"period": "day", "spend_limit": 100}]');
select credit_deduct_credits('lim-event', 40);
select is(
    tests.reached('lim-event'), 0::bigint,
    'A charge that leaves room for another like it writes no limit.reached.'
);
select credit_deduct_credits('lim-event', 40);
select is(
    (select e.payload - 'window_id' from credit_events as e
     where e.user_id = 'lim-event' and e.type = 'limit.reached'),
    '{"period": "day", "hours": null, "model_pattern": null, "spend_limit": 100, "used": 80,
      "held": 0, "window_start": "2042-03-10T00:00:00+00:00"}'::jsonb,
    'The charge after which the same again would be refused writes limit.reached, with the'
    || ' window and what is used.'
);
select credit_deduct_credits('lim-event', 10);
select credit_deduct_credits('lim-event', 10);
select is(tests.reached('lim-event'), 1::bigint, 'limit.reached is written once per period.');
select is(
    (tests.error_of($$select credit_deduct_credits('lim-event', 1)$$)) ->> 'code', 'DC085',
    'The window is full: the next charge is refused.'
);
set local ducto.now to '2042-03-11 10:00:00+00';
select credit_deduct_credits('lim-event', 60);
select is(tests.reached('lim-event'), 2::bigint, 'The next day''s window writes its own.');

select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger verifies after every case above.'
);

select * from finish();
rollback;
