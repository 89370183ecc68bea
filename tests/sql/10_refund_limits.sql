-- credit_refund_transaction: full and partial refunds, cumulative partials up to exactly
-- the charged amount, DC050 beyond it, DC051 for what is not a charge, DC030 for an
-- unknown transaction, and invalid arguments.
--
-- Actor: test_owner (100 credits, a deduct of 30, a deduct of 20, a capture of 8).
begin;
select plan(36);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

\ir helpers/tests_schema.psql

create temp table topup as
select * from credit_add_credits('test_owner', 100);
create temp table deduct_30 as
select * from credit_deduct_credits('test_owner', 30);
create temp table deduct_20 as
select * from credit_deduct_credits('test_owner', 20);
create temp table hold as
select * from credit_reserve_credits('test_owner', 10);
create temp table capture_8 as
select * from credit_settle_reservation((select reservation_id from hold), 8);

select is(
    (select balance from credit_accounts where user_id = 'test_owner'), 42::bigint,
    '(Before the refunds: 100 - 30 - 20 - 8 = 42.)'
);

-- ---------------------------------------------------------------- full refund

create temp table full_refund as
select * from credit_refund_transaction(
    (select transaction_id from deduct_30), p_reason => 'model error'
);

select is(
    (select to_jsonb(r) - 'transaction_id' from full_refund as r),
    jsonb_build_object(
        'refunded_transaction_id', (select transaction_id from deduct_30),
        'user_id', 'test_owner', 'amount', 30, 'total_refunded', 30,
        'refundable_remaining', 0, 'balance_after', 72,
        'created_at', '2030-01-01T00:00:00+00:00', 'is_replay', false
    ),
    'A null amount refunds all 30: total 30, nothing left to refund, balance 72.'
);
select results_eq(
    $$select t.type, t.amount, t.balance_after, t.refund_of, t.metadata
      from credit_transactions as t where t.id = (select transaction_id from full_refund)$$,
    $$select 'refund', 30::bigint, 72::bigint, transaction_id,
             '{"reason": "model error"}'::jsonb
      from deduct_30$$,
    'The refund row is +30, points to the original, and keeps the reason in its metadata.'
);
select throws_ok(
    format('select credit_refund_transaction(%L)', (select transaction_id from deduct_30)),
    'DC050',
    format('transaction %s is already fully refunded (charged 30, refunded 30)',
        (select transaction_id from deduct_30)),
    'Refunding a fully refunded transaction is DC050: already fully refunded.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, 1)', (select transaction_id from deduct_30)),
    'DC050', null,
    'Refunding even 1 more is DC050.'
);

-- ---------------------------------------------------------------- cumulative partial refunds

create temp table partial_refunds (n integer primary key, result credit_refund_result);
insert into partial_refunds
select 1, r from credit_refund_transaction((select transaction_id from deduct_20), 5) as r;
insert into partial_refunds
select 2, r from credit_refund_transaction((select transaction_id from deduct_20), 10) as r;

select results_eq(
    $$select (result).amount, (result).total_refunded, (result).refundable_remaining,
             (result).balance_after
      from partial_refunds order by n$$,
    $$values (5::bigint, 5::bigint, 15::bigint, 77::bigint),
             (10::bigint, 15::bigint, 5::bigint, 87::bigint)$$,
    'Partial refunds of 5 then 10 add up: 15 refunded, 5 refundable left.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, 6)', (select transaction_id from deduct_20)),
    'DC050',
    format('refund of 6 exceeds what is refundable of transaction %s: 5 (charged 20, refunded 15)',
        (select transaction_id from deduct_20)),
    'A partial refund of 6 with 5 refundable is DC050, naming the numbers.'
);
select is(
    (tests.error_of(
        format('select credit_refund_transaction(%L, 6)', (select transaction_id from deduct_20))
    ) ->> 'detail')::jsonb,
    jsonb_build_object(
        'transaction_id', (select transaction_id from deduct_20), 'requested', 6,
        'refundable', 5, 'charged', 20, 'refunded', 15
    ),
    'The DC050 detail is JSON with requested, refundable, charged and refunded.'
);
insert into partial_refunds
select 3, r from credit_refund_transaction((select transaction_id from deduct_20), 5) as r;
select results_eq(
    $$select (result).amount, (result).total_refunded, (result).refundable_remaining,
             (result).balance_after
      from partial_refunds where n = 3$$,
    $$values (5::bigint, 20::bigint, 0::bigint, 92::bigint)$$,
    'Refunding exactly the 5 left is allowed: cumulative refunds equal the charge.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, 1)', (select transaction_id from deduct_20)),
    'DC050',
    format('transaction %s is already fully refunded (charged 20, refunded 20)',
        (select transaction_id from deduct_20)),
    'One more credit is DC050: already fully refunded.'
);
select throws_ok(
    format('select credit_refund_transaction(%L)', (select transaction_id from deduct_20)),
    'DC050', null,
    'A full refund after partials that used it up is DC050.'
);
select results_eq(
    $$select sum(t.amount) from credit_transactions as t
      where t.refund_of = (select transaction_id from deduct_20)$$,
    $$values (20::numeric)$$,
    'The refund rows of the 20 add up to exactly 20.'
);

