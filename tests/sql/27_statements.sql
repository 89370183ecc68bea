-- Statements: credit_balance_at (the journal's balance at an instant, rows created at or
-- before it) and credit_statement (opening and closing balance of [start, end), totals by
-- type, model and grant category, credits expiring in the 30 days after end). A signed-in
-- user reads their own and nobody else's; anon nothing; bad windows are DC006.
--
-- test_owner (the user aaaaaaaa-...), every day at 10:00 UTC, in 2041:
--   Jan 1  100 paid credits (priority 50); 20 promotional (priority 90) expiring Jan 5
--   Jan 2  usage of m-a: 10; a charge of 5 by amount
--   Jan 3  refund 4 of the m-a charge
--   Jan 5  (12:00) the 20 promotional lapse; no sweep yet
--   Jan 6  the sweep journals their expiry (-20); 30 promotional expiring Feb 10
-- (Far in the future, so that nothing else in this database falls in these windows.)
begin;
select plan(23);

set local timezone to 'UTC';
set local ducto.now to '2041-01-01 10:00:00+00';

\ir helpers/tests_schema.psql

select credit_publish_pricing(
    '{"models": [{"model": "m-a", "input": 0, "output": 0, "request": 1}],
      "default": null, "fixed_jobs": {}}'
);
select credit_add_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 100);
select credit_add_credits(
    'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 20, p_category => 'promotional', p_priority => 90,
    p_expires_at => '2041-01-05 00:00:00+00'
);
select credit_add_credits('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 7);

set local ducto.now to '2041-01-02 10:00:00+00';
create temp table owner_charge as
select * from credit_deduct_usage(
    'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '{"model": "m-a", "requests": 10}'
);
grant select on owner_charge to authenticated;
select credit_deduct_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 5);

set local ducto.now to '2041-01-03 10:00:00+00';
select credit_refund_transaction((select transaction_id from owner_charge), 4);

-- ---------------------------------------------------------------- balance at an instant

select is(
    (select array_agg((
        credit_balance_at('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', t::timestamptz)
    ).balance order by t)
     from unnest(array[
         '2041-01-01 09:59:59.999999+00', '2041-01-01 10:00:00+00',
         '2041-01-02 09:00:00+00', '2041-01-02 10:00:00+00', '2041-01-03 10:00:00+00'
     ]) as t),
    array[0, 120, 120, 105, 109]::bigint [],
    'The balance at T sums the rows created at or before T: 0 before the first credit, 120'
    || ' at its very instant, 105 after the charges, 109 after the refund.'
);
select is(
    to_jsonb(credit_balance_at('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-02 12:00+00')),
    '{"user_id": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "at": "2041-01-02T12:00:00+00:00",
      "balance": 105}'::jsonb,
    'credit_balance_at answers the user, the instant and the balance.'
);
select is(
    (credit_balance_at('test_nobody', '2041-01-02 12:00+00')).balance, 0::bigint,
    'A user without an account has a balance of 0 at any instant.'
);

set local ducto.now to '2041-01-05 12:00:00+00';
select is(
    array[
        (credit_balance_at('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-05 12:00+00')).balance,
        (credit_get_balance('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')).balance
    ],
    array[109, 89]::bigint [],
    'Before the sweep the journal still holds the 20 lapsed credits (109) that the spendable'
    || ' balance leaves out (89).'
);
select is(
    (credit_statement(
        'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-01 00:00+00', '2041-01-04 00:00+00'
    )).expiring,
    jsonb_build_array(jsonb_build_object(
        'grant_id', (
            select g.id from credit_grants as g
            where g.user_id = 'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa' and g.category = 'promotional'
        ),
        'category', 'promotional', 'remaining', 20, 'expires_at', '2041-01-05T00:00:00+00:00'
    )),
    'Before the sweep, a statement to Jan 4 lists the 20 promotional credits expiring on'
    || ' Jan 5 (what is left of them now).'
);

set local ducto.now to '2041-01-06 10:00:00+00';
select credit_sweep_expired();
select credit_add_credits(
    'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 30, p_category => 'promotional', p_priority => 90,
    p_expires_at => '2041-02-10 00:00:00+00'
);
select is(
    array[
        (credit_balance_at('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-06 10:00+00')).balance,
        (credit_get_balance('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')).balance
    ],
    array[119, 119]::bigint [],
    'Once the sweep journaled the expiry, the journal and the spendable balance agree: 119.'
);

-- ---------------------------------------------------------------- statements

