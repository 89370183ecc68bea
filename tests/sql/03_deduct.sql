-- credit_deduct_credits: admit -> hold -> capture in one call; the min_balance floor at its
-- exact boundary; an unknown user; invalid arguments; nothing written on failure.
--
-- Actors: test_owner (100 credits), test_stranger (never had an account).
begin;
select plan(28);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

\ir helpers/tests_schema.psql

create temp table topup as
select * from credit_add_credits('test_owner', 100);

-- ---------------------------------------------------------------- success

create temp table first_deduct as
select * from credit_deduct_credits('test_owner', 30, p_metadata => '{"model": "m-1"}');

select is(
    (select to_jsonb(r) - 'transaction_id' from first_deduct as r),
    '{"reservation_id": null, "user_id": "test_owner", "amount": 30, "overage": 0,
      "balance_after": 70, "available_after": 70,
      "created_at": "2030-01-01T00:00:00+00:00", "is_replay": false,
      "pricing_version": null}'::jsonb,
    'Deducting 30 of 100 returns amount 30, no overage, balance and available 70.'
);
select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after, t.reservation_id, t.metadata
      from credit_transactions as t where t.id = (select transaction_id from first_deduct)$$,
    $$values (2::bigint, 'usage', -30::bigint, 70::bigint, null::uuid,
              '{"model": "m-1"}'::jsonb)$$,
    'The deduct is journalled as one usage row of -30 with balance_after 70 and its metadata.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from first_deduct)$$,
    $$select grant_id, 30::bigint from topup$$,
    'The usage row is paid by one draw of 30 from the only grant.'
);
select results_eq(
    $$select remaining from credit_grants where id = (select grant_id from topup)$$,
    $$values (70::bigint)$$,
    'The grant has 70 remaining.'
);
select is_empty(
    $$select 1 from credit_reservations where user_id = 'test_owner'$$,
    'A one-call deduct leaves no hold behind.'
);

-- ---------------------------------------------------------------- the floor

select is(
    (select r.balance_after
     from credit_deduct_credits('test_owner', 50, p_min_balance => 20) as r),
    20::bigint,
    'available - amount = min_balance (70 - 50 = 20) is admitted: the floor is inclusive.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1, p_min_balance => 20)$$, 'DC010',
    'insufficient credits for user ''test_owner'': available 20, needed 1 with min_balance 20',
    'One credit more than the floor allows is DC010, and the message names the numbers.'
);
select is(
    (tests.error_of($$select credit_deduct_credits('test_owner', 1, p_min_balance => 20)$$)
        ->> 'detail')::jsonb,
    '{"user_id": "test_owner", "available": 20, "needed": 1, "min_balance": 20}'::jsonb,
    'The DC010 detail is JSON with user_id, available, needed and min_balance.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 21)$$, 'DC010', null,
    'With the default floor 0, deducting 21 of 20 is DC010.'
);
select is(
    (select r.balance_after from credit_deduct_credits('test_owner', 20) as r),
    0::bigint,
    'With the default floor 0, deducting exactly the balance is admitted and leaves 0.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1)$$, 'DC010', null,
    'Deducting 1 from an empty account is DC010.'
);

-- ---------------------------------------------------------------- nothing written on failure

select results_eq(
    $$select a.balance, a.debt, a.version from credit_accounts as a
      where a.user_id = 'test_owner'$$,
    $$values (0::bigint, 0::bigint, 4::bigint)$$,
    'After three refused deducts the account has balance 0, no debt and 4 journal rows.'
);
select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after from credit_transactions as t
      where t.user_id = 'test_owner' order by t.seq$$,
    $$values (1::bigint, 'adjustment', 100::bigint, 100::bigint),
             (2::bigint, 'usage', -30::bigint, 70::bigint),
             (3::bigint, 'usage', -50::bigint, 20::bigint),
             (4::bigint, 'usage', -20::bigint, 0::bigint)$$,
    'The journal holds exactly the three admitted deducts.'
);

-- ---------------------------------------------------------------- unknown user

select throws_ok(
    $$select credit_deduct_credits('test_stranger', 1)$$, 'DC010', null,
    'Deducting from a user without an account is DC010 (nothing available).'
);
select is(
    (tests.error_of($$select credit_deduct_credits('test_stranger', 5)$$) ->> 'detail')::jsonb,
    '{"user_id": "test_stranger", "available": 0, "needed": 5, "min_balance": 0}'::jsonb,
    'The detail for an unknown user says available 0.'
);
select is_empty(
    $$select 1 from credit_accounts where user_id = 'test_stranger'$$,
    'A refused deduct does not create an account.'
);

-- ---------------------------------------------------------------- invalid arguments

select throws_ok(
    $$select credit_deduct_credits('test_owner', 0)$$, 'DC001', null,
    'Deducting 0 is DC001.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', -5)$$, 'DC001', null,
    'Deducting a negative amount is DC001 (it would credit the account).'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 2.5)$$, 'DC001', null,
    'Deducting a fraction is DC001.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 'NaN')$$, 'DC001', null,
    'Deducting NaN is DC001.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 'Infinity')$$, 'DC001', null,
    'Deducting Infinity is DC001.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1, p_min_balance => -1)$$, 'DC001',
    'min_balance must be a whole number of credits from 0 to 9007199254740991, got -1',
    'A negative min_balance is DC001 and the message names min_balance.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1, p_min_balance => 'NaN')$$, 'DC001', null,
    'A NaN min_balance is DC001.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1, p_min_balance => null)$$, 'DC001', null,
    'A null min_balance is DC001.'
);
select throws_ok(
    $$select credit_deduct_credits('', 1)$$, 'DC002', null,
    'An empty user id is DC002.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1, p_metadata => '[1]')$$, 'DC003', null,
    'Non-object metadata is DC003.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1, p_idempotency_key => '')$$, 'DC004', null,
    'An empty idempotency key is DC004.'
);
select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (0::bigint, 4::bigint)$$,
    'Invalid calls wrote nothing.'
);

select * from finish();
rollback;