-- ---------------------------------------------------------------- a capture is refundable

select results_eq(
    $$select amount, total_refunded, refundable_remaining, balance_after
      from credit_refund_transaction((select transaction_id from capture_8), 3)$$,
    $$values (3::bigint, 3::bigint, 5::bigint, 95::bigint)$$,
    'A capture can be refunded partly: 3 of 8.'
);
select results_eq(
    $$select amount, total_refunded, refundable_remaining, balance_after
      from credit_refund_transaction((select transaction_id from capture_8))$$,
    $$values (5::bigint, 8::bigint, 0::bigint, 100::bigint)$$,
    'A null amount after a partial refund refunds what is left: 5.'
);

-- ---------------------------------------------------------------- not refundable: DC051

select throws_ok(
    format('select credit_refund_transaction(%L)', (select transaction_id from full_refund)),
    'DC051',
    format('transaction %s is of type refund; only usage, fixed_job and capture transactions'
        || ' can be refunded', (select transaction_id from full_refund)),
    'Refunding a refund is DC051.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, 1)', (select transaction_id from full_refund)),
    'DC051', null,
    'Refunding part of a refund is DC051.'
);
select throws_ok(
    format('select credit_refund_transaction(%L)', (select transaction_id from topup)),
    'DC051', null,
    'Refunding a credit (adjustment) is DC051.'
);
select throws_ok(
    format('select credit_refund_transaction(%L)',
        (select transaction_id from credit_add_credits('test_owner', 1, p_tx_type => 'purchase'))),
    'DC051', null,
    'Refunding a purchase is DC051.'
);

create temp table promo as
select * from credit_add_credits(
    'test_owner', 4, p_category => 'promotional', p_expires_at => '2030-01-01 00:00:01+00'
);
set local ducto.now to '2030-01-01 00:00:01+00';
select lives_ok(
    $$select credit_sweep_expired()$$,
    '(The promotional 4 expire.)'
);
select throws_ok(
    format('select credit_refund_transaction(%L)',
        (select t.id from credit_transactions as t
         where t.user_id = 'test_owner' and t.type = 'expiry')),
    'DC051', null,
    'Refunding an expiry is DC051.'
);

-- ---------------------------------------------------------------- unknown transaction: DC030

select throws_ok(
    $$select credit_refund_transaction('00000000-0000-4000-8000-000000000000')$$, 'DC030',
    'transaction 00000000-0000-4000-8000-000000000000 does not exist',
    'Refunding an unknown transaction is DC030.'
);
select throws_ok(
    $$select credit_refund_transaction(null)$$, 'DC030', null,
    'Refunding a null transaction id is DC030.'
);
select throws_ok(
    $$select credit_refund_transaction((select reservation_id from hold))$$, 'DC030', null,
    'A reservation id is not a transaction id: DC030.'
);

-- ---------------------------------------------------------------- invalid arguments

create temp table deduct_10 as
select * from credit_deduct_credits('test_owner', 10);

select throws_ok(
    format('select credit_refund_transaction(%L, 0)', (select transaction_id from deduct_10)),
    'DC001', null,
    'Refunding 0 is DC001.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, -1)', (select transaction_id from deduct_10)),
    'DC001', null,
    'Refunding a negative amount is DC001.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, 1.5)', (select transaction_id from deduct_10)),
    'DC001', null,
    'Refunding a fraction is DC001.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, %L)',
        (select transaction_id from deduct_10), 'NaN'),
    'DC001', null,
    'Refunding NaN is DC001.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, %L)',
        (select transaction_id from deduct_10), 'Infinity'),
    'DC001', null,
    'Refunding Infinity is DC001.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, 11)', (select transaction_id from deduct_10)),
    'DC050', null,
    'Refunding more than was charged in one go (11 of 10) is DC050.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, p_reason => %L)',
        (select transaction_id from deduct_10), repeat('r', 1001)),
    'DC006', 'reason must be at most 1000 characters',
    'A reason of 1001 characters is DC006.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, p_metadata => %L)',
        (select transaction_id from deduct_10), '[]'),
    'DC003', null,
    'Non-object metadata is DC003.'
);
select throws_ok(
    format('select credit_refund_transaction(%L, p_idempotency_key => %L)',
        (select transaction_id from deduct_10), repeat('k', 256)),
    'DC004', null,
    'An idempotency key of 256 characters is DC004.'
);
select results_eq(
    $$select count(*) from credit_transactions
      where refund_of = (select transaction_id from deduct_10)$$,
    $$values (0::bigint)$$,
    'None of the refused refunds wrote a row.'
);
select results_eq(
    $$select amount, total_refunded, refundable_remaining
      from credit_refund_transaction(
          (select transaction_id from deduct_10), 10, p_reason => repeat('r', 1000)
      )$$,
    $$values (10::bigint, 10::bigint, 0::bigint)$$,
    'A reason of exactly 1000 characters is accepted.'
);

-- ---------------------------------------------------------------- consistency

select results_eq(
    $$select a.balance, a.debt from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (101::bigint, 0::bigint)$$,
    'Everything charged was refunded: 100 + 1 purchased; the promotional 4 expired.'
);
select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent after the refunds.'
);

select * from finish();
rollback;