select is(
    to_jsonb(credit_statement(
        'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-01 10:00+00', '2041-01-03 10:00+00'
    )) - 'expiring' - 'expiring_total',
    '{"user_id": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
      "period_start": "2041-01-01T10:00:00+00:00", "period_end": "2041-01-03T10:00:00+00:00",
      "opening_balance": 0, "closing_balance": 105,
      "by_type": [{"type": "adjustment", "count": 2, "amount": 120},
                  {"type": "usage", "count": 2, "amount": -15}],
      "by_model": [{"model": "m-a", "count": 1, "amount": -10}],
      "by_category": [{"category": "paid", "count": 1, "amount": 100},
                      {"category": "promotional", "count": 1, "amount": 20}]}'::jsonb,
    'The window [Jan 1 10:00, Jan 3 10:00) holds the rows at its start and not the refund at'
    || ' its end: opening 0, closing 105, and the totals by type, model and category.'
);
select is(
    to_jsonb(credit_statement(
        'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-01 00:00+00', '2041-02-01 00:00+00'
    )) - 'user_id' - 'period_start' - 'period_end' - 'expiring',
    '{"opening_balance": 0, "closing_balance": 119,
      "by_type": [{"type": "adjustment", "count": 3, "amount": 150},
                  {"type": "expiry", "count": 1, "amount": -20},
                  {"type": "refund", "count": 1, "amount": 4},
                  {"type": "usage", "count": 2, "amount": -15}],
      "by_model": [{"model": "m-a", "count": 2, "amount": -6}],
      "by_category": [{"category": "paid", "count": 1, "amount": 100},
                      {"category": "promotional", "count": 2, "amount": 50}],
      "expiring_total": 30}'::jsonb,
    'January: the expiry is a movement, the refund counts for the model of its charge, and'
    || ' the 30 credits expiring on Feb 10 are within 30 days of the end.'
);
select is(
    (select (s.opening_balance + sum((e ->> 'amount')::bigint)) = s.closing_balance
     from credit_statement(
         'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-02 00:00+00', '2041-01-06 12:00+00'
     ) as s, jsonb_array_elements(s.by_type) as e
     group by s.opening_balance, s.closing_balance),
    true,
    'Opening balance + the totals by type = closing balance.'
);
select is(
    (select array[s.opening_balance, s.closing_balance]
     from credit_statement(
         'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-02 10:00+00', '2041-01-06 10:00+00'
     ) as s),
    array[
        (credit_balance_at(
            'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-02 09:59:59.999999+00'
        )).balance,
        (credit_balance_at(
            'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-06 09:59:59.999999+00'
        )).balance
    ],
    'The opening and closing balances are the balances at the last instant before the'
    || ' start and before the end.'
);
select is(
    array[
        (credit_statement(
            'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-01 00:00+00', '2041-01-10 00:00+00'
        )).expiring_total,
        (credit_statement(
            'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-01-01 00:00+00', '2041-01-11 00:00+00'
        )).expiring_total
    ],
    array[0, 30]::bigint [],
    'Expiring means in (end, end + 30 days]: Feb 10 is past Jan 10 + 30 days, and exactly'
    || ' Jan 11 + 30 days.'
);
select is(
    to_jsonb(credit_statement('test_nobody', '2041-01-01 00:00+00', '2041-02-01 00:00+00'))
    - 'period_start' - 'period_end',
    '{"user_id": "test_nobody", "opening_balance": 0, "closing_balance": 0, "by_type": [],
      "by_model": [], "by_category": [], "expiring": [], "expiring_total": 0}'::jsonb,
    'A user without an account has an empty statement.'
);

-- ---------------------------------------------------------------- bad input

select throws_ok(
    $$select credit_statement('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa',
        '2041-01-02 00:00+00', '2041-01-02 00:00+00')$$,
    'DC006', null, 'An empty window (start = end) is refused with DC006.'
);
select throws_ok(
    $$select credit_statement('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', null, now())$$,
    'DC006', null, 'A window without a start is refused with DC006.'
);
select throws_ok(
    $$select credit_balance_at('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 'infinity')$$,
    'DC006', null, 'An infinite instant is refused with DC006.'
);
select throws_ok(
    $$select credit_balance_at('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', null)$$,
    'DC006', null, 'A missing instant is refused with DC006.'
);
select throws_ok(
    $$select credit_statement(null, '2041-01-01 00:00+00', '2041-02-01 00:00+00')$$,
    'DC002', null, 'The service role must name the user.'
);

-- ---------------------------------------------------------------- who may read

set local role authenticated;
set local request.jwt.claims to
    '{"sub": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "role": "authenticated"}';
select is(
    (select array[s.user_id, s.closing_balance::text]
     from credit_statement(p_start => '2041-01-01 00:00+00', p_end => '2041-02-01 00:00+00')
         as s),
    array['aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '119'],
    'A signed-in user reads their own statement, and may leave their id out.'
);
select is(
    (credit_balance_at(p_at => '2041-01-03 10:00+00')).balance, 109::bigint,
    'A signed-in user reads their own balance at an instant without naming themselves.'
);
select throws_ok(
    $$select credit_statement('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb',
        '2041-01-01 00:00+00', '2041-02-01 00:00+00')$$,
    '42501', null, 'A signed-in user may not read another user''s statement (42501).'
);
select throws_ok(
    $$select credit_balance_at('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', '2041-02-01 00:00+00')$$,
    '42501', null, 'A signed-in user may not read another user''s balance at an instant.'
);

set local role anon;
set local request.jwt.claims to '{"role": "anon"}';
select throws_ok(
    $$select credit_statement('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa',
        '2041-01-01 00:00+00', '2041-02-01 00:00+00')$$,
    '42501', null, 'anon may not call credit_statement.'
);
select throws_ok(
    $$select credit_balance_at('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '2041-02-01 00:00+00')$$,
    '42501', null, 'anon may not call credit_balance_at.'
);

select * from finish();
rollback;
